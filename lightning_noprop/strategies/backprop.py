"""The end-to-end backprop baseline with NoProp-DT's architecture (spec NOPROP.md, "DT-matched")."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.diffusion import mix_embeddings, standard_normal_start
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.blocks import check_block_options, denoising_blocks
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy, Prediction


class Backprop(EmbeddingStrategy):
    """The backprop baseline of NoProp: NoProp-DT's blocks chained and trained end to end.

    The same T blocks, embedding and head as NoProp-DT, chained and trained end to end with one CE loss:

        z_0 ~ N(0, I);  z_t = (1 - a_t) z_{t-1} + a_t u_hat_t(z_{t-1}, x);  logits = head(z_T)

    with u_hat_t = softmax(logits_t) @ W_Embed and a_t = tanh(w_t) learnable. All blocks form one local
    loss (one optimizer), plus the shared head/embedding optimizer, so comparisons with NoProp-DT differ
    only in how the same parameters are trained.

    Args:
        num_blocks: T, the number of blocks (paper: 10).
        embedding: class embedding W_Embed; None means one-hot.
        head: output head; None means the softmax head.
        dropout: dropout in each block's convolutional encoders (paper: 0.2).
        width: hidden width of each block (paper: 256).
        mixing_init: a_t = tanh(w_t) at initialisation, in (0, 1) (the paper does not say; 0.5 lets every
            block contribute from the first step).
    """

    capture_units = ("chain_loss",)

    def __init__(
        self,
        num_blocks: int = 10,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        dropout: float = 0.2,
        width: int = 256,
        mixing_init: float = 0.5,
    ) -> None:
        super().__init__(embedding, head)
        if num_blocks < 1:
            raise ConfigurationError(f"num_blocks must be >= 1, got {num_blocks}.")
        if not 0.0 < mixing_init < 1.0:
            raise ConfigurationError(f"mixing_init must be in (0, 1), got {mixing_init}.")
        self.num_blocks = num_blocks
        check_block_options(dropout, width)
        self.dropout = dropout
        self.width = width
        self.mixing_init = mixing_init

    def _build_blocks(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.blocks = denoising_blocks(self.num_blocks, image_shape, num_classes, self.embedding, self.dropout, self.width)
        self.mixing_logits = nn.Parameter(torch.full((self.num_blocks,), math.atanh(self.mixing_init)))

    @property
    def num_local_losses(self) -> int:
        return 1

    def block_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        assert block == 0, f"Backprop has a single local loss, got block {block}"
        return list(self.blocks.parameters()) + [self.mixing_logits]

    def forward(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """The chain of the first ``num_steps`` (default all) blocks, differentiable end to end.
        x: (B, C, H, W) -> logits (B, m)."""
        embedding = self.embedding.weight
        z = standard_normal_start(x.shape[0], embedding)
        mixing = torch.tanh(self.mixing_logits)
        for t, block in enumerate(self.blocks[: self.num_blocks if num_steps is None else num_steps]):
            z = (1.0 - mixing[t]) * z + mixing[t] * mix_embeddings(block(x, z).softmax(dim=-1), embedding)
        return Prediction(logits=self.head(z, embedding), z=z)

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        for block in blocks:
            assert block == 0, f"Backprop has a single local loss, got block {block}"
            with self.random_stream(0):
                ce = self.chain_loss(x, y)
            yield BlockLoss(block=0, loss=ce, terms={"ce": ce.detach()})

    def chain_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """CE(head(z_T), y) through the whole chain, images x (B, C, H, W), labels y (B,): what ``capture_step``
        compiles."""
        return F.cross_entropy(self(x).logits, y)

    @torch.no_grad()
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        return self(x, num_steps)
