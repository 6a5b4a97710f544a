"""Replay a whole no-grad sampler as one CUDA graph, so a 1000-step NoProp-CT/FM inference costs one launch.

A sampler step of the CT/FM network is ~30 small kernels on a (B, 256) state; eagerly, 1000 steps are bound by
kernel launches and Python, not by the GPU. Capturing the whole loop once per input signature and replaying it
removes both (CUDA graphs: https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

# What a captured function returns: a tensor, or a tuple of tensors (None where it has none, as Prediction.z).
Outputs = Tensor | tuple[Tensor | None, ...]
# A captured graph, the static inputs it reads and the static outputs it writes.
Captured = tuple[torch.cuda.CUDAGraph, list[Tensor], Outputs]


def autocast_without_cache(device: str) -> AbstractContextManager[None]:
    """The current autocast state on ``device`` with its cache of low-precision weights off: a captured cast must run
    again at every replay, not be read from a copy cached before the capture."""
    return torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=torch.is_autocast_enabled(device),
                          cache_enabled=False)  # fmt: skip


def _clone(outputs: Outputs) -> Outputs:
    if isinstance(outputs, Tensor):
        return outputs.clone()
    return tuple(None if t is None else t.clone() for t in outputs)


class GraphCache:
    """Captures ``fn(*inputs)`` in a CUDA graph on the first call for each key and replays it afterwards.

    The key must include everything else that changes the captured work (step counts, train/eval mode); ``replay``
    adds the input signature, the autocast and inference-mode states and the parameters' addresses, so a
    graph is never replayed on moved or re-allocated parameters. Parameters updated in place (an optimizer step,
    ``load_state_dict``) are read at replay time, so the graph stays valid through training. Random draws in
    ``fn`` come from the default CUDA generator, which advances on every replay. The output (a tensor, or a tuple of
    tensors and Nones) is cloned, so it survives the next replay. If a capture fails (an operation that cannot be
    captured), that signature runs eagerly from then on, with one warning naming the error.
    """

    def __init__(self) -> None:
        self._graphs: dict[Hashable, Captured | None] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    # A cache of captured graphs is device state: copies and pickles of the owning module start empty.
    def __deepcopy__(self, memo: dict) -> GraphCache:
        return GraphCache()

    def __getstate__(self) -> dict:
        return {"_graphs": {}}

    @staticmethod
    def usable(*inputs: Tensor) -> bool:
        """Graphs are captured only for CUDA inputs, without autograd, and not inside another capture."""
        return (
            all(t.is_cuda for t in inputs)
            and not torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def replay(self, fn: Callable[..., Outputs], key: Hashable, inputs: Sequence[Tensor], owner: nn.Module) -> Outputs:
        """``fn(*inputs)`` (a tensor or a tuple of them), through the graph cached for ``key`` (captured now if new)."""
        signature = (
            key,
            tuple((tuple(t.shape), t.dtype, t.device) for t in inputs),
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
            # Lightning evaluates under inference_mode but logs train/acc under no_grad: inference tensors
            # (static inputs captured in one) cannot be written in the other.
            torch.is_inference_mode_enabled(),
            tuple(p.data_ptr() for p in owner.parameters()),
        )
        if signature not in self._graphs:
            self._graphs[signature] = self._capture(fn, inputs)
        entry = self._graphs[signature]
        if entry is None:  # its capture failed
            return fn(*inputs)
        graph, static_inputs, static_output = entry
        for static, new in zip(static_inputs, inputs):
            static.copy_(new)
        graph.replay()
        return _clone(static_output)

    @staticmethod
    def _capture(fn: Callable[..., Outputs], inputs: Sequence[Tensor]) -> Captured | None:
        """The graph of ``fn`` on static copies of ``inputs``, those copies and its output; None if capture fails."""
        static_inputs = [t.clone() for t in inputs]
        # Warm up on a side stream (lazy cuBLAS/cuDNN initialisation must not happen during capture), then rewind
        # the generator so that the first replay draws what an eager call would have drawn.
        rng = torch.cuda.get_rng_state(inputs[0].device)
        # Autocast caches the low-precision copy of each parameter until its outermost context exits. A graph
        # captured while the cache is on would read that copy (freed with the context, and blind to optimizer
        # steps) instead of casting the parameter at each replay, so the cache is off for warm-up and capture.
        # The same rule as torch.cuda.make_graphed_callables, which refuses an autocast context with caching.
        with autocast_without_cache("cuda"):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn(*static_inputs)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.set_rng_state(rng, inputs[0].device)
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: CUDA calls of other threads (DataLoader pinning, logging) must not void the capture.
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    static_output = fn(*static_inputs)
            except RuntimeError as error:
                warnings.warn(f"CUDA graph capture failed, running this sampler eagerly instead: {error}", stacklevel=3)
                return None
        return graph, static_inputs, static_output
