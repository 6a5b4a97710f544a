"""Max pooling that keeps ATen's CPU kernel inside a compiled graph.

Inductor generates its own C++ loops for max pooling and its backward, and on a CPU they are about three times
slower than ATen's kernel: NoProp-DT's image encoder at batch 128, forward and backward, one thread, takes 289 ms
eager and 339 ms compiled with inductor's pooling, 253 ms with this one (RESULTS.md section 23a). That made
``capture_step`` slower than eager on a CPU. So inside a CPU compile ``MaxPool2d`` calls the pooling through an opaque
custom operator that inductor calls as it is; eager runs and GPU compiles are ``nn.MaxPool2d``'s own. The values
are ATen's either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


def _max_pool2d(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    """ATen's ``max_pool2d_with_indices``: (B, C, H, W) or (C, H, W) -> (pooled, indices of the maxima)."""
    return torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool2d_backward(
    grad: Tensor, x: Tensor, indices: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
    dilation: list[int], ceil_mode: bool,
) -> Tensor:  # fmt: skip
    """ATen's ``max_pool2d_with_indices_backward``: the gradient with respect to ``x``, shaped like ``x``."""
    return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel_size, stride, padding, dilation, ceil_mode,
                                                           indices)  # fmt: skip


# The same functions are the fake (shape) kernels: on fake tensors ATen's meta kernels give the shapes and strides
# (channels-last included) the real kernels return.
max_pool2d = torch.library.custom_op("lightning_noprop::max_pool2d", _max_pool2d, mutates_args=())
max_pool2d.register_fake(_max_pool2d)
max_pool2d_backward = torch.library.custom_op("lightning_noprop::max_pool2d_backward", _max_pool2d_backward,
                                              mutates_args=())  # fmt: skip
max_pool2d_backward.register_fake(_max_pool2d_backward)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(inputs[0], output[1])
    ctx.options = inputs[1:]


def _backward(ctx: Any, grad: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, ...]:
    x, indices = ctx.saved_tensors
    return (max_pool2d_backward(grad, x, indices, *ctx.options),) + (None,) * len(ctx.options)


max_pool2d.register_autograd(_backward, setup_context=_setup_context)


@max_pool2d.register_vmap
def _(info, in_dims, x, *options):
    # vmap over NoProp-DT's stacked blocks: the blocks' dimension merged into the batch. Pooling works plane by plane,
    # so the merged planes are pooled as the separate ones would be.
    if in_dims[0] is None:
        return max_pool2d(x, *options), (None, None)
    x = x.movedim(in_dims[0], 0)
    pooled, indices = max_pool2d(x.flatten(0, 1), *options)
    return (pooled.unflatten(0, x.shape[:2]), indices.unflatten(0, x.shape[:2])), (0, 0)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments and values) that stays ATen's kernel when compiled for a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu" and not self.return_indices:
            options = [list(_pair(v)) for v in (self.kernel_size, self.stride, self.padding, self.dilation)]
            return max_pool2d(x, *options, self.ceil_mode)[0]
        return super().forward(x)
