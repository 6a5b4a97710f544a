"""Training and inference throughput and peak memory of every strategy, side by side in one run.

    python benchmarks/throughput.py                      # MNIST-shaped, 20 timed batches of 128 after 5 warm-up
    python benchmarks/throughput.py --dataset cifar10 --batches 50 --out benchmarks/throughput.jsonl
    python benchmarks/throughput.py --cases backprop "noprop_dt joint" "noprop_dt per_block" --rounds 6

Each case runs in its own process (so peak RSS on CPU is its own) through Trainer.fit with the product's module,
on the same synthetic data (seed 0), batch 128. Training samples/s counts the timed batches only (after warm-up,
CUDA-synchronised), at the CLI's default precision on GPU and float32 on CPU (the "... bf16-mixed" cases time the
CPU's bf16 recipe against it) unless --precision says otherwise; peak memory is
torch.cuda.max_memory_allocated on GPU, peak RSS on CPU. Inference samples/s is the module's predict_batch on one batch
(--inference-batch, default 128) in eval mode (CT/FM at 10, 100 and 1000 steps). Ratios are against the backprop
baseline of the same architecture measured in the same round (the DT-matched chain for NoProp; the same ResNet-18
with K = 1 for BWBPF, whose cases run with --cases). A CPU's speed can drift by ~10% within minutes, so a fixed order
biases ratios near 1: compare with --rounds 2*len(cases), which changes the order each round (round_order); the
table shows medians over rounds and the range of the within-round ratios. Cases named "compiled" / "channels_last" /
"eager sampler" time the module's compile_blocks / channels_last options and CT/FM with sampler_cuda_graph off; "fused" ones
use torch's fused AdamW (optimizer init_args fused: true). --profile prints where the time goes. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import commit, hardware, peak_memory_gib  # noqa: E402

# case: (strategy class, its kwargs, module kwargs, the baseline case its ratios are against)
CASES = {
    "backprop": ("Backprop", {}, {}, "backprop"),
    "noprop_dt joint": ("NoPropDT", {}, {"backward_mode": "joint"}, "backprop"),
    "noprop_dt per_block": ("NoPropDT", {}, {"backward_mode": "per_block"}, "backprop"),
    "noprop_dt vmap": ("NoPropDT", {}, {"backward_mode": "joint", "block_execution": "vmap"}, "backprop"),
    "noprop_ct": ("NoPropCT", {}, {}, "backprop"),
    "noprop_fm": ("NoPropFM", {}, {}, "backprop"),
    # Performance options, each against the plain baseline (and the backprop row with the same option).
    "backprop compiled": ("Backprop", {}, {"compile_blocks": True}, "backprop"),
    "noprop_dt joint compiled": ("NoPropDT", {}, {"backward_mode": "joint", "compile_blocks": True}, "backprop"),
    "noprop_dt per_block compiled": ("NoPropDT", {}, {"backward_mode": "per_block", "compile_blocks": True}, "backprop"),
    "backprop channels_last": ("Backprop", {}, {"channels_last": True}, "backprop"),
    "noprop_dt joint channels_last": ("NoPropDT", {}, {"backward_mode": "joint", "channels_last": True}, "backprop"),
    "noprop_dt per_block channels_last": ("NoPropDT", {}, {"backward_mode": "per_block", "channels_last": True}, "backprop"),
    "noprop_ct compiled": ("NoPropCT", {}, {"compile_blocks": True}, "backprop"),
    "noprop_fm compiled": ("NoPropFM", {}, {"compile_blocks": True}, "backprop"),
    # torch's fused AdamW: one kernel per optimizer step instead of a foreach chain; NoProp-DT steps 11 optimizers a
    # batch, so on a launch-bound GPU this is where it may pay. Set in a config with optimizer init_args fused: true.
    "backprop fused": ("Backprop", {}, {}, "backprop"),
    "noprop_dt joint fused": ("NoPropDT", {}, {"backward_mode": "joint"}, "backprop"),
    "noprop_dt vmap fused": ("NoPropDT", {}, {"backward_mode": "joint", "block_execution": "vmap"}, "backprop"),
    # capture_step (lightning_noprop/execution/capture.py): compiled per-block losses, fused optimizer steps, losses
    # logged from the device every log_every_n_steps batches.
    "backprop captured": ("Backprop", {}, {"capture_step": True}, "backprop"),
    "noprop_dt joint captured": ("NoPropDT", {}, {"backward_mode": "joint", "capture_step": True}, "backprop"),
    "noprop_dt vmap captured": ("NoPropDT", {}, {"backward_mode": "joint", "block_execution": "vmap", "capture_step": True},
                                "backprop"),  # fmt: skip
    "noprop_ct captured": ("NoPropCT", {}, {"capture_step": True}, "backprop"),
    "noprop_fm captured": ("NoPropFM", {}, {"capture_step": True}, "backprop"),
    # CPU precision: a case named "... bf16-mixed" runs at that precision whatever --precision says.
    # Their ratio column is against float32 NoProp-DT ("noprop_dt joint"), not backprop.
    "noprop_dt joint bf16-mixed": ("NoPropDT", {}, {"backward_mode": "joint"}, "noprop_dt joint"),
    "noprop_dt joint channels_last bf16-mixed": ("NoPropDT", {}, {"backward_mode": "joint", "channels_last": True},
                                                 "noprop_dt joint"),  # fmt: skip
    "backprop bf16-mixed": ("Backprop", {}, {}, "backprop"),
    # The CLI's CPU default where the CPU has native bf16 (bf16-mixed with channels_last), eager against captured.
    "backprop channels_last bf16-mixed": ("Backprop", {}, {"channels_last": True}, "backprop channels_last bf16-mixed"),
    "backprop channels_last captured bf16-mixed": ("Backprop", {}, {"channels_last": True, "capture_step": True},
                                                   "backprop channels_last bf16-mixed"),  # fmt: skip
    "noprop_dt joint channels_last captured bf16-mixed": (
        "NoPropDT", {}, {"backward_mode": "joint", "channels_last": True, "capture_step": True},
        "noprop_dt joint channels_last bf16-mixed"),  # fmt: skip
    "noprop_ct eager sampler": ("NoPropCT", {}, {"sampler_cuda_graph": False}, "backprop"),
    "noprop_fm eager sampler": ("NoPropFM", {}, {"sampler_cuda_graph": False}, "backprop"),
    "resnet18 backprop (K=1)": ("BWBPF", {"num_blocks": 1}, {}, "resnet18 backprop (K=1)"),
    "bwbpf resnet18 K=4 joint": ("BWBPF", {"num_blocks": 4}, {"backward_mode": "joint"}, "resnet18 backprop (K=1)"),
    "bwbpf resnet18 K=4 per_block": ("BWBPF", {"num_blocks": 4}, {"backward_mode": "per_block"}, "resnet18 backprop (K=1)"),
    "resnet18 backprop (K=1) channels_last": ("BWBPF", {"num_blocks": 1}, {"channels_last": True}, "resnet18 backprop (K=1)"),
    "bwbpf resnet18 K=4 per_block channels_last": ("BWBPF", {"num_blocks": 4}, {"backward_mode": "per_block", "channels_last": True},
                                                   "resnet18 backprop (K=1)"),  # fmt: skip
}
DEFAULT_CASES = ["backprop", "noprop_dt joint", "noprop_dt per_block", "noprop_dt vmap", "noprop_ct", "noprop_fm"]
ADAM = {"NoPropCT", "NoPropFM"}  # Table 3: Adam (coupled L2) for CT/FM, AdamW for DT and backprop
SGD = {"BWBPF"}  # the public BWBPF recipe: SGD lr 0.1, momentum 0.9, wd 5e-4


def run_case(name: str, dataset: str, batches: int, warmup: int, precision: str | None, profile: bool = False,
             inference_batch: int = 128) -> dict:  # fmt: skip
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

            self.profiler = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.start = time.perf_counter()
                if profile:  # profiled batches run slower: their time is not the reported one
                    activities = [torch.profiler.ProfilerActivity.CPU] + (
                        [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])  # fmt: skip
                    self.profiler = torch.profiler.profile(activities=activities)
                    self.profiler.__enter__()

        def on_train_epoch_end(self, trainer, module) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.end = time.perf_counter()
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                print(f"### profile of {name} ({batches} batches)\n"
                      + self.profiler.key_averages().table(sort_by=sort, row_limit=15), file=sys.stderr)  # fmt: skip

    strategy_name, strategy_kwargs, module_kwargs, _ = CASES[name]
    seed_everything(0, verbose=False)
    if strategy_name in SGD:
        optimizer = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = partial(torch.optim.Adam if strategy_name in ADAM else torch.optim.AdamW, lr=1e-3, weight_decay=1e-3,
                            **({"fused": True} if name.endswith(" fused") else {}))  # fmt: skip
    batches_needed = max(batches + warmup, -(-inference_batch // 128))
    data = ImageDataModule(dataset=dataset, synthetic=True, synthetic_size=128 * batches_needed + 128,
                           val_size=128, batch_size=128)  # fmt: skip
    strategy = getattr(strategies, strategy_name)(**strategy_kwargs)
    module = LocalLearningModule(strategy, num_classes=data.num_classes, image_shape=data.image_shape,
                                 optimizer=optimizer,
                                 train_accuracy_every_n_steps=0, **module_kwargs)  # fmt: skip
    timer = Timer()
    precision = "bf16-mixed" if name.endswith(" bf16-mixed") else precision
    # On CPU float32, not the CLI's default (bf16 where the CPU has it), so that every case keeps its name's meaning.
    precision = precision or (default_precision() if torch.cuda.is_available() else "32-true")
    trainer = Trainer(max_epochs=1, precision=precision, limit_train_batches=batches + warmup, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer])  # fmt: skip
    trainer.fit(module, data)
    train_sps = 128 * batches / (timer.end - timer.start)
    peak = peak_memory_gib()
    x = data.normalize_images(data.train_set.tensors[0][:inference_batch]).to(module.device)
    strategy.eval()
    inference = {}
    for steps in ([10, 100, 1000] if strategy_name in ADAM else [None]):
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            module.predict_batch(x, steps)  # warm-up (and the capture of a CUDA graph, where the module uses one)
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                module.predict_batch(x, steps)
            if x.is_cuda:
                torch.cuda.synchronize()
        inference[str(steps or "all")] = x.shape[0] * repeats / (time.perf_counter() - start)
    return {"case": name, "train_samples_per_s": train_sps, "peak_mem_gib": peak, "inference_samples_per_s": inference,
            "precision": str(trainer.precision)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "cifar10", "cifar100"])
    parser.add_argument("--batches", type=int, default=20, help="timed training batches of 128")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training batches first")
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help=f"any of {list(CASES)} (default: the NoProp ones)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help="Trainer precision (default: the CLI's on GPU, bf16-mixed where supported; 32-true on CPU)")
    parser.add_argument("--out", default=None, help="append one JSON line per case to this file")
    parser.add_argument("--inference-batch", type=int, default=128,
                        help="batch of the inference timing (e.g. 1000: the configs' eval_batch_size for CT/FM)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the case list this many times in a changing order (see round_order); medians and the "
                             "within-round ratios' range are reported; 2 x len(cases) rounds balance the order")
    parser.add_argument("--profile", action="store_true",
                        help="print each case's torch.profiler table of the timed batches (their speed is then not "
                             "comparable; use it to see where the time goes)")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; the cases are {list(CASES)}")
    if len(set(args.cases)) != len(args.cases):
        parser.error("list each case once in --cases; --rounds repeats them")
    if args.case:
        print(json.dumps(run_case(args.case, args.dataset, args.batches, args.warmup, args.precision, args.profile,
                                  args.inference_batch)))  # fmt: skip
        return
    import lightning
    import torch

    machine, revision = hardware(), commit()
    provenance = {"dataset": args.dataset, "hardware": machine, "commit": revision, "torch": torch.__version__,
                  "lightning": lightning.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    rows, failed = [], []  # one row per case and round
    for round_index in range(args.rounds):
        for position, name in enumerate(round_order(args.cases, round_index)):
            try:
                row = {**run_subprocess(name, args), "round": round_index, "position": position}
            except RuntimeError as error:  # one broken case must not cost the others' figures
                print(error, file=sys.stderr, flush=True)
                failed.append(name)
                continue
            rows.append(row)
            # Each row as soon as it is measured: a run stopped by a time limit still leaves what it measured.
            print(f"round {round_index} {name}: train {row['train_samples_per_s']:.0f} samples/s, peak memory "
                  f"{row['peak_mem_gib']:.3f} GiB", flush=True)  # fmt: skip
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**row, **provenance}) + "\n")
    print(f"{args.dataset}-shaped synthetic data, batch 128, {args.batches} timed batches after {args.warmup} warm-up; "
          f"inference batch {args.inference_batch}; {args.rounds} round(s), order changed each round; {machine}; "
          f"torch {torch.__version__}, lightning {lightning.__version__}; commit {revision}; seed 0; "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(summary_table(rows, args.cases))
    if failed:
        sys.exit(f"failed: {sorted(set(failed))} (their errors are above)")


def round_order(cases: list[str], round_index: int) -> list[str]:
    """The case order of a round: rotated by round_index // 2, and reversed in odd rounds.

    A 2-core VM's speed drifts by ~10% within minutes (RESULTS.md section 12), so a fixed order favours some cases.
    Over 2 * len(cases) rounds every case runs in every position, after each of its cyclic neighbours and before it
    (two cases: AB, BA, BA, AB; three: all six orders).
    """
    shift = (round_index // 2) % len(cases)
    order = cases[shift:] + cases[:shift]
    return order[::-1] if round_index % 2 else order


def run_subprocess(name: str, args: argparse.Namespace) -> dict:
    """One case in a fresh process, so that its peak RSS and allocator state are its own."""
    command = [sys.executable, __file__, "--case", name, "--dataset", args.dataset, "--batches", str(args.batches),
               "--warmup", str(args.warmup)] + (["--precision", args.precision] if args.precision else [])  # fmt: skip
    command += (["--profile"] if args.profile else []) + ["--inference-batch", str(args.inference_batch)]
    output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if output.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{output.stderr[-3000:]}")
    if args.profile:
        print(output.stderr[output.stderr.find("### profile"):], file=sys.stderr)
    return json.loads(output.stdout.strip().splitlines()[-1])


def summary_table(rows: list[dict], cases: list[str]) -> str:
    """Markdown table, a line per case: medians over rounds; each ratio is taken within a round, then the median
    (with the range over rounds when there are several) is shown."""
    from statistics import median

    rounds = sorted({r["round"] for r in rows})
    cell = {(r["case"], r["round"]): r for r in rows}

    def ratios(name: str, key) -> list[float]:
        base = CASES[name][3]
        return [key(cell[name, k]) / key(cell[base, k]) for k in rounds
                if (name, k) in cell and (base, k) in cell and base != name]

    def show(values: list[float]) -> str:
        if not values:
            return "-"
        text = f"{median(values):.2f}"
        return text + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")

    lines = ["| case | precision | train samples/s | x its backprop | peak memory GiB | x its backprop | inference samples/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in cases:
        mine = [cell[name, k] for k in rounds if (name, k) in cell]
        if not mine:
            lines.append(f"| {name} | failed | - | - | - | - | - |")
            continue
        speed = median(r["train_samples_per_s"] for r in mine)
        memory = median(r["peak_mem_gib"] for r in mine)
        inference = ", ".join(
            f"{k} steps: {median(r['inference_samples_per_s'][k] for r in mine):.0f}" if k != "all"
            else f"{median(r['inference_samples_per_s'][k] for r in mine):.0f}"
            for k in mine[0]["inference_samples_per_s"])  # fmt: skip
        is_base = CASES[name][3] == name
        speed_ratio = "1.00" if is_base else show(ratios(name, lambda r: r["train_samples_per_s"]))
        memory_ratio = "1.00" if is_base else show(ratios(name, lambda r: r["peak_mem_gib"]))
        lines.append(f"| {name} | {mine[0]['precision']} | {speed:.0f} | {speed_ratio} | {memory:.3f} | {memory_ratio} "
                     f"| {inference} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
