"""Refuse, at fit start and with an actionable message, trainer settings the manual loop cannot honour."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

_FP16 = ("16-mixed", "16-true", "16")


def check_trainer_supports(trainer: Any, backward_mode: str, block_order: str, num_local_losses: int) -> None:
    """Raise ValueError for precision / distributed-strategy combinations that would train wrongly."""
    precision = str(trainer.precision)
    if precision in _FP16:
        raise ValueError(
            f"precision={precision!r} is not supported: fp16 needs a GradScaler, and one scaler updated after each "
            "of the per-block optimizer steps unscales later blocks (and the shared head/embedding) with the wrong "
            "scale. Use --trainer.precision bf16-mixed on a GPU with bf16 (Ampere or newer) or 32-true."
        )
    distributed = trainer.strategy
    if isinstance(distributed, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise ValueError(
            f"Trainer strategy {type(distributed).__name__} does not work with manual per-block optimization "
            "(Lightning #19685). Use --trainer.strategy ddp (backward_mode=joint) or "
            "ddp_find_unused_parameters_true (backward_mode=per_block)."
        )
    if isinstance(distributed, DDPStrategy) and num_local_losses > 1:
        needs_unused = backward_mode == "per_block" or block_order == "sequential"
        if needs_unused and not distributed._ddp_kwargs.get("find_unused_parameters", False):
            reason = (
                "backward_mode=per_block runs one backward per block"
                if backward_mode == "per_block"
                else "block_order=sequential leaves all but one block without gradients"
            )
            raise ValueError(
                f"DDP: {reason}, so DDP must be told about unused parameters. Use --trainer.strategy "
                "ddp_find_unused_parameters_true, or --model.backward_mode joint with --model.block_order every_batch "
                "(one all-reduce per batch, the fastest)."
            )
