"""A run's folder (``logs/<name>/version_N/``): where its checkpoints go, and what ``fit`` does when a run resumes
into it or a new run would write over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_noprop.errors import ConfigurationError


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


def resolve_fit_ckpt_path(trainer: Any, ckpt_path: Any) -> tuple[Any, bool]:
    """fit's ``ckpt_path`` as the run will use it, and whether the run continues from its own folder's checkpoint.

    Lightning's ``"last"`` reads the run's own folder only, which for a new run (the logger's next version) is empty:
    Lightning would start from scratch with a hint to set save_last, which fit refuses here. Then this says so, names
    the newest run's last.ckpt to resume instead, and returns None (start from scratch) itself."""
    folders = list(dict.fromkeys(folder.resolve() for folder in checkpoint_dirs(trainer)))  # once each
    if ckpt_path == "last":
        if any(next(folder.glob("last*.ckpt"), None) for folder in folders):
            return ckpt_path, True  # Lightning resumes it
        newest = newest_run_checkpoint(trainer)
        where = ", ".join(str(folder) for folder in folders) or "none: checkpointing is off"
        rank_zero_warn(
            f"--ckpt_path last: this run's checkpoint folder ({where}) has no last.ckpt, so training starts from "
            "scratch." + (f" To resume the newest run, pass --ckpt_path {newest}." if newest else "")
        )
        return None, False
    continues = isinstance(ckpt_path, (str, Path)) and Path(ckpt_path).resolve().parent in folders
    return ckpt_path, continues


class RunConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback (the run's ``config.yaml``), except where the folder already has one: a run
    that resumes from its own folder's checkpoint (``continues_run``, e.g. a requeued job with a fixed logger
    version and ``--ckpt_path last``) rewrites it, and a new run is refused with a user error, not a traceback."""

    continues_run = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir and not self.overwrite:
            path = Path(trainer.log_dir) / self.config_filename
            exists = trainer.strategy.broadcast(path.is_file() if trainer.is_global_zero else False)
            if exists and self.continues_run:
                self.overwrite = True
            elif exists:
                new_folder = ("leave trainer.logger.init_args.version unset or choose an unused one" if trainer.loggers
                              else "choose another trainer.default_root_dir (without a logger a run writes there)")  # fmt: skip
                raise ConfigurationError(
                    f"{path.parent} holds another run (its {self.config_filename}): to continue that run, pass its "
                    f"checkpoint (--ckpt_path last finds its last.ckpt); for a new run, {new_folder}."
                )
        super().setup(trainer, pl_module, stage)
