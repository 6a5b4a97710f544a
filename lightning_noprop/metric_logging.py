"""What ``LocalLearningModule`` logs: ``<stage>/loss`` (the sum of the blocks' losses), ``<stage>/block_{i}/loss``
(and ``/acc`` for a block with its own classifier), the mean of each named loss term as ``<stage>/<term>``, and
``<stage>/acc``; stage is train, val or test. Training values are logged per step and per epoch (Lightning's
``_step``/``_epoch`` tags, docs/tensorboard.md), evaluation values per epoch."""

from __future__ import annotations

from functools import partial

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_noprop.errors import NonFiniteLossError
from lightning_noprop.execution.capture import LogWindow
from lightning_noprop.execution.training import Summary
from lightning_noprop.strategies.base import Prediction


def log_summary(module: LightningModule, stage: str, summary: Summary, batch_size: int | None = None) -> None:
    """Log a ``Summary`` ({block: {"loss", *terms, ["acc"]}}, 0-d tensors) under ``stage``."""
    if not summary:
        return
    log = partial(module.log, on_step=stage == "train", on_epoch=True, batch_size=batch_size)
    log(f"{stage}/loss", torch.stack([v["loss"] for v in summary.values()]).sum(), prog_bar=True)
    for block, values in summary.items():
        log(f"{stage}/block_{block}/loss", values["loss"])
        if "acc" in values:  # a block with its own classifier: its accuracy, averaged over samples
            log(f"{stage}/block_{block}/acc", values["acc"])
    terms = [k for k in next(iter(summary.values())) if k not in ("loss", "acc")]
    for key in terms:
        log(f"{stage}/{key}", torch.stack([v[key] for v in summary.values()]).mean())


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
    epoch's last batch, check its means for a non-finite loss (raising ``NonFiniteLossError``) and log them."""
    window.add(summary, batch_size)
    trainer = module.trainer
    stops = batch_idx + 1 >= trainer.num_training_batches or 0 <= trainer.max_steps <= trainer.global_step
    if not (trainer._logger_connector.should_update_logs or stops):
        return
    trained = module.batch_trainer.batches_trained
    first = trained - window.batches
    means, samples = window.flush()
    bad = [block for block, values in means.items() if not torch.isfinite(values["loss"])]
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss for block(s) {bad} in batches {first}-{trained - 1} of training (epoch "
            f"{module.current_epoch}). Lower the learning rate, set model.gradient_clip_val, use precision 32-true, "
            "or run without model.capture_step and with model.nonfinite_loss=skip."
        )
    log_summary(module, "train", means, batch_size=samples)
