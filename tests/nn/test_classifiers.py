import pytest
import torch
from torch import nn

from lightning_noprop.nn import ConvClassifier, LinearClassifier


@pytest.mark.parametrize("factory", [LinearClassifier(), ConvClassifier(channels=16, hidden=32)], ids=["linear", "conv"])
@pytest.mark.parametrize("size", [1, 4, 32])
def test_classifiers_pool_adaptively_over_any_map_size(factory, size):
    head = factory.make(8, 10)
    assert head(torch.randn(3, 8, size, size)).shape == (3, 10)


def test_every_spatial_position_counts_in_the_linear_head():
    """The public code's fixed avg_pool2d kernels average only a corner of larger maps; adaptive pooling does not."""
    head = LinearClassifier().make(1, 2)
    x = torch.zeros(1, 1, 16, 16)
    corner_only = head(x).clone()
    x[..., 15, 15] = 256.0
    assert not torch.allclose(head(x), corner_only)


def test_conv_classifier_structure():
    head = ConvClassifier(hidden=64).make(32, 10)
    kinds = [type(m) for m in head]
    assert kinds[:3] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and head[0].out_channels == 32
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [64, 10]
