"""``capture_step`` on a GPU: a training batch's whole step replayed from one CUDA graph.

The compiled step (capture.py) still launches every kernel of every block's forward, backward, gradient clipping
and optimizer step from Python; on a small model the GPU then waits for the host. ``StepGraph`` captures the whole
one-process step (``BatchTrainer.train_all``: each active block's loss, the backward, the clipping, the block and
shared optimizer steps) once per batch signature and replays it for each new batch copied into its static inputs:

- The first batch of a signature (shape, dtype, active blocks, autocast) runs eagerly on the capture stream: it
  compiles the units, creates the optimizer states and the libraries' handles, so that capture allocates nothing
  outside the graph's pool. The next batch is captured and replayed; from then on each batch is one replay.
- Random draws: block b draws from a generator state of its own, registered with the graph and seeded on the host
  before every replay with the seed its eager stream would use (``BlockStreams.seed``), so each replay draws what
  the eager step draws (the offsets advance inside the graph exactly as the eager kernels advance them).
- Optimizer steps: fused or capturable kernels only (the step count on the device). Hyperparameters a kernel takes
  by value (lr, weight decay, ...) are part of the graph's key: an epoch-interval lr schedule captures again after
  each change. Lightning counts each replayed optimizer step as it counts an eager one.
- What cannot be replayed falls back to the compiled step with one warning: several processes (DDP), precision
  16-mixed (its GradScaler reads the gradients on the host), a per-batch lr schedule, an optimizer without a fused
  or capturable step, compile options with inductor's own CUDA graphs, or a capture that fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.core.optimizer import do_nothing_closure
from torch import Tensor

from lightning_noprop.cuda_graphs import autocast_without_cache
from lightning_noprop.execution.capture import inductor_cuda_graphs


class CudaGraphs:
    """The device half of ``StepGraph`` on one CUDA device: its capture stream, per-block generator states, capture
    and replay. (Tests of the host half substitute an object with the same four methods.)"""

    def __init__(self, device: torch.device) -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.generator = torch.cuda.default_generators[index]
        # Warm-up and capture on one stream: libraries (cuBLAS, cuDNN) create their handles per stream.
        self.capture_stream = torch.cuda.Stream(device)

    def new_state(self) -> torch.Generator:
        """A generator state apart from the default one, that ``stream`` switches to and ``manual_seed`` seeds."""
        return self.generator.clone_state()

    @contextmanager
    def stream(self, state: torch.Generator) -> Iterator[None]:
        """Draw from ``state`` inside: graph-safe (the capture records the state, not a host-side seed)."""
        previous = self.generator.graphsafe_get_state()
        self.generator.graphsafe_set_state(state)
        try:
            yield
        finally:
            self.generator.graphsafe_set_state(previous)

    @contextmanager
    def on_stream(self) -> Iterator[None]:
        """Run inside on the capture stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream()
        self.capture_stream.wait_stream(current)
        with torch.cuda.stream(self.capture_stream):
            yield
        current.wait_stream(self.capture_stream)

    def capture(self, step: Callable[[], Any], states: Sequence[torch.Generator]) -> Callable[[], Any]:
        """Capture ``step()`` (which runs once on the host and launches nothing) and return its replay, which runs
        the recorded kernels and returns the static outputs."""
        graph = torch.cuda.CUDAGraph()
        for state in states:
            graph.register_generator_state(state)
        # thread_local: CUDA calls of other threads (DataLoader pinning, logging) must not void the capture.
        with torch.cuda.graph(graph, stream=self.capture_stream, capture_error_mode="thread_local"):
            outputs = step()

        def replay() -> Any:
            graph.replay()
            return outputs

        replay.graph = graph  # type: ignore[attr-defined]
        return replay


@dataclass
class _Captured:
    replay: Callable[[], Any]
    inputs: tuple[Tensor, Tensor]  # the static images and labels the graph reads


class _GraphStreams:
    """``BlockStreams``' interface inside a capture: block b draws from its registered state ``states[b]``."""

    def __init__(self, backend: Any, states: dict[int, Any]) -> None:
        self.backend, self.states = backend, states

    @contextmanager
    def training_batch(self, batch: int) -> Iterator[None]:
        yield

    def stream(self, block: int, batch: int | None = None) -> AbstractContextManager[None]:
        return self.backend.stream(self.states[block])


class StepGraph:
    """The CUDA graphs of ``capture_step``'s training step, one per batch signature; see the module docstring."""

    def __init__(self) -> None:
        self.backend: Any = None  # CudaGraphs, made at the first CUDA batch that can be replayed
        self.refused: str | None = None  # why this run steps without a graph
        self._warm: set[tuple] = set()  # signatures whose first batch ran eagerly
        self._graphs: dict[tuple, _Captured | None] = {}  # None: its capture failed, that signature runs eagerly
        self._states: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    # Graphs are device state: copies and pickles of the owning module start without them.
    def __deepcopy__(self, memo: dict) -> StepGraph:
        return StepGraph()

    def __getstate__(self) -> dict:
        return StepGraph().__dict__

    @staticmethod
    def refusal(module: Any) -> str | None:
        """Why ``module``'s run cannot replay its step from a CUDA graph, or None."""
        if module.trainer.world_size > 1:
            return "data-parallel gradients are all-reduced by hooks a captured step cannot replay (train on one device)"
        if getattr(module.trainer.precision_plugin, "scaler", None) is not None:
            return "precision 16-mixed steps through a GradScaler, which reads the gradients on the host (use bf16-mixed)"
        if inductor_cuda_graphs(module.executor.compile_options):
            return ("model.compile_options turn on inductor's own CUDA graphs, which cannot run inside the step's "
                    "(use mode max-autotune-no-cudagraphs)")  # fmt: skip
        if module._schedulers() and module.hparams.lr_scheduler_interval == "step":
            return "the lr scheduler changes the learning rate every batch (use lr_scheduler_interval epoch)"
        for optimizer in module._optimizers():
            inner = optimizer.optimizer
            if not (inner.defaults.get("fused") or all(g.get("capturable") for g in inner.param_groups)):
                return f"{type(inner).__name__} has neither a fused nor a capturable step (use Adam, AdamW or SGD)"
        return None

    def usable(self, module: Any, x: Tensor) -> bool:
        """Whether this batch's step is replayed from a graph: a CUDA batch in a run that allows it."""
        if self.backend is not None:
            return True
        if not x.is_cuda or self.refused is not None:
            return False
        self.refused = self.refusal(module)
        if self.refused is not None:
            warnings.warn(f"capture_step runs the compiled step without a CUDA graph: {self.refused}.", stacklevel=2)
            return False
        self.backend = CudaGraphs(x.device)
        return True

    def run(self, trainer: Any, x: Tensor, y: Tensor, blocks: list[int]) -> Any:
        """``trainer.train_all(x, y, blocks, batch)`` for the current batch, eagerly or from its graph."""
        module, batch = trainer.module, trainer.batches_trained
        optimizers = trainer.optimizers_stepped(blocks)
        device = x.device.type
        signature = (tuple(x.shape), x.dtype, tuple(y.shape), tuple(blocks), torch.is_autocast_enabled(device),
                     torch.get_autocast_dtype(device))  # fmt: skip
        # Autocast's cache is off for every batch of the graph path, warm-up included: the compiled units' guards
        # include it, so a capture with other settings than the warm-up's would compile again inside the capture.
        with self.backend.on_stream(), autocast_without_cache(device):
            if signature not in self._warm:
                self._warm.add(signature)
                return trainer.train_all(x, y, blocks, batch)
            key = (signature, _hyperparameters(optimizers), tuple(p.data_ptr() for p in module.strategy.parameters()))
            if key not in self._graphs:
                for stale in [k for k in self._graphs if k[0] == signature]:
                    del self._graphs[stale]  # e.g. captured before the lr changed: free its memory
                self._graphs[key] = self._capture(trainer, x, y, blocks, optimizers)
            captured = self._graphs[key]
            if captured is None:
                return trainer.train_all(x, y, blocks, batch)
            for block in blocks:
                self._state(block).manual_seed(trainer.streams.seed(block, batch))
            for static, new in zip(captured.inputs, (x, y)):
                static.copy_(new)
            summary = captured.replay()
            for optimizer in optimizers:  # Lightning counts the steps the graph made, as it counts eager ones
                optimizer._on_before_step()
                optimizer._on_after_step()
            return summary

    def _state(self, block: int) -> Any:
        if block not in self._states:
            self._states[block] = self.backend.new_state()
        return self._states[block]

    def _capture(self, trainer: Any, x: Tensor, y: Tensor, blocks: list[int], optimizers: list) -> _Captured | None:
        static_x, static_y = x.clone(), y.clone()
        streams = _GraphStreams(self.backend, {block: self._state(block) for block in blocks})
        strategy = trainer.module.strategy

        def step() -> Any:
            with _uncounted(optimizers), _capturable(optimizers), _streams(strategy, streams):
                return trainer.train_all(static_x, static_y, blocks, trainer.batches_trained)

        try:
            replay = self.backend.capture(step, list(streams.states.values()))
        except RuntimeError as error:
            warnings.warn(f"capture_step could not capture the training step in a CUDA graph, so batches of shape "
                          f"{tuple(x.shape)} run the compiled step instead: {error}", stacklevel=3)  # fmt: skip
            return None
        return _Captured(replay, (static_x, static_y))


def _hyperparameters(optimizers: list) -> tuple:
    """Every value a step kernel takes by value (lr, betas, weight decay, ...): a change needs a new graph."""
    return tuple(
        tuple((k, v) for k, v in sorted(group.items()) if k not in ("params", "capturable") and not isinstance(v, Tensor))
        for optimizer in optimizers
        for group in optimizer.optimizer.param_groups
    )


@contextmanager
def _uncounted(optimizers: list) -> Iterator[None]:
    """Lightning's step counting off: the capture launches nothing, and each replay counts its steps itself."""
    hooks = [(o._on_before_step, o._on_after_step) for o in optimizers]
    for optimizer in optimizers:
        optimizer._on_before_step = optimizer._on_after_step = do_nothing_closure
    try:
        yield
    finally:
        for optimizer, (before, after) in zip(optimizers, hooks):
            optimizer._on_before_step, optimizer._on_after_step = before, after


@contextmanager
def _capturable(optimizers: list) -> Iterator[None]:
    """``capturable`` on while capturing: torch refuses to capture a step without it. Fused kernels take the same path
    either way (the step count is on the device); outside a capture the flag stays as configured, so checkpoints
    resume on any device."""
    groups = [g for o in optimizers for g in o.optimizer.param_groups if g.get("capturable") is False]
    for group in groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group in groups:
            group["capturable"] = False


@contextmanager
def _streams(strategy: Any, streams: _GraphStreams) -> Iterator[None]:
    eager, strategy.streams = strategy.streams, streams
    try:
        yield
    finally:
        strategy.streams = eager

