"""Local-learning methods behind one interface; choose one with ``class_path`` in the model config."""

from lightning_noprop.strategies.backprop import Backprop
from lightning_noprop.strategies.bwbpf import BWBPF
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy, Prediction, Strategy
from lightning_noprop.strategies.continuous import ContinuousTimeStrategy
from lightning_noprop.strategies.noprop_ct import NoPropCT
from lightning_noprop.strategies.noprop_dt import NoPropDT
from lightning_noprop.strategies.noprop_fm import NoPropFM
from lightning_noprop.strategies.plain_cnn import PlainCNN

__all__ = [
    "BWBPF",
    "Backprop",
    "BlockLoss",
    "ContinuousTimeStrategy",
    "EmbeddingStrategy",
    "NoPropCT",
    "NoPropDT",
    "NoPropFM",
    "PlainCNN",
    "Prediction",
    "Strategy",
]
