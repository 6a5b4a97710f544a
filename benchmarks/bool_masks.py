"""A likely reason capture_step's compiled NoProp-DT step is not faster than eager on a CPU: inductor's bool masks.

    python benchmarks/bool_masks.py --repeats 30 --rounds 3

AOTAutograd saves a ReLU's backward mask (``out <= 0``) and dropout's keep mask as ``bool`` tensors, one byte an
element. Inductor's CPU kernels convert a vector mask to bools through ``at::vec::Vectorized<bool>``, which (torch
2.14) has no AVX2/AVX512 specialisation, so writing a mask is slow. This times, on one activation of NoProp-DT's
image encoder at batch 128 (64 x 14 x 14 a sample), eager against compiled (``dynamic=True``, as capture_step compiles):

- ``relu``: the ReLU alone (no mask);
- ``relu + bool mask``: the ReLU and its mask, as the compiled forward writes them;
- ``where(bool mask)``: a gradient selected by a stored mask, as the compiled backward reads it;
- ``relu + uint8 mask``: the same mask stored as uint8.

Rounds alternate the order of eager and compiled; the table shows the median over rounds of each case's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import commit, hardware

CASES = {
    "relu": lambda t, m: torch.relu(t),
    "relu + bool mask": lambda t, m: (torch.relu(t), torch.relu(t) <= 0),
    "where(bool mask)": lambda t, m: torch.where(m, t, 0.0),
    "relu + uint8 mask": lambda t, m: (torch.relu(t), (torch.relu(t) <= 0).to(torch.uint8)),
}


def time_ms(fn, args: tuple, repeats: int) -> float:
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=4, default=[128, 64, 14, 14], help="the activation's shape")
    args = parser.parse_args()
    x = torch.randn(*args.shape)
    mask = x > 0
    compiled = {name: torch.compile(fn, dynamic=True) for name, fn in CASES.items()}
    print(f"{hardware()}; torch {torch.__version__}; commit {commit()}; {time.strftime('%Y-%m-%d')}; "
          f"{torch.get_num_threads()} threads; shape {tuple(args.shape)}")  # fmt: skip
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        modes = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
        for name, eager_fn in CASES.items():
            for mode in modes:
                fn = eager_fn if mode == "eager" else compiled[name]
                results.setdefault((name, mode), []).append(time_ms(fn, (x, mask), args.repeats))
    print("\n| case | eager ms | compiled ms | compiled / eager |")
    print("|---|---|---|---|")
    for name in CASES:
        eager, comp = (statistics.median(results[(name, mode)]) for mode in ("eager", "compiled"))
        print(f"| {name} | {eager:.3f} | {comp:.3f} | {comp / eager:.2f} |")


if __name__ == "__main__":
    main()
