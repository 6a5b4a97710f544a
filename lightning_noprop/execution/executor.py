"""How the module executes a step, in one place: the options that change speed and memory, never the maths.

The module builds one ``Executor`` from its arguments (``backward_mode``, ``channels_last``, ``compile_blocks``,
``compile_options``, ``capture_step``) and asks it how to lay out images, compile the strategy, build optimizers and
run inference; ``BatchTrainer`` asks it how to run the backward. Every mode gives the same updates (tested), so a
checkpoint trained under one may be resumed or evaluated under another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_noprop.cuda_graphs import GraphCache
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.capture import check_capture_supported, compile_units, fused
from lightning_noprop.strategies.base import Prediction


@dataclass
class Executor:
    """The module's execution options (documented on ``LocalLearningModule``) and what they do to a step."""

    backward_mode: Literal["joint", "per_block"] = "joint"
    channels_last: bool = False
    compile_blocks: bool = False
    compile_options: dict[str, Any] | None = None
    capture_step: bool = False

    def __post_init__(self) -> None:
        if self.backward_mode not in ("joint", "per_block"):
            raise ConfigurationError(
                f"backward_mode must be one of ('joint', 'per_block'), got {self.backward_mode!r}."
            )
        if self.compile_options and not (self.compile_blocks or self.capture_step):
            raise ConfigurationError("compile_options only apply with compile_blocks or capture_step true; set one or "
                                     "drop compile_options.")  # fmt: skip
        self._inference_graphs = GraphCache()  # capture_step on a GPU: the predictions' CUDA graphs

    def prepare(self, strategy: Any, nonfinite_loss: str) -> None:
        """Check what the options cannot run with ``strategy``, then lay out and compile its blocks."""
        if self.capture_step:
            check_capture_supported(strategy, self.compile_blocks, nonfinite_loss)
        if self.channels_last:
            strategy.to(memory_format=torch.channels_last)
        if self.compile_blocks:
            for block in strategy.block_modules():
                block.compile(**(self.compile_options or {}))
        if self.capture_step:
            compile_units(strategy, self.compile_options)

    def optimizers(self, optimizers: list[Optimizer]) -> list[Optimizer]:
        """The optimizers a step uses: torch's fused kernels under capture_step."""
        return [fused(optimizer) for optimizer in optimizers] if self.capture_step else optimizers

    def images(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in the memory layout the blocks were laid out in."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @property
    def checks_every_batch(self) -> bool:
        """Whether a batch's losses are checked for NaN/inf on the host each batch (capture_step checks them on the
        device every log_every_n_steps batches instead, with no host read per batch)."""
        return not self.capture_step

    def predict(self, strategy: Any, x: Tensor, num_steps: int | None = None) -> Prediction:
        """``strategy.predict(x, num_steps)``; under capture_step on a GPU replayed from one CUDA graph per batch
        shape, step count and mode (``GraphCache``: the same computation and draws as eager)."""
        if not (self.capture_step and GraphCache.usable(x)):
            return strategy.predict(x, num_steps)

        def predict(images: Tensor) -> tuple[Tensor, Tensor | None]:
            prediction = strategy.predict(images, num_steps)
            return prediction.logits, prediction.z

        key = ("predict", num_steps, strategy.training)
        logits, z = self._inference_graphs.replay(predict, key, [x], owner=strategy)
        return Prediction(logits=logits, z=z)
