"""How the module executes a step, in one place: the options that change speed and memory, never the maths.

The module builds one ``Executor`` from its arguments (``backward_mode``, ``block_execution``, ``channels_last``,
``compile_blocks``, ``compile_options``, ``capture_step``, ``sampler_cuda_graph``) and asks it how to lay out images,
compile the strategy, compute the local losses, build optimizers and run inference; ``BatchTrainer`` asks it how to run
the backward. Strategies hold the maths only. Every mode gives the same updates (tested), so a checkpoint trained
under one may be resumed or evaluated under another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_deprecation
from torch import Tensor
from torch.optim import Optimizer

from lightning_noprop.cuda_graphs import GraphCache
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.capture import check_capture_supported, compile_units, fused, with_graph_room
from lightning_noprop.execution.step_graph import StepGraph
from lightning_noprop.strategies.base import BlockLoss, Prediction


@dataclass
class Executor:
    """The module's execution options (documented on ``LocalLearningModule``) and what they do to a step."""

    backward_mode: Literal["joint", "per_block"] = "joint"
    channels_last: bool = False
    compile_blocks: bool = False
    compile_options: dict[str, Any] | None = None
    capture_step: bool = False
    block_execution: Literal["loop", "vmap"] = "loop"
    sampler_cuda_graph: bool = True

    def __post_init__(self) -> None:
        for name, choices in (("backward_mode", ("joint", "per_block")), ("block_execution", ("loop", "vmap"))):
            if getattr(self, name) not in choices:
                raise ConfigurationError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        if self.compile_options and not (self.compile_blocks or self.capture_step):
            raise ConfigurationError("compile_options only apply with compile_blocks or capture_step true; set one or "
                                     "drop compile_options.")  # fmt: skip
        self._inference_graphs = GraphCache()  # capture_step on a GPU: the predictions' CUDA graphs
        self.step_graph = StepGraph()  # capture_step on a GPU: the training step's CUDA graphs

    @property
    def batches_blocks(self) -> bool:
        """Whether training runs the blocks' forward passes as one vmapped call (``block_execution`` "vmap")."""
        return self.block_execution == "vmap"

    def requires_joint_backward(self, strategy: Any) -> bool:
        """Whether only ``backward_mode`` "joint" with every block on every batch computes the gradients: a local loss
        depends on other blocks' parameters (``strategy.requires_joint_backward``), or the vmapped blocks share one
        graph."""
        return strategy.requires_joint_backward or self.batches_blocks

    def block_dependency(self, strategy: Any) -> Literal["independent", "chain"] | None:
        """``strategy.block_dependency``, or None under "vmap": it draws every block's dropout masks in one call, so
        they would depend on which blocks run together."""
        return None if self.batches_blocks else strategy.block_dependency

    def local_losses(self, strategy: Any, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterable[BlockLoss]:
        """``strategy.local_losses(x, y, blocks)``, or under "vmap" the same losses from one batched forward pass
        (``strategy.stacked_block_losses``; tested equal)."""
        if self.batches_blocks and len(blocks) > 1:
            return strategy.stacked_block_losses(x, y, blocks)
        return strategy.local_losses(x, y, blocks)

    def prepare(self, strategy: Any, nonfinite_loss: str, block_order: str = "every_batch") -> None:
        """Check what the options cannot run with ``strategy``, then lay out and compile its blocks."""
        if self.requires_joint_backward(strategy) and (self.backward_mode, block_order) != ("joint", "every_batch"):
            cause = ("block_execution 'vmap' runs the blocks in one graph" if self.batches_blocks else
                     f"{type(strategy).__name__} as configured back-propagates each local loss through earlier blocks "
                     "(e.g. detach_between_blocks=false)")  # fmt: skip
            raise ConfigurationError(f"{cause}, which needs backward_mode='joint' and block_order='every_batch'; got "
                                     f"{self.backward_mode!r} and {block_order!r}.")  # fmt: skip
        if self.batches_blocks and not callable(getattr(strategy, "stacked_block_losses", None)):
            raise ConfigurationError(f"block_execution 'vmap' batches NoProp-DT's blocks; {type(strategy).__name__} "
                                     "has no batched form: set model.block_execution loop.")  # fmt: skip
        if self.capture_step:
            check_capture_supported(strategy, self.compile_blocks, nonfinite_loss)
        if self.channels_last:
            strategy.to(memory_format=torch.channels_last)
        if self.compile_blocks:
            blocks = strategy.block_modules()
            # Every compiled module runs one code object (Module._call_impl), so all blocks share dynamo's recompile
            # limit (8): BWBPF's blocks and heads differ in shape, and past the limit the rest ran eagerly. Each
            # structure may need a graph for training and evaluation, static and then dynamic; blocks of one
            # structure share theirs (and, when they fit the limit, skip the wrapper, which patches dynamo's config
            # at every call).
            structures = len({(type(b), tuple(p.shape for p in b.parameters())) for b in blocks})
            for block in blocks:
                block.compile(**(self.compile_options or {}))
                block._compiled_call_impl = with_graph_room(block._compiled_call_impl, 2 * structures)
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

    def graphs_step(self, module: Any, x: Tensor) -> bool:
        """Whether the training batch x replays the whole one-process step from a CUDA graph: under capture_step on a
        GPU, where the run allows it (``StepGraph.usable``)."""
        return self.capture_step and self.step_graph.usable(module, x)

    def graphs_inference(self, strategy: Any) -> bool:
        """Whether inference on a GPU replays one CUDA graph per call: under capture_step, or for a sampler
        (``strategy.sampler_inference``: NoProp-CT/FM's many steps) under sampler_cuda_graph."""
        return self.capture_step or (self.sampler_cuda_graph and strategy.sampler_inference)

    def predict(self, strategy: Any, x: Tensor, num_steps: int | None = None) -> Prediction:
        """``strategy.predict(x, num_steps)``; on a GPU, where ``graphs_inference``, replayed from one CUDA graph per
        batch shape, step count and mode (``GraphCache``: the same computation and draws as eager)."""
        if not (self.graphs_inference(strategy) and GraphCache.usable(x)):
            return strategy.predict(x, num_steps)

        def predict(images: Tensor) -> tuple[Tensor, Tensor | None]:
            prediction = strategy.predict(images, num_steps)
            return prediction.logits, prediction.z

        key = ("predict", num_steps, strategy.training)
        logits, z = self._inference_graphs.replay(predict, key, [x], owner=strategy)
        return Prediction(logits=logits, z=z)


def from_strategy(strategy: Any, old: str, new: str, value: Any) -> Any:
    """The module option ``new`` (given ``value``; its default is the Executor field's), or the deprecated strategy
    argument ``old`` that configs and checkpoints from before the Executor set (``model.strategy.init_args.<old>``)."""
    old_value = getattr(strategy, old, None)
    if old_value is None:
        return value
    if value != getattr(Executor, new) and value != old_value:
        raise ConfigurationError(f"model.{new} is {value!r} but model.strategy.init_args.{old} is {old_value!r}: drop "
                                 f"the strategy's {old} (deprecated) and set model.{new} alone.")  # fmt: skip
    rank_zero_deprecation(f"model.strategy.init_args.{old} is deprecated: set model.{new} {old_value!r} instead (it "
                          "works the same).")  # fmt: skip
    return old_value
