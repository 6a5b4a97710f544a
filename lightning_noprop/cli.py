"""The command line: `python main.py {fit,validate,test,predict} --config configs/<name>.yaml`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse.typing import import_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_noprop.anytime import AnytimeCurve
from lightning_noprop.checkpointing import LIGHTNING_CKPT_ALIASES, config_differences, read_checkpoint
from lightning_noprop.data import DATASETS, ImageDataModule
from lightning_noprop.errors import CheckpointMismatchError, ConfigurationError, UserError
from lightning_noprop.interrupts import TrainingStopped
from lightning_noprop.lightning_noise import CONTINUATION, EVALUATION, quiet, quiet_lightning
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.parser import USER_ERROR_EXIT_CODE, NoPropArgumentParser
from lightning_noprop.predictions import PredictionWriter
from lightning_noprop.reporting import TensorBoardReport
from lightning_noprop.runs import (
    RunConfig,
    check_eval_ckpt_path,
    leave_out_unmeasured_monitors,
    new_run_dir,
    remove_refused_run_dir,
    resolve_fit_ckpt_path,
    resume_advice,
)
from lightning_noprop.trainer_checks import check_trainer_arguments

#: Trainer options whose int means batches and float a fraction. Lightning 2.6 annotates them Union[float, int, None]
#: (typing's cache keeps whichever order of an equal Union was made first), so jsonargparse reads "1" as 1.0, which
#: Lightning takes as all of the batches.
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


class NoPropCLI(LightningCLI):
    """LightningCLI with the data's class count and image shape linked into the model, and a ``--ckpt_path`` that
    must fit the model the user configured; our callbacks are always on (``--prediction_writer.*``,
    ``--anytime.*``, ``--tensorboard.*``).

    LightningCLI rebuilds the model from the hyperparameters stored in ``--ckpt_path``, silently replacing the
    configured one (Lightning #21455, LIGHTNING.md). Here the model is built from the user's ``--config`` and
    ``--model.*`` options, and a checkpoint trained with another model configuration is refused with the list of
    differences, unless the user asks for the checkpoint's own with ``--model_from_checkpoint true``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", NoPropArgumentParser)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in BATCH_LIMITS:  # an int first: "1" is one batch, "1.0" all of them
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None:
                action._typehint = int | float | None
        parser.set_defaults(shared_defaults())
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")  # predict: predictions.csv
        parser.add_lightning_class_args(AnytimeCurve, "anytime")  # test: accuracy after k blocks / sampler steps
        parser.add_lightning_class_args(TensorBoardReport, "tensorboard")  # per-block charts, hp_metric
        parser.add_argument(
            "--model_from_checkpoint", type=bool, default=False,
            help="Build the model from the configuration stored in --ckpt_path, ignoring the model options of "
                 "--config and --model.* (Lightning's own behaviour). By default the model is built from your "
                 "options and a checkpoint trained with another model configuration is refused.",
        )  # fmt: skip

    def before_instantiate_classes(self) -> None:
        # The shared defaults add two checkpoint callbacks, which Lightning refuses beside enable_checkpointing
        # false: the user asked for no checkpoints, so the run writes none.
        trainer = self._get(self.config, "trainer")
        if trainer.get("enable_checkpointing") is False and trainer.get("callbacks"):
            callbacks = trainer["callbacks"] if isinstance(trainer["callbacks"], list) else [trainer["callbacks"]]
            kept = [c for c in callbacks if not _is_checkpoint_callback(c)]
            if len(kept) < len(callbacks):
                rank_zero_info(f"--trainer.enable_checkpointing false: no checkpoints, so {len(callbacks) - len(kept)} "
                               "checkpoint callback(s) of the config are left out.")  # fmt: skip
            trainer["callbacks"] = kept

    def before_fit(self) -> None:
        clip = self.trainer.gradient_clip_val
        if clip:  # Lightning's own refusal (of a value > 0) advises automatic optimization, which this module cannot use
            value = clip if clip > 0 else "<a value > 0>"
            raise ConfigurationError(
                f"--trainer.gradient_clip_val {clip}: the module steps each block's optimizer itself (manual "
                f"optimization), so clip there: use --model.gradient_clip_val {value} instead (each optimizer's "
                "gradient norm, per block)."
            )
        leave_out_unmeasured_monitors(self.trainer, self.datamodule.hparams.val_size)
        config = self.config_init[self.subcommand]
        config["ckpt_path"], continues = resolve_fit_ckpt_path(self.trainer, config.get("ckpt_path"))
        if continues and config["ckpt_path"] is not None:  # resumes in its own folder, which holds its checkpoints
            quiet(CONTINUATION)
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunConfig):
                callback.continues_run = continues

    def _run_subcommand(self, subcommand: str) -> None:
        folder = new_run_dir(self.trainer) if rank_zero_only.rank == 0 else None
        try:
            super()._run_subcommand(subcommand)
        except Exception as error:
            # Lightning checks val_check_interval once it knows an epoch's batches: a wrong option, not a bug
            option = isinstance(error, ValueError) and "`val_check_interval`" in str(error)
            refused = ConfigurationError(f"Trainer options: {str(error).strip()}") if option else None
            if user_error_behind(refused or error) is not None:  # a run refused before any loop leaves no folder behind
                remove_refused_run_dir(self.trainer, folder)
            if refused is not None:
                raise refused from error
            raise

    def _before_evaluation(self) -> None:
        quiet(EVALUATION)
        check_eval_ckpt_path(self.trainer, self.config_init[self.subcommand].get("ckpt_path"), self.subcommand)

    before_validate = before_test = before_predict = _before_evaluation

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Lightning checks the trainer options (accelerator, devices, strategy, ...) when the Trainer is built and
        # raises ValueError or MisconfigurationException: each is a wrong option, not a bug.
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, ModuleNotFoundError) as error:  # a plugin's missing package
            accelerator = str(self._get(self.config, "trainer").get("accelerator"))
            advice = ""
            if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
                advice = (" This machine has no CUDA GPU (torch.cuda.is_available() is False): use "
                          "--trainer.accelerator auto (or cpu).")  # fmt: skip
            raise ConfigurationError(f"Trainer options: {error}{advice}") from error
        check_trainer_arguments(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config else None
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_ALIASES or "://" in str(ckpt_path):
            return
        checkpoint = read_checkpoint(ckpt_path)
        if config.model_from_checkpoint:
            rank_zero_info(f"--model_from_checkpoint: building the model from {ckpt_path}'s own configuration; the "
                           "model options of --config and --model.* are ignored.")  # fmt: skip
            super()._parse_ckpt_path()
            return
        saved = dict(checkpoint.get("hyper_parameters") or {})
        saved.pop("_instantiator", None)
        if not saved:  # written outside the CLI: the module compares its structure when it loads the weights
            return
        model = LocalLearningModule
        strategy = import_object(config.model.strategy.class_path)
        ignored = [*model.execution_options, *(() if subcommand == "fit" else model.training_options)]
        ignored += [f"strategy.init_args.{name}" for name in strategy.execution_options]
        current = config.model.as_dict()
        # The links from the data are applied when the classes are built, after this check: take them from the data.
        dataset = DATASETS[config.data.dataset]
        current.update(num_classes=dataset.num_classes, image_shape=dataset.image_shape)
        differences = config_differences(saved, current, ignored)
        if differences:
            run_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
            given = {Path(str(getattr(c, "absolute", c))).resolve() for c in config.get("config") or []}
            if run_config in given:  # the run's own config: the differences come from options given beside it
                advice = "that config without the --model.* / --data.* options that differ"
            elif run_config.is_file():
                advice = f"--config {run_config}"
            else:
                advice = "the config.yaml of the run it comes from"
            raise CheckpointMismatchError(
                f"--ckpt_path {ckpt_path} was trained with another model configuration than yours (--config and "
                "--model.* options):\n  - " + "\n  - ".join(differences) + f"\nUse {advice}, or pass "
                "--model_from_checkpoint true to build the model from the checkpoint's own configuration."
            )


#: ``LIGHTNING_NOPROP_CPU_BF16=0`` keeps CPU runs in float32 on any CPU, ``=1`` gives them bf16 on any CPU; unset, the
#: CPU's instructions decide (``cpu_bf16_native``). The test suite sets 0, so that it runs the same on every host.
CPU_BF16_ENV = "LIGHTNING_NOPROP_CPU_BF16"


def cpu_bf16_native() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), where bf16 autocast and channels-last
    train NoProp-DT 1.77x faster than float32 at the same one-epoch accuracy (benchmarks/RESULTS.md 19b, 20d).
    ``$LIGHTNING_NOPROP_CPU_BF16`` (0 or 1) overrides the detection."""
    override = os.environ.get(CPU_BF16_ENV)
    if override is not None:
        if override not in ("0", "1"):
            raise ConfigurationError(f"{CPU_BF16_ENV} must be 0 (float32 on CPU) or 1 (bf16-mixed on CPU), got "
                                     f"{override!r}; unset it to let the CPU decide.")  # fmt: skip
        return override == "1"
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cpu_bf16_default() -> bool:
    """Whether a run here defaults to the CPU's bf16 recipe: no CUDA GPU, and a CPU with native bf16."""
    return not torch.cuda.is_available() and cpu_bf16_native()


def default_precision() -> str:
    """bf16-mixed where the GPU supports it (no GradScaler needed) or, without a GPU, where the CPU has native bf16;
    else full precision."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_bf16_native() else "32-true"


# The settings every config shares live here, as defaults of the command line, and configs/*.yaml state only what
# differs from them (issue 16 section 3). Defaults rather than a base config file: a run stays one `--config` (users,
# docs and saved runs rely on that), and jsonargparse 4.53 has no include-then-override directive (a group can be
# given as a file, `trainer: base.yaml`, but then the config cannot amend that group, e.g. the logger's name).
# `--print_config` still writes out the whole resolved config (`--print_config=skip_default` just the config's own
# lines), and tests/test_configs.py checks that every config resolves to what it did when each spelled out everything.
# The model's and data's other defaults are their classes' own signatures (the paper's settings).


def trainer_defaults() -> dict[str, Any]:
    """Trainer defaults, given to LightningCLI as ``trainer_defaults``; each config adds ``max_epochs`` and
    ``logger.init_args.name`` (the run's folder under ``logs/``)."""
    return {
        # bf16-mixed on GPUs that support it and on CPUs with native bf16, else 32-true; fp16 is refused.
        "precision": default_precision(),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "logs"}},
        "plugins": [{"class_path": "lightning_noprop.checkpointing.AtomicCheckpointIO"}],
    }


def shared_defaults() -> dict[str, Any]:
    """Defaults set on the parser. ``trainer.callbacks`` is here, not in ``trainer_defaults``, because LightningCLI
    turns the callbacks of ``trainer_defaults`` into fixed extras that a config can neither see nor replace."""
    return {
        "seed_everything": 0,
        "trainer.callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    # The checkpoint is selected on the validation split, never on test (for BWBPF: the final
                    # head's accuracy).
                    "monitor": "val/acc",
                    "mode": "max",
                    "filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                    "auto_insert_metric_name": False,
                },
            },
            # last.ckpt: the latest state, every epoch (fit --ckpt_path .../last.ckpt resumes from it).
            {"class_path": "lightning_noprop.checkpointing.LatestCheckpoint"},
        ],
        # On a CPU with native bf16 the convolutions run channels-last too: oneDNN's bf16 kernels prefer it (19b).
        "model.channels_last": cpu_bf16_default(),
        # The paper's Table 3 optimizer for NoProp-DT and backprop; the CT/FM (Adam) and BWBPF (SGD) configs set theirs.
        "model.optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 1e-3}},
    }


def main(args: Any = None, run: bool = True) -> NoPropCLI:
    """Parse ``args`` (default: ``sys.argv``), build the model, data and trainer, and run the subcommand.

    A user error (``UserError``, or Lightning's ``MisconfigurationException`` for trainer settings such as an
    accelerator this machine lacks) prints its message to stderr and exits with ``USER_ERROR_EXIT_CODE``, without a
    traceback; any other exception is a bug and propagates with its traceback.
    """
    try:
        with quiet_lightning():
            return NoPropCLI(
                LocalLearningModule,
                ImageDataModule,
                auto_configure_optimizers=False,
                save_config_callback=RunConfig,
                trainer_defaults=trainer_defaults(),
                args=args,
                run=run,
            )
    except TrainingStopped as stopped:  # Ctrl-C or SIGTERM, acted on at a batch's end (LatestCheckpoint)
        if rank_zero_only.rank == 0:
            sys.stderr.write(f"{stopped}\n{resume_advice(stopped.checkpoint)}\n")
        raise SystemExit(stopped.exit_code) from None
    except Exception as error:
        cause = user_error_behind(error)
        if cause is None:
            raise
        if rank_zero_only.rank == 0:  # every rank of a multi-process run meets the same error: say it once
            sys.stderr.write(f"error: {cause}\n")
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def _is_checkpoint_callback(callback: Any) -> bool:
    """Whether a parsed ``trainer.callbacks`` entry (a class_path namespace, or an object) is a ModelCheckpoint."""
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    kind = import_object(class_path) if isinstance(class_path, str) else type(callback)
    return isinstance(kind, type) and issubclass(kind, ModelCheckpoint)


def user_error_behind(error: BaseException) -> BaseException | None:
    """The user error that ``error`` is, or was raised ``from``, else None (a bug). jsonargparse, for one, re-raises
    the error of a class it could not build as a ValueError ``from`` it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (UserError, MisconfigurationException)):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None
