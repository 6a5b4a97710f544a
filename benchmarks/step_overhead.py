"""The host cost of one training batch through the module on a compute-free model, eager against capture_step.

    python benchmarks/step_overhead.py                        # NoProp-DT T = 10, 1x4x4 images, batch 16, 1 thread
    python benchmarks/step_overhead.py --rounds 4 --batches 120 --out benchmarks/results/step_overhead.jsonl

A model this small does almost no arithmetic, so what a batch costs is the host's work: dispatching every operator
of ten blocks' forward and backward, eleven optimizer steps and Lightning's logging. Each case runs in its own
process through Trainer.fit with LocalLearningModule (block width 8, one CPU thread, no validation) and is timed
per batch between on_train_batch_start and on_train_batch_end; the first ``--warmup`` batches (the compilation) are
left out and the median of the rest is reported. Rounds alternate the order of the cases; the ratio is taken within
each round. The last line is ``captured/eager: R`` (the median of the rounds' ratios).

The model is not free of arithmetic: the paper's encoder has 32, 64 and 128 channels whatever the block width, and
the ten blocks hold about 1 M parameters for the optimizers to update. The case "kernel floor" times that part alone,
in a bare loop without Lightning: every block's three convolutions forward and backward on the activations they see,
and one fused AdamW step per block. No way of executing the step removes it, so ``floor / eager`` bounds R from below.

The cases "... replay host" time the GPU path's host half on any machine: capture_step with StepGraph's device half
replaced by ``HostOnly``, which captures by running the step once and replays by launching nothing. A batch then costs
what the host does around a replay of the step's CUDA graph (Lightning, the module, StepGraph's bookkeeping), which a
GPU's replay runs beside; it is an estimate for a GPU, not R, since the step's arithmetic is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import commit, hardware

CASES = {  # name: (strategy, module options)
    "NoProp-DT eager": ("NoPropDT", {}),
    "NoProp-DT captured": ("NoPropDT", {"capture_step": True}),
    # The blocks as one vmapped call: three grouped convolutions a batch instead of thirty.
    "NoProp-DT vmap eager": ("NoPropDT", {"block_execution": "vmap"}),
    "NoProp-DT vmap captured": ("NoPropDT", {"block_execution": "vmap", "capture_step": True}),
    "backprop eager": ("Backprop", {}),
    "backprop captured": ("Backprop", {"capture_step": True}),
    "kernel floor": ("NoPropDT", {}),
    # The GPU path's host half on a CPU: capture_step's StepGraph with its device half stubbed (HostOnly), so a
    # batch is the host's work around a replay and no arithmetic. Not a CPU figure for R: the step's kernels are
    # skipped, not run.
    "NoProp-DT replay host": ("NoPropDT", {"capture_step": True}),
    "backprop replay host": ("Backprop", {"capture_step": True}),
}


class HostOnly:
    """StepGraph's device half (CudaGraphs' four methods) without a device: "capture" runs the step once for its
    outputs, and each "replay" returns them, launching nothing. What remains of a batch is the host's work when a
    GPU replays the step from its CUDA graph: Lightning's loop, the module, StepGraph's bookkeeping (the batch's
    signature and key, the blocks' seeds, the copies into the static inputs, Lightning's step count), the logging."""

    def new_state(self):
        import torch

        return torch.Generator()  # seeded before every replay, as a CUDA generator state is

    def stream(self, state):
        from contextlib import nullcontext

        return nullcontext()

    def on_stream(self):
        from contextlib import nullcontext

        return nullcontext()

    def capture(self, step, states):
        outputs = step()
        return lambda: outputs


def conv_inputs(block, x) -> list[tuple]:
    """(convolution, its input, a gradient for its output) for each convolution of ``block.image_encoder`` on images
    x, recorded by hooks on one forward; the inputs require grad, as inside the chain."""
    import torch

    seen: list[tuple] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0].detach(), out.detach())))
             for m in block.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        block.image_encoder(x)
    for hook in hooks:
        hook.remove()
    return [(conv, inp.requires_grad_(), torch.randn_like(out)) for conv, inp, out in seen]


def kernel_floor(module, x, batches: int, warmup: int) -> dict:
    """Per-batch time of the arithmetic no execution removes: each block's convolutions forward and backward on the
    inputs they see for images ``x``, and one fused AdamW step per block (see the module docstring)."""
    import torch

    blocks = module.strategy.block_modules()
    inputs = [conv_inputs(block, x) for block in blocks]
    optimizers = [torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=1e-3, fused=True) for b in blocks]
    for block in blocks:
        for p in block.parameters():
            p.grad = torch.zeros_like(p)
    times = []
    for _ in range(batches + warmup):
        start = time.perf_counter()
        for convs, optimizer in zip(inputs, optimizers):
            for conv, inp, grad in convs:
                conv(inp).backward(grad)
            optimizer.step()
        times.append(time.perf_counter() - start)
    return {"ms_per_batch": 1e3 * statistics.median(times[warmup:]), "first_batch_s": times[0], "batches": batches}


def run_case(name: str, batches: int, warmup: int, accelerator: str = "cpu") -> dict:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_noprop import strategies
    from lightning_noprop.module import LocalLearningModule

    torch.set_num_threads(1)
    seed_everything(0, verbose=False)
    strategy_name, options = CASES[name]
    strategy = getattr(strategies, strategy_name)(num_blocks=10, width=8)
    module = LocalLearningModule(strategy, num_classes=10, image_shape=(1, 4, 4), **options)
    data = TensorDataset(torch.randn(16 * (batches + warmup), 1, 4, 4), torch.arange(16 * (batches + warmup)) % 10)
    if name == "kernel floor":
        return {"case": name, **kernel_floor(module, data.tensors[0][:16], batches, warmup)}
    if name.endswith("replay host"):
        module.executor.step_graph.backend = HostOnly()  # StepGraph.usable: a backend set means replay

    class Timer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            sync()
            self.times.append(time.perf_counter() - self.start)

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    timer = Timer()
    Trainer(max_epochs=1, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[timer]).fit(module, DataLoader(data, batch_size=16))  # fmt: skip
    return {"case": name, "ms_per_batch": 1e3 * statistics.median(timer.times[warmup:]),
            "first_batch_s": timer.times[0], "batches": len(timer.times) - warmup}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batches", type=int, default=100, help="timed batches per case")
    parser.add_argument("--warmup", type=int, default=10, help="batches left out (the first pays the compilation)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", help="Trainer accelerator (gpu: the host cost with CUDA)")
    parser.add_argument("--out", type=Path, help="append each measurement to this JSON-lines file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.batches, args.warmup, args.accelerator)))
        return
    print(f"{hardware()}; commit {commit()}; {time.strftime('%Y-%m-%d')}; accelerator {args.accelerator}; 1 CPU thread, "
          "batch 16, 1x4x4, T = 10, width 8")
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = args.cases if r % 2 == 0 else args.cases[::-1]
        results = {}
        for name in order:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--batches", str(args.batches),
                                  "--warmup", str(args.warmup), "--accelerator", args.accelerator],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            results[name] = {**json.loads(out.stdout.strip().splitlines()[-1]), "round": r}
            print(f"round {r}: {name}: {results[name]['ms_per_batch']:.2f} ms/batch "
                  f"(first batch {results[name]['first_batch_s']:.1f} s)", flush=True)  # fmt: skip
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps({**results[name], "commit": commit(), "date": time.strftime("%Y-%m-%d")}) + "\n")
        rounds.append(results)
    print("\n| case | ms per batch (median over rounds) | first batch s | x eager (range over rounds) |")
    print("|---|---|---|---|")
    ratios: dict[str, list[float]] = {}
    for name in args.cases:
        ms = statistics.median(r[name]["ms_per_batch"] for r in rounds)
        first = statistics.median(r[name]["first_batch_s"] for r in rounds)
        eager = "NoProp-DT eager" if name == "kernel floor" else name.replace("captured", "eager")
        eager = eager.replace("replay host", "eager")
        cell = ""
        if ("captured" in name or name == "kernel floor" or "replay host" in name) and eager in args.cases:
            ratios[name] = [r[name]["ms_per_batch"] / r[eager]["ms_per_batch"] for r in rounds]
            cell = f"{statistics.median(ratios[name]):.2f} ({min(ratios[name]):.2f}-{max(ratios[name]):.2f})"
        print(f"| {name} | {ms:.2f} | {first:.1f} | {cell} |")
    if "kernel floor" in ratios:  # the lowest R any execution of this model's step could reach
        print(f"kernel floor/eager: {statistics.median(ratios['kernel floor']):.2f}")
    if "NoProp-DT vmap captured" in ratios and "NoProp-DT eager" in args.cases:  # against the default execution
        default = [r["NoProp-DT vmap captured"]["ms_per_batch"] / r["NoProp-DT eager"]["ms_per_batch"] for r in rounds]
        print(f"vmap captured/eager (loop): {statistics.median(default):.2f} ({min(default):.2f}-{max(default):.2f})")
    for name in ("NoProp-DT replay host", "backprop replay host"):  # an estimate for a GPU, not R on this CPU
        eager = name.replace("replay host", "eager")
        if name in args.cases and eager in args.cases:
            print(f"{name} (device work skipped)/{eager}: {statistics.median(ratios[name]):.2f}: the host's work "
                  "around a replayed batch, not R")  # fmt: skip
    if "NoProp-DT captured" in ratios:
        print(f"captured/eager: {statistics.median(ratios['NoProp-DT captured']):.2f}")


if __name__ == "__main__":
    main()
