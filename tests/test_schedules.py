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
