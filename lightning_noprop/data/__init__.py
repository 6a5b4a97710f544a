"""Datasets and the data module."""

from lightning_noprop.data.datamodule import ImageDataModule
from lightning_noprop.data.datasets import DATASETS, DatasetNotFoundError, DatasetSpec

__all__ = ["DATASETS", "DatasetNotFoundError", "DatasetSpec", "ImageDataModule"]
