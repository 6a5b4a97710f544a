"""Why capture_step's CPU graphs keep ATen's pooling and eager's memory layout: one NoProp-DT image encoder.

    python benchmarks/pooling.py --batch 128 --repeats 8

Times one forward and backward of the paper's image encoder (Fig. 6, ``ConvEncoder``, 1x28x28, eval mode so that
dropout draws nothing) on one thread: eager with ``nn.MaxPool2d``; compiled as capture_step compiles for a CPU
(``unit_compile_kwargs(None, "cpu")``) with ``nn.MaxPool2d`` (inductor generates the pooling loops) and with the
project's ``MaxPool2d`` (ATen's kernel through an opaque custom op, lightning_noprop/nn/pooling.py); and the latter
with inductor's own layout choice (``layout_optimization`` on: every convolution channels-last). Prints a markdown
table in ms (median of --rounds rounds).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import commit, hardware  # noqa: E402

from lightning_noprop.execution.capture import unit_compile_kwargs  # noqa: E402
from lightning_noprop.nn.blocks import ConvEncoder  # noqa: E402
from lightning_noprop.nn.pooling import MaxPool2d  # noqa: E402


def step_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Milliseconds of one forward and backward (after three untimed ones: compilation, kernel choice)."""
    for _ in range(3):
        model(x).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        model(x).sum().backward()
    return (time.perf_counter() - start) / repeats * 1e3


def with_pooling(encoder: nn.Module, pool: type[nn.MaxPool2d]) -> nn.Module:
    """A copy of ``encoder`` (same weights) whose max-pooling layers are ``pool``s with the same arguments."""
    copied = copy.deepcopy(encoder)
    for name, layer in list(copied.named_children()):
        if isinstance(layer, nn.MaxPool2d):
            setattr(copied, name, pool(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                       ceil_mode=layer.ceil_mode))  # fmt: skip
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="batch size (the paper's: 128)")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows the median")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 28, 28)).eval()
    x = torch.randn(args.batch, 1, 28, 28)
    cpu = unit_compile_kwargs(None, "cpu")
    inductors_layout = {**cpu, "options": {**cpu["options"], "layout_optimization": True}}
    cases = {
        "eager, nn.MaxPool2d": with_pooling(encoder, nn.MaxPool2d),
        "compiled, nn.MaxPool2d (inductor's pooling)": torch.compile(with_pooling(encoder, nn.MaxPool2d), **cpu),
        "compiled, MaxPool2d (ATen's pooling): capture_step's": torch.compile(with_pooling(encoder, MaxPool2d), **cpu),
        "compiled, MaxPool2d, inductor's layout (channels-last convolutions)": torch.compile(
            with_pooling(encoder, MaxPool2d), **inductors_layout),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, model in cases.items():
            times[name].append(step_ms(model, x, args.repeats))
    print(f"ConvEncoder forward+backward, batch {args.batch}, 1 thread; torch {torch.__version__}; {hardware()}; "
          f"commit {commit()}; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print("| case | ms per step | /eager |")
    print("|---|---|---|")
    eager = statistics.median(times["eager, nn.MaxPool2d"])
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / eager:.2f} |")


if __name__ == "__main__":
    main()
