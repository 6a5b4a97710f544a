"""Reproduce the MNIST rows of the paper's Table 1: seeds x inference runs, mean and standard error, curves.

    python benchmarks/accuracy.py --epochs 100 --data-root ../shared/datasets          # the paper's budget (GPU)
    python benchmarks/accuracy.py --epochs 1 --train-size 2000 --test-size 1000 \\
        --inference-steps 100 --rows dt-onehot ct-onehot                                # a short CPU version
    python benchmarks/accuracy.py --rows dt-onehot --seeds 0 --max-minutes 15 --run-dir runs \\
        -- --model.block_execution vmap     # whole epochs within 15 min, resumable; CLI options after --
    python benchmarks/accuracy.py --replot --out-dir DIR       # table and curves of every run in DIR/results.jsonl

The rows are Table 1's: backprop, dt, ct and fm, each with the one-hot, dim20 and prototype embeddings
(``backprop`` is the one-hot backprop row, the others are named ``<method>-<embedding>``).

Each row is a config of configs/ with overrides, trained through the same CLI as `python main.py fit` for each
seed, at the CLI's precision (bf16-mixed with channels-last on a CPU with native bf16: pass --trainer.precision
32-true --model.channels_last false through for float32); the last epoch's weights are tested ``--inference-runs``
times with different noise (the paper: 3 seeds x 5 inference runs). Prints a markdown table (mean +- standard error
over all seed x run values), and writes to
``--out-dir``: results.jsonl, accuracy_vs_epoch.png, accuracy_vs_time.png (validation accuracy) and anytime.png
(test accuracy when inference stops after k blocks / uses k steps). Curves need matplotlib
(benchmarks/requirements.txt). Each run appends its line to results.jsonl as it ends, so rows and seeds run by separate
calls into one ``--out-dir`` (or a run trained in instalments) make one table with ``--replot``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_noprop.anytime import anytime_accuracy  # noqa: E402
from lightning_noprop.cli import main as cli_main  # noqa: E402
from provenance import commit, hardware  # noqa: E402

EMBED = "--model.strategy.init_args.embedding"
EMBEDDINGS = {  # Table 1's three class embeddings (spec NOPROP.md): the configs' default is one-hot
    "onehot": [],
    "dim20": [EMBED, "lightning_noprop.nn.LearnedEmbedding"],
    "prototype": [EMBED, "lightning_noprop.nn.PrototypeEmbedding"],
}
# Table 1's MNIST rows: every method with every embedding ("backprop" is the one-hot backprop row).
ROWS = {
    f"{method}-{name}" if (method, name) != ("backprop", "onehot") else "backprop": (f"configs/{config}.yaml", overrides)
    for method, config in (("backprop", "backprop"), ("dt", "noprop_dt"), ("ct", "noprop_ct"), ("fm", "noprop_fm"))
    for name, overrides in EMBEDDINGS.items()
}
# Not a row of Table 1: NoProp-DT's image encoder and a linear classifier trained by backprop with the same recipe, to
# judge whether the DT-matched backprop chain is a fair baseline.
ROWS["plain-cnn"] = ("configs/plain_cnn.yaml", [])
CONTINUOUS = {row for row in ROWS if row.startswith(("ct-", "fm-"))}


class EpochBudget(Callback):
    """Stop at an epoch boundary once another epoch would overrun ``minutes`` of training wall time.

    The next epoch is estimated as the longest so far, so the run ends with whole, validated epochs (Lightning's
    ``max_time`` stops mid-epoch instead, after the last validation).
    """

    def __init__(self, minutes: float) -> None:
        self.budget = 60.0 * minutes
        self.start = self.epoch_start = time.perf_counter()
        self.longest = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.epoch_start)
        if now - self.start + self.longest > self.budget:
            trainer.should_stop = True


class Curve(Callback):
    """Validation accuracy after each epoch, with the wall time since fit started."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()

    def state_dict(self) -> dict:  # saved in the checkpoint, so a resumed run continues its curve
        return {"points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.points = [tuple(point) for point in state["points"]]
        if self.points:  # wall time goes on from where the last instalment stopped
            self.start = time.perf_counter() - self.points[-1][1]

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # validation has run by now
        accuracy = float(trainer.callback_metrics.get("val/acc", float("nan")))
        self.points.append((trainer.current_epoch + 1, time.perf_counter() - self.start, accuracy))
        epoch, seconds, _ = self.points[-1]
        print(f"epoch {epoch}: {seconds:.0f} s since fit started, val/acc {accuracy:.4f}", flush=True)


@torch.no_grad()
def anytime(model, datamodule, steps: list[int]) -> dict[int, float]:
    """Test accuracy when inference uses ``k`` blocks (DT, backprop) or ``k`` sampler steps (CT, FM)."""
    model.eval()
    images, labels = datamodule.test_set.tensors
    batches = [(datamodule.normalize_images(images[start : start + 500].to(model.device)).to(model.dtype),
                labels[start : start + 500].to(model.device)) for start in range(0, len(labels), 500)]  # fmt: skip
    return {k: correct / total for k, (correct, total) in anytime_accuracy(model.predict_batch, batches, steps, seed=0).items()}


def run(row: str, seed: int, args: argparse.Namespace) -> dict:
    config, overrides = ROWS[row]
    extra = ["--data.train_size", str(args.train_size)] if args.train_size else []
    extra += ["--data.test_size", str(args.test_size)] if args.test_size else []
    extra += ["--data.val_size", str(args.val_size)] if args.val_size is not None else []
    if row in CONTINUOUS and args.inference_steps:
        extra += ["--model.strategy.init_args.inference_steps", str(args.inference_steps)]
    if args.run_dir:  # one folder per row and seed, kept, so that a later call resumes from its last.ckpt
        workdir = str(Path(args.run_dir) / f"{row}-seed{seed}")
        Path(workdir).mkdir(parents=True, exist_ok=True)
    else:
        workdir = tempfile.mkdtemp(prefix="accuracy_")
    # Each instalment logs to a new version folder (the CLI will not overwrite a run's config): resume from the newest.
    last = sorted(Path(workdir).glob("**/last.ckpt"), key=lambda path: path.stat().st_mtime)[-1:]
    # LightningCLI warns when it gets args while sys.argv holds this script's own options: hide them from it.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = cli_main(args=["--config", config, *overrides, *extra, "--seed_everything", str(seed), "--trainer.max_epochs",
                             str(args.epochs), "--data.root", args.data_root, "--data.download", "false",
                             "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", workdir,
                             "--anytime.enabled", "false",  # computed once below, not after each inference run
                             "--trainer.logger.init_args.save_dir", workdir, *args.extra], run=False)  # fmt: skip
    curve = Curve()
    cli.trainer.callbacks.append(curve)
    if args.max_minutes is not None:
        cli.trainer.callbacks.append(EpochBudget(args.max_minutes))
    if last:
        print(f"resuming from {last[0]}", flush=True)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last[0]) if last else None)
    tests = []
    for inference_run in range(args.inference_runs):
        torch.manual_seed(1000 * seed + inference_run)
        (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        tests.append(metrics["test/acc"])
    strategy = cli.model.strategy
    if row in CONTINUOUS:
        steps = sorted({1, 10, 100, strategy.inference_steps})
    else:
        steps = list(range(1, getattr(strategy, "num_blocks", 1) + 1))  # PlainCNN: one network, one point
    return {"row": row, "seed": seed, "epochs": len(curve.points), "test_acc": tests, "curve": curve.points,
            "anytime": anytime(cli.model, cli.datamodule, steps), "config": config,
            "overrides": overrides + extra + args.extra, "precision": str(cli.trainer.precision)}  # fmt: skip


def plot(results: list[dict], out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r benchmarks/requirements.txt): no curves written")
        return
    for name, x_index, x_label in (("accuracy_vs_epoch", 0, "epoch"), ("accuracy_vs_time", 1, "wall time (s)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            ax.plot([p[x_index] for p in r["curve"]], [p[2] for p in r["curve"]], marker="o",
                    label=f"{r['row']} seed {r['seed']}")  # fmt: skip
        ax.set(xlabel=x_label, ylabel="validation accuracy", title="MNIST")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        points = sorted((int(k), value) for k, value in r["anytime"].items())  # keys are str once read from JSON
        ax.plot([k for k, _ in points], [value for _, value in points], marker="o", label=f"{r['row']} seed {r['seed']}")
    ax.set(xscale="log", xlabel="blocks (DT, backprop) or sampler steps (CT, FM)", ylabel="test accuracy",
           title="Anytime inference")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "anytime.png", dpi=120)
    plt.close(fig)


def table(results: list[dict]) -> str:
    """The markdown table: per row, mean +- standard error over all its seed x inference-run values."""
    lines = ["| row | epochs | seeds x runs | test accuracy % (mean +- s.e.) |", "|---|---|---|---|"]
    for row in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == row]
        values = [a for r in runs for a in r["test_acc"]]
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        epochs = sorted({r["epochs"] for r in runs})
        epochs_text = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
        lines.append(f"| {row} | {epochs_text} | {len(runs)} x {len(runs[0]['test_acc'])} | "
                     f"{100 * statistics.mean(values):.2f} +- {100 * se:.2f} |")  # fmt: skip
    return "\n".join(lines)


def read_results(path: Path) -> list[dict]:
    """results.jsonl's runs, the newest line of each (row, seed): an instalment's line replaces the one before."""
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            latest[(result["row"], result["seed"])] = result
    return list(latest.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--inference-runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100, help="the paper: 100 on MNIST")
    parser.add_argument("--train-size", type=int, default=None, help="train on a subset (short CPU runs)")
    parser.add_argument("--test-size", type=int, default=None, help="test on the first n test images")
    parser.add_argument("--val-size", type=int, default=None, help="validation images held out (config: 5000)")
    parser.add_argument("--inference-steps", type=int, default=None, help="CT/FM test-time steps (config: 1000)")
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--out-dir", default="benchmarks/results/accuracy")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="training wall-time budget per run: stop after the last whole epoch that fits")  # fmt: skip
    parser.add_argument("--run-dir", default=None,
                        help="keep each run's logs and checkpoints in RUN_DIR/<row>-seed<seed> and resume from its "
                             "last.ckpt when there is one: a long run in instalments (with --max-minutes)")
    parser.add_argument("--replot", action="store_true",
                        help="train nothing: redraw the curves and print the table from every run in "
                             "OUT_DIR/results.jsonl (rows or seeds run by separate calls, or in instalments)")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for every row, after --")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    if args.replot:
        if not (out_dir / "results.jsonl").is_file():
            parser.error(f"--replot reads {out_dir / 'results.jsonl'}, which does not exist: name the folder of an "
                         "earlier run with --out-dir.")  # fmt: skip
        results = read_results(out_dir / "results.jsonl")
        plot(results, out_dir)
        print(table(results))
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for row in args.rows:
        for seed in args.seeds:
            results.append(run(row, seed, args))
            with open(out_dir / "results.jsonl", "a") as f:
                f.write(json.dumps({**results[-1], "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                    "hardware": hardware(), "commit": commit()}) + "\n")  # fmt: skip
    plot(results, out_dir)
    print(table(results))


if __name__ == "__main__":
    main()
