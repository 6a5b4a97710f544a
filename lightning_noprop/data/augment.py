"""Batched training augmentation on the device: random crop with zero padding and horizontal flip."""

from __future__ import annotations

import torch
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int, flip: bool = True) -> Tensor:
    """Per-sample random crop of the zero-padded images back to their size, then a random horizontal flip.

    The batched equivalent of torchvision's RandomCrop(size, padding) + RandomHorizontalFlip() on (B, C, H, W)
    images of any dtype (the padding is 0, black for uint8 pixels). Draws from the global RNG of the images' device.
    """
    batch, _, height, width = images.shape
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
        left = torch.randint(0, 2 * padding + 1, (batch,), device=images.device)
        rows = (top[:, None] + torch.arange(height, device=images.device))[:, :, None]  # (B, H, 1)
        cols = (left[:, None] + torch.arange(width, device=images.device))[:, None, :]  # (B, 1, W)
        index = torch.arange(batch, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        mirror = torch.rand(batch, device=images.device) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images.contiguous()
