import math

import pytest
import torch

from lightning_noprop.schedules import CosineSchedule


def test_cosine_is_monotone_and_bounded_with_finite_snr():
    schedule = CosineSchedule()
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    alpha_bar = schedule.alpha_bar(t)
    assert torch.all(alpha_bar[1:] >= alpha_bar[:-1]), "alpha_bar must increase from noise (t=0) to clean (t=1)"
    assert alpha_bar.min() >= 1e-4 and alpha_bar.max() <= 0.9999
    snr = schedule.snr(t)
    assert torch.isfinite(snr).all() and torch.all(snr[1:] >= snr[:-1])
    assert torch.allclose(schedule.log_snr(t), snr.log())


def test_cosine_matches_nichol_dhariwal_with_flipped_time():
    schedule = CosineSchedule(offset=0.008, alpha_bar_min=0.0, alpha_bar_max=1 - 1e-12)
    s = 0.3  # diffusion-convention noise level 0.3 is NoProp time 0.7
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = f(s) / f(0.0)
    assert schedule.alpha_bar(torch.tensor(0.7, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-10)


def test_cosine_endpoints_are_the_clamps():
    schedule = CosineSchedule(alpha_bar_min=1e-3, alpha_bar_max=0.99)
    assert schedule.alpha_bar(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([1e-3, 0.99])


@pytest.mark.parametrize("kwargs", [{"alpha_bar_max": 1.0}, {"alpha_bar_min": 0.5, "alpha_bar_max": 0.4}, {"offset": -1}])
def test_cosine_rejects_bad_clamps(kwargs):
    with pytest.raises(ValueError, match="CosineSchedule"):
        CosineSchedule(**kwargs)


# ------------------------------------------------------------------------------ learned schedule (App. B)
from lightning_noprop.schedules import LearnedSchedule, autograd_snr_derivative  # noqa: E402


def _perturbed_learned_schedule(seed: int) -> LearnedSchedule:
    """A learned schedule whose network weights are far from their initialisation (any sign, large)."""
    torch.manual_seed(seed)
    schedule = LearnedSchedule(hidden=32)
    with torch.no_grad():
        for p in schedule.parameters():
            if p.dim() > 0:
                p.copy_(3 * torch.randn_like(p))
    return schedule


@pytest.mark.parametrize("seed", range(5))
def test_learned_schedule_is_monotone_for_any_weights(seed):
    schedule = _perturbed_learned_schedule(seed)
    t = torch.linspace(0, 1, 2001)
    alpha_bar = schedule.alpha_bar(t).detach()
    assert torch.all(alpha_bar[1:] >= alpha_bar[:-1]), "alpha_bar must increase from noise (t=0) to clean (t=1)"
    assert torch.all((alpha_bar > 0) & (alpha_bar < 1))


def test_learned_schedule_endpoints_are_as_configured():
    schedule = LearnedSchedule(gamma_0=-5.0, gamma_1=6.0)
    ends = torch.tensor([0.0, 1.0])
    assert schedule.log_snr(ends).tolist() == pytest.approx([-6.0, 5.0], abs=1e-5)  # SNR e^-gamma_1 at t=0
    assert schedule.alpha_bar(ends).tolist() == pytest.approx([torch.sigmoid(torch.tensor(-6.0)).item(),
                                                               torch.sigmoid(torch.tensor(5.0)).item()], rel=1e-5)  # fmt: skip
    default = LearnedSchedule()
    assert default.snr(ends).tolist() == pytest.approx([math.exp(-7), math.exp(7)], rel=1e-4)


def test_learned_schedule_log_snr_matches_alpha_bar():
    schedule = _perturbed_learned_schedule(0)
    t = torch.rand(100)
    alpha_bar = schedule.alpha_bar(t).double()
    assert torch.allclose(schedule.log_snr(t).double(), alpha_bar.log() - (-alpha_bar).log1p(), atol=1e-4)


@pytest.mark.parametrize("schedule", [LearnedSchedule(), _perturbed_learned_schedule(1), CosineSchedule()],
                         ids=["learned-init", "learned-perturbed", "cosine"])  # fmt: skip
def test_snr_derivative_is_nonnegative_finite_and_matches_autograd_and_finite_differences(schedule):
    t = torch.linspace(0.0, 1.0, 501)
    analytic = schedule.snr_derivative(t).detach()
    assert torch.isfinite(analytic).all() and (analytic >= 0).all()
    assert torch.allclose(analytic, autograd_snr_derivative(schedule, t).detach(), rtol=1e-4, atol=1e-4)
    # An independent check in float64: central differences of SNR on the interior (away from cosine's clamps).
    h = 1e-4
    inner = torch.linspace(0.05, 0.95, 91)
    with torch.no_grad():
        numeric = (schedule.snr(inner + h).double() - schedule.snr(inner - h).double()) / (2 * h)
    assert torch.allclose(schedule.snr_derivative(inner).detach().double(), numeric, rtol=2e-2, atol=1e-3)


def test_gradients_reach_every_schedule_parameter_through_the_snr_derivative():
    schedule = LearnedSchedule(hidden=16)
    t = torch.rand(64)
    (schedule.snr_derivative(t).mean() + schedule.alpha_bar(t).mean()).backward()
    for name, p in schedule.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_learned_schedule_never_decreases_even_if_the_endpoints_cross():
    schedule = LearnedSchedule(hidden=8)
    with torch.no_grad():
        schedule.gamma_0.fill_(3.0)
        schedule.gamma_1.fill_(-3.0)  # training pushed them past each other
    assert (schedule.snr_derivative(torch.rand(32)) >= 0).all()


def test_learned_schedule_stays_float32_under_autocast():
    schedule = LearnedSchedule(hidden=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert schedule.alpha_bar(torch.rand(4)).dtype == torch.float32
        assert schedule.snr_derivative(torch.rand(4)).dtype == torch.float32


def test_learned_schedule_follows_a_float64_model():
    schedule = LearnedSchedule(hidden=8).double()  # precision "64-true"
    for t in (torch.rand(4), torch.rand(4, dtype=torch.float64)):
        assert schedule.alpha_bar(t).dtype == schedule.snr_derivative(t).dtype == torch.float64


def test_learned_schedule_rejects_reversed_endpoints():
    with pytest.raises(ValueError, match="gamma_1 is -log SNR at the noisy end"):
        LearnedSchedule(gamma_0=7.0, gamma_1=-7.0)


def test_fixed_endpoints_are_not_trainable():
    schedule = LearnedSchedule(learn_endpoints=False)
    assert not schedule.gamma_0.requires_grad and not schedule.gamma_1.requires_grad
