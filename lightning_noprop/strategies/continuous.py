"""What NoProp-CT and NoProp-FM share: one time-conditioned network trained over t in [0, 1]."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_noprop.diffusion import standard_normal_start
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.blocks import TimeConditionedBlock, check_block_options
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head, check_readout, readout_logits
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy, Prediction


class ContinuousTimeStrategy(EmbeddingStrategy):
    """Base of NoProp-CT and NoProp-FM: one network u(x, z, t) shared over time.

    One network u(x, z, t) shared over time, so one local loss (one block optimizer) plus the shared
    head/embedding optimizer. Subclasses define the loss (``loss``) and the sampler (``sample``).

    Args:
        embedding: class embedding W_Embed; None means one-hot.
        head: output head; None means the softmax head.
        dropout: dropout of the convolutional encoders.
        width: hidden width of the network (paper: 256).
        time_dim: size of the sinusoidal time embedding (paper: 64).
        inference_steps: steps of the sampler at test and predict time (spec: 1000); validation can use fewer
            through the module's ``validation_inference_steps``.
        readout: "head" (argmax of the head on the final state) or "nearest" (the nearest class embedding).
        cuda_graph: deprecated, use the module's ``sampler_cuda_graph`` (``model.sampler_cuda_graph``); None (the
            default) leaves it to the module.
    """

    execution_options = ("inference_steps", "readout", "cuda_graph")
    sampler_inference = True

    def __init__(
        self,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        dropout: float = 0.2,
        width: int = 256,
        time_dim: int = 64,
        inference_steps: int = 1000,
        readout: Literal["head", "nearest"] = "head",
        cuda_graph: bool | None = None,
    ) -> None:
        super().__init__(embedding, head)
        if inference_steps < 1:
            raise ConfigurationError(f"inference_steps must be >= 1, got {inference_steps}.")
        check_readout(readout)
        check_block_options(dropout, width)
        self.dropout = dropout
        self.width = width
        self.time_dim = time_dim
        self.inference_steps = inference_steps
        self.readout = readout
        self.cuda_graph = cuda_graph

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

    def block_modules(self) -> list[nn.Module]:
        # The samplers call the image encoder once and the rest of the network per step, so its parts are the units.
        return list(self.network.children())

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        for block in blocks:
            assert block == 0, f"{type(self).__name__} has one network (one local loss), got block {block}"
            with self.random_stream(0):
                loss = self.loss(x, y)
            yield loss

    @abstractmethod
    def loss(self, x: Tensor, y: Tensor, t: Tensor | None = None) -> BlockLoss:
        """The method's loss for images x (B, C, H, W), labels y (B,) at per-sample times t (B,) (drawn
        from U[0, 1] when None)."""

    def network_logits(self, x: Tensor, z: Tensor, t: Tensor, image_features: Tensor | None = None) -> Tensor:
        """The network's logits (B, m) for x (B, C, H, W), z (B, d), t (B,). ``image_features`` (B, width), when
        given, replaces ``network.image_encoder(x)`` (samplers compute it once per batch)."""
        features = self.network.image_encoder(x) if image_features is None else image_features
        return self.network.from_image_features(features, z, t)

    def sampler_start(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """What every sampler starts from: z_0 ~ N(0, I) (B, d) in the model's dtype (``standard_normal_start``) and
        the image features (B, width)."""
        return standard_normal_start(x.shape[0], self.embedding.weight), self.network.image_encoder(x)

    @abstractmethod
    def sample(self, x: Tensor, num_steps: int) -> Tensor:
        """The sampler: from z_0 ~ N(0, I) to the final state z_1 (B, d) in ``num_steps`` steps, for x (B, C, H, W)."""

    @property
    def max_inference_steps(self) -> None:
        """None: the sampler integrates on any grid of N >= 1 steps."""
        return None

    @torch.no_grad()
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """``sample`` on N = ``num_steps`` (default ``inference_steps``) steps, then logits by ``readout``."""
        z = self.sample(x, self.inference_steps if num_steps is None else num_steps)
        embedding = self.embedding.weight
        return Prediction(logits=readout_logits(self.readout, self.head, z, embedding), z=z)

    def describe(self) -> dict:
        return {**super().describe(), "time_dim": self.time_dim}
