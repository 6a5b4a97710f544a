"""Sinusoidal embedding of continuous time t in [0, 1] for the CT/FM network (spec: dim 64)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError


class SinusoidalTimeEmbedding(nn.Module):
    """t (B,) -> [sin(s t f_k), cos(s t f_k)] (B, dim) with f_k = max_period^(-k / (dim/2)), k < dim/2.

    The transformer/DDPM embedding. Time is scaled by ``scale`` first so that t in [0, 1] spans as many
    periods as DDPM's integer steps 0..1000 do; without it the fine grid of a 1000-step sampler would be
    nearly indistinguishable to the network.

    Args:
        dim: output size (even).
        scale: multiplier of t before the sinusoids.
        max_period: the longest period (in units of scaled t).
    """

    def __init__(self, dim: int = 64, scale: float = 1000.0, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigurationError(f"SinusoidalTimeEmbedding dim must be even and >= 2, got {dim}.")
        self.dim = dim
        self.scale = scale
        frequencies = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        assert t.dim() == 1, f"t must be (B,), got {tuple(t.shape)}"
        angles = (self.scale * t.float()).unsqueeze(1) * self.frequencies.unsqueeze(0)
        return torch.cat([angles.sin(), angles.cos()], dim=1)
