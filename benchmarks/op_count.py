"""How many ATen operators one training batch dispatches, forward and backward, per strategy: a device-free proxy
for the kernel-launch overhead that bounds small-batch GPU training (section 5 of RESULTS.md).

    python benchmarks/op_count.py

Counts top-level ATen calls (those not called by another ATen op) under torch.profiler for the local losses of one
MNIST-shaped batch and for their joint backward. The optimizer steps are not counted. Prints a markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_noprop.execution.executor import Executor  # noqa: E402
from lightning_noprop.strategies import Backprop, NoPropCT, NoPropDT, NoPropFM  # noqa: E402
from provenance import commit  # noqa: E402

# case: (the strategy, the module's block_execution)
CASES = {
    "backprop (DT-matched)": (Backprop, "loop"),
    "NoProp-DT, loop": (NoPropDT, "loop"),
    "NoProp-DT, vmap": (NoPropDT, "vmap"),
    "NoProp-CT": (NoPropCT, "loop"),
    "NoProp-FM": (NoPropFM, "loop"),
}


def _top_level_ops(prof: profile) -> int:
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def count(strategy_class, block_execution: str) -> tuple[int, int]:
    torch.manual_seed(0)
    strategy, executor = strategy_class(), Executor(block_execution=block_execution)
    strategy.build(10, (1, 28, 28))
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    blocks = range(strategy.num_local_losses)
    list(executor.local_losses(strategy, x, y, blocks))  # first-call initialisation off the count
    with profile(activities=[ProfilerActivity.CPU]) as forward:
        loss = torch.stack([r.loss for r in executor.local_losses(strategy, x, y, blocks)]).sum()
    with profile(activities=[ProfilerActivity.CPU]) as backward:
        loss.backward()
    return _top_level_ops(forward), _top_level_ops(backward)


def main() -> None:
    print(f"MNIST-shaped batch; torch {torch.__version__}; commit {commit()}; {time.strftime('%Y-%m-%d')}")
    print("| case | forward ops | backward ops | total | x backprop |")
    print("|---|---|---|---|---|")
    rows = {name: count(*case) for name, case in CASES.items()}
    base = sum(rows["backprop (DT-matched)"])
    for name, (f, b) in rows.items():
        print(f"| {name} | {f} | {b} | {f + b} | {(f + b) / base:.2f} |")


if __name__ == "__main__":
    main()
