"""Auxiliary classifiers on feature maps, one per BWBPF block (spec BWBPF.md, "Splits and heads").

Like backbones these are recipes: the strategy calls ``make(in_channels, num_classes)`` once per block.
Both pool adaptively, so a head works on any spatial size (the public code's fixed avg_pool2d kernels
average only a corner of larger maps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn

from lightning_noprop.errors import ConfigurationError


class AuxiliaryClassifier(ABC):
    """A factory of classifiers mapping feature maps (B, C, H, W) to logits (B, m)."""

    @abstractmethod
    def make(self, in_channels: int, num_classes: int) -> nn.Module: ...


class LinearClassifier(AuxiliaryClassifier):
    """Adaptive average pool to 1x1 -> Linear(C -> m): the standard ResNet/VGG classifier."""

    def make(self, in_channels: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))


class ConvClassifier(AuxiliaryClassifier):
    """A convolutional auxiliary classifier: conv3x3, pooling and a two-layer MLP.

    conv3x3 (``channels``) -> BN -> ReLU -> adaptive average pool -> FC (``hidden``) -> ReLU -> FC (m):
    the richer head of InfoPro's "1c2f" kind.

    Args:
        channels: output channels of the conv (None: as many as its input).
        hidden: width of the hidden FC layer.
    """

    def __init__(self, channels: int | None = None, hidden: int = 256) -> None:
        if (channels is not None and channels < 1) or hidden < 1:
            raise ConfigurationError(f"ConvClassifier channels and hidden must be >= 1, got {channels} and {hidden}.")
        self.channels, self.hidden = channels, hidden

    def make(self, in_channels: int, num_classes: int) -> nn.Module:
        channels = self.channels or in_channels
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(channels, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, num_classes),
        )  # fmt: skip
