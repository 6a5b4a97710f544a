"""What every benchmark records about where a figure came from: the commit, the hardware and the peak memory."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """$LIGHTNING_NOPROP_COMMIT when set (a copied tree may carry stale git metadata), else git's short HEAD."""
    return os.environ.get("LIGHTNING_NOPROP_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()  # fmt: skip


def hardware() -> str:
    """The GPU's name, else the CPU's architecture and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def peak_memory_gib() -> float:
    """torch.cuda.max_memory_allocated on GPU, the process's peak RSS on CPU, in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
