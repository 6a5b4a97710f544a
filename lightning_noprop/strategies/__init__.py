"""Local-learning methods behind one interface; choose one with ``class_path`` in the model config."""

from lightning_noprop.strategies.backprop import Backprop
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy, Prediction, Strategy
from lightning_noprop.strategies.noprop_dt import NoPropDT

__all__ = ["Backprop", "BlockLoss", "EmbeddingStrategy", "NoPropDT", "Prediction", "Strategy"]
