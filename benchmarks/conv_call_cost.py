"""The fixed cost of one CPU convolution call: why step_overhead.py's kernel floor stays near 0.4x eager.

    OMP_NUM_THREADS=1 python benchmarks/conv_call_cost.py --repeats 2000

step_overhead.py's compute-free NoProp-DT (1x4x4 images, batch 16) does almost no arithmetic, yet its convolutions
alone cost 0.39x an eager batch (RESULTS.md 20b). This times one 3x3 convolution, forward and backward (input and
weight gradients), on one thread at batch 16, for the compute-free model's shapes and a 1->2 channel one with
almost no work, with oneDNN (mkldnn) on and off. What remains at near-zero work is the per-call cost of the kernel,
which torch.compile keeps (inductor calls the same extern convolution kernels). Prints a markdown table in
microseconds per forward+backward (median of --rounds rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import commit, hardware  # noqa: E402

#: (in channels, out channels, image side): step_overhead.py's blocks, and one with almost no work.
SHAPES = [(1, 32, 4), (32, 64, 2), (64, 128, 1), (1, 2, 4)]


def call_cost_us(c_in: int, c_out: int, side: int, batch: int, repeats: int) -> float:
    """Microseconds of one conv2d (3x3, padding 1) forward plus its backward."""
    x = torch.randn(batch, c_in, side, side, requires_grad=True)
    w = torch.randn(c_out, c_in, 3, 3, requires_grad=True)
    for _ in range(max(repeats // 10, 10)):  # warm-up: the kernel choice and its caches
        F.conv2d(x, w, padding=1).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        F.conv2d(x, w, padding=1).sum().backward()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="batch size (step_overhead.py's: 16)")
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows the median")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="TF32 acceleration")  # mkldnn.flags() also sets TF32; no GPU here
    print(f"conv2d 3x3 forward+backward, batch {args.batch}, 1 thread; torch {torch.__version__}; {hardware()}; "
          f"commit {commit()}; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print("| shape (in->out, side) | MACs forward | oneDNN on, us | oneDNN off, us |")
    print("|---|---|---|---|")
    for c_in, c_out, side in SHAPES:
        times = {}
        for enabled in (True, False):
            with torch.backends.mkldnn.flags(enabled=enabled):
                times[enabled] = statistics.median(
                    call_cost_us(c_in, c_out, side, args.batch, args.repeats) for _ in range(args.rounds)
                )
        macs = args.batch * c_out * side * side * c_in * 9
        print(f"| {c_in}->{c_out}, {side}x{side} | {macs:,} | {times[True]:.0f} | {times[False]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
