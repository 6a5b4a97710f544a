"""Noise schedules: alpha_bar(t) on continuous time t in [0, 1], noise at t=0, clean at t=1.

NoProp runs time from noise to clean (spec: "alpha_bar_t increasing in t"), the reverse of the
usual diffusion convention. NoProp-DT evaluates a schedule on the grid t_i = i / T, NoProp-CT
on a per-sample t. Every schedule exposes the same quantities:

- ``alpha_bar(t)``: the signal fraction of q(z_t | y) = N(sqrt(alpha_bar) u_y, (1 - alpha_bar) I) (Eq. 6)
- ``snr(t)`` = alpha_bar / (1 - alpha_bar), ``log_snr(t)``
- ``snr_derivative(t)`` = dSNR/dt, the weight of NoProp-CT's loss (closed form; ``autograd_snr_derivative``
  computes the same by differentiating ``snr``)

Schedules are evaluated in float32 even under autocast: bf16 keeps ~3 significant digits, too few
for SNR near the clean end or for the differences of a 1000-step inference grid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError


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

    def snr_derivative(self, t: Tensor) -> Tensor:
        """dSNR/dt, same shape as ``t``; >= 0 because the schedule is monotone. Subclasses give closed forms;
        this default differentiates ``snr`` with autograd, keeping the graph so parameters get gradients."""
        return autograd_snr_derivative(self, t)


def autograd_snr_derivative(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """dSNR/dt by autograd through ``schedule.snr``, with ``create_graph`` so that a loss weighted by it still
    back-propagates into the schedule's parameters (NoProp-CT, App. B). t: any shape; returns the same shape."""
    with torch.enable_grad():
        t = t.detach().float().requires_grad_(True)
        snr = schedule.snr(t)
        (derivative,) = torch.autograd.grad(snr.sum(), t, create_graph=True)
    return derivative


def _at_least_float32(t: Tensor | float, like: Tensor) -> Tensor:
    """t on ``like``'s device in ``like``'s dtype but never below float32: float32 under autocast, float64 when the
    module is (precision "64-true", where a float32 t would not multiply the float64 weights)."""
    t = t if torch.is_tensor(t) else torch.tensor(t)
    return t.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


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
            raise ConfigurationError(
                f"CosineSchedule needs 0 <= alpha_bar_min < alpha_bar_max < 1, got alpha_bar_min={alpha_bar_min}, "
                f"alpha_bar_max={alpha_bar_max}. alpha_bar_max = 1 would make SNR infinite at the clean end."
            )
        if offset < 0:
            raise ConfigurationError(f"CosineSchedule offset must be >= 0, got {offset}.")
        self.offset = offset
        self.alpha_bar_min = alpha_bar_min
        self.alpha_bar_max = alpha_bar_max

    def _f(self, s: Tensor) -> Tensor:
        return torch.cos((s + self.offset) / (1.0 + self.offset) * (math.pi / 2)) ** 2

    def alpha_bar(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        raw = self._f(1.0 - t) / self._f(torch.zeros_like(t))
        return raw.clamp(self.alpha_bar_min, self.alpha_bar_max)

    def snr_derivative(self, t: Tensor) -> Tensor:
        """dSNR/dt = alpha_bar'(t) / (1 - alpha_bar)^2 with alpha_bar'(t) = sin(2 theta) (pi / 2) / ((1 + offset) f(0)),
        theta = ((1 - t + offset) / (1 + offset)) pi / 2; zero where the clamp is active."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        theta = (1.0 - t + self.offset) / (1.0 + self.offset) * (math.pi / 2)
        slope = torch.sin(2 * theta) * (math.pi / 2) / ((1.0 + self.offset) * self._f(torch.zeros_like(t)))
        raw = self._f(1.0 - t) / self._f(torch.zeros_like(t))
        inside = (raw > self.alpha_bar_min) & (raw < self.alpha_bar_max)
        alpha_bar = raw.clamp(self.alpha_bar_min, self.alpha_bar_max)
        return torch.where(inside, slope, torch.zeros_like(slope)) / (1.0 - alpha_bar) ** 2


class _PositiveLinear(nn.Linear):
    """Linear layer whose effective weights softplus(W) are positive, so it is increasing in every input."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, nn.functional.softplus(self.weight), self.bias)


class LearnedSchedule(NoiseSchedule):
    """The learned noise schedule of App. B (as in Variational Diffusion Models).

    The learned schedule of App. B (as in Variational Diffusion Models), in NoProp's time direction:

        SNR(t) = exp(-gamma(t)),   alpha_bar(t) = sigmoid(-gamma(t)),
        gamma(t) = gamma_0 + (gamma_1 - gamma_0) (1 - gamma_bar(t)),   gamma_bar(t) = (g(t) - g(0)) / (g(1) - g(0))

    with g(t) = softplus(w) t + positive-linear(sigmoid(positive-linear(t))), an MLP with two hidden-layer
    weights and a linear skip, all positive, so g and gamma_bar increase in t and gamma decreases. So
    gamma(0) = gamma_1 (the noisy end, SNR e^-gamma_1) and gamma(1) = gamma_0 (the clean end, SNR e^-gamma_0):
    the names follow VDM, where gamma_0 belongs to the clean end. The span gamma_1 - gamma_0 is floored at
    ``min_span`` so that training can never make the schedule decrease.

    Args:
        gamma_0: -log SNR at the clean end t = 1 at initialisation (spec: -7, SNR e^7).
        gamma_1: -log SNR at the noisy end t = 0 at initialisation (spec: 7, SNR e^-7); must exceed gamma_0.
        hidden: width of g's hidden layer (VDM: 1024).
        learn_endpoints: train gamma_0 and gamma_1 (the paper); False keeps them fixed and learns only the shape.
        min_span: the smallest gamma_1 - gamma_0 used, a guard against a decreasing (collapsed) schedule.
    """

    def __init__(
        self,
        gamma_0: float = -7.0,
        gamma_1: float = 7.0,
        hidden: int = 1024,
        learn_endpoints: bool = True,
        min_span: float = 1e-2,
    ) -> None:
        super().__init__()
        if not gamma_1 - gamma_0 > min_span:
            raise ConfigurationError(
                f"LearnedSchedule needs gamma_1 - gamma_0 > min_span ({min_span}), got gamma_0={gamma_0}, "
                f"gamma_1={gamma_1}: gamma_1 is -log SNR at the noisy end t=0 and must be the larger."
            )
        if hidden < 1:
            raise ConfigurationError(f"LearnedSchedule hidden must be >= 1, got {hidden}.")
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)), requires_grad=learn_endpoints)
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_1)), requires_grad=learn_endpoints)
        self.min_span = min_span
        self.skip = _PositiveLinear(1, 1, bias=False)  # a bias would cancel in gamma_bar
        self.hidden = _PositiveLinear(1, hidden)
        self.out = _PositiveLinear(hidden, 1, bias=False)

    def g(self, t: Tensor) -> Tensor:
        """The unnormalised monotone network g(t), same shape as ``t``."""
        return self._g(t, self._hidden_activation(t))

    def _hidden_activation(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.hidden(t.unsqueeze(-1)))  # (..., hidden)

    def _g(self, t: Tensor, hidden_activation: Tensor) -> Tensor:
        return (self.skip(t.unsqueeze(-1)) + self.out(hidden_activation)).squeeze(-1)

    def _ends(self, like: Tensor) -> Tensor:
        """g(0) and g(1), shape (2,), in ``like``'s dtype."""
        # Built on the device (no host-to-device copy), so the schedule can run inside a CUDA graph capture.
        return self.g(torch.linspace(0.0, 1.0, 2, device=like.device, dtype=like.dtype))

    def _gamma(self, g_t: Tensor, ends: Tensor) -> Tensor:
        """gamma from g(t) and g(0), g(1): gamma_0 + span (1 - (g(t) - g(0)) / (g(1) - g(0)))."""
        return self.gamma_0 + self.span() * (1.0 - (g_t - ends[0]) / (ends[1] - ends[0]))

    def gamma(self, t: Tensor) -> Tensor:
        """gamma(t) = -log SNR(t), same shape as ``t``, computed in float32 (also under autocast), or float64."""
        t = _at_least_float32(t, self.gamma_0)
        with torch.autocast(device_type=t.device.type, enabled=False):
            return self._gamma(self.g(t), self._ends(t))

    def span(self) -> Tensor:
        """gamma_1 - gamma_0, floored at ``min_span``."""
        return (self.gamma_1 - self.gamma_0).clamp_min(self.min_span)

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.gamma(t))

    def snr(self, t: Tensor) -> Tensor:
        return torch.exp(-self.gamma(t))

    def log_snr(self, t: Tensor) -> Tensor:
        return -self.gamma(t)

    def snr_derivative(self, t: Tensor) -> Tensor:
        """dSNR/dt = -gamma'(t) SNR(t) = span g'(t) / (g(1) - g(0)) SNR(t), with g' in closed form. The hidden
        layer and g(0), g(1) are evaluated once and shared by g(t), g'(t) and SNR(t)."""
        t = _at_least_float32(t, self.gamma_0)
        with torch.autocast(device_type=t.device.type, enabled=False):
            ends = self._ends(t)
            s = self._hidden_activation(t)
            w_hidden = nn.functional.softplus(self.hidden.weight).squeeze(-1)  # (hidden,)
            w_out = nn.functional.softplus(self.out.weight).squeeze(0)  # (hidden,)
            g_prime = nn.functional.softplus(self.skip.weight).squeeze() + (s * (1 - s) * w_hidden * w_out).sum(-1)
            snr = torch.exp(-self._gamma(self._g(t, s), ends))
            return self.span() * g_prime / (ends[1] - ends[0]) * snr
