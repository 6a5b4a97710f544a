"""Reading the tiny-imagenet-200 folder (200 classes, 64x64 RGB) into memory.

Layout (as unzipped from http://cs231n.stanford.edu/tiny-imagenet-200.zip):
    tiny-imagenet-200/wnids.txt                      the 200 class ids, one per line (label = line number)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 training images per class
    tiny-imagenet-200/val/images/*.JPEG              10,000 labelled images
    tiny-imagenet-200/val/val_annotations.txt        "<file>\t<wnid>\t..." per line
The official test images carry no labels, so the project's test split is the labelled val folder, and its
validation split is held out of train, as for every dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lightning_noprop.errors import DatasetNotFoundError


def read_tiny_imagenet(folder: Path, train: bool) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, 64, 64) and int64 labels (N,) of the train split or of the labelled val split."""
    wnids = (folder / "wnids.txt").read_text().split()
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    if train:
        files = [(path, label_of[wnid]) for wnid in wnids for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG"))]
    else:
        rows = [line.split("\t") for line in (folder / "val" / "val_annotations.txt").read_text().splitlines() if line.strip()]
        files = [(folder / "val" / "images" / row[0], label_of[row[1]]) for row in rows]
    if not files:
        raise DatasetNotFoundError(f"no images found under {folder / ('train' if train else 'val')}")
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels
