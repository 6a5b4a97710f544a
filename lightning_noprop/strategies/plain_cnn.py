"""A plain CNN trained end to end by backprop: a reference point for the DT-matched backprop chain."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.nn.blocks import ConvEncoder, check_block_options
from lightning_noprop.strategies.base import BlockLoss, Prediction, Strategy


class PlainCNN(Strategy):
    """A plain CNN trained by backprop: NoProp-DT's image encoder and a linear classifier.

    The image encoder of NoProp-DT's block (Fig. 6: three 3x3 convs, FC ``width``, BatchNorm) and a linear
    classifier, trained with one cross-entropy loss: logits = Linear(ConvEncoder(x)), (B, C, H, W) -> (B, m).

    Not a method of the papers. It answers whether the DT-matched ``Backprop`` chain (ten such encoders joined by
    softmax mixtures of the class embedding) is a fair baseline: the same convolutions trained the ordinary way,
    with the same recipe (AdamW lr 1e-3, weight decay 1e-3, batch 128), show what backprop reaches on them.

    Args:
        dropout: dropout in the convolutional encoder (as NoProp-DT's blocks: 0.2).
        width: the encoder's FC width (as NoProp-DT's blocks: 256).
    """

    loss_terms = ("ce",)
    capture_units = ("forward",)

    def __init__(self, dropout: float = 0.2, width: int = 256) -> None:
        super().__init__()
        check_block_options(dropout, width)
        self.dropout = dropout
        self.width = width

    def _build(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.encoder = ConvEncoder(image_shape, self.width, self.dropout)
        self.classifier = nn.Linear(self.width, num_classes)

    @property
    def num_local_losses(self) -> int:
        return 1

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        assert block == 0, f"PlainCNN has a single local loss, got block {block}"
        return list(self.parameters())

    def block_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> logits (B, m)."""
        return self.classifier(self.encoder(x))

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        for block in blocks:
            assert block == 0, f"PlainCNN has a single local loss, got block {block}"
            with self.random_stream(0):
                ce = F.cross_entropy(self(x), y)
            yield BlockLoss(block=0, loss=ce, terms={"ce": ce.detach()})

    @torch.no_grad()
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """One forward pass; ``num_steps`` does not apply (a single network, no anytime readout)."""
        return Prediction(logits=self(x))
