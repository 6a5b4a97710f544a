"""The command line: `python main.py {fit,validate,test,predict} --config configs/<name>.yaml`."""

from __future__ import annotations

import sys
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_noprop.anytime import AnytimeCurve
from lightning_noprop.data import ImageDataModule
from lightning_noprop.errors import UserError
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.predictions import PredictionWriter
from lightning_noprop.reporting import TensorBoardReport

#: The exit status of a user error (the argument parser's own errors exit with 2 as well).
USER_ERROR_EXIT_CODE = 2


class NoPropCLI(LightningCLI):
    """LightningCLI with the data's class count and image shape linked into the model, and our callbacks always on."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")  # predict: predictions.csv
        parser.add_lightning_class_args(AnytimeCurve, "anytime")  # test: accuracy after k blocks / sampler steps
        parser.add_lightning_class_args(TensorBoardReport, "tensorboard")  # per-block charts, hp_metric


def default_precision() -> str:
    """bf16-mixed where the GPU supports it (no GradScaler needed), else full precision."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def trainer_defaults() -> dict[str, Any]:
    return {
        "precision": default_precision(),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "logs"}},
        "plugins": [{"class_path": "lightning_noprop.checkpointing.AtomicCheckpointIO"}],
    }


def main(args: Any = None, run: bool = True) -> NoPropCLI:
    """Parse ``args`` (default: ``sys.argv``), build the model, data and trainer, and run the subcommand.

    A user error (``UserError``, or Lightning's ``MisconfigurationException`` for trainer settings such as an
    accelerator this machine lacks) prints its message to stderr and exits with ``USER_ERROR_EXIT_CODE``, without a
    traceback; any other exception is a bug and propagates with its traceback.
    """
    try:
        return NoPropCLI(
            LocalLearningModule,
            ImageDataModule,
            auto_configure_optimizers=False,
            trainer_defaults=trainer_defaults(),
            args=args,
            run=run,
        )
    except (UserError, MisconfigurationException) as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
