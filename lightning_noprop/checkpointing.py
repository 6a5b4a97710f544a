"""Checkpoints: atomic writes, and a clear refusal of checkpoints from another configuration."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_noprop.errors import CheckpointMismatchError


def checkpoint_signature(module: Any) -> dict[str, Any]:
    """What a checkpoint records about the model it came from (stored under ``checkpoint["lightning_noprop"]``)."""
    return {"model": module.strategy.describe(), "num_optimizers": module.num_optimizers}


def check_checkpoint_matches(module: Any, checkpoint: dict[str, Any]) -> None:
    """Raise CheckpointMismatchError, naming every difference, unless ``checkpoint`` fits ``module``."""
    saved = checkpoint.get("lightning_noprop")
    if saved is None:
        raise CheckpointMismatchError(
            "This checkpoint was not written by lightning_noprop (it has no 'lightning_noprop' entry); "
            "only checkpoints saved by `python main.py fit` can be loaded."
        )
    expected = checkpoint_signature(module)
    differences = [
        f"{key}: checkpoint {saved['model'].get(key)!r}, current {value!r}"
        for key, value in expected["model"].items()
        if saved["model"].get(key) != value
    ]
    if saved["num_optimizers"] != expected["num_optimizers"]:
        differences.append(f"optimizers: checkpoint {saved['num_optimizers']}, current {expected['num_optimizers']}")
    current_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved_shapes = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    if not differences and saved_shapes != current_shapes:
        keys = sorted(set(saved_shapes) ^ set(current_shapes)) or sorted(
            k for k in saved_shapes if saved_shapes[k] != current_shapes[k]
        )
        differences.append(f"parameters differ in layout (e.g. width or dropout layers): {keys[:5]}")
    optimizer_states = checkpoint.get("optimizer_states")
    if not differences and optimizer_states is not None and len(optimizer_states) != expected["num_optimizers"]:
        differences.append(f"optimizer states: checkpoint {len(optimizer_states)}, current {expected['num_optimizers']}")
    if differences:
        raise CheckpointMismatchError(
            "The checkpoint comes from another configuration:\n  - " + "\n  - ".join(differences) + "\n"
            "Use the config it was trained with (saved as config.yaml in its log folder), e.g. "
            "`python main.py test --config <log dir>/config.yaml --ckpt_path <ckpt>`."
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target folder, then renames it into place.

    The rename is atomic on a local filesystem, so an interrupted save never leaves a truncated checkpoint
    where the previous good one was. Remote paths (s3://...) use Lightning's default writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options}.")
        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values so that a checkpoint
    holding them still loads with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": _to_lists(random.getstate()),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``rng_states``."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value
