"""Image files for predict: any size and mode converted to the dataset's (C, H, W) uint8; bad files named clearly."""

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_noprop.data import ImageDataModule
from lightning_noprop.data.images import NO_LABEL, ImageFiles, list_images, read_image
from lightning_noprop.errors import ImageFileError, UserError


def test_any_size_and_mode_is_converted_to_the_dataset_shape(tmp_path):
    rgb = np.zeros((40, 56, 3), dtype=np.uint8)
    rgb[:, :, 1] = 200  # green
    Image.fromarray(rgb).save(tmp_path / "wide.jpg")
    gray = read_image(tmp_path / "wide.jpg", (1, 28, 28))
    assert gray.shape == (1, 28, 28) and gray.dtype == torch.uint8
    assert abs(gray.float().mean().item() - 0.587 * 200) < 3  # PIL's luma of pure green
    Image.fromarray(np.full((28, 28), 77, dtype=np.uint8)).save(tmp_path / "gray.png")
    colour = read_image(tmp_path / "gray.png", (3, 32, 32))
    assert colour.shape == (3, 32, 32) and bool((colour == 77).all())


def test_a_28x28_grayscale_png_is_read_back_exactly(tmp_path):
    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(tmp_path / "digit.png")
    assert torch.equal(read_image(tmp_path / "digit.png", (1, 28, 28)), pixels[None])


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    # PIL's convert("L") clips a 16-bit image's values above 255 to 255: a digit came out as a white square
    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    deep = Image.fromarray(pixels.numpy().astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    deep.save(tmp_path / "digit16.png")
    assert torch.equal(read_image(tmp_path / "digit16.png", (1, 28, 28)), pixels[None])
    assert torch.equal(read_image(tmp_path / "digit16.png", (3, 28, 28)), pixels.expand(3, 28, 28))


def test_a_folder_is_read_by_image_suffix_in_name_order(tmp_path):
    for name in ("b.PNG", "a.jpeg", "c.png"):
        Image.new("L", (10, 12), 255).save(tmp_path / name, format="PNG" if name.lower().endswith("png") else "JPEG")
    (tmp_path / "labels.csv").write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.png"]
    files = ImageFiles(tmp_path, (1, 28, 28))
    image, label = files[1]
    assert len(files) == 3 and image.shape == (1, 28, 28) and label == NO_LABEL


def test_the_data_module_predicts_the_files_given_and_normalises_them_like_the_splits(tmp_path):
    Image.new("L", (28, 28), 0).save(tmp_path / "black.png")
    dm = ImageDataModule(synthetic=True, synthetic_size=64, val_size=16, predict_path=str(tmp_path / "black.png"))
    dm.setup("predict")
    images, labels = dm.on_after_batch_transfer(next(iter(dm.predict_dataloader())), 0)
    assert images.shape == (1, 1, 28, 28) and labels.tolist() == [NO_LABEL]
    assert torch.allclose(images, torch.full_like(images, -0.1307 / 0.3081))
    assert dm.test_set is None  # the test split is not read when files are predicted


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.png", "no such file or folder"),
        (lambda p: p, "holds no image files"),
        (lambda p: (p / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0") and p / "truncated.png", "not a readable image"),
        (lambda p: (p / "text.jpg").write_text("hello") and p / "text.jpg", "not a readable image"),
    ],
    ids=["missing", "empty_folder", "truncated", "text"],
)
def test_bad_paths_are_user_errors_that_name_them(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ImageFileError, match=message) as error:
        ImageFiles(path, (1, 28, 28))
    assert isinstance(error.value, UserError) and str(path) in str(error.value)
