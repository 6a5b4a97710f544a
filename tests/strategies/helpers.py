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
