"""A run's folder (``logs/<name>/version_N/``): where its checkpoints go, what ``--ckpt_path last`` finds there, and
what happens when a fit continues in it, an evaluation runs in it, or a new run would write over it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.lightning_noise import quiet


def checkpoint_dirs(trainer: Any) -> list[Path]:
    """The folders the trainer's checkpoint callbacks write to, as Lightning resolves them when fit starts: a callback's
    own dirpath, else the logger's ``save_dir/name/version/checkpoints``, else ``default_root_dir/checkpoints``."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        default = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints"
    else:
        default = Path(trainer.default_root_dir) / "checkpoints"
    return [Path(c.dirpath) if c.dirpath else default for c in trainer.checkpoint_callbacks]


def newest_run_checkpoint(trainer: Any) -> Path | None:
    """The newest last.ckpt among the runs of the trainer's logger (``save_dir/name/*/checkpoints/``), or None."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    runs = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
    found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def run_dir(trainer: Any) -> Path:
    """The run's folder, as ``trainer.log_dir`` resolves it (without its broadcast: fit has not set up yet)."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if _versioned(trainer):
        return Path(logger.log_dir)
    return Path(logger.save_dir or trainer.default_root_dir)


def _versioned(trainer: Any) -> bool:
    """Whether each run gets a folder of its own (``save_dir/name/version_N``): TensorBoard's and CSV loggers."""
    return bool(trainer.loggers) and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger))


def last_checkpoints(trainer: Any) -> list[Path]:
    """What Lightning's ``ckpt_path="last"`` chooses from: each checkpoint folder's last*.ckpt and an
    OnExceptionCheckpoint's file, where they exist."""
    found = [path for folder in dict.fromkeys(checkpoint_dirs(trainer)) for path in folder.glob("last*.ckpt")]
    found += [Path(c.ckpt_path) for c in trainer.callbacks if isinstance(c, OnExceptionCheckpoint)]
    return [path for path in found if path.is_file()]


def _no_last(trainer: Any) -> tuple[str, str | None]:
    """Why ``--ckpt_path last`` finds nothing here, and where else to look."""
    if not trainer.checkpoint_callbacks:
        why = "checkpointing is off (--trainer.enable_checkpointing false), so it finds no last.ckpt"
    else:
        why = f"this run's folder ({run_dir(trainer)}) has no last.ckpt"
    newest = newest_run_checkpoint(trainer)
    return why, (f"--ckpt_path {newest}" if newest else None)


def resolve_fit_ckpt_path(trainer: Any, ckpt_path: Any) -> tuple[Any, bool]:
    """fit's ``ckpt_path`` as the run will use it, and whether the run continues in its own folder (so that it may
    rewrite that folder's config.yaml).

    ``"last"`` asks to continue the run's own folder. Lightning looks only there; for a new run (the logger's next
    version) it is empty, and Lightning would start from scratch with a hint to set save_last, which fit refuses
    here. Then this says so, names the newest run's last.ckpt to resume instead, and returns None itself (with which
    Lightning on SLURM resumes its HPC checkpoint, if there is one)."""
    refuse_best(trainer, ckpt_path, "fit")
    if ckpt_path == "last":
        if last_checkpoints(trainer):
            return ckpt_path, True  # Lightning resumes it
        if SLURMEnvironment.detect() and next(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"), None):
            return None, True  # Lightning resumes the HPC checkpoint, and only when ckpt_path is None
        why, other = _no_last(trainer)
        rank_zero_warn(f"--ckpt_path last: {why}, so training starts from scratch there."
                       + (f" To resume the newest run, pass {other}." if other else ""))  # fmt: skip
        return None, True
    if not isinstance(ckpt_path, (str, Path)) or not Path(ckpt_path).is_file():
        return ckpt_path, False
    path = Path(ckpt_path).resolve()
    folders = {folder.resolve() for folder in checkpoint_dirs(trainer)}
    # Under a versioned logger the run's folder is its own, so any checkpoint in it continues the run; otherwise the
    # folder (default_root_dir, a logger's save_dir) may hold other runs' checkpoints too.
    inside = _versioned(trainer) and run_dir(trainer).resolve() in path.parents
    return ckpt_path, path.parent in folders or inside


def new_run_dir(trainer: Any) -> Path | None:
    """The run's own folder (``save_dir/name/version_N``) if this run is about to create it, else None."""
    if not _versioned(trainer):
        return None
    folder = run_dir(trainer)
    return None if folder.exists() else folder


def remove_refused_run_dir(trainer: Any, folder: Path | None) -> None:
    """Remove ``folder`` (``new_run_dir``: this run created it) when the run was refused before any loop began
    (no sanity check, training, validation, test or predict batch), so that it holds only the run's config and
    logger files: a folder per refused run would crowd TensorBoard's run list and the version numbers."""
    configs = [c for c in trainer.callbacks if isinstance(c, RunConfig)]
    if folder is None or not folder.is_dir() or not configs or any(c.loop_began for c in configs):
        return
    if next(folder.rglob("*.ckpt"), None):
        return
    shutil.rmtree(folder, ignore_errors=True)


def check_eval_ckpt_path(trainer: Any, ckpt_path: Any, subcommand: str) -> None:
    """Refuse validate/test/predict without ``--ckpt_path``, and with ``--ckpt_path last`` where there is no
    last.ckpt: Lightning would evaluate the untrained weights and exit 0."""
    if ckpt_path is None:
        newest = newest_run_checkpoint(trainer)
        example = f", e.g. {newest}." if newest else " (fit writes last.ckpt into its run's folder)."
        raise ConfigurationError(f"{subcommand} needs trained weights: pass --ckpt_path with a checkpoint's path{example}")
    refuse_best(trainer, ckpt_path, subcommand)
    if ckpt_path == "last" and not last_checkpoints(trainer):
        why, other = _no_last(trainer)
        raise ConfigurationError(f"--ckpt_path last: {why}, so there are no trained weights to {subcommand}: pass a "
                                 "checkpoint's path" + (f", e.g. {other}." if other else "."))  # fmt: skip


def refuse_best(trainer: Any, ckpt_path: Any, subcommand: str) -> None:
    """Refuse ``--ckpt_path best``: Lightning's alias for the best checkpoint that a ModelCheckpoint of the same
    Trainer saved, which a new process has not (Lightning raises a ValueError)."""
    if ckpt_path != "best":
        return
    newest = newest_run_checkpoint(trainer)
    saved = newest.parent.glob("*.ckpt") if newest else ()
    best = sorted((path for path in saved if not path.name.startswith("last")), key=lambda path: path.stat().st_mtime)
    example = (f", e.g. {best[-1]} (the newest of the run's other checkpoints)" if best
               else " (fit writes it beside last.ckpt, in checkpoints/)")  # fmt: skip
    raise ConfigurationError(f"--ckpt_path best: {subcommand} in a new process knows no best checkpoint (Lightning's "
                             f"alias is for one saved by the same Trainer): pass its path{example}.")  # fmt: skip


def leave_out_unmeasured_monitors(trainer: Any, val_size: int) -> None:
    """With validation off (``--data.val_size 0`` or ``--trainer.limit_val_batches 0``), leave out the checkpoint
    callbacks that monitor a ``val/`` metric: they would warn at every epoch that it is missing and write nothing.
    last.ckpt (``LatestCheckpoint``, which monitors nothing) is still written."""
    if val_size != 0 and trainer.limit_val_batches != 0:
        return
    unmeasured = [c for c in trainer.checkpoint_callbacks if (c.monitor or "").startswith("val/")]
    for callback in unmeasured:
        trainer.callbacks.remove(callback)
    if unmeasured:
        quiet((r"Total length of `.*` across ranks is zero",))  # Lightning's note on the empty validation loader
        monitors = sorted({c.monitor for c in unmeasured})
        rank_zero_info(f"Validation is off, so the {len(unmeasured)} checkpoint callback(s) monitoring {monitors} are "
                       "left out; last.ckpt is still written.")  # fmt: skip


class RunConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback (the run's ``config.yaml``), except where the folder already has one: a fit
    that continues the run (``continues_run``: ``--ckpt_path last``, e.g. a requeued job with a fixed logger version,
    or a checkpoint of that folder) rewrites it; validate/test/predict leave it as the training run wrote it; a new
    run is refused with a user error, not Lightning's traceback."""

    continues_run = False
    loop_began = False  # whether a sanity check, training, validation, test or predict loop began (so it logged)

    def _loop_begins(self, *_: Any) -> None:
        self.loop_began = True

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = _loop_begins

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir and not self.overwrite:
            path = Path(trainer.log_dir) / self.config_filename
            exists = trainer.strategy.broadcast(path.is_file() if trainer.is_global_zero else False)
            if exists and stage != "fit":  # validate/test/predict in a training run's folder (its saved version)
                self.already_saved = True  # the training run's config.yaml stays as it is
                return
            if exists and self.continues_run:
                self.overwrite = True
            elif exists:
                if _versioned(trainer):
                    new_folder = "leave trainer.logger.init_args.version unset or choose an unused one"
                elif trainer.loggers:
                    new_folder = "give the logger another save_dir"
                else:
                    new_folder = "choose another trainer.default_root_dir (without a logger a run writes there)"
                raise ConfigurationError(
                    f"{path.parent} holds another run (its {self.config_filename}): to continue that run, pass "
                    f"--ckpt_path last or its checkpoint; for a new run, {new_folder}."
                )
        super().setup(trainer, pl_module, stage)


def resume_advice(checkpoint: str | None) -> str:
    """The command that resumes a run stopped with its latest state in ``checkpoint`` (its folder's config.yaml,
    where it has one), or what to do when nothing was written."""
    if checkpoint is None:
        return "Nothing to resume from this stop; a previous last.ckpt of the run, if any, resumes from its epoch."
    config = Path(checkpoint).parent.parent / "config.yaml"
    config_arg = str(config) if config.is_file() else "<the run's config>"
    return f"Resume it exactly with: python main.py fit --config {config_arg} --ckpt_path {checkpoint}"
