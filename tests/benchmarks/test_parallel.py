"""benchmarks/parallel.py's projection: the arithmetic of step times for N devices and the pipeline's bubble."""

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("parallel", REPO / "benchmarks" / "parallel.py")
parallel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parallel)


def test_the_projection_shares_blocks_and_adds_the_all_reduce():
    probe = {"dt_block_s": {"mnist": 0.1, "cifar": 0.2}, "bwbpf_block_s": [0.4, 0.3, 0.2, 0.1]}
    lines = parallel.projection(probe, comm_ms=10.0)
    split = lines.index("")

    def table(part):
        return {row.split(" | ")[0].strip("| "): [c.strip("| ") for c in row.split(" | ")] for row in part}

    rows, bubble = table(lines[:split]), table(lines[split:])
    # N = 2: 5 blocks of 100 ms + 10 ms; N = 5: 2 blocks + 4 x 10 ms; N = 10: 1 block + 9 x 10 ms.
    assert rows["1"][1:3] == ["1000", "1.00x"]
    assert rows["2"][1:3] == ["510", "1.96x"]
    assert rows["5"][1:3] == ["240", "4.17x"]
    assert rows["10"][1:3] == ["190", "5.26x"]
    assert rows["2"][3:5] == ["1010", "1.98x"]
    # BWBPF, K = 4 on 2 devices: blocks {0, 1} (700 ms) and {2, 3} (300 ms): the slower group sets the rate.
    assert rows["2"][5:7] == ["700", "1.43x"]
    assert rows["5"][5] == "(K = 4 blocks: N <= 4)"
    assert bubble["16"][1:3] == ["0.941", "0.842"]  # M / (M + N - 1) for N = 2 and 4
