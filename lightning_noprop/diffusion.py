"""The maths of NoProp's label-noising process, shared by the NoProp strategies.

Time runs from noise (t = 0) to clean (t = T or 1); alpha_bar increases with t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def sample_q(u: Tensor, alpha_bar: Tensor) -> Tensor:
    """Draw z ~ q(z | y) = N(sqrt(alpha_bar) u_y, (1 - alpha_bar) I)  (Eq. 6).

    u: (B, d) clean embeddings; alpha_bar: scalar or (B,) (one time per sample). Returns (B, d).
    """
    alpha_bar = alpha_bar.reshape(-1, 1) if alpha_bar.dim() == 1 else alpha_bar
    return alpha_bar.sqrt() * u + (1.0 - alpha_bar).sqrt() * torch.randn_like(u)


def standard_normal_start(batch_size: int, embedding: Tensor) -> Tensor:
    """z_0 ~ N(0, I), the start of every sampler (Eq. 3, the Euler ODE, the backprop chain): (B, d) for W_Embed (m, d).

    Drawn on W_Embed's device in its dtype, never below float32: the blocks' weights share that dtype (float64
    under precision "64-true", where a float32 z_0 would not multiply them), and ``mix_embeddings`` returns at
    least float32, so the state keeps one dtype along the chain.
    """
    dtype = torch.promote_types(embedding.dtype, torch.float32)
    return torch.randn(batch_size, embedding.shape[1], device=embedding.device, dtype=dtype)


def kl_to_standard_normal(u: Tensor, alpha_bar_0: Tensor) -> Tensor:
    """KL( q(z_0 | y) || N(0, I) ) per sample, (B,), for u: (B, d).

    = 0.5 [alpha_bar_0 ||u||^2 - d alpha_bar_0 - d log(1 - alpha_bar_0)]  (the KL term of Eq. 8).
    """
    d = u.shape[-1]
    return 0.5 * (alpha_bar_0 * u.pow(2).sum(-1) - d * alpha_bar_0 - d * torch.log1p(-alpha_bar_0))


@dataclass
class PosteriorCoefficients:
    """Coefficients of q(z_t | z_{t-1}, y) = N(a_t u_y + b_t z_{t-1}, c_t I), the update of Eq. 3.

    Each tensor has one entry per step t = 1..T (index t - 1).
    """

    a: Tensor
    b: Tensor
    c: Tensor


def posterior_coefficients(alpha_bar: Tensor) -> PosteriorCoefficients:
    """a_t, b_t, c_t for a grid alpha_bar of shape (T + 1,), alpha_bar[0] the noisiest.

    With alpha_{t-1} = alpha_bar_{t-1} / alpha_bar_t:
      a_t = sqrt(alpha_bar_t) (1 - alpha_{t-1}) / (1 - alpha_bar_{t-1})
      b_t = sqrt(alpha_{t-1}) (1 - alpha_bar_t) / (1 - alpha_bar_{t-1})
      c_t = (1 - alpha_bar_t) (1 - alpha_{t-1}) / (1 - alpha_bar_{t-1})
    """
    assert alpha_bar.dim() == 1 and alpha_bar.numel() >= 2, f"alpha_bar must be (T+1,), got {tuple(alpha_bar.shape)}"
    prev, cur = alpha_bar[:-1], alpha_bar[1:]
    alpha_prev = prev / cur
    a = cur.sqrt() * (1.0 - alpha_prev) / (1.0 - prev)
    b = alpha_prev.sqrt() * (1.0 - cur) / (1.0 - prev)
    c = (1.0 - cur) * (1.0 - alpha_prev) / (1.0 - prev)
    return PosteriorCoefficients(a=a, b=b, c=c)


def mix_embeddings(weights: Tensor, embedding: Tensor) -> Tensor:
    """weights (B, m) @ W_Embed (m, d) -> (B, d), in float32 even under autocast.

    The denoising loss compares this to u_y under weights of up to ~10^4 (SNR differences, SNR'(t)); a bf16
    matmul would round the mixture to ~3 significant digits and put a floor under that loss.
    """
    dtype = torch.promote_types(torch.promote_types(weights.dtype, embedding.dtype), torch.float32)  # never below fp32
    with torch.autocast(device_type=weights.device.type, enabled=False):
        return weights.to(dtype) @ embedding.to(dtype)
