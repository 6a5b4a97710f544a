"""Tiny end-to-end setups for module and CLI tests."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_noprop.cli import USER_ERROR_EXIT_CODE, main
from lightning_noprop.data import ImageDataModule
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.strategies import NoPropDT


def synthetic_data(**kwargs) -> ImageDataModule:
    options = {"dataset": "mnist", "synthetic": True, "synthetic_size": 96, "val_size": 32, "batch_size": 16}
    return ImageDataModule(**{**options, **kwargs})


def tiny_module(seed: int = 0, strategy=None, **kwargs) -> LocalLearningModule:
    seed_everything(seed, verbose=False)
    strategy = strategy if strategy is not None else NoPropDT(num_blocks=3, width=16)
    options = {"train_accuracy_every_n_steps": 0, "optimizer": partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3)}
    return LocalLearningModule(strategy, num_classes=10, image_shape=(1, 28, 28), **{**options, **kwargs})


def trainer(tmp_path=None, **kwargs) -> Trainer:
    options = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
    }
    return Trainer(**{**options, **kwargs})


#: CLI options for a few tiny synthetic batches (any config).
FAST = ["--data.synthetic", "true", "--data.synthetic_size", "48", "--data.val_size", "16", "--data.batch_size", "8"]


def run(*args):
    """The CLI in this process, as `python main.py ARGS` runs it."""
    return main(args=list(args))


def user_error(capsys, *args) -> str:
    """Run the CLI on ``args``, expect a user error (exit 2, no traceback) and return what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


class SignalAt(Callback):
    """Sends ``signum`` to this process when batch ``batch`` of epoch ``epoch`` starts, as a user's Ctrl-C would
    arrive while that batch trains.

    Args:
        epoch: the epoch of the signal.
        batch: the batch (within the epoch) of the signal.
        signum: the signal (2: SIGINT, 15: SIGTERM).
        times: how many times it is sent.
        group: send it to the whole process group (loader workers too), as a terminal's Ctrl-C does.
    """

    def __init__(self, epoch: int, batch: int, signum: int = 2, times: int = 1, group: bool = False) -> None:
        self.epoch, self.batch, self.signum, self.times, self.group = epoch, batch, signum, times, group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            for _ in range(self.times):
                os.killpg(os.getpgrp(), self.signum) if self.group else os.kill(os.getpid(), self.signum)
