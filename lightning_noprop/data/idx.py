"""Reading MNIST-format idx files (MNIST, Fashion-MNIST), plain or gzipped, without unpacking them on disk.

torchvision downloads the four ``*.gz`` files and unpacks them beside themselves; the project ships only the
``.gz`` files of MNIST (data/MNIST/raw), so either form is read, the plain file first.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_SPLIT_PREFIX = {True: "train", False: "t10k"}


def idx_path(folder: Path, name: str) -> Path | None:
    """``folder/name`` or, failing that, ``folder/name.gz``; None when neither is a file."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an idx file (``.gz`` or plain): images (N, H, W) or labels (N,)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path.name} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path.name} holds {len(data) - offset} bytes of data, its header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_idx_split(folder: Path, train: bool) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 1, H, W) and int64 labels (N,) of the train or test split in ``folder``."""
    prefix = _SPLIT_PREFIX[train]
    arrays = []
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = idx_path(folder, name)
        if path is None:
            raise FileNotFoundError(f"{folder / name} (or .gz)")
        arrays.append(read_idx(path))
    images, labels = arrays
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
