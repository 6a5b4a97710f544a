"""Noise schedules: alpha_bar(t) on continuous time t in [0, 1], noise at t=0, clean at t=1.

NoProp runs time from noise to clean (spec: "alpha_bar_t increasing in t"), the reverse of the
usual diffusion convention. NoProp-DT evaluates a schedule on the grid t_i = i / T, NoProp-CT
(issue 3) on a per-sample t. Every schedule exposes the same three quantities:

- ``alpha_bar(t)``: the signal fraction of q(z_t | y) = N(sqrt(alpha_bar) u_y, (1 - alpha_bar) I) (Eq. 6)
- ``snr(t)`` = alpha_bar / (1 - alpha_bar)
- ``log_snr(t)``
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class NoiseSchedule(nn.Module, ABC):
    """A monotone map from time t in [0, 1] to alpha_bar(t) in (0, 1), increasing in t."""

    @abstractmethod
    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar(t), same shape as ``t``; increasing in t, strictly inside (0, 1)."""

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar), same shape as ``t``."""
        alpha_bar = self.alpha_bar(t)
        return alpha_bar / (1.0 - alpha_bar)

    def log_snr(self, t: Tensor) -> Tensor:
        """log SNR(t), computed from alpha_bar without forming the ratio."""
        alpha_bar = self.alpha_bar(t)
        return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


class CosineSchedule(NoiseSchedule):
    """The cosine schedule of Nichol & Dhariwal (2021) with the time index flipped.

    alpha_bar(t) = f(1 - t) / f(0) with f(s) = cos^2(((s + offset) / (1 + offset)) * pi / 2), then
    clamped to ``[alpha_bar_min, alpha_bar_max]``. Unclamped, alpha_bar(1) = 1 and SNR(1) is infinite;
    the clamp keeps SNR, the DT loss weights (Eq. 8) and the posterior coefficients c_t finite. With the
    default ``alpha_bar_max = 0.9999`` the last DT block's weight (T/2) eta (SNR(T) - SNR(T-1)) is about
    5,000 for T = 10, eta = 0.1.

    Args:
        offset: the small offset s of Nichol & Dhariwal that keeps the noise level at the clean end from vanishing.
        alpha_bar_min: lower clamp of alpha_bar (the noisy end, t = 0); must be in [0, alpha_bar_max).
        alpha_bar_max: upper clamp of alpha_bar (the clean end, t = 1); must be < 1 so SNR stays finite.
    """

    def __init__(self, offset: float = 0.008, alpha_bar_min: float = 1e-4, alpha_bar_max: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 <= alpha_bar_min < alpha_bar_max < 1.0:
            raise ValueError(
                f"CosineSchedule needs 0 <= alpha_bar_min < alpha_bar_max < 1, got alpha_bar_min={alpha_bar_min}, "
                f"alpha_bar_max={alpha_bar_max}. alpha_bar_max = 1 would make SNR infinite at the clean end."
            )
        if offset < 0:
            raise ValueError(f"CosineSchedule offset must be >= 0, got {offset}.")
        self.offset = offset
        self.alpha_bar_min = alpha_bar_min
        self.alpha_bar_max = alpha_bar_max

    def _f(self, s: Tensor) -> Tensor:
        return torch.cos((s + self.offset) / (1.0 + self.offset) * (math.pi / 2)) ** 2

    def alpha_bar(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        raw = self._f(1.0 - t) / self._f(torch.zeros_like(t))
        return raw.clamp(self.alpha_bar_min, self.alpha_bar_max)
