"""Train a config for a few epochs and report accuracy, time per epoch and peak memory as a markdown row.

    python benchmarks/epochs.py --config configs/noprop_ct.yaml --epochs 3 --data-root ../shared/datasets

Runs the config through the same CLI as `python main.py fit` (its precision default: bf16-mixed on GPUs
that support it and on CPUs with native bf16), then tests the last-epoch weights on the full test split with the
config's inference.
Time per epoch is the median over epochs of the training loop alone (each epoch's validation pass is timed
and subtracted; both are also reported); peak memory is
torch.cuda.max_memory_allocated over fit and test on GPU, peak RSS on CPU. Extra CLI arguments after
``--`` are passed through (e.g. ``-- --trainer.limit_train_batches 10``). Appends a JSON line to ``--out``;
the commit is $LIGHTNING_NOPROP_COMMIT when set (a copied tree may carry stale git metadata), else git's HEAD.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning
import torch
from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_noprop.cli import main as cli_main  # noqa: E402
from provenance import commit, peak_memory_gib  # noqa: E402


class EpochTimer(Callback):
    """Wall time of each training epoch and of the validation pass inside it (synchronised on GPU).

    Lightning validates inside the training epoch (before ``on_train_epoch_end``), so ``seconds`` holds epoch
    time including validation and ``validation_seconds`` what validation took of it.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self._start = self._validation_start = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._start = time.perf_counter()
        self.validation_seconds.append(0.0)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._validation_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._sync()
        if not trainer.sanity_checking and self.validation_seconds:
            self.validation_seconds[-1] += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)
        # val/acc is this epoch's (validation ran before this hook). One line per epoch as it happens, so a run
        # stopped by a time limit still leaves its figures.
        val_acc = float(trainer.callback_metrics.get("val/acc", float("nan")))
        print(f"epoch {len(self.seconds)}: {self.seconds[-1]:.1f} s (validation {self.validation_seconds[-1]:.1f} s), "
              f"val/acc {val_acc:.4f}", flush=True)  # fmt: skip


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments, after --")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="epochs_")
    cli = cli_main(args=["--config", args.config, "--trainer.max_epochs", str(args.epochs), "--data.root",
                         args.data_root, "--data.download", "false", "--trainer.enable_progress_bar", "false",
                         "--trainer.default_root_dir", workdir, "--trainer.logger.init_args.save_dir", workdir,
                         *args.extra], run=False)  # fmt: skip
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    val_acc = float(cli.trainer.callback_metrics.get("val/acc", float("nan")))
    start = time.perf_counter()
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    train_seconds = [total - val for total, val in zip(timer.seconds, timer.validation_seconds)]
    result = {
        "config": args.config, "extra": " ".join(args.extra), "epochs": args.epochs,
        "test_acc": metrics["test/acc"], "last_val_acc": val_acc,
        "epoch_s_median": statistics.median(train_seconds), "epoch_s": [round(s, 2) for s in train_seconds],
        "validation_s": [round(s, 2) for s in timer.validation_seconds],
        "fit_s": fit_seconds, "test_s": test_seconds, "peak_mem_gib": peak_memory_gib(),
        "precision": str(cli.trainer.precision), "hardware": hardware(), "torch": torch.__version__,
        "lightning": lightning.__version__, "commit": commit(), "seed": 0, "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print("| config | epochs | test acc | last val acc | train s/epoch (median) | test s | peak mem GiB | precision | hardware |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.config} {args.extra and ' '.join(args.extra)} | {args.epochs} | {result['test_acc']:.4f} | "
          f"{val_acc:.4f} | {result['epoch_s_median']:.1f} | {test_seconds:.1f} | {result['peak_mem_gib']:.2f} | "
          f"{result['precision']} | {result['hardware']} |")  # fmt: skip
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
