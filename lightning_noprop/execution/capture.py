"""``capture_step``: a training batch as a few compiled graphs instead of thousands of eager operator calls.

On a small model the training step is bound by the host: every operator of every block's forward, backward and
optimizer step is dispatched from Python, and Lightning logs some 40 values a batch. With ``capture_step`` the module:

- compiles each of the strategy's ``capture_units`` (the per-block loss from modules and tensors alone) with
  ``torch.compile``, once for every block: the blocks have the same structure and their parameters are the graph's
  inputs. The backward of each is the graph AOTAutograd derived with it. Random draws keep eager PyTorch's
  generator and order (inductor's ``fallback_random``), and each block's stream is seeded outside the graphs
  (``BlockStreams``), so the captured step makes the same draws and the same updates as the eager one (tested);
- steps Adam, AdamW and SGD with torch's fused kernels (``fused=True``, one kernel a parameter group);
- keeps the losses on the device and logs their means every ``trainer.log_every_n_steps`` batches (``LogWindow``),
  where the non-finite-loss check runs too: no host read per batch.

On a GPU the whole compiled step is then replayed from one CUDA graph per batch signature (step_graph.py), and the
module replays inference from one CUDA graph of the strategy's prediction (``LocalLearningModule.predict_batch``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from lightning_noprop.errors import ConfigurationError

#: inductor options of every compiled unit: eager PyTorch's random-number generator and order, so that the
#: captured step draws the numbers the eager step draws from the same per-block stream.
INDUCTOR_OPTIONS = {"fallback_random": True}

#: inductor options of a unit compiled for a CPU, beside INDUCTOR_OPTIONS: the memory layout eager runs in
#: (``model.channels_last`` chooses it). Inductor would otherwise turn every convolution channels-last on a CPU and
#: transpose around them where eager runs contiguous: 274 against 253 ms for NoProp-DT's image encoder at batch 128
#: (RESULTS.md section 23a).
CPU_INDUCTOR_OPTIONS = {"layout_optimization": False}


def check_capture_supported(strategy: Any, compile_blocks: bool, nonfinite_loss: str) -> None:
    """Refuse, with what to change, the combinations ``capture_step`` cannot run."""
    name = type(strategy).__name__
    if not strategy.capture_units:
        raise ConfigurationError(
            f"capture_step does not support {name} yet (supported: NoPropDT, NoPropCT, NoPropFM, BWBPF, "
            "Backprop, PlainCNN); set model.capture_step false."
        )
    refusal = strategy.capture_refusal()
    if refusal:
        raise ConfigurationError(refusal + ".")
    if compile_blocks:
        raise ConfigurationError("capture_step compiles the whole training step already: drop model.compile_blocks.")
    if nonfinite_loss != "error":
        raise ConfigurationError(
            "capture_step checks the losses every log_every_n_steps batches on the device, so it cannot skip one "
            "block's update as nonfinite_loss 'skip' does: set model.nonfinite_loss error, or capture_step false."
        )


def unit_compile_kwargs(options: dict[str, Any] | None = None, device_type: str = "cuda") -> dict[str, Any]:
    """``torch.compile``'s keyword arguments for a capture unit run on ``device_type``: the user's
    ``compile_options`` over ours. torch takes a ``mode`` or inductor ``options``, not both, so a mode is spelled out
    as the options it stands for."""
    # Dynamic batch size from the start: the epoch's last, smaller batch and evaluation reuse the graph.
    kwargs = {"dynamic": True, **(options or {})}
    mode = kwargs.pop("mode", None)
    try:
        from_mode = torch._inductor.list_mode_options(mode, kwargs["dynamic"]) if mode is not None else {}
    except RuntimeError as error:
        raise ConfigurationError(f"model.compile_options: {error}.") from error
    ours = {**INDUCTOR_OPTIONS, **(CPU_INDUCTOR_OPTIONS if device_type == "cpu" else {})}
    kwargs["options"] = {**ours, **from_mode, **kwargs.get("options", {})}
    return kwargs


def inductor_cuda_graphs(options: dict[str, Any] | None) -> bool:
    """Whether compile options turn on inductor's own CUDA graphs (mode reduce-overhead or max-autotune), which
    cannot run inside the CUDA graph of a whole step."""
    return bool(unit_compile_kwargs(options)["options"].get("triton.cudagraphs"))


def compile_units(strategy: Any, options: dict[str, Any] | None = None) -> None:
    """Replace each of ``strategy.capture_units`` by a ``CompiledUnit`` (an instance attribute), which compiles it at
    its first call."""
    _check_compile_kwargs(unit_compile_kwargs(options))  # a bad option fails here, not at the first batch
    for name in strategy.capture_units:
        setattr(strategy, name, CompiledUnit(getattr(strategy, name), options, strategy.capture_graphs))


def _check_compile_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse, in one line, what ``torch.compile`` would refuse at the first batch: an unknown keyword or option."""
    try:
        torch.compile(lambda: None, **kwargs)  # only checks its arguments: nothing is compiled until a call
    except (RuntimeError, TypeError) as error:
        message = str(error).split(", known options are")[0]  # torch appends every option's name
        raise ConfigurationError(f"model.compile_options: {message} (torch._inductor.list_options() lists the "
                                 "inductor options).") from error  # fmt: skip


class CompiledUnit:
    """``unit`` compiled by ``torch.compile`` when first called on a device type (its first tensor argument's), with
    that device's options (``unit_compile_kwargs``), and allowed ``graphs`` shapes (``with_graph_room``)."""

    def __init__(self, unit: Callable[..., Any], options: dict[str, Any] | None, graphs: int) -> None:
        self.unit, self.options, self.graphs = unit, options, graphs
        self.compiled: dict[str, Callable[..., Any]] = {}
        functools.update_wrapper(self, unit)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next(a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor))
        if device_type not in self.compiled:
            compiled = torch.compile(self.unit, **unit_compile_kwargs(self.options, device_type))
            self.compiled[device_type] = with_graph_room(compiled, self.graphs)
        return self.compiled[device_type](*args, **kwargs)


def with_graph_room(compiled: Callable[..., Any], graphs: int) -> Callable[..., Any]:
    """``compiled``, allowed the graphs it needs: ``graphs`` shapes of unit (BWBPF: one a block), each for training and
    for evaluation. Past torch's recompile limit (8 a function) dynamo would run the rest eagerly with a warning."""
    needed = 2 * graphs + 2
    if needed <= torch._dynamo.config.recompile_limit:
        return compiled

    @functools.wraps(compiled)
    def unit(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=needed):
            return compiled(*args, **kwargs)

    return unit


def fused(optimizer: Optimizer) -> Optimizer:
    """``optimizer`` with torch's fused kernel where its class has one (Adam, AdamW, SGD, ...), else unchanged."""
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    if "fused" not in accepted or optimizer.defaults.get("fused"):
        return optimizer
    devices = _get_fused_kernels_supported_devices()
    if any(p.device.type not in devices for g in optimizer.param_groups for p in g["params"]):
        return optimizer
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    defaults.update(fused=True, foreach=None)
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return cls(groups, **defaults)


class LogWindow:
    """Per-block training values summed on the device over the batches since the last flush.

    ``add`` stacks a batch's summary (``{block: {field: 0-d tensor}}``) into a (blocks, fields) tensor and adds it
    to the running sum, weighted by the batch size; ``flush`` returns the sample-weighted means and the sample
    count, and empties the window. A non-finite loss makes its block's sum non-finite, so one check at the flush
    finds it. A checkpoint written within a window holds it (``state_dict``), so that a resumed run logs the means
    an uninterrupted one logs.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.samples = 0
        self.batches = 0
        self.layout: list[tuple[int, list[str]]] = []

    def add(self, summary: dict[int, dict[str, Tensor]], batch_size: int) -> None:
        layout = [(block, list(values)) for block, values in summary.items()]
        if not layout:
            return
        if self.total is not None and layout != self.layout:
            raise RuntimeError("the blocks trained changed within a log window; flush it first.")
        stacked = torch.stack([torch.stack([v.float() for v in values.values()]) for values in summary.values()])
        stacked = stacked * batch_size
        self.total = stacked if self.total is None else self.total + stacked
        self.layout = layout
        self.samples += batch_size
        self.batches += 1

    def means(self) -> dict[int, dict[str, Tensor]]:
        """The window's sample-weighted means ``{block: {field: 0-d tensor}}`` ({} when empty), leaving it as it is."""
        if self.total is None:
            return {}
        means = self.total / self.samples
        return {block: {f: means[i, j] for j, f in enumerate(fields)} for i, (block, fields) in enumerate(self.layout)}

    def flush(self) -> tuple[dict[int, dict[str, Tensor]], int]:
        """The window's sample-weighted means ``{block: {field: tensor}}`` and its number of samples; empties it."""
        summary, samples = self.means(), self.samples
        self.total, self.samples, self.batches, self.layout = None, 0, 0, []
        return summary, samples

    def state_dict(self) -> dict[str, Any]:
        """The window as plain values (its sums on the CPU), for a checkpoint."""
        total = None if self.total is None else self.total.detach().cpu()
        return {"total": total, "samples": self.samples, "batches": self.batches,
                "layout": [[block, list(fields)] for block, fields in self.layout]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Continue the window ``state_dict`` recorded, its sums on ``device``."""
        total = state["total"]
        self.total = None if total is None else total.to(device)
        self.samples, self.batches = int(state["samples"]), int(state["batches"])
        self.layout = [(int(block), list(fields)) for block, fields in state["layout"]]
