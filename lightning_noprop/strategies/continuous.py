"""What NoProp-CT and NoProp-FM share: one time-conditioned network trained over t in [0, 1]."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Literal

from torch import Tensor, nn

from lightning_noprop.nn.blocks import TimeConditionedBlock
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head, nearest_embedding_logits
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy


class ContinuousTimeStrategy(EmbeddingStrategy):
    """One network u(x, z, t) shared over time, so one local loss (one block optimizer) plus the shared
    head/embedding optimizer. Subclasses define the loss (``loss``) and the sampler (``predict``).

    Args:
        embedding: class embedding W_Embed; None means one-hot.
        head: output head; None means the softmax head.
        dropout: dropout of the convolutional encoders.
        width: hidden width of the network (paper: 256).
        time_dim: size of the sinusoidal time embedding (paper: 64).
        inference_steps: steps of the sampler at test and predict time (spec: 1000); validation can use fewer
            through the module's ``validation_inference_steps``.
        readout: "head" (argmax of the head on the final state) or "nearest" (the nearest class embedding).
    """

    def __init__(
        self,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        dropout: float = 0.2,
        width: int = 256,
        time_dim: int = 64,
        inference_steps: int = 1000,
        readout: Literal["head", "nearest"] = "head",
    ) -> None:
        super().__init__(embedding, head)
        if inference_steps < 1:
            raise ValueError(f"inference_steps must be >= 1, got {inference_steps}.")
        if readout not in ("head", "nearest"):
            raise ValueError(f"readout must be 'head' or 'nearest', got {readout!r}.")
        self.dropout = dropout
        self.width = width
        self.time_dim = time_dim
        self.inference_steps = inference_steps
        self.readout = readout

    def _build_blocks(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.network = TimeConditionedBlock(
            image_shape, num_classes, self.embedding.dim, self.embedding.z_shape, self.dropout, self.width, self.time_dim
        )

    @property
    def num_local_losses(self) -> int:
        return 1

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        assert block == 0, f"{type(self).__name__} has one network (one local loss), got block {block}"
        return list(self.network.parameters())

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        for block in blocks:
            assert block == 0, f"{type(self).__name__} has one network (one local loss), got block {block}"
            yield self.loss(x, y)

    @abstractmethod
    def loss(self, x: Tensor, y: Tensor, t: Tensor | None = None) -> BlockLoss:
        """The method's loss for images x (B, C, H, W), labels y (B,) at per-sample times t (B,) (drawn
        from U[0, 1] when None)."""

    def readout_logits(self, z: Tensor, embedding: Tensor) -> Tensor:
        """Class scores (B, m) of the final state z (B, d) through ``readout``."""
        return self.head(z, embedding) if self.readout == "head" else nearest_embedding_logits(z, embedding)

    def describe(self) -> dict:
        return {**super().describe(), "time_dim": self.time_dim}
