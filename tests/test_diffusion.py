import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_noprop.diffusion import kl_to_standard_normal, posterior_coefficients, sample_q
from lightning_noprop.schedules import CosineSchedule


def test_sample_q_moments_use_sqrt_alpha_bar():
    u = torch.tensor([[2.0, -1.0, 0.5]]).expand(200_000, 3)
    alpha_bar = torch.tensor(0.36)
    z = sample_q(u, alpha_bar)
    assert torch.allclose(z.mean(0), 0.6 * u[0], atol=0.01), "mean must be sqrt(alpha_bar) u, not alpha_bar u"
    assert torch.allclose(z.var(0), torch.full((3,), 0.64), atol=0.01)


def test_sample_q_per_sample_alpha_bar():
    u = torch.ones(100_000, 2)
    alpha_bar = torch.where(torch.arange(100_000) % 2 == 0, torch.tensor(0.25), torch.tensor(0.81))
    z = sample_q(u, alpha_bar)
    assert z[::2].mean().item() == pytest.approx(0.5, abs=0.01)
    assert z[1::2].mean().item() == pytest.approx(0.9, abs=0.01)
    assert z[1::2].var().item() == pytest.approx(0.19, abs=0.01)


@pytest.mark.parametrize("alpha_bar_0", [1e-4, 0.05, 0.5])
def test_kl_closed_form_matches_torch_distributions(alpha_bar_0):
    u = torch.randn(7, 5, dtype=torch.float64)
    a = torch.tensor(alpha_bar_0, dtype=torch.float64)
    q = Normal(a.sqrt() * u, (1 - a).sqrt().expand_as(u))
    expected = kl_divergence(q, Normal(torch.zeros_like(u), torch.ones_like(u))).sum(-1)
    assert torch.allclose(kl_to_standard_normal(u, a), expected)


def _gaussian_conditional(alpha_bar_prev, alpha_bar):
    """z_t | z_{t-1}, u from the joint Gaussian of (z_t, z_{t-1}) given u, built from the forward process
    z_{t-1} = sqrt(alpha) z_t + sqrt(1 - alpha) eps: returns the coefficients of u and z_{t-1}, and the variance."""
    alpha = alpha_bar_prev / alpha_bar
    var_t, var_prev = 1 - alpha_bar, 1 - alpha_bar_prev
    cov = alpha.sqrt() * var_t
    gain = cov / var_prev
    coef_u = alpha_bar.sqrt() - gain * alpha_bar_prev.sqrt()
    return coef_u, gain, var_t - cov**2 / var_prev


@pytest.mark.parametrize("num_blocks", [3, 10, 50])
def test_posterior_coefficients_equal_gaussian_conditioning(num_blocks):
    alpha_bar = CosineSchedule().alpha_bar(torch.linspace(0, 1, num_blocks + 1, dtype=torch.float64))
    coefficients = posterior_coefficients(alpha_bar)
    coef_u, gain, variance = _gaussian_conditional(alpha_bar[:-1], alpha_bar[1:])
    assert torch.allclose(coefficients.a, coef_u)
    assert torch.allclose(coefficients.b, gain)
    assert torch.allclose(coefficients.c, variance)
    assert torch.isfinite(coefficients.c).all() and (coefficients.c > 0).all()


def test_posterior_step_maps_marginals_to_marginals():
    """If z_{t-1} ~ q(z_{t-1}|y), one Eq. 3 step with the true u_y gives z_t ~ q(z_t|y) exactly."""
    alpha_bar = torch.rand(9, dtype=torch.float64).sort().values * 0.98 + 0.01
    c = posterior_coefficients(alpha_bar)
    mean_prev, var_prev = alpha_bar[:-1].sqrt(), 1 - alpha_bar[:-1]
    assert torch.allclose(c.a + c.b * mean_prev, alpha_bar[1:].sqrt())
    assert torch.allclose(c.b**2 * var_prev + c.c, 1 - alpha_bar[1:])
