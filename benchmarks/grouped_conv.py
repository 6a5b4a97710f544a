"""K separate convolutions against the one grouped convolution that batching K blocks turns them into.

    python benchmarks/grouped_conv.py                 # the NoProp-DT encoder's three convs, K = 10, batch 128
    python benchmarks/grouped_conv.py --blocks 4 --repeats 20

NoProp-DT's batched mode (model.block_execution: vmap) runs the T blocks' convolutions as one convolution: the first
(whose input, the image, all blocks share) with T x the output channels, the others with groups = T. This times
forward + backward of each layer both ways, on the device at hand (CUDA if present), interleaved repeat by repeat so
that a drifting machine speed affects both alike, and prints the medians and their ratio: above 1 means the grouped
form is slower. Inputs need a gradient (as inside a block) except the first layer's images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import commit, hardware  # noqa: E402

# (name, input channels, output channels, spatial size, input shared by all blocks): ConvEncoder on 28x28 images
LAYERS = [("conv1 (shared image input)", 1, 32, 28, True), ("conv2", 32, 64, 14, False), ("conv3", 64, 128, 14, False)]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="K, the number of blocks")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats of each form, after one warm-up")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    k, b = args.blocks, args.batch
    print(f"K = {k}, batch {b}, float32, forward + backward, median of {args.repeats} interleaved repeats; {hardware()}; "
          f"torch {torch.__version__}; commit {commit()}; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print("| layer | K separate (ms) | one grouped (ms) | grouped / separate |")
    print("|---|---|---|---|")
    for name, c_in, c_out, size, shared in LAYERS:
        grad = not shared
        xs = [torch.randn(b, c_in, size, size, device=device, requires_grad=grad) for _ in range(1 if shared else k)]
        ws = [torch.randn(c_out, c_in, 3, 3, device=device, requires_grad=True) for _ in range(k)]
        x_all = xs[0] if shared else torch.randn(b, k * c_in, size, size, device=device, requires_grad=True)
        w_all = torch.randn(k * c_out, c_in, 3, 3, device=device, requires_grad=True)

        def separate():
            sum(F.conv2d(xs[0 if shared else i], w, padding=1).sum() for i, w in enumerate(ws)).backward()

        def grouped():
            F.conv2d(x_all, w_all, padding=1, groups=1 if shared else k).sum().backward()

        separate(), grouped()  # warm-up
        times = {"separate": [], "grouped": []}
        for _ in range(args.repeats):
            times["separate"].append(timed(separate, device))
            times["grouped"].append(timed(grouped, device))
        a, g = statistics.median(times["separate"]), statistics.median(times["grouped"])
        print(f"| {name}: {c_in}->{c_out} at {size}x{size} | {a * 1e3:.1f} | {g * 1e3:.1f} | {g / a:.2f} |")


if __name__ == "__main__":
    main()
