import math

import pytest
import torch

from lightning_noprop.nn import SinusoidalTimeEmbedding


def test_sinusoidal_embedding_values():
    embed = SinusoidalTimeEmbedding(dim=4, scale=1000.0, max_period=10_000.0)
    t = torch.tensor([0.0, 0.25])
    out = embed(t)
    frequencies = [1.0, 10_000 ** -0.5]
    expected = [[math.sin(1000 * s * f) for f in frequencies] + [math.cos(1000 * s * f) for f in frequencies] for s in (0.0, 0.25)]
    assert out.tolist() == [pytest.approx(row, abs=1e-4) for row in expected]


def test_nearby_times_on_a_1000_step_grid_are_distinguishable():
    embed = SinusoidalTimeEmbedding()
    out = embed(torch.tensor([0.500, 0.501]))
    assert (out[0] - out[1]).norm() > 0.5


def test_odd_dim_is_refused():
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(dim=63)
