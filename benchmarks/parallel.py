"""Blocks that train in parallel: NoProp-DT with block_parallel on 2 ranks against one process, DDP and backprop.

    python benchmarks/parallel.py [--batches 12] [--warmup 3] [--rounds 8] [--out benchmarks/results/parallel.jsonl]

Runs each case in its own process(es), over ``--rounds`` rounds in throughput.py's balanced order, MNIST-shaped synthetic data,
the paper's NoProp-DT (T = 10 blocks, width 256) and the DT-matched backprop chain at batch 128:

- ``block_parallel 2 ranks x 1 thread``: `--trainer.strategy block_parallel --trainer.devices 2`, each rank 5 blocks;
- ``one process, 2 threads``: NoProp-DT as it trains by default;
- ``DDP 2 ranks x 1 thread``: plain data-parallel NoProp-DT (each rank its own batch of 128);
- ``backprop, one process, 2 threads``: the same blocks chained and trained end to end.

It counts the bytes each training step sends between processes (block_parallel: every torch.distributed call made
inside a training step; DDP: the gradient buckets its communication hook all-reduces) and times the pieces of a
projection to N = 1, 2, 5, 10 devices: one block's training step with one thread (MNIST- and CIFAR-shaped NoProp-DT,
BWBPF's ResNet-18 blocks) and the shared all-reduce. Prints a markdown table; the last line is ``speed-up: X.XX``,
block_parallel's samples/s over one process's, measured side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from throughput import round_order  # noqa: E402

CASES = {
    "block_parallel": ("NoProp-DT, block_parallel, 2 ranks x 1 thread", 2),
    "single": ("NoProp-DT, one process, 2 threads", 1),
    "ddp": ("NoProp-DT, DDP, 2 ranks x 1 thread", 2),
    "backprop": ("backprop (DT-matched), one process, 2 threads", 1),
}


# ------------------------------------------------------------------------------------------ one case, in its process
def run_case(case: str, batches: int, warmup: int, batch_size: int) -> dict:
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from lightning_noprop.data import ImageDataModule
    from lightning_noprop.execution import BlockParallelStrategy
    from lightning_noprop.module import LocalLearningModule
    from lightning_noprop.strategies import Backprop, NoPropDT

    ranks = CASES[case][1]
    torch.set_num_threads(1 if ranks > 1 else 2)
    seed_everything(0, verbose=False)
    strategy = Backprop(num_blocks=10) if case == "backprop" else NoPropDT(num_blocks=10)
    module = LocalLearningModule(strategy, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3),
                                 train_accuracy_every_n_steps=0)  # fmt: skip
    data = ImageDataModule("mnist", synthetic=True, synthetic_size=batch_size * ranks * (batches + warmup) + 1,
                           val_size=1, batch_size=batch_size)  # fmt: skip
    ddp_bytes = {"bytes": 0, "steps": 0}

    def counting_allreduce(state, bucket):
        state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
        return default_hooks.allreduce_hook(None, bucket)

    trainer_strategy = {"block_parallel": BlockParallelStrategy(), "ddp": DDPStrategy()}.get(case, "auto")

    class Clock(Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.sent: list[int] = []
            self.comm_seconds = 0.0
            self.counting = False

        def on_train_start(self, trainer, pl_module):
            if case == "ddp":  # Lightning registers a DDP communication hook only on CUDA: count the buckets here
                trainer.strategy.model.register_comm_hook(ddp_bytes, counting_allreduce)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = time.perf_counter()
                ddp_bytes["bytes"] = 0
            self.counting = batch_idx >= warmup

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()
            self.counting = False

    clock = Clock()
    if case == "block_parallel":  # count what the training steps send: every torch.distributed call inside them
        import torch.distributed as dist

        for name in ("all_reduce", "broadcast", "isend", "send", "all_gather", "broadcast_object_list"):
            original = getattr(dist, name)

            def counted(*args, _original=original, **kwargs):
                if not clock.counting:
                    return _original(*args, **kwargs)
                clock.sent.append(sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)))
                begin = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    clock.comm_seconds += time.perf_counter() - begin

            setattr(dist, name, counted)
    trainer = Trainer(accelerator="cpu", devices=ranks, strategy=trainer_strategy, max_steps=-1, max_epochs=1,
                      limit_train_batches=warmup + batches, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[clock])  # fmt: skip
    trainer.fit(module, data)
    seconds = clock.end - clock.start
    samples = batches * batch_size * (ranks if case == "ddp" else 1)
    sent = sum(clock.sent) if case == "block_parallel" else ddp_bytes["bytes"]
    return {"case": case, "rank": trainer.global_rank, "seconds": seconds, "samples_per_s": samples / seconds,
            "step_ms": 1000 * seconds / batches, "bytes_per_step": sent / batches if ranks > 1 else 0,
            "comm_ms_per_step": 1000 * clock.comm_seconds / batches}  # fmt: skip


# --------------------------------------------------------------------------------------------- projection probes
def time_block_steps(shape: tuple[int, int, int], repeats: int, batch_size: int) -> float:
    """Seconds of one NoProp-DT block's training step (loss, backward, AdamW step), one thread, median."""
    from lightning_noprop.strategies import NoPropDT

    torch.manual_seed(0)
    strategy = NoPropDT(num_blocks=10)
    strategy.build(10, shape)
    optimizer = torch.optim.AdamW(strategy.block_parameters(4) + strategy.shared_parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, *shape), torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(repeats + 1):
        begin = time.perf_counter()
        optimizer.zero_grad()
        (loss,) = list(strategy.local_losses(x, y, [4]))
        loss.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - begin)
    return sorted(times[1:])[len(times[1:]) // 2]


def time_bwbpf_blocks(repeats: int, batch_size: int) -> tuple[list[float], list[int]]:
    """Seconds of each of BWBPF's ResNet-18 (K = 4) blocks' training step and the bytes of each block's output, one
    thread, CIFAR-shaped batch."""
    from lightning_noprop.strategies import BWBPF

    torch.manual_seed(0)
    strategy = BWBPF(num_blocks=4)
    strategy.build(10, (3, 32, 32))
    h, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    seconds, sizes = [], []
    for k in range(4):
        optimizer = torch.optim.SGD(strategy.block_parameters(k), lr=0.1, momentum=0.9)
        times = []
        for _ in range(repeats + 1):
            begin = time.perf_counter()
            optimizer.zero_grad()
            (result,) = list(strategy.chain_losses(h, y, k, [k]))
            result.loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - begin)
        seconds.append(sorted(times[1:])[len(times[1:]) // 2])
        sizes.append(result.output.numel() * 4)
        h = result.output
    return seconds, sizes


def probes(batch_size: int) -> dict:
    torch.set_num_threads(1)
    mnist = time_block_steps((1, 28, 28), 3, batch_size)
    cifar = time_block_steps((3, 32, 32), 3, batch_size)
    bwbpf, sizes = time_bwbpf_blocks(2, batch_size)
    return {"case": "probes", "dt_block_s": {"mnist": mnist, "cifar": cifar}, "bwbpf_block_s": bwbpf,
            "bwbpf_output_bytes": sizes}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the driver
def child(args: argparse.Namespace) -> None:
    result = probes(args.batch_size) if args.case == "probes" else run_case(args.case, args.batches, args.warmup,
                                                                             args.batch_size)  # fmt: skip
    if result.get("rank", 0) == 0:
        print("RESULT " + json.dumps(result), flush=True)


def spawn(case: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--case", case, "--batches", str(args.batches), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1" if CASES.get(case, ("", 2))[1] > 1 or case == "probes" else "2"}
    output = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if output.returncode or not lines:
        raise RuntimeError(f"case {case} failed:\n{output.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def projection(probe: dict, comm_ms: float) -> list[str]:
    """Step time for N devices: ceil(T / N) blocks on the busiest device plus the shared all-reduce, whose measured
    2-rank time is scaled by (N - 1) (a latency-bound ring of tiny messages); BWBPF: the slowest rank's contiguous
    group of blocks (the pipeline's rate), times M / (M + N - 1) for the bubble of M batches a pipeline fill."""
    rows = ["| devices N | DT MNIST step (ms) | speed-up | DT CIFAR step (ms) | speed-up | BWBPF ResNet-18 K=4 step (ms) "
            "| speed-up |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    blocks = probe["bwbpf_block_s"]
    for n in (1, 2, 5, 10):
        cells = [str(n)]
        for shape in ("mnist", "cifar"):
            t = probe["dt_block_s"][shape] * 1000
            step = math.ceil(10 / n) * t + (comm_ms * (n - 1) if n > 1 else 0.0)
            cells += [f"{step:.0f}", f"{10 * t / step:.2f}x"]
        if n <= 4:
            from lightning_noprop.execution import block_owners

            owners = block_owners(4, n)
            groups = [sum(1000 * s for s, o in zip(blocks, owners) if o == r) for r in range(n)]
            cells += [f"{max(groups):.0f}", f"{1000 * sum(blocks) / max(groups):.2f}x"]
        else:
            cells += ["(K = 4 blocks: N <= 4)", ""]
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", "BWBPF pipeline efficiency M / (M + N - 1) by batches per fill M (the pipeline drains each epoch):",
             "", "| M | N = 2 | N = 4 |", "|---|---|---|"]  # fmt: skip
    for m in (1, 4, 16, 64, 352):
        rows.append(f"| {m} | {m / (m + 1):.3f} | {m / (m + 3):.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=12, help="timed training batches per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8, help="rounds over the cases in throughput.py's balanced "
                        "order (2 x the cases: each case in every position)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="append each measured line (JSON) to this file")
    args = parser.parse_args()
    if args.case:
        return child(args)
    names = list(CASES)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in round_order(names, round_index):
            result = spawn(name, args)
            results[name].append(result)
            print(f"round {round_index}: {CASES[name][0]}: {result['samples_per_s']:.1f} samples/s", flush=True)
            if args.out:
                with args.out.open("a") as file:
                    file.write(json.dumps({**result, "round": round_index}) + "\n")
    probe = spawn("probes", args)
    if args.out:
        with args.out.open("a") as file:
            file.write(json.dumps(probe) + "\n")

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2

    rate = {name: median([r["samples_per_s"] for r in results[name]]) for name in names}
    # Ratios within each round (both sides measured minutes apart), then their median.
    def ratio(a: str, b: str) -> float:
        return median([x["samples_per_s"] / y["samples_per_s"] for x, y in zip(results[a], results[b])])

    print(f"\n{args.rounds} rounds x {args.batches} timed batches of {args.batch_size} (after {args.warmup}), "
          f"MNIST-shaped, T = 10, width 256, float32, {os.cpu_count()} CPU cores\n")  # fmt: skip
    print("| case | samples/s (median) | step (ms) | x one process | x backprop | bytes sent per step |")
    print("|---|---|---|---|---|---|")
    for name in names:
        step = median([r["step_ms"] for r in results[name]])
        sent = median([r["bytes_per_step"] for r in results[name]])
        print(f"| {CASES[name][0]} | {rate[name]:.1f} | {step:.0f} | {ratio(name, 'single'):.2f}x | "
              f"{ratio(name, 'backprop'):.2f}x | {sent:,.0f} |")  # fmt: skip
    comm_ms = median([r["comm_ms_per_step"] for r in results["block_parallel"]])
    print(f"\nblock_parallel's time in torch.distributed calls: {comm_ms:.2f} ms a step; probes (one thread, batch "
          f"{args.batch_size}): DT block {1000 * probe['dt_block_s']['mnist']:.0f} ms (MNIST), "
          f"{1000 * probe['dt_block_s']['cifar']:.0f} ms (CIFAR); BWBPF blocks "
          + ", ".join(f"{1000 * s:.0f}" for s in probe["bwbpf_block_s"]) + " ms, outputs "
          + ", ".join(f"{b / 2**20:.1f}" for b in probe["bwbpf_output_bytes"]) + " MiB\n")  # fmt: skip
    print("\n".join(projection(probe, comm_ms)))
    print(f"\nspeed-up: {ratio('block_parallel', 'single'):.2f}")


if __name__ == "__main__":
    main()
