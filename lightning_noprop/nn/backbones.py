"""Backbones that BWBPF cuts into blocks: ResNet-18/34/50/101/152 and VGG-11/13/16/19 with BatchNorm.

A backbone is a recipe, not a module: ``stages(in_channels)`` builds its layers as a list of stages, each a list
of units (the stem, residual units, conv stages), and ``split(num_blocks)`` groups those units into K blocks by a
rule, so that no split is ever written by hand (spec BWBPF.md: the public code's hand-written 12/16-block splits are
wrong). The architectures follow torchvision's (ResNet v1.5: stride on the 3x3 conv of a bottleneck), and their
parameter counts match torchvision's models (tested).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.pooling import MaxPool2d


def near_equal_chunks(items: list, n: int) -> list[list]:
    """``items`` cut into ``n`` consecutive non-empty chunks whose sizes differ by at most one (larger first)."""
    if not 1 <= n <= len(items):
        raise ValueError(f"cannot cut {len(items)} items into {n} non-empty chunks")
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


class Backbone(ABC):
    """A network described as stages of units, and a rule to split it into blocks."""

    @abstractmethod
    def stages(self, in_channels: int) -> list[list[nn.Module]]:
        """Freshly built layers: a list of stages, each a list of units applied in order."""

    @abstractmethod
    def split(self, stages: list[list[nn.Module]], num_blocks: int) -> list[list[nn.Module]]:
        """Group the units of ``stages`` into ``num_blocks`` consecutive blocks, each unit exactly once."""

    @abstractmethod
    def describe(self) -> str:
        """A short name such as "resnet18-cifar", recorded in checkpoints."""


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or 1x1-conv) shortcut: the unit of ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, with BN and a shortcut: the unit of ResNet-50/101/152."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


_RESNETS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
            101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}  # fmt: skip


class ResNet(Backbone):
    """ResNet-``depth`` without its classifier (the blocks' heads classify).

    Split rule (spec): K = 1 is the whole network; K = 2, 3, 4 group [stem + layer1], [layer2], [layer3], [layer4]
    into K near-equal consecutive groups (K = 4: one each); K > 4 keeps [stem + layer1], [layer2] and [layer4]
    whole and cuts layer3 into K - 3 near-equal chunks of residual units (so K <= 3 + len(layer3)).

    Args:
        depth: 18, 34, 50, 101 or 152.
        stem: "cifar" (3x3 conv, stride 1, no max-pool; for 32x32 images) or "imagenet" (7x7 conv, stride 2,
            3x3 max-pool; for Tiny-ImageNet/ImageNet).
        width: channels of the first stage (standard: 64; stages have width x 1, 2, 4, 8).
    """

    def __init__(self, depth: Literal[18, 34, 50, 101, 152] = 18, stem: Literal["cifar", "imagenet"] = "cifar",
                 width: int = 64) -> None:  # fmt: skip
        if depth not in _RESNETS:
            raise ConfigurationError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}.")
        if stem not in ("cifar", "imagenet"):
            raise ConfigurationError(f"ResNet stem must be 'cifar' or 'imagenet', got {stem!r}.")
        if width < 1:
            raise ConfigurationError(f"ResNet width must be >= 1, got {width}.")
        self.depth, self.stem, self.width = depth, stem, width

    def stages(self, in_channels: int) -> list[list[nn.Module]]:
        unit, counts = _RESNETS[self.depth]
        if self.stem == "cifar":
            stem = nn.Sequential(nn.Conv2d(in_channels, self.width, 3, 1, 1, bias=False), nn.BatchNorm2d(self.width),
                                 nn.ReLU(inplace=True))  # fmt: skip
        else:
            stem = nn.Sequential(nn.Conv2d(in_channels, self.width, 7, 2, 3, bias=False), nn.BatchNorm2d(self.width),
                                 nn.ReLU(inplace=True), MaxPool2d(3, 2, 1))  # fmt: skip
        stages: list[list[nn.Module]] = [[stem]]
        channels = self.width
        for i, count in enumerate(counts):
            planes = self.width * 2**i
            units = []
            for j in range(count):
                units.append(unit(channels, planes, stride=2 if (i > 0 and j == 0) else 1))
                channels = planes * unit.expansion
            stages.append(units)
        return stages

    def split(self, stages: list[list[nn.Module]], num_blocks: int) -> list[list[nn.Module]]:
        stem, layer1, layer2, layer3, layer4 = stages
        groups = [stem + layer1, layer2, layer3, layer4]
        if num_blocks == 1:
            return [[u for g in groups for u in g]]
        if num_blocks <= 4:
            return [[u for g in chunk for u in g] for chunk in near_equal_chunks(groups, num_blocks)]
        if num_blocks - 3 > len(layer3):
            raise ConfigurationError(
                f"{self.describe()} has {len(layer3)} residual units in layer3, so it splits into at most "
                f"{3 + len(layer3)} blocks; got num_blocks={num_blocks}."
            )
        return [stem + layer1, layer2, *near_equal_chunks(layer3, num_blocks - 3), layer4]

    def describe(self) -> str:
        return f"resnet{self.depth}-{self.stem}" + ("" if self.width == 64 else f"-w{self.width}")


_VGGS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(Backbone):
    """VGG-``depth`` with BatchNorm, without its classifier (the blocks' heads classify).

    VGG-``depth`` with BatchNorm (conv3x3-BN-ReLU, max-pool after each of 5 stages of 64/128/256/512/512
    channels), without its classifier. Split rule: the 5 stages grouped into K <= 5 near-equal consecutive blocks
    (K = 5: one stage each, the spec's VGG-19 split).

    Args:
        depth: 11, 13, 16 or 19.
    """

    def __init__(self, depth: Literal[11, 13, 16, 19] = 19) -> None:
        if depth not in _VGGS:
            raise ConfigurationError(f"VGG depth must be one of {sorted(_VGGS)}, got {depth}.")
        self.depth = depth

    def stages(self, in_channels: int) -> list[list[nn.Module]]:
        stages, channels = [], in_channels
        for convs, width in zip(_VGGS[self.depth], (64, 128, 256, 512, 512)):
            units: list[nn.Module] = []
            for _ in range(convs):
                units.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                                           nn.ReLU(inplace=True)))  # fmt: skip
                channels = width
            units.append(MaxPool2d(2))
            stages.append(units)
        return stages

    def split(self, stages: list[list[nn.Module]], num_blocks: int) -> list[list[nn.Module]]:
        if num_blocks > len(stages):
            raise ConfigurationError(f"{self.describe()} has {len(stages)} stages, so it splits into at most {len(stages)} "
                             f"blocks; got num_blocks={num_blocks}.")  # fmt: skip
        return [[u for stage in chunk for u in stage] for chunk in near_equal_chunks(stages, num_blocks)]

    def describe(self) -> str:
        return f"vgg{self.depth}-bn"
