"""The inference samplers against closed forms."""

import pytest
import torch

from lightning_noprop.diffusion import posterior_coefficients
from lightning_noprop.samplers import euler_integrate, posterior_chain
from lightning_noprop.schedules import CosineSchedule, LearnedSchedule


@pytest.mark.parametrize("num_steps", [1, 7, 1000])
def test_euler_follows_the_flow_matching_straight_path_exactly(num_steps):
    """v(z, t) = (u - z) / (1 - t) is the FM velocity towards a single point u; its ODE solution is the straight
    line z_t = t u + (1 - t) z_0, on which that field is the constant u - z_0, so Euler is exact at any N."""
    u, z_0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    seen = []

    def velocity(z, t):
        seen.append(t[0].item())
        expected = t.unsqueeze(1) * u + (1 - t.unsqueeze(1)) * z_0
        assert torch.allclose(z, expected), "Euler left the straight path"
        return (u - z) / (1 - t.unsqueeze(1))

    assert torch.allclose(euler_integrate(velocity, z_0, num_steps), u)
    assert seen == pytest.approx([k / num_steps for k in range(num_steps)]), "step k must be evaluated at t = k / N"


def test_euler_is_first_order_on_a_linear_ode():
    """dz/dt = lam z has z(1) = z_0 e^lam; Euler gives (1 + lam / N)^N z_0, with error ~ 1/N."""
    lam, z_0 = -2.0, torch.ones(1, 1, dtype=torch.float64)
    exact = z_0 * torch.exp(torch.tensor(lam, dtype=torch.float64))
    errors = [(euler_integrate(lambda z, t: lam * z, z_0, n) - exact).abs().item() for n in (10, 20, 40, 80)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert ratios == pytest.approx([2.0] * 3, rel=0.1), f"halving the step must halve the error: {ratios}"
    assert euler_integrate(lambda z, t: lam * z, z_0, 3).item() == pytest.approx((1 + lam / 3) ** 3)


@pytest.mark.parametrize("schedule", [CosineSchedule(), LearnedSchedule()], ids=["cosine", "learned"])
def test_noise_free_chain_with_an_oracle_keeps_the_forward_mean(schedule):
    """With u_hat = u_y, the posterior mean maps sqrt(ab_{k-1}) u to a_k u + b_k sqrt(ab_{k-1}) u = sqrt(ab_k) u."""
    grid = schedule.alpha_bar(torch.linspace(0, 1, 51)).detach().double()
    u = torch.randn(4, 6, dtype=torch.float64)
    z = posterior_chain(lambda k, z: u, grid[0].sqrt() * u, posterior_coefficients(grid), noise=False)
    assert torch.allclose(z, grid[-1].sqrt() * u, atol=1e-10)


def test_noisy_chain_with_an_oracle_samples_the_forward_marginal():
    """Ancestral sampling with the true u_y from z_0 ~ q(z_0|y) gives z_N ~ q(z_N|y) = N(sqrt(ab_N) u, (1 - ab_N) I)."""
    torch.manual_seed(0)
    grid = torch.tensor([0.05, 0.3, 0.6, 0.8], dtype=torch.float64)
    u = torch.full((200_000, 1), 1.5, dtype=torch.float64)
    z_0 = grid[0].sqrt() * u + (1 - grid[0]).sqrt() * torch.randn_like(u)
    z = posterior_chain(lambda k, z: u, z_0, posterior_coefficients(grid), noise=True)
    assert z.mean().item() == pytest.approx(grid[-1].sqrt().item() * 1.5, abs=0.01)
    assert z.var().item() == pytest.approx(1 - grid[-1].item(), abs=0.01)


def test_chain_stops_after_num_steps():
    grid = CosineSchedule().alpha_bar(torch.linspace(0, 1, 11))
    calls = []
    posterior_chain(lambda k, z: calls.append(k) or z, torch.zeros(2, 3), posterior_coefficients(grid), False, 4)
    assert calls == [0, 1, 2, 3]
