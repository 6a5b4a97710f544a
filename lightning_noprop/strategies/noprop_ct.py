"""NoProp-CT: one network denoises the label embedding at any time t in [0, 1] (spec NOPROP.md, NoProp-CT)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.diffusion import (
    PosteriorCoefficients,
    kl_to_standard_normal,
    mix_embeddings,
    posterior_coefficients,
    sample_q,
)
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head
from lightning_noprop.samplers import posterior_chain
from lightning_noprop.schedules import LearnedSchedule, NoiseSchedule, autograd_snr_derivative
from lightning_noprop.strategies.base import BlockLoss
from lightning_noprop.strategies.continuous import ContinuousTimeStrategy


class NoPropCT(ContinuousTimeStrategy):
    """NoProp-CT (Li et al., 2025): one network u(x, z, t) learns to denoise a label embedding for any t in [0, 1].

    NoProp in continuous time. Each sample draws its own t ~ U[0, 1] and z_t ~ q(z_t | y) (Eq. 6); the
    network predicts u_hat(z_t, x, t) = softmax(logits) @ W_Embed and the loss is

        L = CE(head(z_1), y) + KL(q(z_0 | y) || N(0, I)) + (eta / 2) E_t[ SNR'(t) ||u_hat(z_t, x, t) - u_y||^2 ]

    with z_1 ~ q(z_1 | y). The noise schedule is a component (default: the learned schedule of App. B, whose
    parameters are trained by this loss with the head and embedding). Inference runs Eq. 3 on the grid
    t_k = k / N from z_0 ~ N(0, I), feeding the network z_k and t_k.

    Args:
        embedding: class embedding W_Embed; None means one-hot.
        head: output head; None means the softmax head.
        noise_schedule: alpha_bar(t); None means ``LearnedSchedule()`` (gamma from 7 to -7). ``CosineSchedule``
            is the fixed alternative.
        eta: weight of the denoising term (paper: 1).
        snr_derivative: SNR'(t) in "analytic" closed form or by "autograd" (create_graph, so the schedule is
            trained either way); both give the same values.
        dropout: dropout of the convolutional encoders.
        width: hidden width of the network (paper: 256).
        time_dim: size of the sinusoidal time embedding (paper: 64).
        inference_steps: N, steps of Eq. 3 at test and predict time (spec: 1000); any N >= 1 works.
        inference_noise: add the sqrt(c_k) eps term of Eq. 3; False is the deterministic variant (posterior mean).
        readout: "head" (argmax head(z_1), the paper) or "nearest" (the nearest class embedding).
        cuda_graph: deprecated, use the module's ``sampler_cuda_graph`` (see ``ContinuousTimeStrategy``).
    """

    # snr_derivative: the analytic and the autograd SNR'(t) are the same value.
    execution_options = (*ContinuousTimeStrategy.execution_options, "inference_noise", "snr_derivative")
    capture_units = ("continuous_loss",)

    def __init__(
        self,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        noise_schedule: NoiseSchedule | None = None,
        eta: float = 1.0,
        snr_derivative: Literal["analytic", "autograd"] = "analytic",
        dropout: float = 0.2,
        width: int = 256,
        time_dim: int = 64,
        inference_steps: int = 1000,
        inference_noise: bool = True,
        readout: Literal["head", "nearest"] = "head",
        cuda_graph: bool | None = None,
    ) -> None:
        super().__init__(embedding, head, dropout, width, time_dim, inference_steps, readout, cuda_graph)
        if eta <= 0:
            raise ConfigurationError(f"eta must be > 0, got {eta}.")
        if snr_derivative not in ("analytic", "autograd"):
            raise ConfigurationError(f"snr_derivative must be 'analytic' or 'autograd', got {snr_derivative!r}.")
        self.noise_schedule = noise_schedule if noise_schedule is not None else LearnedSchedule()
        self.eta = eta
        self.snr_derivative = snr_derivative
        self.inference_noise = inference_noise

    def shared_parameters(self) -> list[nn.Parameter]:
        # The schedule enters every term of the loss, like the head and the embedding.
        schedule = [p for p in self.noise_schedule.parameters() if p.requires_grad]
        return super().shared_parameters() + schedule

    def capture_refusal(self) -> str | None:
        # The autograd derivative differentiates inside the loss (create_graph=True), which a compiled backward cannot.
        if self.snr_derivative == "autograd" or type(self.noise_schedule).snr_derivative is NoiseSchedule.snr_derivative:
            return ("capture_step compiles NoProp-CT's loss, and SNR'(t) by autograd (snr_derivative 'autograd', or a "
                    "schedule without a closed-form snr_derivative) differentiates inside it: set "
                    "model.strategy.init_args.snr_derivative analytic with a schedule that has one (CosineSchedule, "
                    "LearnedSchedule), or model.capture_step false")  # fmt: skip
        return None

    def snr_prime(self, t: Tensor) -> Tensor:
        """SNR'(t), (B,) for t (B,), by the configured method; differentiable in the schedule's parameters."""
        if self.snr_derivative == "autograd":
            return autograd_snr_derivative(self.noise_schedule, t)
        return self.noise_schedule.snr_derivative(t)

    def denoise(self, x: Tensor, z: Tensor, t: Tensor, embedding: Tensor, image_features: Tensor | None = None) -> Tensor:
        """u_hat(z, x, t) = softmax(logits) @ W_Embed for x (B, C, H, W), z (B, d), t (B,). Returns (B, d).
        ``image_features`` (B, width), when given, replaces ``network.image_encoder(x)``."""
        return mix_embeddings(self.network_logits(x, z, t, image_features).softmax(dim=-1), embedding)

    def loss(self, x: Tensor, y: Tensor, t: Tensor | None = None) -> BlockLoss:
        u = self.embedding(y)
        t = torch.rand(y.shape[0], device=u.device) if t is None else t
        assert t.shape == y.shape, f"t must be (B,) = {tuple(y.shape)}, got {tuple(t.shape)}"
        loss, ce, kl, denoise = self.continuous_loss(x, y, u, t, self.embedding.weight)
        return BlockLoss(block=0, loss=loss, terms={"ce": ce, "kl": kl, "denoise": denoise})

    def continuous_loss(self, x: Tensor, y: Tensor, u: Tensor, t: Tensor,
                        embedding: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """The CT loss from tensors alone (what ``capture_step`` compiles): x (B, C, H, W), y (B,), u = u_y (B, d),
        t (B,) the per-sample times, embedding W_Embed (m, d).
        Returns (loss, detached CE, detached KL, detached denoising term)."""
        # One schedule evaluation for alpha_bar(0), alpha_bar(1) and alpha_bar(t).
        alpha_bar = self.noise_schedule.alpha_bar(torch.cat([torch.linspace(0.0, 1.0, 2, device=t.device, dtype=t.dtype), t]))
        ends = alpha_bar[:2]
        z_t = sample_q(u, alpha_bar[2:])
        error = (self.denoise(x, z_t, t, embedding) - u).pow(2).sum(-1)  # (B,)
        denoise = 0.5 * self.eta * (self.snr_prime(t) * error).mean()
        ce = F.cross_entropy(self.head(sample_q(u, ends[1]), embedding), y)
        kl = kl_to_standard_normal(u, ends[0]).mean()
        return ce + kl + denoise, ce.detach(), kl.detach(), denoise.detach()

    def coefficients(self, num_steps: int) -> PosteriorCoefficients:
        """a_k, b_k, c_k of Eq. 3 on the grid t_k = k / N, k = 0..N: each (N,)."""
        grid = torch.linspace(0.0, 1.0, num_steps + 1, device=self.embedding.weight.device)
        return posterior_coefficients(self.noise_schedule.alpha_bar(grid).detach())

    def sample(self, x: Tensor, num_steps: int) -> Tensor:
        """Eq. 3 on the grid t_k = k / N from z_0 ~ N(0, I), feeding the network z_k and t_k. Returns z_1 (B, d)."""
        embedding = self.embedding.weight
        z, features = self.sampler_start(x)

        def denoise(k: int, z_k: Tensor) -> Tensor:
            return self.denoise(x, z_k, torch.full((x.shape[0],), k / num_steps, device=x.device), embedding, features)

        return posterior_chain(denoise, z, self.coefficients(num_steps), self.inference_noise)

    def describe(self) -> dict:
        return {**super().describe(), "noise_schedule": type(self.noise_schedule).__name__}
