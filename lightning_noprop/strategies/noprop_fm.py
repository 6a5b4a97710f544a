"""NoProp-FM: one network learns the flow-matching velocity towards the class embedding (spec NOPROP.md)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.diffusion import mix_embeddings
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head
from lightning_noprop.samplers import euler_integrate
from lightning_noprop.strategies.base import BlockLoss
from lightning_noprop.strategies.continuous import ContinuousTimeStrategy


class NoPropFM(ContinuousTimeStrategy):
    """NoProp-FM (Li et al., 2025): one network that learns the flow from noise to the label embedding.

    NoProp with flow matching. Each sample draws t ~ U[0, 1] and z_0 ~ N(0, I); on the straight path

        z_t = t u_y + (1 - t) z_0 (+ sigma eps),   v_hat = logits(x, z_t, t) @ W_Embed   (no softmax)

    the loss is ||v_hat - (u_y - z_0)||^2 (summed over d, averaged over the batch): no eta, SNR weight or KL.
    With a learned embedding the anchor term CE(head(z_t + (1 - t) v_hat), y) is added, which keeps W_Embed
    from collapsing (the velocity loss alone is smallest when all embeddings coincide). Inference integrates
    dz/dt = v_hat with Euler from z_0 ~ N(0, I) to z_1 and reads out the nearest class embedding.

    Args:
        embedding: class embedding W_Embed; None means one-hot.
        head: output head, used by the anchor term (and by ``readout="head"``); None means the softmax head.
        sigma: standard deviation of the noise added to the path (spec: choose 0).
        anchor_loss: add the anchor CE; None means "when the embedding is learned" (the paper). Without it the
            head is unused, so it is frozen and gets no optimizer.
        dropout: dropout of the convolutional encoders.
        width: hidden width of the network (paper: 256).
        time_dim: size of the sinusoidal time embedding (paper: 64).
        inference_steps: Euler steps at test and predict time (spec: 1000); any N >= 1 works.
        readout: "nearest" (the class whose embedding is nearest to z_1, the paper) or "head" (needs the anchor).
        cuda_graph: deprecated, use the module's ``sampler_cuda_graph`` (see ``ContinuousTimeStrategy``).
    """

    capture_units = ("flow_loss",)

    def __init__(
        self,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        sigma: float = 0.0,
        anchor_loss: bool | None = None,
        dropout: float = 0.2,
        width: int = 256,
        time_dim: int = 64,
        inference_steps: int = 1000,
        readout: Literal["head", "nearest"] = "nearest",
        cuda_graph: bool | None = None,
    ) -> None:
        super().__init__(embedding, head, dropout, width, time_dim, inference_steps, readout, cuda_graph)
        if sigma < 0:
            raise ConfigurationError(f"sigma must be >= 0, got {sigma}.")
        self.sigma = sigma
        self.anchor_loss = self.embedding.learned if anchor_loss is None else anchor_loss
        if readout == "head" and not self.anchor_loss:
            raise ConfigurationError(
                "NoPropFM with readout='head' needs anchor_loss=true: without the anchor term nothing trains the "
                "head. Use readout='nearest' (the paper) or set anchor_loss: true."
            )

    def _build_blocks(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super()._build_blocks(num_classes, image_shape)
        if not self.anchor_loss:
            self.head.requires_grad_(False)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in super().shared_parameters() if p.requires_grad]

    def velocity(self, x: Tensor, z: Tensor, t: Tensor, embedding: Tensor, image_features: Tensor | None = None) -> Tensor:
        """v_hat(z, x, t) = logits @ W_Embed for x (B, C, H, W), z (B, d), t (B,). Returns (B, d).
        ``image_features`` (B, width), when given, replaces ``network.image_encoder(x)``."""
        return mix_embeddings(self.network_logits(x, z, t, image_features), embedding)

    def loss(self, x: Tensor, y: Tensor, t: Tensor | None = None, z_0: Tensor | None = None) -> BlockLoss:
        """The FM loss at per-sample times t (B,) and starts z_0 (B, d) (drawn when None)."""
        u = self.embedding(y)
        t = torch.rand(y.shape[0], device=u.device) if t is None else t
        z_0 = torch.randn_like(u) if z_0 is None else z_0
        assert t.shape == y.shape and z_0.shape == u.shape, (
            f"t must be (B,) and z_0 (B, d) = {tuple(u.shape)}; got t {tuple(t.shape)}, z_0 {tuple(z_0.shape)}"
        )
        loss, flow, anchor = self.flow_loss(x, y, u, t, z_0, self.embedding.weight)
        return BlockLoss(block=0, loss=loss, terms={"flow": flow, **({"anchor": anchor} if self.anchor_loss else {})})

    def flow_loss(self, x: Tensor, y: Tensor, u: Tensor, t: Tensor, z_0: Tensor,
                  embedding: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
        """The FM loss from tensors alone (what ``capture_step`` compiles): x (B, C, H, W), y (B,), u = u_y (B, d),
        t (B,), z_0 (B, d), embedding W_Embed (m, d).
        Returns (loss, detached flow term, detached anchor term or None without ``anchor_loss``)."""
        s = t.unsqueeze(1)
        z_t = s * u + (1.0 - s) * z_0
        if self.sigma > 0:
            z_t = z_t + self.sigma * torch.randn_like(z_t)
        v = self.velocity(x, z_t, t, embedding)
        flow = (v - (u - z_0)).pow(2).sum(-1).mean()
        if not self.anchor_loss:
            return flow, flow.detach(), None
        anchor = F.cross_entropy(self.head(z_t + (1.0 - s) * v, embedding), y)
        return flow + anchor, flow.detach(), anchor.detach()

    def sample(self, x: Tensor, num_steps: int) -> Tensor:
        """Euler over N = ``num_steps`` steps of dz/dt = v_hat from z_0 ~ N(0, I). Returns z_1 (B, d)."""
        embedding = self.embedding.weight
        z, features = self.sampler_start(x)
        return euler_integrate(lambda z_t, t: self.velocity(x, z_t, t, embedding, features), z, num_steps)

    def describe(self) -> dict:
        return {**super().describe(), "anchor_loss": self.anchor_loss}
