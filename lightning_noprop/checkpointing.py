"""Checkpoints: the latest state every epoch, atomic writes, and a clear refusal of checkpoints that are
unreadable or come from another configuration."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_noprop.errors import CheckpointError, CheckpointMismatchError, ConfigurationError
from lightning_noprop.interrupts import StopRequest, TrainingStopped
from lightning_noprop.metric_logging import window_state
from lightning_noprop.rng import rng_states, set_rng_states

#: ``ckpt_path`` values that Lightning resolves itself (they name no file to read here).
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")

_NOT_OURS = (
    "This checkpoint was not written by lightning_noprop (it has no 'lightning_noprop' entry); "
    "only checkpoints saved by `python main.py fit` can be loaded."
)


class LatestCheckpoint(ModelCheckpoint):
    """Writes the latest training state as ``last.ckpt`` at the end of every ``every_n_epochs``-th epoch, whatever
    the metrics did, and when Ctrl-C or SIGTERM stops training, so that ``fit --ckpt_path .../last.ckpt`` resumes
    exactly where training stopped.

    Since Lightning 2.6 a monitored ``ModelCheckpoint(save_last=True)`` writes last.ckpt only when it saves a
    top-k checkpoint at the same step, so there last.ckpt is the best epoch, not the latest (LIGHTNING.md). Keep a
    monitored ModelCheckpoint for the best epoch and this callback for the latest state. It saves after the
    module's ``on_train_epoch_end`` (Lightning calls checkpoint callbacks last), so epoch-wise lr schedulers have
    stepped, and at the end of fit when that stops mid-epoch.

    A signal is acted on at the end of the batch being trained (a second Ctrl-C stops at once, writing nothing):
    within an epoch, last.ckpt is written there, with the training loader's position (``ResumableDataLoader``), and
    fit raises ``TrainingStopped``; on an epoch's last batch, the epoch finishes first (validation, the epoch's
    last.ckpt). Single-process runs only: the processes of a multi-process run would not stop at the same batch.

    Args:
        dirpath: the folder of last.ckpt; None is the logger's ``<log dir>/checkpoints``, like ModelCheckpoint.
        every_n_epochs: write last.ckpt every n training epochs.
        stop_on_signal: on Ctrl-C (SIGINT) or SIGTERM, stop after the current batch and write last.ckpt.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1, stop_on_signal: bool = True) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True)  # fmt: skip
        self.stop_on_signal = stop_on_signal
        self._stop_request = StopRequest()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        if self.stop_on_signal and trainer.world_size == 1:
            self._stop_request.install()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._stop_request.signal_number is None or _ends_epoch_or_validates(trainer, batch_idx):
            return  # the epoch's end writes last.ckpt; a due validation runs first (the next batch's end stops)
        self._save_latest(trainer)
        raise self._stopped(trainer, f"in epoch {trainer.current_epoch}, after batch {batch_idx + 1} of "
                                     f"{trainer.num_training_batches}")  # fmt: skip

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        stopping = self._stop_request.signal_number is not None
        if stopping or (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_latest(trainer)
        trainer.should_stop = trainer.should_stop or stopping

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        self._stop_request.restore()
        if self._stop_request.signal_number is not None:
            raise self._stopped(trainer, f"at the end of epoch {trainer.current_epoch - 1}")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop_request.restore()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop_request.restore()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Nothing: the latest state is written once the epoch, and its scheduler steps, are complete."""

    def _save_latest(self, trainer: Any) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _stopped(self, trainer: Any, where: str) -> TrainingStopped:
        saved = self.last_model_path if self._last_global_step_saved == trainer.global_step else None
        return TrainingStopped(self._stop_request.signal_number, saved or None, where)


def _ends_epoch_or_validates(trainer: Any, batch_idx: int) -> bool:
    """Whether the epoch ends, fit ends or a validation runs after this batch (Lightning's own decision, which its
    epoch loop takes next): a checkpoint written in ``on_train_batch_end`` would resume after it, and skip it."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return (batch_idx + 1 >= trainer.num_training_batches or epoch_loop.batch_progress.is_last_batch
            or 0 <= trainer.max_steps <= trainer.global_step
            or epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))  # fmt: skip


def check_checkpoint_callbacks(callbacks: list[Any]) -> None:
    """Refuse a monitored ``ModelCheckpoint(save_last=True)``: its last.ckpt would be the best epoch, not the latest."""
    for callback in callbacks:
        if type(callback) is ModelCheckpoint and callback.monitor is not None and callback.save_last:
            raise ConfigurationError(
                f"ModelCheckpoint(monitor={callback.monitor!r}, save_last=true) writes last.ckpt only when "
                f"{callback.monitor} improves (Lightning 2.6), so last.ckpt would be the best epoch, not the latest "
                "state. Remove save_last from that callback and add "
                "`- class_path: lightning_noprop.checkpointing.LatestCheckpoint` to trainer.callbacks."
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file written by ``fit`` for inspection, memory-mapped (the tensors are not read).

    Raises CheckpointError, with advice, when the file is missing, unreadable or not one of ours.
    """
    path = Path(path)
    hint = "pass a .ckpt file written by `python main.py fit`, e.g. logs/<name>/version_<n>/checkpoints/last.ckpt."
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: " + ("a folder, not a file" if path.is_dir() else "no such file")
                              + f"; {hint}")  # fmt: skip
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; mmap needs one
        raise CheckpointError(f"--ckpt_path {path} is not a checkpoint (not the zip archive torch.save writes; "
                              f"a truncated or another kind of file): {hint}")  # fmt: skip
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a damaged archive, pickled objects that weights_only refuses
        raise CheckpointError(
            f"--ckpt_path {path} is not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0]}); "
            f"it may be damaged: {hint}"
        ) from error
    if not isinstance(checkpoint, dict) or "lightning_noprop" not in checkpoint:
        raise CheckpointMismatchError(f"--ckpt_path {path}: {_NOT_OURS}")
    return checkpoint


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config mappings as ``{"a.b.c": leaf}``; tuples become lists and empty mappings vanish."""
    if isinstance(config, Mapping):
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    if isinstance(config, tuple):
        config = list(config)
    return {prefix[:-1]: config}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], ignored: Collection[str]) -> list[str]:
    """``"key: checkpoint X, current Y"`` for every leaf of two nested configs that differs, except keys in
    ``ignored`` and keys below them (``"optimizer"`` ignores ``"optimizer.init_args.lr"``)."""
    saved_flat, current_flat = flatten_config(saved), flatten_config(current)

    # Where a component's class differs, its init_args are not comparable: the class is the difference.
    other_classes = [key[: -len("class_path")] for key in saved_flat
                     if key.endswith("class_path") and saved_flat[key] != current_flat.get(key, saved_flat[key])]  # fmt: skip

    def is_ignored(key: str) -> bool:
        return any(key == name or key.startswith(f"{name}.") for name in ignored) or any(
            key.startswith(f"{prefix}init_args.") for prefix in other_classes)  # fmt: skip

    missing = "(not set)"
    return [
        f"{key}: checkpoint {saved_flat.get(key, missing)!r}, current {current_flat.get(key, missing)!r}"
        for key in sorted(set(saved_flat) | set(current_flat))
        if not is_ignored(key) and saved_flat.get(key, missing) != current_flat.get(key, missing)
    ]


def checkpoint_signature(module: Any) -> dict[str, Any]:
    """What a checkpoint records about the model it came from (stored under ``checkpoint["lightning_noprop"]``)."""
    return {"model": module.strategy.describe(), "num_optimizers": module.num_optimizers}


def check_checkpoint_matches(module: Any, checkpoint: dict[str, Any]) -> None:
    """Raise CheckpointMismatchError, naming every difference, unless ``checkpoint`` fits ``module``."""
    saved = checkpoint.get("lightning_noprop")
    if saved is None:
        raise CheckpointMismatchError(_NOT_OURS)
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


def save_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """Record under ``checkpoint["lightning_noprop"]`` the model's signature, the global generators' states and the
    blocks' random streams (run seed, batches trained), so that a resumed run draws what an uninterrupted one draws,
    and under capture_step the values not logged yet, so that it logs what an uninterrupted one logs."""
    trainer = module.batch_trainer
    checkpoint["lightning_noprop"] = checkpoint_signature(module)
    checkpoint["lightning_noprop"]["rng_states"] = rng_states()
    checkpoint["lightning_noprop"]["streams"] = {"run_seed": trainer.streams.run_seed,
                                                 "batches_trained": trainer.batches_trained}  # fmt: skip
    checkpoint["lightning_noprop"]["skipped_updates"] = trainer.skipped_updates  # this epoch's, so far
    progress = module.trainer.fit_loop.epoch_loop.batch_progress.current
    checkpoint["lightning_noprop"]["epoch_trained"] = progress.processed >= module.trainer.num_training_batches
    if module.executor.capture_step:  # the values not logged yet (and checked: a non-finite loss is not saved)
        checkpoint["lightning_noprop"]["log_window"] = window_state(module, module.log_window)


def restore_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """Refuse a checkpoint of another configuration (``check_checkpoint_matches``), then restore what
    ``save_run_state`` recorded."""
    check_checkpoint_matches(module, checkpoint)
    saved_rng = checkpoint["lightning_noprop"].get("rng_states")
    if saved_rng is not None:
        set_rng_states(saved_rng)
    streams = checkpoint["lightning_noprop"].get("streams")
    if streams is not None:  # the blocks' random streams continue where they stopped
        module.batch_trainer.streams.run_seed = int(streams["run_seed"])
        module.batch_trainer.batches_trained = int(streams["batches_trained"])
    module.batch_trainer.skipped_updates = int(checkpoint["lightning_noprop"].get("skipped_updates", 0))
    window = checkpoint["lightning_noprop"].get("log_window")
    if window is not None and module.executor.capture_step:
        module.log_window.load_state_dict(window, module.device)
    fitting = module._trainer is not None and module.trainer.state.fn == "fit"  # not a validate/test/predict load
    module._resumes_at_epoch_end = close_finished_epoch(checkpoint) and fitting


def start_closed_epoch(module: Any) -> None:
    """At ``on_train_start`` after ``close_finished_epoch`` closed the restored epoch: the next epoch begins afresh,
    as Lightning begins it when it bounds training by epochs. Under ``max_steps`` Lightning marks every loop
    restarting, and its epoch loop then spends a first iteration on no batch, taking the restored epoch's finished
    validation for one still to skip, which counts a batch for the loggers: every later logger step was one ahead.
    Lightning 2.6 reads the epoch loop's restart stage only while the loop is restarting, so nothing else changes
    (tested: the state, the validations and the logged steps equal an uninterrupted run's)."""
    if module._resumes_at_epoch_end:
        module._resumes_at_epoch_end = False
        module.trainer.fit_loop.epoch_loop.restarting = False


def close_finished_epoch(checkpoint: dict[str, Any]) -> bool:
    """Record a checkpoint written at an epoch's end (``on_train_epoch_end``: processed, not yet completed) as that
    epoch completed and the next not begun, in the loops' state that Lightning restores after this hook; whether it
    did (``start_closed_epoch`` then begins the next epoch afresh).

    Lightning resumes such a checkpoint correctly only when it bounds training by epochs. Under ``max_steps`` it always
    "restarts" the epoch, finds its batches done and runs the epoch's end a second time: the epoch counter advances
    without training an epoch, and epoch-wise schedulers step twice.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop")
    if loops is None or not checkpoint["lightning_noprop"].get("epoch_trained", True):
        return False  # e.g. max_steps ended fit within the epoch: Lightning ran its end hooks early, as it does
    epochs, batches = loops["epoch_progress"], loops["epoch_loop.batch_progress"]
    current = epochs["current"]
    if not (current["ready"] == current["started"] == current["processed"] == current["completed"] + 1):
        return False  # saved within an epoch (or at its start): Lightning resumes it where it stopped
    for progress in (epochs["current"], epochs["total"]):
        progress["completed"] = progress["processed"]
    batches["current"] = dict.fromkeys(batches["current"], 0)
    batches["is_last_batch"] = False
    return True


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
