"""BWBPF: a backbone cut into K blocks, each trained by its own auxiliary classifier (spec BWBPF.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.backbones import Backbone, ResNet
from lightning_noprop.nn.classifiers import AuxiliaryClassifier, LinearClassifier
from lightning_noprop.strategies.base import BlockLoss, Prediction, Strategy


class BWBPF(Strategy):
    """BWBPF (Cheng et al., ICASSP 2024): a backbone cut into blocks, each trained by its own classifier.

    Block-wise BP-free training (Cheng et al., ICASSP 2024). Block k maps the (detached) output of block
    k - 1 to features h_k; its classifier g_k gives logits and the local loss CE(g_k(h_k), y) trains block k and
    g_k alone. The last block's classifier is the network's output, trained by the global loss CE of the final
    logits, which is that block's local loss.

    With ``num_blocks=1`` this is the backbone trained end to end with one classifier: the backprop baseline on
    the same backbone and recipe.

    Args:
        backbone: the network to cut; None means ``ResNet(18, stem="cifar")``.
        num_blocks: K, the number of blocks (each with its own optimizer); limits depend on the backbone's rule.
        classifier: auxiliary classifier of every block; None means ``LinearClassifier()`` (pool -> Linear).
        detach_between_blocks: true is the paper's method (no gradient crosses a block boundary); false
            reproduces the public code, where every head back-propagates through all earlier blocks (deep
            supervision, trained end to end; needs ``backward_mode: joint``).
        average_last_heads: predict with the mean of the softmax of the last n heads (1: the final head alone).
    """

    loss_terms = ("ce",)
    execution_options = ("average_last_heads",)
    capture_units = ("block_loss",)

    def __init__(
        self,
        backbone: Backbone | None = None,
        num_blocks: int = 4,
        classifier: AuxiliaryClassifier | None = None,
        detach_between_blocks: bool = True,
        average_last_heads: int = 1,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ConfigurationError(f"num_blocks must be >= 1, got {num_blocks}.")
        if not 1 <= average_last_heads <= num_blocks:
            raise ConfigurationError(f"average_last_heads must be in [1, num_blocks={num_blocks}], got {average_last_heads}.")
        self.backbone = backbone if backbone is not None else ResNet(18, stem="cifar")
        self.num_blocks = num_blocks
        self.classifier = classifier if classifier is not None else LinearClassifier()
        self.detach_between_blocks = detach_between_blocks
        self.average_last_heads = average_last_heads

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        groups = self.backbone.split(self.backbone.stages(image_shape[0]), self.num_blocks)
        self.blocks = nn.ModuleList(nn.Sequential(*units) for units in groups)
        channels = []
        with torch.no_grad():
            h = torch.zeros(2, *image_shape)
            for block in self.blocks:
                h = block.eval()(h)
                channels.append(h.shape[1])
        self.blocks.train()
        self.heads = nn.ModuleList(self.classifier.make(c, num_classes) for c in channels)

    @property
    def num_local_losses(self) -> int:
        return self.num_blocks

    @property
    def requires_joint_backward(self) -> bool:
        # Without detaching, head k's loss runs back through blocks < k: stepping block j before loss k's backward
        # (per_block) would modify tensors that backward still needs.
        return not self.detach_between_blocks

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        return list(self.blocks[block].parameters()) + list(self.heads[block].parameters())

    @property
    def capture_graphs(self) -> int:
        return self.num_blocks  # the blocks differ in shape: one graph each

    def block_modules(self) -> list[nn.Module]:
        return list(self.blocks) + list(self.heads)

    @property
    def block_dependency(self) -> Literal["chain"] | None:
        return "chain" if self.detach_between_blocks else None

    def modules_of_block(self, block: int) -> list[nn.Module]:
        return [self.blocks[block], self.heads[block]]

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        return self.chain_losses(x, y, 0, blocks)

    def chain_losses(self, h: Tensor, y: Tensor, first: int, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        active = set(blocks)
        assert active and min(active) >= first, f"blocks {sorted(active)} must start at or after block {first}"
        for k in range(first, max(active) + 1):
            block = self.blocks[k]
            if k not in active and self.detach_between_blocks:
                with torch.no_grad():  # an inactive block only feeds the next one
                    h = block(h)
                continue
            with self.random_stream(k):
                if k in active:
                    h, logits, ce = self.block_loss(block, self.heads[k], h, y)
                else:
                    h = block(h)
            if k in active:
                yield BlockLoss(block=k, loss=ce, terms={"ce": ce.detach()}, logits=logits.detach(), output=h.detach())
            if self.detach_between_blocks:
                h = h.detach()

    @staticmethod
    def block_loss(block: nn.Module, head: nn.Module, h: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Block k's local step from modules and tensors alone (what ``capture_step`` compiles): its input h (the
        images or block k - 1's output), labels y (B,). Returns (h_k = block(h), logits = head(h_k), CE(logits, y))."""
        h = block(h)
        logits = head(h)
        return h, logits, F.cross_entropy(logits, y)

    @torch.no_grad()
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """Logits of the final head (or log of the mean softmax of the last ``average_last_heads`` heads).
        ``num_steps`` < K stops after that many blocks and reads out that block's head (anytime prediction)."""
        steps = self.num_blocks if num_steps is None else num_steps
        assert 1 <= steps <= self.num_blocks, f"num_steps must be in [1, {self.num_blocks}], got {steps}"
        h, logits = x, []
        for k in range(steps):
            h = self.blocks[k](h)
            if k >= steps - self.average_last_heads:
                logits.append(self.heads[k](h).float())
        if len(logits) == 1:
            return Prediction(logits=logits[0])
        return Prediction(logits=torch.stack([scores.softmax(-1) for scores in logits]).mean(0).log())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backbone": self.backbone.describe(), "classifier": type(self.classifier).__name__,
                "detach_between_blocks": self.detach_between_blocks}  # fmt: skip
