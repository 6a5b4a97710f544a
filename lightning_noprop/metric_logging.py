"""What ``LocalLearningModule`` logs: ``<stage>/loss`` (the sum of the blocks' losses), ``<stage>/block_{i}/loss``
(and ``/acc`` for a block with its own classifier), the mean of each named loss term as ``<stage>/<term>``, and
``<stage>/acc``; stage is train, val or test. Training values are logged per step and per epoch (Lightning's
``_step``/``_epoch`` tags, docs/tensorboard.md), evaluation values per epoch.

On several processes the logs show the run's values, not rank 0's: under DDP the training values are averaged over
the processes (``mean_over_processes``, one all-reduce a logged batch) and the evaluation values with Lightning's
``sync_dist`` (one sync a value an epoch); under block_parallel every process already holds the same values.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_noprop.errors import NonFiniteLossError
from lightning_noprop.execution.capture import LogWindow
from lightning_noprop.execution.training import Summary
from lightning_noprop.strategies.base import Prediction


def _splits_data(module: LightningModule) -> bool:
    """Whether the processes see different images (DDP), so that each holds values of its own share."""
    return module.trainer.world_size > 1 and module.block_parallel is None


class QuietSyncDistAdvice(Callback):
    """On several processes, silences Lightning's advice to ``sync_dist`` the values that need no sync: the training
    values under DDP (``mean_over_processes`` averaged them already), every value of the module under block_parallel
    (each process logs the same ones); from setup to teardown, or to an exception, so that a later fit in the same
    process hears the advice. (A 2-process run printed 10-28 of these.) The module adds it (configure_callbacks)."""

    def __init__(self) -> None:
        self._entry: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove()
        if trainer.world_size == 1:
            return
        keys = r"train/" if _splits_data(pl_module) else r"(train|val|test)/"
        warnings.filterwarnings("ignore", message=rf"It is recommended to use `self\.log\('{keys}.*when logging on epoch level")
        self._entry = warnings.filters[0]

    def _remove(self) -> None:
        if self._entry in warnings.filters:
            warnings.filters.remove(self._entry)
        self._entry = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove()


def mean_over_processes(module: LightningModule, summary: Summary) -> Summary:
    """Under DDP: the summary's values averaged over the processes, packed into one tensor for one all-reduce (a
    ``sync_dist`` per value would cost one each). Every process trains on a share of equal size (torch's
    DistributedSampler pads), so the mean over processes is the mean over the samples. Otherwise: ``summary``."""
    if not summary or not _splits_data(module):
        return summary
    keys = [(block, field) for block, values in summary.items() for field in values]
    packed = torch.stack([summary[block][field].detach().float() for block, field in keys])
    packed = module.trainer.strategy.reduce(packed, reduce_op="mean")
    means: Summary = {block: {} for block in summary}
    for (block, field), value in zip(keys, packed.unbind(), strict=True):
        means[block][field] = value
    return means


def log_summary(module: LightningModule, stage: str, summary: Summary) -> None:
    """Log a ``Summary`` ({block: {"loss", *terms, ["acc"]}}, 0-d tensors) under ``stage``: a batch's training values
    averaged over the processes (``mean_over_processes``), evaluation values synced at the epoch's end."""
    if stage == "train":
        summary = mean_over_processes(module, summary)
    _log(module, stage, summary)


def _log(module: LightningModule, stage: str, summary: Summary, batch_size: int | None = None) -> None:
    if not summary:
        return
    sync_dist = stage != "train" and _splits_data(module)
    log = partial(module.log, on_step=stage == "train", on_epoch=True, batch_size=batch_size, sync_dist=sync_dist)
    log(f"{stage}/loss", torch.stack([v["loss"] for v in summary.values()]).sum(), prog_bar=True)
    for block, values in summary.items():
        log(f"{stage}/block_{block}/loss", values["loss"])
        if "acc" in values:  # a block with its own classifier: its accuracy, averaged over samples
            log(f"{stage}/block_{block}/acc", values["acc"])
    terms = [k for k in next(iter(summary.values())) if k not in ("loss", "acc")]
    for key in terms:
        log(f"{stage}/{key}", torch.stack([v[key] for v in summary.values()]).mean())


def log_skipped_updates(module: LightningModule) -> None:
    """Under ``nonfinite_loss="skip"``, at an epoch's end: ``train/skipped_updates``, the block updates skipped for a
    non-finite loss in the epoch, summed over the processes (each logs its count, zero too, so that every process
    joins the sync)."""
    if module.hparams.nonfinite_loss != "skip":
        return
    count, module.batch_trainer.skipped_updates = module.batch_trainer.skipped_updates, 0
    module.log("train/skipped_updates", float(count), reduce_fx="sum", on_step=False, on_epoch=True,
               sync_dist=module.trainer.world_size > 1)  # fmt: skip


def log_accuracy(module: LightningModule, stage: str, metric: MulticlassAccuracy, prediction: Prediction,
                 y: Tensor) -> None:  # fmt: skip
    """Update ``metric`` with the prediction's logits (B, m) against labels y (B,) and log it as ``<stage>/acc``."""
    num_classes = module.strategy.num_classes
    assert prediction.logits.shape == (y.shape[0], num_classes), (
        f"logits must be (B, {num_classes}), got {tuple(prediction.logits.shape)}"
    )
    metric(prediction.logits, y)
    # Training accuracy is measured every train_accuracy_every_n_steps batches only, and Lightning writes a step
    # value again at every logging step until it is logged anew: an epoch value (over the measured batches) alone.
    module.log(f"{stage}/acc", metric, prog_bar=True, on_step=False, on_epoch=True)


def log_window(module: LightningModule, window: LogWindow, summary: Summary, batch_size: int, batch_idx: int) -> None:
    """Under capture_step: add the batch's values to ``window``; when Lightning writes step values, and at the
    epoch's last batch, average its means over the processes, check them for a non-finite loss (raising
    ``NonFiniteLossError``) and log them."""
    window.add(summary, batch_size)
    trainer = module.trainer
    stops = batch_idx + 1 >= trainer.num_training_batches or 0 <= trainer.max_steps <= trainer.global_step
    if not (trainer._logger_connector.should_update_logs or stops):
        return
    batches = window.batches
    means, samples = window.flush()
    means = mean_over_processes(module, means)  # before the check, so that every process raises or none does
    _refuse_non_finite(module, means, batches)
    _log(module, "train", means, batch_size=samples)


def window_state(module: LightningModule, window: LogWindow) -> dict[str, Any]:
    """Under capture_step, for a checkpoint: ``window``'s state (``LogWindow.state_dict``), its sums averaged over
    the processes, after the non-finite check its flush would make, so that no checkpoint holds parameters trained
    on a non-finite loss that was not checked (``NonFiniteLossError`` instead)."""
    _refuse_non_finite(module, mean_over_processes(module, window.means()), window.batches)
    state = window.state_dict()
    if state["total"] is not None and _splits_data(module):
        state["total"] = module.trainer.strategy.reduce(window.total, reduce_op="mean").cpu()
    return state


def _refuse_non_finite(module: LightningModule, means: Summary, batches: int) -> None:
    """Raise ``NonFiniteLossError`` naming the blocks whose mean loss over the last ``batches`` batches is not
    finite (the check costs one device synchronisation)."""
    bad = [block for block, values in means.items() if not torch.isfinite(values["loss"])]
    if bad:
        trained = module.batch_trainer.batches_trained
        raise NonFiniteLossError(
            f"Non-finite loss for block(s) {bad} in batches {trained - batches}-{trained - 1} of training (epoch "
            f"{module.current_epoch}). Lower the learning rate, set model.gradient_clip_val, use precision 32-true, "
            "or run without model.capture_step and with model.nonfinite_loss=skip."
        )
