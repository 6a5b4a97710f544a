"""TensorBoard views: every block's loss (and accuracy) of a stage in one chart, and the run's accuracy as the
hparams metric, so the HPARAMS tab compares runs.

The module logs ``<stage>/block_<i>/loss`` (train: ``..._step`` and ``..._epoch``) and, for BWBPF's per-block
classifiers, ``<stage>/block_<i>/acc``: the scalars tab shows one card per block. ``TensorBoardReport`` writes a
custom-scalars layout (TensorBoard's CUSTOM SCALARS tab) with one multi-line chart per stage, and logs
``hp_metric`` = val/acc after each validation and = test/acc at the end of test (Lightning declares ``hp_metric``
with the hyperparameters, at -1, and leaves it there unless a run logs it).
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_noprop.strategies.bwbpf import BWBPF

#: The tags of each stage's per-block scalars, as the module logs them (train: per step and per-epoch mean).
STAGE_TAGS = {
    "train (each step)": "train/block_{i}/{name}_step",
    "train (epoch mean)": "train/block_{i}/{name}_epoch",
    "val": "val/block_{i}/{name}",
    "test": "test/block_{i}/{name}",
}


def custom_scalars_layout(per_block_accuracy: bool) -> dict[str, dict[str, list]]:
    """The layout for ``SummaryWriter.add_custom_scalars``: category -> chart title -> ["Multiline", [tag regexes]]:
    "per-block loss" (and "per-block accuracy") with one chart per stage, each holding every block's curve."""
    names = {"per-block loss": "loss"} | ({"per-block accuracy": "acc"} if per_block_accuracy else {})
    return {
        category: {
            f"{stage}: {tag.format(i='*', name=name)}": ["Multiline", ["^" + tag.format(i=r"\d+", name=name) + "$"]]
            for stage, tag in STAGE_TAGS.items()
        }
        for category, name in names.items()
    }


class TensorBoardReport(Callback):
    """Makes TensorBoard compare blocks and runs: the per-block charts and the hparams metric (see the module doc).

    Args:
        custom_scalars: write the custom-scalars layout (one chart per stage with every block's loss, and BWBPF's
            per-block accuracies) into each TensorBoard run.
        hp_metric: log ``hp_metric`` = val/acc after each validation (not the sanity check) and = test/acc at the
            end of test, so the HPARAMS tab compares runs by accuracy.
    """

    def __init__(self, custom_scalars: bool = True, hp_metric: bool = True) -> None:
        self.custom_scalars = custom_scalars
        self.hp_metric = hp_metric

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.custom_scalars or not trainer.is_global_zero:
            return
        layout = custom_scalars_layout(per_block_accuracy=isinstance(pl_module.strategy, BWBPF))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(layout)

    def _log_hp_metric(self, trainer: Trainer, key: str) -> None:
        value = trainer.callback_metrics.get(key)
        if not self.hp_metric or value is None:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs epoch metrics at
        for logger in trainer.loggers:
            logger.log_metrics({"hp_metric": float(value)}, step=step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_hp_metric(trainer, "val/acc")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_hp_metric(trainer, "test/acc")
