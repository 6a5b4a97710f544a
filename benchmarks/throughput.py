"""Training and inference throughput and peak memory of every strategy, side by side in one run.

    python benchmarks/throughput.py                      # MNIST-shaped, 20 timed batches of 128 after 5 warm-up
    python benchmarks/throughput.py --dataset cifar10 --batches 50 --out benchmarks/throughput.jsonl

Each case runs in its own process (so peak RSS on CPU is its own) through Trainer.fit with the product's module,
on the same synthetic data (seed 0), batch 128. Training samples/s counts the timed batches only (after warm-up,
CUDA-synchronised), at the CLI's default precision unless --precision says otherwise; peak memory is torch.cuda.max_memory_allocated on GPU, peak RSS on CPU. Inference samples/s
is strategy.predict on one batch in eval mode (CT/FM at 10, 100 and 1000 steps). Ratios are against the DT-matched
backprop baseline measured in the same run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "backprop": ("Backprop", {}, {}),
    "noprop_dt joint": ("NoPropDT", {}, {"backward_mode": "joint"}),
    "noprop_dt per_block": ("NoPropDT", {}, {"backward_mode": "per_block"}),
    "noprop_ct": ("NoPropCT", {}, {}),
    "noprop_fm": ("NoPropFM", {}, {}),
}
ADAM = {"NoPropCT", "NoPropFM"}  # Table 3: Adam (coupled L2) for CT/FM, AdamW for DT and backprop


def run_case(name: str, dataset: str, batches: int, warmup: int, precision: str | None) -> dict:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from lightning_noprop import strategies
    from lightning_noprop.cli import default_precision
    from lightning_noprop.data import ImageDataModule
    from lightning_noprop.module import LocalLearningModule

    class Timer(Callback):
        def __init__(self) -> None:
            self.start = None
            self.end = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.end = time.perf_counter()

    strategy_name, strategy_kwargs, module_kwargs = CASES[name]
    seed_everything(0, verbose=False)
    optimizer = torch.optim.Adam if strategy_name in ADAM else torch.optim.AdamW
    data = ImageDataModule(dataset=dataset, synthetic=True, synthetic_size=128 * (batches + warmup) + 128,
                           val_size=128, batch_size=128)  # fmt: skip
    strategy = getattr(strategies, strategy_name)(**strategy_kwargs)
    module = LocalLearningModule(strategy, num_classes=data.num_classes, image_shape=data.image_shape,
                                 optimizer=partial(optimizer, lr=1e-3, weight_decay=1e-3),
                                 train_accuracy_every_n_steps=0, **module_kwargs)  # fmt: skip
    timer = Timer()
    trainer = Trainer(max_epochs=1, precision=precision or default_precision(), limit_train_batches=batches + warmup, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer])  # fmt: skip
    trainer.fit(module, data)
    train_sps = 128 * batches / (timer.end - timer.start)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    x = data.normalize_images(data.train_set.tensors[0][:128]).to(module.device)
    strategy.eval()
    inference = {}
    for steps in ([10, 100, 1000] if strategy_name in ADAM else [None]):
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            strategy.predict(x, steps)  # warm-up
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                strategy.predict(x, steps)
            if x.is_cuda:
                torch.cuda.synchronize()
        inference[str(steps or "all")] = 128 * repeats / (time.perf_counter() - start)
    return {"case": name, "train_samples_per_s": train_sps, "peak_mem_gib": peak, "inference_samples_per_s": inference,
            "precision": str(trainer.precision)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "cifar10", "cifar100"])
    parser.add_argument("--batches", type=int, default=20, help="timed training batches of 128")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training batches first")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {list(CASES)}")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help="Trainer precision (default: the CLI's, bf16-mixed on GPU)")
    parser.add_argument("--out", default=None, help="append one JSON line per case to this file")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.dataset, args.batches, args.warmup, args.precision)))
        return
    import lightning
    import torch

    rows = []
    for name in args.cases:
        command = [sys.executable, __file__, "--case", name, "--dataset", args.dataset, "--batches", str(args.batches),
                   "--warmup", str(args.warmup)] + (["--precision", args.precision] if args.precision else [])  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if output.returncode != 0:
            raise RuntimeError(f"case {name} failed:\n{output.stderr[-3000:]}")
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    commit = os.environ.get("LIGHTNING_NOPROP_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    base = next((r for r in rows if r["case"] == "backprop"), None)
    print(f"{args.dataset}-shaped synthetic data, batch 128, {args.batches} timed batches after {args.warmup} warm-up; "
          f"{hardware}; torch {torch.__version__}, lightning {lightning.__version__}; commit {commit}; seed 0; "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print("| case | precision | train samples/s | x backprop | peak memory GiB | x backprop | inference samples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['train_samples_per_s'] / base['train_samples_per_s']:.2f}" if base else "-"
        memory = f"{r['peak_mem_gib'] / base['peak_mem_gib']:.2f}" if base else "-"
        inference = ", ".join(f"{k} steps: {v:.0f}" if k != "all" else f"{v:.0f}" for k, v in r["inference_samples_per_s"].items())
        print(f"| {r['case']} | {r['precision']} | {r['train_samples_per_s']:.0f} | {speed} | {r['peak_mem_gib']:.3f} | "
              f"{memory} | {inference} |")  # fmt: skip
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "dataset": args.dataset, "hardware": hardware, "commit": commit,
                                    "torch": torch.__version__, "lightning": lightning.__version__,
                                    "date": time.strftime("%Y-%m-%d")}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
