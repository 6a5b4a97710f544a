"""One LightningDataModule for MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100, Tiny-ImageNet (and synthetic stand-ins)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_noprop.data.augment import random_crop_flip
from lightning_noprop.data.datasets import DATASETS, download, load_split, synthetic_split
from lightning_noprop.data.images import ImageFiles
from lightning_noprop.data.resumable import ResumableDataLoader, ResumableSampler, ignore_stop_signals
from lightning_noprop.errors import ConfigurationError

DatasetName = Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet"]


class ImageDataModule(LightningDataModule):
    """Image classification data held in memory as uint8 and normalised per batch on the device.

    Validation is a seeded random split of the training set (never the test set), so model selection
    never sees test data.

    Args:
        dataset: which dataset to train on.
        root: folder holding the datasets in torchvision's layout (e.g. ``root/MNIST/raw``).
        download: download the dataset into ``root`` when its files are missing (needs internet).
        batch_size: training batch size (paper: 128).
        eval_batch_size: validation/test/predict batch size; None uses ``batch_size``. Larger batches run the
            many-step NoProp-CT/FM samplers over fewer loops (the CT/FM configs use 1000).
        num_workers: DataLoader worker processes (the data is in memory: 0 is usually fastest).
        val_size: training images held out for validation (seeded); 0 disables validation.
        train_size: use only this many of the remaining training images (seeded subset); None uses all.
        test_size: use only the first this many test images; None uses all.
        split_seed: seed of the validation split and of the training subset.
        normalize: standardise each channel with the training set's mean and std.
        synthetic: replace the dataset by random class templates plus noise of the same shape and class
            count (no files needed; for smoke tests and timing). Sizes: ``synthetic_size`` train images and
            a quarter of that for test, unless ``train_size``/``test_size`` say otherwise.
        synthetic_size: number of synthetic training images (before the validation split).
        augment: augment training batches with a random crop of the zero-padded image and a horizontal flip
            (BWBPF's recipe); off for NoProp's paper settings. Validation and test are never augmented.
        crop_padding: padding of the random crop, in pixels (the CIFAR recipe: 4).
        predict_path: what ``predict`` classifies: one image file or a folder of them (PNG/JPEG of any size, converted
            to the dataset's channels and size); None predicts the test split.
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist",
        root: str = "data",
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        split_seed: int = 0,
        normalize: bool = True,
        synthetic: bool = False,
        synthetic_size: int = 2048,
        augment: bool = False,
        crop_padding: int = 4,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigurationError(f"Unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}.")
        sizes = {"batch_size": batch_size, "synthetic_size": synthetic_size}
        # None means all of them; a size must not be 0 or negative (a slice [:-10] would take all but 10).
        optional = {"eval_batch_size": eval_batch_size, "train_size": train_size, "test_size": test_size}
        sizes.update({name: value for name, value in optional.items() if value is not None})
        for name, value in sizes.items():
            if value < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {value}.")
        if crop_padding < 0:
            raise ConfigurationError(f"crop_padding must be >= 0, got {crop_padding}.")
        if val_size < 0 or num_workers < 0:
            raise ConfigurationError(f"val_size and num_workers must be >= 0, got {val_size} and {num_workers}.")
        self.save_hyperparameters()
        self.spec = DATASETS[dataset]
        # Read by the CLI's argument links (apply_on="instantiate"), so they must exist after __init__.
        self.num_classes: int = self.spec.num_classes
        self.image_shape: tuple[int, int, int] = self.spec.image_shape
        self.root = Path(root)
        self.mean = torch.tensor(self.spec.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(self.spec.std).view(1, -1, 1, 1)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.predict_set: ImageFiles | TensorDataset | None = None

    def prepare_data(self) -> None:
        if self.hparams.download and not self.hparams.synthetic:
            download(self.hparams.dataset, self.root)

    def _split(self, train: bool) -> tuple[Tensor, Tensor]:
        if self.hparams.synthetic:
            size = self.hparams.synthetic_size if train else max(self.hparams.synthetic_size // 4, 1)
            return synthetic_split(self.spec, size, seed=self.hparams.split_seed + (0 if train else 1))
        return load_split(self.hparams.dataset, self.root, train)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._split(train=True)
            val_size, train_size = self.hparams.val_size, self.hparams.train_size
            available = images.shape[0] - val_size
            if available < 2 or (train_size is not None and train_size > available):
                raise ConfigurationError(
                    f"{images.shape[0]} training images cannot hold val_size={val_size} plus "
                    f"train_size={train_size}; lower --data.val_size or --data.train_size."
                )
            order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.hparams.split_seed))
            val_idx, train_idx = order[:val_size], order[val_size:]
            if train_size is not None:
                train_idx = train_idx[:train_size]
            self.train_set = TensorDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorDataset(images[val_idx], labels[val_idx]) if val_size > 0 else None
        if stage == "predict" and self.hparams.predict_path is not None:
            self.predict_set = ImageFiles(self.hparams.predict_path, self.image_shape)
            return
        if stage in ("test", "predict") and self.test_set is None:
            images, labels = self._split(train=False)
            if self.hparams.test_size is not None:
                images, labels = images[: self.hparams.test_size], labels[: self.hparams.test_size]
            self.test_set = TensorDataset(images, labels)
        if stage == "predict":
            self.predict_set = self.test_set

    def _loader(self, dataset: TensorDataset | ImageFiles, shuffle: bool) -> DataLoader:
        batch_size = self.hparams.batch_size if shuffle else self.hparams.eval_batch_size or self.hparams.batch_size
        options = {
            "batch_size": batch_size,
            "num_workers": self.hparams.num_workers,
            "persistent_workers": self.hparams.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "worker_init_fn": ignore_stop_signals,  # a stop signal is the main process's to act on
        }
        if not shuffle:  # its own generator, as ResumableDataLoader: a pass draws nothing from the global one
            return DataLoader(dataset, sampler=self._evaluation_sampler(dataset), generator=torch.Generator(),
                              **options)  # fmt: skip
        # BatchNorm cannot train on a batch of one sample.
        drop_last = len(dataset) % batch_size == 1
        return ResumableDataLoader(dataset, sampler=self._training_sampler(dataset, batch_size), drop_last=drop_last,
                                   batches_trained=self._batches_trained_this_epoch, **options)  # fmt: skip

    def _training_sampler(self, dataset: TensorDataset, batch_size: int) -> ResumableSampler:
        """The training order: a permutation drawn from (the run's seed, the epoch) alone, so it is the same in every
        process, whatever else draws random numbers, and a resumed run repeats it, from the batch where it stopped
        when it stopped within an epoch. Under a data-parallel trainer strategy each process takes its share (DDP);
        under ``block_parallel`` every process takes every batch."""
        replicas = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        replicas = replicas or {"num_replicas": 1, "rank": 0}
        sampler = ResumableSampler(dataset, shuffle=True, seed=int(os.environ.get("PL_GLOBAL_SEED", "0")),
                                   batch_size=batch_size, **replicas)  # fmt: skip
        # Lightning sets each epoch's number after its fetcher has begun the first pass, which loader workers start
        # at once: a resumed run's first epoch must be the restored one from the start.
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return sampler

    def _batches_trained_this_epoch(self) -> int:
        """The current epoch's batches trained (the fit loop's processed ones), 0 once it has trained them all."""
        if self.trainer is None:
            return 0
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done if done < self.trainer.num_training_batches else 0  # limit_train_batches may end it early

    def _evaluation_sampler(self, dataset: TensorDataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each rank's share of an evaluation set, every image exactly once; else None (all of it).

        Lightning would give validation and test torch's DistributedSampler, which pads the set to a multiple of the
        world size with repeated images, so val/acc and test/acc (the ranks' counts summed by torchmetrics) would
        count some images twice. The ranks then run batch counts that differ by at most one, which evaluation allows:
        no collective runs per batch (no gradients; DDP syncs buffers only before the first no-grad forward, which
        every rank runs). Lightning keeps a DistributedSampler it is given.
        """
        distributed = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not distributed or distributed.get("num_replicas", 1) <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **distributed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, shuffle=False)

    def normalize_images(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W) -> float, scaled to [0, 1] and standardised per channel."""
        assert images.dtype == torch.uint8, f"expected uint8 images, got {images.dtype}"
        scaled = images.float().div_(255.0)
        if not self.hparams.normalize:
            return scaled
        return (scaled - self.mean.to(scaled.device)) / self.std.to(scaled.device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            images = random_crop_flip(images, self.hparams.crop_padding)
        return self.normalize_images(images), labels

    def training_images(self) -> tuple[Tensor, Tensor]:
        """The normalised training split (without the validation images), for data-dependent initialisation."""
        if self.train_set is None:
            self.setup("fit")
        images, labels = self.train_set.tensors
        return self.normalize_images(images), labels
