"""The order and the arithmetic of benchmarks/throughput.py's rounds (no case is run here)."""

import itertools
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from throughput import round_order, summary_table  # noqa: E402


@pytest.mark.parametrize("num_cases", [2, 3, 4, 6])
def test_twice_as_many_rounds_as_cases_put_every_case_in_every_position_and_on_both_sides_of_its_neighbours(num_cases):
    cases = [f"case{i}" for i in range(num_cases)]
    orders = [round_order(cases, r) for r in range(2 * num_cases)]
    assert all(sorted(order) == cases for order in orders), "every round runs every case once"
    for position in range(num_cases):
        counts = {case: sum(order[position] == case for order in orders) for case in cases}
        assert set(counts.values()) == {2}, f"position {position}: {counts}"
    pairs = {(a, b) for order in orders for a, b in itertools.pairwise(order)}
    for i in range(num_cases):  # each cyclic neighbour pair, in both orders
        a, b = cases[i], cases[(i + 1) % num_cases]
        assert (a, b) in pairs and (b, a) in pairs, (a, b)
    if num_cases == 3:
        assert {tuple(order) for order in orders} == set(itertools.permutations(cases)), "three cases: all six orders"


def _row(case, round_index, speed, memory=1.0):
    return {"case": case, "round": round_index, "train_samples_per_s": speed, "peak_mem_gib": memory,
            "inference_samples_per_s": {"all": 10.0}, "precision": "32-true"}  # fmt: skip


def test_ratios_are_taken_within_each_round_before_the_median():
    # The machine is twice as fast in round 1: within-round ratios stay 0.5, the ratio of medians would not.
    rows = [_row("backprop", 0, 10), _row("noprop_dt joint", 0, 5, 0.5),
            _row("backprop", 1, 20), _row("noprop_dt joint", 1, 10, 0.5),
            _row("backprop", 2, 30), _row("noprop_dt joint", 2, 15, 0.5)]  # fmt: skip
    table = summary_table(rows, ["backprop", "noprop_dt joint"]).splitlines()
    assert table[2].split(" | ")[3] == "1.00", "the baseline's own ratio is 1"
    cells = table[3].split(" | ")
    assert cells[2] == "10" and cells[3] == "0.50 (0.50-0.50)" and cells[5] == "0.50 (0.50-0.50)", table[3]


def test_a_failed_case_or_round_is_left_out_of_the_table_instead_of_breaking_it():
    # noprop_dt joint failed in round 1 and noprop_fm in every round; the rounds that ran still give ratios.
    rows = [_row("backprop", 0, 10), _row("noprop_dt joint", 0, 5), _row("backprop", 1, 20)]
    table = summary_table(rows, ["backprop", "noprop_dt joint", "noprop_fm"]).splitlines()
    assert table[3].split(" | ")[3] == "0.50", "only round 0 has both cases"
    assert table[4] == "| noprop_fm | failed | - | - | - | - | - |"


def test_each_case_is_written_to_out_as_soon_as_it_is_measured_and_a_failure_does_not_stop_the_others(
    tmp_path, monkeypatch, capsys
):
    import throughput

    def fake_run(name, args):
        if name == "noprop_dt joint":
            raise RuntimeError(f"case {name} failed:\nboom")
        written = (tmp_path / "out.jsonl").read_text().splitlines() if (tmp_path / "out.jsonl").exists() else []
        seen.append((name, len(written)))
        return _row(name, 0, 10.0)

    seen = []
    monkeypatch.setattr(throughput, "run_subprocess", fake_run)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--cases", "backprop", "noprop_dt joint", "noprop_fm",
                                      "--out", str(tmp_path / "out.jsonl")])  # fmt: skip
    with pytest.raises(SystemExit, match="noprop_dt joint"):
        throughput.main()
    assert seen == [("backprop", 0), ("noprop_fm", 1)], "backprop's line was on disk before noprop_fm ran"
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["case"] for line in lines] == ["backprop", "noprop_fm"]
    assert "| noprop_dt joint | failed |" in capsys.readouterr().out
