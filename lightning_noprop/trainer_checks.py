"""Refuse, with an actionable message, trainer settings the manual loop cannot honour or Lightning would take wrongly:
when the CLI builds the Trainer, and at fit start."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.block_parallel import BlockParallelStrategy

_FP16 = ("16-mixed", "16-true", "16")


def check_trainer_arguments(trainer: Any) -> None:
    """Raise ``ConfigurationError`` for an integer trainer option below its range, and for
    gradient accumulation, which this module's manual optimization cannot do (Lightning's refusal advises automatic
    optimization, which it cannot use either; a Python-API fit meets Lightning's refusal first), and a
    ``val_check_interval`` of 0. Called when the CLI has built the Trainer, before any run, and at fit's setup
    (``check_trainer_supports``)."""
    # (option, its value, the smallest value Lightning gives a meaning, what the values mean): Lightning accepts values
    # below it silently (a negative log_every_n_steps logs as if positive) or fails mid-run (check_val_every_n_epoch 0
    # divides by 0).
    minima = (
        ("log_every_n_steps", trainer.log_every_n_steps, 0, "0 writes no step values"),
        ("check_val_every_n_epoch", trainer.check_val_every_n_epoch, 1,
         "or null to validate by val_check_interval alone"),
        ("num_sanity_val_steps", trainer.num_sanity_val_steps, -1, "-1 runs the whole validation set, 0 none"),
        ("min_epochs", trainer.fit_loop.min_epochs, 0, "or null"),
        ("min_steps", trainer.fit_loop.epoch_loop.min_steps, 0, "or null"),
    )
    for name, value, minimum, meaning in minima:
        if value is not None and value < minimum:
            raise ConfigurationError(f"--trainer.{name} must be >= {minimum} ({meaning}), got {value}.")
    # A time-based interval (a str, timedelta or dict) leaves Trainer.val_check_interval unset. Lightning takes an int
    # 0 and divides by it at the first batch, and a float 0.0 as one batch.
    interval = getattr(trainer, "val_check_interval", None)
    if isinstance(interval, (int, float)) and interval <= 0:
        raise ConfigurationError(f"--trainer.val_check_interval {interval}: an int counts training batches and must be "
                                 ">= 1, a float is a fraction of the epoch in (0, 1] (1.0 its end).")  # fmt: skip
    if trainer.accumulate_grad_batches != 1:
        raise ConfigurationError(
            f"--trainer.accumulate_grad_batches {trainer.accumulate_grad_batches}: the module steps each block's "
            "optimizer itself (manual optimization), which accumulates no gradients; remove it, and raise "
            "--data.batch_size for a larger effective batch."
        )


def check_trainer_supports(trainer: Any, backward_mode: str, block_order: str, num_local_losses: int) -> None:
    """Raise ValueError for precision / distributed-strategy combinations that would train wrongly, and for the
    options ``check_trainer_arguments`` refuses (which the CLI checks sooner, when it builds the Trainer)."""
    check_trainer_arguments(trainer)
    precision = str(trainer.precision)
    if precision in _FP16:
        raise ConfigurationError(
            f"precision={precision!r} is not supported: fp16 needs a GradScaler, and one scaler updated after each "
            "of the per-block optimizer steps unscales later blocks (and the shared head/embedding) with the wrong "
            "scale. Use --trainer.precision bf16-mixed on a GPU with bf16 (Ampere or newer) or 32-true."
        )
    distributed = trainer.strategy
    if isinstance(distributed, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise ConfigurationError(
            f"Trainer strategy {type(distributed).__name__} does not work with manual per-block optimization "
            "(Lightning #19685). Use --trainer.strategy ddp (backward_mode=joint) or "
            "ddp_find_unused_parameters_true (backward_mode=per_block)."
        )
    # block_parallel subclasses DDPStrategy but wraps nothing in DDP: every backward mode and block order works.
    if isinstance(distributed, DDPStrategy) and not isinstance(distributed, BlockParallelStrategy) and num_local_losses > 1:
        needs_unused = backward_mode == "per_block" or block_order == "sequential"
        if needs_unused and not distributed._ddp_kwargs.get("find_unused_parameters", False):
            reason = (
                "backward_mode=per_block runs one backward per block"
                if backward_mode == "per_block"
                else "block_order=sequential leaves all but one block without gradients"
            )
            raise ConfigurationError(
                f"DDP: {reason}, so DDP must be told about unused parameters. Use --trainer.strategy "
                "ddp_find_unused_parameters_true, or --model.backward_mode joint with --model.block_order every_batch "
                "(one all-reduce per batch, the fastest)."
            )


def warn_about_step_budget(trainer: Any, optimizer_steps_per_batch: int) -> None:
    """Warn when ``max_steps`` (or ``fast_dev_run`` = N, which sets it) will stop fit after fewer batches than asked.

    Lightning's ``global_step`` counts optimizer steps (LIGHTNING.md, Lightning #17958); this module steps one
    optimizer per block each batch, so ``max_steps`` = S ends fit after ceil(S / steps per batch) batches.
    """
    max_steps = getattr(trainer, "max_steps", -1)
    if optimizer_steps_per_batch <= 1 or max_steps is None or max_steps < 0:
        return
    batches = -(-max_steps // optimizer_steps_per_batch)
    fast_dev_run = getattr(trainer, "fast_dev_run", 0)
    if fast_dev_run > 1:  # True (one batch) compares as 1
        advice = (f"fast_dev_run={fast_dev_run} will train {batches} batch(es), not {fast_dev_run}: use "
                  f"--trainer.max_epochs 1 --trainer.limit_train_batches {fast_dev_run} --trainer.limit_val_batches "
                  f"{fast_dev_run} for {fast_dev_run} batches")  # fmt: skip
    elif not fast_dev_run and batches < max_steps:
        advice = (f"max_steps={max_steps} will stop fit after {batches} batch(es): multiply it by "
                  f"{optimizer_steps_per_batch} for {max_steps} batches, or use max_epochs")  # fmt: skip
    else:
        return
    rank_zero_warn(f"global_step counts optimizer steps, {optimizer_steps_per_batch} per batch here; {advice}.")


def check_schedulers(trainer: Any, schedulers: list, interval: str) -> None:
    """Refuse ReduceLROnPlateau (the module steps the schedulers itself, with no metric to monitor). Warn when a
    CosineAnnealingLR's T_max is not the run's length in its interval (``max_epochs``, or the training batches of
    the run): a shorter run stops before the learning rate anneals, a longer one sees it rise again. The BWBPF
    configs set T_max 400 for their 400 epochs."""
    if any(isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) for s in schedulers):
        raise ConfigurationError("ReduceLROnPlateau needs a monitored metric and is not supported; use a scheduler "
                                 "that steps on its own (CosineAnnealingLR, StepLR, ...).")  # fmt: skip
    cosine = [s for s in schedulers if isinstance(s, torch.optim.lr_scheduler.CosineAnnealingLR)]
    if not cosine or getattr(trainer, "fast_dev_run", 0) or getattr(trainer, "max_steps", -1) not in (-1, None):
        return
    if interval == "epoch":
        length, unit = trainer.max_epochs, "epoch(s)"
    else:
        length, unit = trainer.estimated_stepping_batches, "training batch(es)"
    t_max = cosine[0].T_max
    if length is None or length < 0 or length == float("inf") or t_max == length:
        return
    effect = "not reach its minimum" if length < t_max else "rise again after T_max (the schedule is periodic)"
    rank_zero_warn(f"model.lr_scheduler: CosineAnnealingLR's T_max is {t_max} but this run is {int(length)} {unit} long "
                   f"(lr_scheduler_interval {interval}), so the learning rate will {effect}: set "
                   f"--model.lr_scheduler.init_args.T_max {int(length)} to anneal over the run.")  # fmt: skip
