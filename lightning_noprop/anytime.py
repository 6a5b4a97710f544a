"""The anytime curve: test accuracy when inference stops after k blocks (NoProp-DT, backprop, BWBPF) or integrates
on k sampler steps (NoProp-CT/FM), computed at the end of ``test`` and shown where people look.

``AnytimeCurve`` logs it as the scalar ``test/anytime/acc`` at step k (every logger), as a figure ``test/anytime``
(TensorBoard), and saves the figure as a PNG beside the tested checkpoint (``<checkpoint>.anytime.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.strategies.base import Prediction, Strategy

#: Sampler grids of the continuous methods (a 1-3-10 ladder, then the full ``inference_steps``).
CONTINUOUS_LADDER = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000)


def is_continuous(strategy: Strategy) -> bool:
    """NoProp-CT/FM: ``predict(x, k)`` integrates on k sampler steps rather than stopping after k blocks."""
    return hasattr(strategy, "inference_steps")


def anytime_steps(strategy: Strategy) -> list[int]:
    """The k of the curve: 1..num_blocks for block chains, a coarse ladder up to ``inference_steps`` for CT/FM."""
    if is_continuous(strategy):
        full = int(strategy.inference_steps)
        return sorted({k for k in CONTINUOUS_LADDER if k < full} | {full})
    return list(range(1, int(getattr(strategy, "num_blocks", 1)) + 1))


@torch.no_grad()
def anytime_accuracy(predict: Callable[[Tensor, int], Prediction], batches: Iterable[tuple[Tensor, Tensor]],
                     steps: Sequence[int], seed: int = 0) -> dict[int, tuple[int, int]]:  # fmt: skip
    """(correct, total) of ``predict(x, k)`` (``strategy.predict``, or ``module.predict_batch`` as the module's
    executor runs it) over ``batches`` of (images (B, C, H, W) ready for the model,
    labels (B,)), for each k in ``steps``. Each k starts the global RNG from ``seed`` (the same noise for every k);
    the caller's RNG state is restored afterwards. The batches are held in memory for the passes over ``steps``."""
    batches = list(batches)
    counts = {}
    devices = sorted({x.device.index or 0 for x, _ in batches if x.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        for k in steps:
            torch.manual_seed(seed)
            correct = total = 0
            for x, y in batches:
                correct += int((predict(x, k).logits.argmax(-1) == y).sum())
                total += int(y.shape[0])
            counts[k] = (correct, total)
    return counts


def plot_anytime(accuracy: dict[int, float], title: str, x_label: str, log_x: bool):  # -> matplotlib Figure
    """The curve as a matplotlib Figure, made without pyplot (no display, no global backend change)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ks = sorted(accuracy)
    ax.plot(ks, [accuracy[k] for k in ks], marker="o")
    ax.set(xlabel=x_label, ylabel="test accuracy", title=title, xscale="log" if log_x else "linear")
    if not log_x:
        ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class AnytimeCurve(Callback):
    """Records, at the end of ``test``, the accuracy after each block or sampler step.

    At the end of ``test``: the test accuracy after k blocks (DT, backprop, BWBPF) or k sampler steps (CT, FM),
    logged as scalars ``test/anytime/acc`` (step = k) and a TensorBoard figure, and saved as a PNG beside the
    tested checkpoint (or in the log folder without one). Costs about sum(k)/max(k) test inferences (DT, T = 10: 5.5).

    Args:
        enabled: compute the curve at the end of every test run.
        steps: the k to evaluate; None: 1..num_blocks, or 1, 3, 10, 30, ... up to inference_steps for CT/FM.
        max_batches: evaluate on only the first n test batches (None: the batches test/acc saw, i.e. the test
            split within ``trainer.limit_test_batches``).
        seed: the noise seed of each k's inference (the same for every k, so the curve compares like with like).
    """

    def __init__(self, enabled: bool = True, steps: list[int] | None = None, max_batches: int | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        if steps is not None and (not steps or min(steps) < 1):
            raise ConfigurationError(f"anytime.steps must be a non-empty list of k >= 1 (or null), got {steps}.")
        if max_batches is not None and max_batches < 1:
            raise ConfigurationError(f"anytime.max_batches must be >= 1 or null, got {max_batches}.")
        self.enabled = enabled
        self.steps = steps
        self.max_batches = max_batches
        self.seed = seed
        self.accuracy: dict[int, float] = {}
        self.png_path: Path | None = None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        strategy = pl_module.strategy
        steps = sorted(set(self.steps)) if self.steps else anytime_steps(strategy)
        blocks = getattr(strategy, "num_blocks", None)
        if not is_continuous(strategy) and blocks is not None and max(steps) > blocks:
            raise ConfigurationError(f"anytime.steps {self.steps} go beyond the strategy's {blocks} blocks.")
        with trainer.precision_plugin.forward_context():
            counts = anytime_accuracy(pl_module.predict_batch, self._batches(trainer, pl_module), steps, self.seed)
        totals = torch.tensor([counts[k] for k in steps], dtype=torch.float64, device=pl_module.device)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")  # several processes: each saw its own shard
        self.accuracy = {k: float(c / n) if n else float("nan") for k, (c, n) in zip(steps, totals.tolist())}
        unit = "sampler steps" if is_continuous(strategy) else "blocks"
        rank_zero_info("anytime test accuracy by " + unit + ": "
                       + ", ".join(f"{k}: {a:.4f}" for k, a in self.accuracy.items()))  # fmt: skip
        for logger in trainer.loggers:
            for k, value in self.accuracy.items():
                logger.log_metrics({"test/anytime/acc": value}, step=k)
        if trainer.is_global_zero:
            self._figure(trainer, f"{type(strategy).__name__}: anytime inference", f"{unit} used at inference",
                         is_continuous(strategy))  # fmt: skip

    def _batches(self, trainer: Trainer, pl_module: LightningModule) -> Iterable[tuple[Tensor, Tensor]]:
        """The test batches as ``test_step`` sees them: on the device, normalised by the data module."""
        loaders = trainer.test_dataloaders
        for loader, limit in zip(loaders if isinstance(loaders, (list, tuple)) else [loaders], trainer.num_test_batches):
            limit = min(limit, self.max_batches or limit)
            for i, batch in enumerate(loader):
                if i >= limit:
                    break
                batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                yield pl_module._images(batch[0]), batch[1]

    def _figure(self, trainer: Trainer, title: str, x_label: str, log_x: bool) -> None:
        try:
            fig = plot_anytime(self.accuracy, title, x_label, log_x)
        except ImportError:
            rank_zero_warn("matplotlib is not installed: the anytime curve is logged as scalars only, without a figure.")
            return
        if trainer.ckpt_path:
            self.png_path = Path(trainer.ckpt_path).with_suffix(".anytime.png")
        else:
            self.png_path = Path(trainer.log_dir or trainer.default_root_dir) / "anytime.png"
        self.png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.png_path, dpi=120)
        rank_zero_info(f"anytime curve saved to {self.png_path.resolve()}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("test/anytime", fig, global_step=0, close=False)
