"""Run K same-shaped blocks as one batched computation (torch.func.vmap over their stacked parameters).

NoProp-DT's blocks see independent inputs, so their forward passes need not run one after another: stacking
each parameter across blocks turns K small convolutions and matmuls into one grouped/batched kernel each. The
stack is differentiable, so gradients land in each block's own parameters and every block keeps its own
optimizer. BatchNorm running statistics are updated on the stacked copies and written back.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

_TEMPLATES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


class StackedDropout(nn.Dropout):
    """``nn.Dropout`` for the vmapped blocks: the input where a uniform draw is below 1 - p, divided by 1 - p, else 0.

    ``F.dropout``'s batching rule cannot be traced with a symbolic batch size (torch 2.14: "Cannot call numel() on
    tensor with symbolic sizes"), so capture_step ran the whole vmapped loss eagerly; a Bernoulli mask
    (``bernoulli_``) compiles but inductor draws other numbers than eager. ``torch.rand`` is drawn by inductor's
    ``fallback_random`` as eager draws it, so the compiled step makes the eager step's updates (tested)."""

    def forward(self, x: Tensor) -> Tensor:
        """x of any shape, returned in that shape (and dtype), with each element zeroed with probability p."""
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep = 1 - self.p
        # A contiguous draw whatever x's strides (inductor may lay a convolution's output out channels-last), so the
        # same numbers land on the same elements as in eager; at least float32, since a bf16 draw under autocast has
        # steps of 1/256 and would not drop at p = 0.001.
        draw = torch.rand(x.shape, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        return x * (draw < keep) / keep


def stacked_template(module: nn.Module) -> nn.Module:
    """A parameter-free (meta-device) copy of ``module``, in its train/eval mode, that ``call_stacked`` fills with
    stacked tensors (made once a module; outside a compiled region, as ``capture_step`` needs). Its dropout layers
    are ``StackedDropout``."""
    if module not in _TEMPLATES:
        template = copy.deepcopy(module).to("meta")
        template._compiled_call_impl = None  # a compiled block (compile_blocks) runs eagerly inside vmap
        for parent in list(template.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.Dropout:
                    setattr(parent, name, StackedDropout(child.p))
                elif isinstance(child, nn.modules.dropout._DropoutNd):  # Dropout1d/2d/3d, AlphaDropout, ...
                    # Its batching rule may not compile either, and capture_step would then run eagerly unnoticed.
                    raise NotImplementedError(f"the vmapped blocks run nn.Dropout only, not {type(child).__name__}; "
                                              "set model.block_execution loop.")  # fmt: skip
        _TEMPLATES[module] = template
    template = _TEMPLATES[module]
    template.train(module.training)
    return template


def call_stacked(modules: Sequence[nn.Module], shared: Tensor, per_module: Tensor,
                 template: nn.Module | None = None) -> Tensor:  # fmt: skip
    """``torch.stack([m(shared, per_module[k]) for k, m in enumerate(modules)])``, computed as one vmapped call.

    modules: K modules of identical structure (and train/eval mode); shared: an input every module sees (e.g. the
    images (B, C, H, W)); per_module: (K, ...) one input per module. Returns (K, ...). Dropout draws independent
    masks per module (``randomness="different"``), from a different RNG sequence than K separate calls. ``template``
    is ``stacked_template(modules[0])``, made here when not given.
    """
    assert len(modules) == per_module.shape[0], f"{len(modules)} modules but {per_module.shape[0]} inputs"
    names = [name for name, _ in modules[0].named_parameters()]
    buffer_names = [name for name, _ in modules[0].named_buffers()]
    all_params = [dict(m.named_parameters()) for m in modules]
    all_buffers = [dict(m.named_buffers()) for m in modules]
    params = {name: torch.stack([p[name] for p in all_params]) for name in names}
    buffers = {name: torch.stack([b[name] for b in all_buffers]) for name in buffer_names}
    template = stacked_template(modules[0]) if template is None else template

    def one(p: dict[str, Tensor], b: dict[str, Tensor], z: Tensor) -> Tensor:
        return functional_call(template, (p, b), (shared, z))

    out = vmap(one, in_dims=(0, 0, 0), randomness="different")(params, buffers, per_module)
    if any(m.training for m in modules) and buffer_names:
        with torch.no_grad():  # BatchNorm updated the stacked running statistics in place: one copy for all of them
            targets = [module_buffers[name] for name in buffer_names for module_buffers in all_buffers]
            sources = [row for name in buffer_names for row in buffers[name].unbind(0)]
            torch._foreach_copy_(targets, sources)
    return out
