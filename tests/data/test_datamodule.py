import shutil

import pytest
import torch

from lightning_noprop.data import DATASETS, DatasetNotFoundError, ImageDataModule


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synthetic_data_has_the_dataset_shape(name):
    dm = ImageDataModule(dataset=name, synthetic=True, synthetic_size=64, val_size=16, batch_size=8)
    dm.setup("fit")
    dm.setup("test")
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, *DATASETS[name].image_shape) and images.dtype == torch.float32
    assert labels.max() < dm.num_classes == DATASETS[name].num_classes
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (48, 16, 16)


def test_validation_split_is_seeded_and_disjoint_from_training():
    def split(seed):
        dm = ImageDataModule(synthetic=True, synthetic_size=64, val_size=16, split_seed=seed)
        dm.setup("fit")
        return dm.train_set.tensors[0], dm.val_set.tensors[0]

    train, val = split(0)
    assert torch.equal(val, split(0)[1]) and not torch.equal(val, split(1)[1])
    train_rows = {tuple(r.flatten().tolist()) for r in train}
    assert not any(tuple(r.flatten().tolist()) in train_rows for r in val)


def test_no_validation_when_val_size_is_zero():
    dm = ImageDataModule(synthetic=True, synthetic_size=64, val_size=0)
    dm.setup("fit")
    assert dm.val_dataloader() == [] and len(dm.train_set) == 64


def test_too_large_validation_split_is_a_clear_error():
    with pytest.raises(ValueError, match="lower --data.val_size"):
        ImageDataModule(synthetic=True, synthetic_size=64, val_size=64).setup("fit")


def test_missing_dataset_names_folder_and_files(tmp_path):
    dm = ImageDataModule(dataset="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message and "--data.root" in message


def test_corrupt_dataset_is_reported(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in DATASETS["mnist"].files:
        shutil.copy(mnist_root / "MNIST" / "raw" / name, raw / name)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:1000])
    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        ImageDataModule(root=str(tmp_path), download=False).setup("fit")


def test_real_mnist_splits_and_normalisation(mnist_root):
    dm = ImageDataModule(root=str(mnist_root), download=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    images, _ = dm.training_images()
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        ImageDataModule(dataset="imagenet")
