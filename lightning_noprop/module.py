"""The one LightningModule: manual optimization with one optimizer per block plus one for shared parameters."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor
from torch.optim import AdamW, Optimizer
from torchmetrics.classification import MulticlassAccuracy

from lightning_noprop.checkpointing import (
    check_checkpoint_callbacks,
    restore_run_state,
    save_run_state,
    start_closed_epoch,
)
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.block_parallel import BlockParallelStrategy
from lightning_noprop.execution.capture import LogWindow
from lightning_noprop.execution.executor import Executor, from_strategy
from lightning_noprop.execution.training import BatchTrainer, summarize
from lightning_noprop.metric_logging import (
    QuietSyncDistAdvice,
    log_accuracy,
    log_skipped_updates,
    log_summary,
    log_window,
)
from lightning_noprop.rng import rng_states, set_rng_states
from lightning_noprop.strategies.base import Prediction, Strategy, check_parameter_partition
from lightning_noprop.trainer_checks import check_schedulers, check_trainer_supports, warn_about_step_budget


def paper_adamw(params: Any) -> Optimizer:
    """AdamW(lr=1e-3, weight_decay=1e-3): the optimizer of the paper's Table 3 for NoProp-DT and backprop."""
    return AdamW(params, lr=1e-3, weight_decay=1e-3)


class LocalLearningModule(LightningModule):
    """Trains any ``Strategy`` with one optimizer per block (plus one for the shared head/embedding).

    Args:
        strategy: the method (NoPropDT, Backprop, ...), chosen with ``class_path``.
        num_classes: number of classes; linked from the data module by the CLI.
        image_shape: (C, H, W) of the images; linked from the data module by the CLI.
        optimizer: optimizer factory applied to each block's parameters and to the shared ones separately
            (default: AdamW lr 1e-3, weight decay 1e-3, as the paper).
        lr_scheduler: optional scheduler factory, one scheduler per optimizer, stepped by the module.
        lr_scheduler_interval: step the schedulers every "epoch" or every training "step" (batch).
        backward_mode: "joint" sums the block losses for one backward and steps every block (fastest; works
            with plain DDP and bf16); "per_block" runs forward, backward and step one block at a time and
            frees each graph before the next (lowest memory). Both give the same updates.
        block_order: "every_batch" trains every block on every batch, so one epoch = every block sees the
            data once; "sequential" is the paper's Algorithm 1: epoch e trains only block e mod num_blocks,
            so one paper epoch = num_blocks Lightning epochs (set max_epochs accordingly).
        gradient_clip_val: clip each optimizer's gradient norm to this value (per block); None disables.
            Use this, not Trainer(gradient_clip_val), which manual optimization rejects.
        train_accuracy_every_n_steps: run full inference on the training batch every n batches to log
            train/acc (0 disables; inference costs about a third of a training step).
        nonfinite_loss: "error" stops with a message naming the block when a local loss is NaN/inf; "skip"
            skips that block's update for the batch (logged as train/skipped_updates).
        validation_inference_steps: inference steps for val/acc and train/acc (NoProp-CT/FM: a coarser sampler
            grid, e.g. 100 instead of 1000; DT/backprop: only the first n blocks). None runs the full inference.
            test/acc and predict always run the full inference.
        channels_last: keep 4-D weights and the images in channels-last (NHWC) memory layout, which tensor-core
            convolutions prefer; the same maths (dropout masks are drawn in memory order, so they differ). Use it
            where ``benchmarks/throughput.py`` shows a gain.
        compile_blocks: ``torch.compile`` each of the strategy's ``block_modules()`` separately (one graph per block,
            never across blocks; NoProp-DT's vmap mode compiles only its inference). Use it where the benchmark
            shows a gain: the first batches pay the compilation.
        compile_options: keyword arguments for ``torch.compile`` (e.g. ``{mode: max-autotune-no-cudagraphs}``), for
            compile_blocks or capture_step.
        block_execution: how training runs NoProp-DT's blocks' forward passes: "loop" (one after another) or "vmap"
            (one batched computation over the stacked parameters, torch.func; the same losses and updates, each block
            still with its own optimizer). "vmap" shares one graph across blocks, so it needs backward_mode "joint"
            and block_order "every_batch".
        sampler_cuda_graph: on a GPU, capture NoProp-CT/FM's whole no-grad sampler in one CUDA graph per batch shape
            and step count and replay it (the same computation without per-step launch overhead); no effect on CPU.
        capture_step: compile the training step: each block's loss, forward and backward, as one graph shared by the
            blocks, fused Adam/AdamW/SGD steps, losses kept on the device and logged every ``log_every_n_steps``
            batches (the non-finite check runs then). The same draws and updates as eager (tested); for NoPropDT
            (loop and vmap), NoPropCT (closed-form SNR'), NoPropFM, BWBPF, Backprop and PlainCNN. On a GPU the whole step
            (losses, backward, clipping, optimizer steps) is replayed from one CUDA graph per batch signature, and
            inference (validation, test, predict, train/acc) from one CUDA graph of the strategy's whole prediction
            per batch shape and step count, as NoProp-CT/FM's sampler is. The first batches pay the compilation
            (lightning_noprop/execution/capture.py, step_graph.py).
    """

    #: Options that change how the module runs, logs or evaluates, not what it learns: a checkpoint may be evaluated
    #: or resumed with other values (backward modes give the same updates, tested).
    execution_options: ClassVar[tuple[str, ...]] = (
        "backward_mode", "train_accuracy_every_n_steps", "nonfinite_loss", "validation_inference_steps",
        "channels_last", "compile_blocks", "compile_options", "capture_step", "block_execution", "sampler_cuda_graph",
    )  # fmt: skip
    #: The training recipe: it must match a checkpoint that training resumes from, not one that is evaluated.
    training_options: ClassVar[tuple[str, ...]] = (
        "optimizer", "lr_scheduler", "lr_scheduler_interval", "block_order", "gradient_clip_val",
    )  # fmt: skip

    def __init__(
        self,
        strategy: Strategy,
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        optimizer: OptimizerCallable = paper_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        backward_mode: Literal["joint", "per_block"] = "joint",
        block_order: Literal["every_batch", "sequential"] = "every_batch",
        gradient_clip_val: float | None = None,
        train_accuracy_every_n_steps: int = 50,
        nonfinite_loss: Literal["error", "skip"] = "error",
        validation_inference_steps: int | None = None,
        channels_last: bool = False,
        compile_blocks: bool = False,
        compile_options: dict[str, Any] | None = None,
        capture_step: bool = False,
        block_execution: Literal["loop", "vmap"] = "loop",
        sampler_cuda_graph: bool = True,
    ) -> None:
        super().__init__()
        # Under the CLI the hparams are the parsed config (class paths), which rebuild the model on load;
        # outside it, the objects themselves cannot be stored in a weights-only checkpoint.
        under_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if under_cli else ["strategy", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        for name, value in {"block_order": (block_order, ("every_batch", "sequential")),
                            "lr_scheduler_interval": (lr_scheduler_interval, ("epoch", "step")),
                            "nonfinite_loss": (nonfinite_loss, ("error", "skip"))}.items():  # fmt: skip
            if value[0] not in value[1]:
                raise ConfigurationError(f"{name} must be one of {value[1]}, got {value[0]!r}.")
        self.executor = Executor(
            backward_mode, channels_last, compile_blocks, compile_options, capture_step,
            block_execution=from_strategy(strategy, "block_execution", "block_execution", block_execution),
            sampler_cuda_graph=from_strategy(strategy, "cuda_graph", "sampler_cuda_graph", sampler_cuda_graph),
        )  # fmt: skip
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ConfigurationError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}.")
        if train_accuracy_every_n_steps < 0:
            raise ConfigurationError(f"train_accuracy_every_n_steps must be >= 0 (0 disables), got "
                                     f"{train_accuracy_every_n_steps}.")  # fmt: skip
        strategy.build(num_classes, image_shape)
        strategy.check_inference_steps(validation_inference_steps, "validation_inference_steps")
        self.executor.prepare(strategy, nonfinite_loss, block_order)
        self.log_window = LogWindow()
        self.strategy = strategy
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self._rng_before_validation: dict[str, Any] | None = None
        self._resumes_at_epoch_end = False  # set by restore_run_state, for start_closed_epoch
        self.batch_trainer = BatchTrainer(self, run_seed=torch.initial_seed())

    # ----------------------------------------------------------------------------------------------- setup
    @property
    def num_optimizers(self) -> int:
        return self.strategy.num_local_losses + (1 if self.strategy.shared_parameters() else 0)

    def configure_model(self) -> None:
        # Lightning restores a checkpoint's weights before the strategy converts the module to the precision's dtype:
        # under 64-true they would be rounded through float32 on the way. Convert first (idempotent).
        self.trainer.precision_plugin.convert_module(self)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        check_trainer_supports(self.trainer, self.executor.backward_mode, self.hparams.block_order,
                               self.strategy.num_local_losses)  # fmt: skip
        check_checkpoint_callbacks(self.trainer.callbacks)
        if self.executor.capture_step and self.block_parallel is not None:
            raise ConfigurationError("capture_step is not supported with --trainer.strategy block_parallel yet; drop "
                                     "model.capture_step there.")  # fmt: skip
        sampler = self.trainer.distributed_sampler_kwargs or {}
        self.batch_trainer.streams.replica = int(sampler.get("rank", 0))  # DDP ranks train on different images
        if self.hparams.block_order == "every_batch":
            warn_about_step_budget(self.trainer, self.num_optimizers)
        # Only once: a second fit of the same model must continue from the trained embedding, not reset it.
        if self.strategy.requires_data_init and not self.strategy.data_initialized:
            datamodule = self.trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "training_images"):
                raise ConfigurationError(
                    f"{self.strategy.describe()['strategy']} needs the training images to initialise its embedding; "
                    "use lightning_noprop.data.ImageDataModule (or a data module with `training_images()`)."
                )
            self.strategy.initialize_from_data(*datamodule.training_images())

    def configure_callbacks(self) -> list[Callback]:
        return [QuietSyncDistAdvice()]

    def configure_optimizers(self) -> Any:
        groups = [self.strategy.block_parameters(i) for i in range(self.strategy.num_local_losses)]
        shared = self.strategy.shared_parameters()
        check_parameter_partition(self.strategy, groups + [shared])
        # torch checks the values (a negative lr, betas outside [0, 1), ...) and raises ValueError: a config error.
        try:
            optimizers = [self.optimizer_factory(group) for group in groups + ([shared] if shared else [])]
        except ValueError as error:
            raise ConfigurationError(f"model.optimizer: {error}; change it in model.optimizer.init_args.") from error
        optimizers = self.executor.optimizers(optimizers)
        if self.lr_scheduler_factory is None:
            return optimizers
        try:
            schedulers = [self.lr_scheduler_factory(optimizer) for optimizer in optimizers]
        except ValueError as error:
            raise ConfigurationError(f"model.lr_scheduler: {error}; change it in model.lr_scheduler.init_args.") from error
        check_schedulers(self.trainer, schedulers, self.hparams.lr_scheduler_interval)
        return optimizers, schedulers

    def _optimizers(self) -> list:
        return _as_list(self.optimizers())

    def _schedulers(self) -> list:
        return _as_list(self.lr_schedulers())

    # -------------------------------------------------------------------------------------------- training
    def active_blocks(self) -> list[int]:
        """The blocks trained in the current epoch (all, or one under ``block_order="sequential"``)."""
        if self.hparams.block_order == "sequential":
            return [self.current_epoch % self.strategy.num_local_losses]
        return list(range(self.strategy.num_local_losses))

    def _images(self, images: Tensor) -> Tensor:
        # The data module normalises to float32 after the precision plugin has converted the batch; follow the
        # model's dtype (float64 under precision "64-true"; autocast handles the mixed precisions).
        images = images.to(self.dtype) if images.is_floating_point() else images
        return self.executor.images(images)

    @property
    def block_parallel(self) -> BlockParallelStrategy | None:
        """The trainer's ``block_parallel`` strategy when it has one: this process then trains only its blocks."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy if isinstance(strategy, BlockParallelStrategy) else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = self._images(batch[0]), batch[1]
        summary = self.batch_trainer.train(x, y, batch_idx)
        if self.hparams.lr_scheduler_interval == "step":
            for scheduler in self._schedulers():
                scheduler.step()
        if self.executor.capture_step:
            log_window(self, self.log_window, summary, x.shape[0], batch_idx)
        else:
            log_summary(self, "train", summary)
        every = self.hparams.train_accuracy_every_n_steps
        # Under block_parallel no process holds every block's current weights between validations.
        if every and batch_idx % every == 0 and self.block_parallel is None:
            log_accuracy(self, "train", self.train_accuracy, self._predict_in_eval_mode(x), y)

    def _predict_in_eval_mode(self, x: Tensor) -> Prediction:
        self.strategy.eval()
        try:
            with torch.no_grad():
                return self.predict_batch(x, self.hparams.validation_inference_steps)
        finally:
            self.strategy.train()

    def on_train_start(self) -> None:
        start_closed_epoch(self)

    def on_train_epoch_end(self) -> None:
        log_skipped_updates(self)
        if self.hparams.lr_scheduler_interval == "epoch":
            for scheduler in self._schedulers():
                scheduler.step()

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Called inside optimizer.step(), after the precision plugin unscaled the gradients (LIGHTNING.md).
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")  # fmt: skip

    # ---------------------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", self.val_accuracy, batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", self.test_accuracy, batch)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Prediction:
        return self.predict_batch(self._images(batch[0]))

    def _evaluate(self, stage: str, metric: MulticlassAccuracy, batch: tuple[Tensor, Tensor]) -> None:
        x, y = self._images(batch[0]), batch[1]
        results = self.executor.local_losses(self.strategy, x, y, range(self.strategy.num_local_losses))
        log_summary(self, stage, summarize(results, y))
        steps = self.hparams.validation_inference_steps if stage == "val" else None
        log_accuracy(self, stage, metric, self.predict_batch(x, steps), y)

    def predict_batch(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """``strategy.predict(x, num_steps)`` as the executor runs it (on a GPU, a CUDA graph under capture_step and
        for NoProp-CT/FM's sampler)."""
        return self.executor.predict(self.strategy, x, num_steps)

    # Validation draws noise from the global RNG; running it on a snapshot keeps the training stream the
    # same whether or not (and how often) validation runs, so a resumed run continues identically.
    def on_validation_epoch_start(self) -> None:
        self._rng_before_validation = rng_states()

    def on_validation_epoch_end(self) -> None:
        if self._rng_before_validation is not None:
            set_rng_states(self._rng_before_validation)
            self._rng_before_validation = None

    # --------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_run_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_run_state(self, checkpoint)


def _as_list(value: Any) -> list:
    """Lightning's ``optimizers()``/``lr_schedulers()``: one object, a list of them, or None (no schedulers)."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
