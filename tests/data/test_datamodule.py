import shutil

import pytest
import torch

from lightning_noprop.data import DATASETS, DatasetNotFoundError, ImageDataModule
from lightning_noprop.data.idx import idx_path, read_idx_split


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
    for name in DATASETS["mnist"].files:  # the project's .gz files (or unpacked ones under $LIGHTNING_NOPROP_DATA)
        source = idx_path(mnist_root / "MNIST" / "raw", name)
        shutil.copy(source, raw / source.name)
    (images,) = raw.glob("train-images-idx3-ubyte*")
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        ImageDataModule(root=str(tmp_path), download=False).setup("fit")


def test_real_mnist_splits_and_normalisation(mnist_root):
    dm = ImageDataModule(root=str(mnist_root), download=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    images, _ = dm.training_images()
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02


def test_idx_files_read_from_gz_equal_the_unpacked_ones(tmp_path, mnist_root):
    """The shipped .gz files are read without unpacking them, to the same tensors as the plain idx files."""
    import gzip

    source = mnist_root / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = idx_path(source, name)
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        (tmp_path / name).write_bytes(data)
    plain_images, plain_labels = read_idx_split(tmp_path, train=False)
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (gz / f"{name}.gz").write_bytes(gzip.compress((tmp_path / name).read_bytes(), compresslevel=1))
    images, labels = read_idx_split(gz, train=False)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.long
    assert torch.equal(images, plain_images) and torch.equal(labels, plain_labels)


def test_the_gz_files_alone_train_offline_without_a_download(tmp_path, mnist_root, monkeypatch):
    """With only the four .gz files (as shipped in data/MNIST/raw), download=True downloads nothing and fit reads them."""
    import dataclasses

    from lightning_noprop.data import datasets

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in DATASETS["mnist"].files:
        shutil.copy(mnist_root / "MNIST" / "raw" / f"{name}.gz", raw)

    def no_network(*args, **kwargs):
        raise AssertionError("torchvision was asked to download")

    monkeypatch.setitem(datasets.DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], torchvision_class=no_network))
    dm = ImageDataModule(root=str(tmp_path), download=True, val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 55_000 and sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in DATASETS["mnist"].files)


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        ImageDataModule(dataset="imagenet")


# ------------------------------------------------------------------------------------- augmentation
from lightning_noprop.data.augment import random_crop_flip  # noqa: E402


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    images = torch.arange(1, 2 * 3 * 8 * 8 + 1, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop_flip(images, padding=2, flip=False)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows), "each output must be one crop of its padded input"


def test_flip_mirrors_about_half_the_batch():
    torch.manual_seed(0)
    images = torch.randn(400, 1, 4, 4)
    out = random_crop_flip(images, padding=0)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]).float().mean()
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)]).float().mean()
    assert 0.4 < flipped < 0.6 and flipped + kept == 1


def test_augmentation_only_on_training_batches():
    data = ImageDataModule(dataset="cifar10", synthetic=True, synthetic_size=64, val_size=16, batch_size=16, augment=True)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))

    class Stage:
        training = False

    data.trainer = Stage()
    assert torch.equal(data.on_after_batch_transfer(batch, 0)[0], data.normalize_images(batch[0]))
    Stage.training = True
    assert not torch.equal(data.on_after_batch_transfer(batch, 0)[0], data.normalize_images(batch[0]))


# ------------------------------------------------------------------------------------- Tiny-ImageNet
def _fake_tiny_imagenet(root):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rows = []
    for label, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (label * 200, i * 50, 0)).save(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        name = f"val_{label}.JPEG"
        Image.new("RGB", (64, 64), (label * 200, 0, 0)).save(folder / "val" / "images" / name)
        rows.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_tiny_imagenet_reads_the_folder_layout(tmp_path):
    _fake_tiny_imagenet(tmp_path)
    data = ImageDataModule(dataset="tiny_imagenet", root=str(tmp_path), download=False, val_size=2, batch_size=2)
    assert data.num_classes == 200 and data.image_shape == (3, 64, 64)
    data.setup("fit")
    data.setup("test")
    images, labels = data.test_set.tensors
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8 and labels.tolist() == [0, 1]
    assert images[1, 0].float().mean() > 150 and images[0, 0].float().mean() < 50, "labels follow wnids.txt order"
    assert len(data.train_set) + len(data.val_set) == 6


def test_missing_tiny_imagenet_says_where_to_get_it(tmp_path):
    from lightning_noprop.data import DatasetNotFoundError

    data = ImageDataModule(dataset="tiny_imagenet", root=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded automatically") as error:
        data.prepare_data()
    assert "tiny-imagenet-200.zip" in str(error.value) and "wnids.txt" in str(error.value)


def test_eval_batch_size_applies_to_validation_test_and_predict_only():
    dm = ImageDataModule(synthetic=True, synthetic_size=64, val_size=32, batch_size=8, eval_batch_size=16)
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_dataloader().batch_size == 8
    assert dm.val_dataloader().batch_size == dm.test_dataloader().batch_size == dm.predict_dataloader().batch_size == 16
    default = ImageDataModule(synthetic=True, synthetic_size=64, batch_size=8)
    default.setup("test")
    assert default.test_dataloader().batch_size == 8
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        ImageDataModule(synthetic=True, eval_batch_size=0)


def test_under_ddp_each_evaluation_image_is_on_exactly_one_rank():
    """val/test/predict: the ranks' shares partition the set (torch's DistributedSampler would pad 25 to 26)."""
    from types import SimpleNamespace

    shares = {"val": [], "test": [], "predict": []}
    for rank in range(2):
        dm = ImageDataModule(synthetic=True, synthetic_size=100, val_size=25, batch_size=8)
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}, current_epoch=0)
        for stage in ("fit", "test", "predict"):
            dm.setup(stage)
        train = dm.train_dataloader().sampler  # training: this rank's share, in the (seed, epoch) order
        assert (type(train).__name__, train.num_replicas, train.rank) == ("ResumableSampler", 2, rank)
        for stage, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                              ("predict", dm.predict_dataloader())):  # fmt: skip
            shares[stage].append(list(loader.sampler))
    for stage, (first, second) in shares.items():
        assert sorted(first + second) == list(range(25)), stage
        assert abs(len(first) - len(second)) <= 1


def test_ddp_test_accuracy_counts_every_image_once(monkeypatch):
    """trainer.test on 2 CPU processes (gloo) gives the accuracy counted by hand over the 25 test images."""
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from lightning_noprop.nn.backbones import ResNet
    from lightning_noprop.strategies import BWBPF

    from ..helpers import synthetic_data, tiny_module, trainer

    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))  # Lightning sets it; leave no trace
    module = tiny_module(strategy=BWBPF(backbone=ResNet(18, width=4), num_blocks=1)).eval()  # eval: deterministic
    data = synthetic_data(synthetic_size=100, val_size=0, eval_batch_size=4)
    data.setup("test")
    images, _ = data.test_set.tensors
    with torch.no_grad():
        logits = module.strategy.predict(data.normalize_images(images)).logits
    top2 = logits.topk(2, dim=1)
    assert (top2.values[:, 0] - top2.values[:, 1]).min() > 1e-4, "no near-tie that batching could flip"
    # Labels that the model gets right on 10 of the 25 images (the first one, which padding would repeat, among them).
    right = torch.arange(25) % 5 < 2
    labels = torch.where(right, top2.indices[:, 0], logits.argmin(1))
    data.test_set = torch.utils.data.TensorDataset(images, labels)
    by_hand = (logits.argmax(1) == labels).sum().item() / 25
    padded = torch.cat([torch.tensor(list(torch.utils.data.DistributedSampler(data.test_set, 2, r, shuffle=False)))
                        for r in range(2)])  # fmt: skip
    assert (logits.argmax(1) == labels)[padded].float().mean().item() != by_hand, "padding would change the count"
    run = trainer(devices=2, strategy="ddp_fork")  # fork: no re-import, so the processes start in a fraction of a second
    run.test(module, data, verbose=False)
    assert run.callback_metrics["test/acc"].item() == pytest.approx(by_hand, abs=1e-6)


def test_the_training_order_depends_on_the_seed_and_the_epoch_alone():
    """The same permutation whatever the global RNG did (so block_parallel's ranks agree, and a resume repeats it),
    a new one each epoch, and under block_parallel's kwargs (one replica) every image on every rank."""
    from types import SimpleNamespace

    dm = ImageDataModule(synthetic=True, synthetic_size=100, val_size=10, batch_size=8)
    dm.setup("fit")
    first = list(dm.train_dataloader().sampler)
    torch.rand(1000)  # anything else drawing from the global generator
    sampler = dm.train_dataloader().sampler
    assert list(sampler) == first and sorted(first) == list(range(90))
    sampler.set_epoch(1)
    assert list(sampler) != first
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 1, "rank": 0}, current_epoch=0)  # block_parallel
    assert list(dm.train_dataloader().sampler) == first
