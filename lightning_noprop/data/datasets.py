"""The image-classification datasets the project reads, as a table, and their loading with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets as tv_datasets

from lightning_noprop.data.idx import idx_path, read_idx_split
from lightning_noprop.data.tiny_imagenet import read_tiny_imagenet
from lightning_noprop.errors import DatasetNotFoundError


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project needs to know about one dataset.

    Attributes:
        torchvision_class: the torchvision dataset (it knows the download URLs and checksums); None for a
            dataset read by ``reader`` that cannot be downloaded automatically.
        folder: the folder torchvision reads under ``root``.
        files: the files that must be in ``root/folder`` for an offline load (idx datasets: each plain or ``.gz``).
        num_classes: m.
        image_shape: (C, H, W).
        mean, std: per-channel statistics of the training split, for normalisation.
        source: where a user can get the files by hand.
        reader: (root/folder, train) -> (uint8 images (N, C, H, W), labels (N,)), for datasets torchvision lacks
            or reads only after unpacking (the idx files, read here from their ``.gz`` as well).
    """

    torchvision_class: type | None
    folder: str
    files: tuple[str, ...]
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    reader: Callable[[Path, bool], tuple[Tensor, Tensor]] | None = None


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        tv_datasets.MNIST, "MNIST/raw", _MNIST_FILES, 10, (1, 28, 28), (0.1307,), (0.3081,),
        "the four MNIST .gz files (shipped in the project's data/MNIST/raw) or their unpacked idx files",
        read_idx_split,
    ),
    "fashion_mnist": DatasetSpec(
        tv_datasets.FashionMNIST, "FashionMNIST/raw", _MNIST_FILES, 10, (1, 28, 28), (0.2860,), (0.3530,),
        "the four Fashion-MNIST .gz (or unpacked idx) files from github.com/zalandoresearch/fashion-mnist",
        read_idx_split,
    ),
    "cifar10": DatasetSpec(
        tv_datasets.CIFAR10, "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
        10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html, extracted",
    ),
    "cifar100": DatasetSpec(
        tv_datasets.CIFAR100, "cifar-100-python", ("train", "test", "meta"),
        100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "cifar-100-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html, extracted",
    ),
    "tiny_imagenet": DatasetSpec(
        None, "tiny-imagenet-200", ("wnids.txt", "val/val_annotations.txt"),
        200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped (it is not downloaded automatically)",
        read_tiny_imagenet,
    ),
}  # fmt: skip


def missing_files(spec: DatasetSpec, root: Path) -> list[str]:
    """The files of ``spec`` that are not in ``root/spec.folder`` (an idx file counts when its ``.gz`` is there)."""
    folder = root / spec.folder
    if spec.reader is read_idx_split:
        return [name for name in spec.files if idx_path(folder, name) is None]
    return [name for name in spec.files if not (folder / name).is_file()]


def not_found_message(name: str, spec: DatasetSpec, root: Path, reason: str) -> str:
    folder = (root / spec.folder).resolve()
    return (
        f"{name}: {reason}\n"
        f"  expected folder: {folder}\n"
        f"  expected files:  {', '.join(spec.files)}\n"
        f"  get them:        {spec.source}\n"
        f"Point --data.root at the folder that contains '{spec.folder.split('/')[0]}/' "
        f"(e.g. --data.root ../shared/datasets), or run once with internet and --data.download true."
    )


def download(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` with torchvision unless its files are already there."""
    spec = DATASETS[name]
    if not missing_files(spec, root):
        return
    if spec.torchvision_class is None:
        raise DatasetNotFoundError(not_found_message(name, spec, root, "not found, and it cannot be downloaded "
                                                     "automatically; download and unzip it by hand."))  # fmt: skip
    try:
        for train in (True, False):
            spec.torchvision_class(str(root), train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError depending on where it fails
        raise DatasetNotFoundError(
            not_found_message(name, spec, root, f"not found, and the download failed ({type(error).__name__}: {error}).")
        ) from error


def load_split(name: str, root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """Read one split from disk (never downloads): uint8 images (N, C, H, W) and int64 labels (N,)."""
    spec = DATASETS[name]
    missing = missing_files(spec, root)
    if missing:
        raise DatasetNotFoundError(not_found_message(name, spec, root, f"missing {', '.join(missing)}."))
    try:
        if spec.reader is not None:
            images, labels = spec.reader(root / spec.folder, train)
        else:
            dataset = spec.torchvision_class(str(root), train=train, download=False)
            images = torch.as_tensor(np.asarray(dataset.data))
            labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    except Exception as error:  # truncated idx files, bad pickles, failed checksums
        raise DatasetNotFoundError(
            not_found_message(name, spec, root, f"the files are there but could not be read ({type(error).__name__}: "
                              f"{error}); they are probably corrupt: delete them and download again.")
        ) from error
    # MNIST-like: (N, H, W); CIFAR: (N, H, W, C); readers: already (N, C, H, W).
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif spec.reader is None:
        images = images.permute(0, 3, 1, 2).contiguous()
    if tuple(images.shape[1:]) != spec.image_shape or images.shape[0] != labels.shape[0]:
        raise DatasetNotFoundError(
            not_found_message(name, spec, root, f"read images of shape {tuple(images.shape)} and {labels.shape[0]} "
                              f"labels, expected (N, *{spec.image_shape}); the files are probably corrupt.")
        )
    return images, labels


def synthetic_split(spec: DatasetSpec, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A learnable stand-in of the dataset's shape: per-class random templates plus noise, as uint8.

    The templates depend only on ``spec`` (seed 0), so train and test splits share them; ``seed`` draws the
    labels and the noise.
    """
    templates = torch.rand((spec.num_classes, *spec.image_shape), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, spec.num_classes, (size,), generator=generator)
    images = 0.6 * templates[labels] + 0.4 * torch.rand((size, *spec.image_shape), generator=generator)
    return (images * 255).round().to(torch.uint8), labels
