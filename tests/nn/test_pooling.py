"""MaxPool2d: nn.MaxPool2d's values and gradients, as ATen's opaque kernel inside a CPU compile (not inductor's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_noprop.nn import VGG, DenoisingBlock, ResNet, TimeConditionedBlock
from lightning_noprop.nn.pooling import MaxPool2d, max_pool2d

CASES = {
    "2": {"kernel_size": 2},
    "3-2-1": {"kernel_size": 3, "stride": 2, "padding": 1},
    "3-ceil": {"kernel_size": 3, "ceil_mode": True},
}


def _graph_ops(module: nn.Module, x: torch.Tensor) -> str:
    """The operators of the graph dynamo hands to its backend for ``module(x)``."""
    graphs: list[str] = []

    def backend(gm, inputs):
        graphs.append(str(gm.graph))
        return gm

    torch._dynamo.reset()
    torch.compile(module, backend=backend, dynamic=False)(x)
    return "\n".join(graphs)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_compiled_pooling_is_eagers_values_and_gradients(case, channels_last):
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = nn.MaxPool2d(**CASES[case])
    expected = reference(x)
    (expected_grad,) = torch.autograd.grad((expected * expected).sum(), x)
    pool = MaxPool2d(**CASES[case])
    assert "lightning_noprop.max_pool2d" in _graph_ops(pool, x), "compiled for a CPU, the pooling is the opaque op"
    got = torch.compile(pool, dynamic=True)(x)
    (got_grad,) = torch.autograd.grad((got * got).sum(), x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=0)
    assert got.stride() == expected.stride() and got_grad.stride() == expected_grad.stride()


class _Ops(TorchDispatchMode):
    """The names of the operators dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_eager_pooling_is_nn_maxpool2d():
    x = torch.randn(2, 3, 8, 8)
    with _Ops() as ops:
        MaxPool2d(2)(x)
    assert ops.names == ["aten::max_pool2d_with_indices"], "eager: nn.MaxPool2d's own call"
    torch.testing.assert_close(MaxPool2d(2)(x), nn.MaxPool2d(2)(x), rtol=0, atol=0)


def test_the_opaque_pooling_vmaps_with_autograd_through_it():
    """NoProp-DT's vmap mode pools the blocks' images batched over the blocks, and backpropagates through that."""
    xs = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64, requires_grad=True)  # (blocks, B, C, H, W)
    weights = torch.randn(3, 2, 4, 3, 3, dtype=torch.float64)
    got = torch.vmap(lambda x: max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)[0])(xs)
    (got * weights).sum().backward()
    expected = torch.stack([nn.functional.max_pool2d(x, 2) for x in xs.detach()])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    reference = xs.detach().clone().requires_grad_(True)
    (torch.stack([nn.functional.max_pool2d(x, 2) for x in reference]) * weights).sum().backward()
    torch.testing.assert_close(xs.grad, reference.grad, rtol=0, atol=0)
    shared = torch.randn(2, 4, 6, 6, dtype=torch.float64)  # an input without the blocks' dimension
    torch.testing.assert_close(torch.vmap(lambda w: max_pool2d(shared, [2, 2], [2, 2], [0, 0], [1, 1], False)[0] * w)(
        weights), nn.functional.max_pool2d(shared, 2) * weights, rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize(
    "network",
    [
        lambda: DenoisingBlock((1, 28, 28), num_classes=10, embedding_dim=10),
        lambda: TimeConditionedBlock((1, 28, 28), num_classes=10, embedding_dim=10),
        lambda: nn.Sequential(*(u for stage in ResNet(18, stem="imagenet").stages(3) for u in stage)),
        lambda: nn.Sequential(*(u for stage in VGG(11).stages(3) for u in stage)),
    ],
    ids=["dt-block", "ct-fm-block", "resnet-imagenet-stem", "vgg"],
)
def test_every_network_pools_with_this_maxpool2d(network):
    pools = [m for m in network().modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(type(m) is MaxPool2d for m in pools)
