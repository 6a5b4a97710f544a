"""Small models and batches shared by the strategy and module tests."""

from __future__ import annotations

import torch

from lightning_noprop.strategies import NoPropDT

IMAGE_SHAPE = (1, 8, 8)


def tiny_dt(num_blocks: int = 3, num_classes: int = 4, **kwargs) -> NoPropDT:
    strategy = NoPropDT(num_blocks=num_blocks, width=16, **kwargs)
    strategy.build(num_classes, IMAGE_SHAPE)
    return strategy


def batch(size: int = 6, num_classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(size, *IMAGE_SHAPE), torch.arange(size) % num_classes


def tiny(strategy_class, num_classes: int = 4, **kwargs):
    """A built strategy with narrow layers (8x8 images); CT/FM get a small schedule network and 20 sampler steps."""
    from lightning_noprop.strategies import NoPropCT

    options = {"width": 16, "inference_steps": 20}
    if strategy_class is NoPropCT and "noise_schedule" not in kwargs:
        from lightning_noprop.schedules import LearnedSchedule

        options["noise_schedule"] = LearnedSchedule(hidden=16)
    strategy = strategy_class(**{**options, **kwargs})
    strategy.build(num_classes, IMAGE_SHAPE)
    return strategy


def assert_trains_and_predicts(strategy) -> None:
    """One CT/FM loss on a small batch back-propagates to a finite value and a 5-step prediction has shape (B, m)."""
    x, y = batch()
    if strategy.requires_data_init:
        strategy.initialize_from_data(x, y)
    loss = strategy.loss(x, y)
    loss.loss.backward()
    assert torch.isfinite(loss.loss)
    assert strategy.eval().predict(x, 5).logits.shape == (6, 4)


def assert_standard_normal(first: torch.Tensor, second: torch.Tensor) -> None:
    """Two draws of z_0 (B, d), B * d >= 1000, look like independent N(0, I): mean ~0 and standard deviation ~1 over
    their values (bounds at ~5 standard errors), and they differ (fresh noise per call, not a fixed start)."""
    for z in (first, second):
        assert z.numel() >= 1000, "too few values for the bounds below"
        assert abs(z.mean().item()) < 0.15 and 0.9 < z.std().item() < 1.1, (z.mean().item(), z.std().item())
    assert not torch.allclose(first, second)


def sampler_starts(strategy, x: torch.Tensor, runs: int = 2) -> list[torch.Tensor]:
    """The z a CT/FM sampler feeds its network at t = 0, in each of ``runs`` predictions of x."""
    starts = []
    original = strategy.network.from_image_features

    def record_the_start(features, z, t):
        if t[0] == 0:
            starts.append(z.clone())
        return original(features, z, t)

    strategy.network.from_image_features = record_the_start
    for _ in range(runs):
        strategy.predict(x, num_steps=2)
    strategy.network.from_image_features = original
    return starts
