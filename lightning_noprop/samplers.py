"""Inference samplers that turn noise z_0 ~ N(0, I) into a label-space state, shared by the NoProp strategies.

Both take the network as a callable ``step_fn(k, z)`` for step k = 0..N-1 applied to the current state z
(B, d), so NoProp-DT (block k) and NoProp-CT/FM (one network at time t_k = k / N) use the same loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_noprop.diffusion import PosteriorCoefficients

StepFn = Callable[[int, Tensor], Tensor]


def posterior_chain(denoise: StepFn, z: Tensor, coefficients: PosteriorCoefficients, noise: bool,
                    num_steps: int | None = None) -> Tensor:  # fmt: skip
    """Eq. 3: z_{k+1} = a_{k+1} u_hat(k, z_k) + b_{k+1} z_k (+ sqrt(c_{k+1}) eps when ``noise``).

    denoise: (k, z_k) -> u_hat (B, d), the clean-embedding estimate at step k; z: (B, d) the start z_0;
    coefficients: a, b, c of shape (N,); num_steps: stop after this many steps (default N). Returns (B, d).
    """
    steps = coefficients.a.numel() if num_steps is None else num_steps
    assert 1 <= steps <= coefficients.a.numel(), f"num_steps must be in [1, {coefficients.a.numel()}], got {steps}"
    a, b, c_sqrt = coefficients.a.to(z.dtype), coefficients.b.to(z.dtype), coefficients.c.sqrt().to(z.dtype)
    for k in range(steps):
        z = a[k] * denoise(k, z) + b[k] * z
        if noise:
            z = z + c_sqrt[k] * torch.randn_like(z)
    return z


def euler_integrate(velocity: Callable[[Tensor, Tensor], Tensor], z: Tensor, num_steps: int) -> Tensor:
    """Explicit Euler for dz/dt = v(z, t) from t = 0 to 1: z <- z + (1 / N) v(z, k / N), k = 0..N-1.

    velocity: (z (B, d), t (B,)) -> (B, d); z: (B, d) the state at t = 0. Returns the state at t = 1 (B, d).
    """
    assert num_steps >= 1, f"num_steps must be >= 1, got {num_steps}"
    dt = 1.0 / num_steps
    for k in range(num_steps):
        z = z + dt * velocity(z, torch.full((z.shape[0],), k * dt, device=z.device, dtype=z.dtype))
    return z
