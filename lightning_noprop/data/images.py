"""Image files to predict (``--data.predict_path``): one image or a folder of them, converted to the dataset's shape.

PNG and JPEG (and the other formats PIL reads) of any size and mode are converted to the dataset's channels
(grayscale for MNIST, RGB for CIFAR) and resized to its height and width, as uint8 like the datasets themselves;
the data module normalises them per batch as it does every split. Images are not inverted, cropped or centred:
MNIST's digits are white on black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from lightning_noprop.errors import ImageFileError

#: The files of a folder that are read; a single file given by name is read whatever its suffix.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: The label of an image file: it has none.
NO_LABEL = -1


def list_images(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else the image files directly in the folder (by suffix), sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageFileError(f"--data.predict_path {path}: no such file or folder.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageFileError(f"--data.predict_path {path}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def read_image(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """The image at ``path`` as uint8 (C, H, W) of ``shape``: converted to 1 (grayscale) or 3 (RGB) channels, resized."""
    channels, height, width = shape
    if channels not in (1, 3):
        raise ValueError(f"images can be converted to 1 or 3 channels, not {channels}")
    try:
        with Image.open(path) as image:
            image = _to_8_bits(image).convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageFileError(f"{path}: not a readable image ({type(error).__name__}: {error}); predict reads PNG "
                             "and JPEG files (any size, converted to the dataset's channels and size).") from error  # fmt: skip


def _to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (PNG's, modes I;16* and I) scaled to 8 bits (65535 -> 255); PIL's own conversion
    clips every value above 255 to white. Other modes are PIL's to convert."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray(np.round(values / 257).astype(np.uint8))


class ImageFiles(Dataset):
    """Image files read once into memory as uint8 (N, C, H, W); item i is (image (C, H, W), ``NO_LABEL``).

    Args:
        path: one image file, or a folder whose image files (by suffix) are read in name order.
        shape: (C, H, W) the images are converted to (the dataset's).
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int]) -> None:
        self.files = list_images(Path(path))
        self.images = torch.stack([read_image(file, shape) for file in self.files])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], NO_LABEL
