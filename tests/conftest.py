"""Shared fixtures. The real MNIST data is the project's own copy, data/MNIST/raw/*.gz (or $LIGHTNING_NOPROP_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_noprop.cli import CPU_BF16_ENV
from lightning_noprop.data.datasets import DATASETS, missing_files

# Float32 on every CPU, so that the suite and the resolved-config records are the same on every host (a CPU with
# native bf16 would otherwise default to bf16-mixed and channels-last); set here so that `main.py` subprocesses
# inherit it. The tests of the bf16 default set it themselves.
os.environ[CPU_BF16_ENV] = "0"

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _data_root() -> Path:
    return Path(os.environ.get("LIGHTNING_NOPROP_DATA", REPO / "data"))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding MNIST/raw; skips when absent, except under CI where absence is a failure."""
    root = _data_root()
    if missing_files(DATASETS["mnist"], root):
        message = f"MNIST not found under {root}/MNIST/raw (set LIGHTNING_NOPROP_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI requires it.")
        pytest.skip(message)
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
