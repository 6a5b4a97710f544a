"""nn/stacked.py: the vmapped blocks' template and its dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from lightning_noprop.nn.blocks import DenoisingBlock
from lightning_noprop.nn.stacked import StackedDropout, stacked_template


def _per_block(dropout, x):
    """``dropout`` applied to each block's slice of x (K, ...) under vmap, as call_stacked runs it."""
    return vmap(dropout, randomness="different")(x)


def test_stacked_dropout_keeps_1_minus_p_scaled_with_a_mask_per_block():
    x = torch.randn(3, 64, 32, 4, 4, dtype=torch.float64)
    got = _per_block(StackedDropout(0.2), x)
    kept = got != 0
    assert 0.78 < kept.double().mean() < 0.82, "1 - p of the values are kept"
    assert torch.allclose(got[kept], x[kept] / 0.8)
    assert not torch.equal(kept[0], kept[1]), "each block draws its own mask"


def _net(dropout: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), dropout, nn.Conv2d(4, 4, 3, padding=1), dropout)


def test_compiled_vmapped_dropout_draws_what_eager_draws_for_any_batch_size():
    """F.dropout's batching rule cannot be traced with a symbolic batch size, and a Bernoulli mask compiles to other
    draws than eager's: StackedDropout compiles whole (fullgraph, dynamic shapes) and draws the eager numbers under
    inductor's fallback_random, as capture_step compiles the vmapped blocks, with inductor's channels-last layout too
    (the GPU's default)."""
    nets = [_net(nn.Dropout(0.2)).double() for _ in range(3)]
    template = _net(StackedDropout(0.2)).to("meta")

    def outputs(x):
        names = [name for name, _ in nets[0].named_parameters()]
        params = {name: torch.stack([dict(n.named_parameters())[name] for n in nets]) for name in names}
        return vmap(lambda p, image: functional_call(template, p, (image,)), in_dims=(0, None),
                    randomness="different")(params, x)  # fmt: skip

    compiled = torch.compile(outputs, dynamic=True, fullgraph=True, options={"fallback_random": True})
    for batch in (8, 5):  # fullgraph: each compiles whole
        x = torch.randn(batch, 1, 6, 6, dtype=torch.float64)
        torch.manual_seed(batch)
        expected = outputs(x)
        torch.manual_seed(batch)
        got = compiled(x)
        # The same masks; inductor's channels-last convolutions round differently (~1e-16), a wrong mask by ~0.1.
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        assert (got == 0).any(), "dropout is on"


def test_stacked_dropout_is_the_identity_in_eval_and_at_p_0_and_zero_at_p_1():
    x = torch.randn(4, 5)
    assert torch.equal(StackedDropout(0.5).eval()(x), x)
    assert torch.equal(StackedDropout(0.0)(x), x)
    assert torch.equal(StackedDropout(1.0)(x), torch.zeros_like(x))


def test_the_template_runs_every_dropout_as_stacked_dropout_with_its_p():
    block = DenoisingBlock((1, 28, 28), 10, 10, dropout=0.3, width=16)
    template = stacked_template(block)
    dropouts = [m for m in template.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == sum(isinstance(m, nn.Dropout) for m in block.modules()) > 0
    assert all(type(m) is StackedDropout and m.p == 0.3 for m in dropouts)
    assert all(type(m) is nn.Dropout for m in block.modules() if isinstance(m, nn.Dropout)), "the block is unchanged"


def test_the_template_refuses_a_dropout_it_does_not_replace():
    block = nn.Sequential(nn.Linear(4, 4), nn.Dropout1d(0.2))
    with pytest.raises(NotImplementedError, match="nn.Dropout only, not Dropout1d"):
        stacked_template(block)


def test_a_bf16_input_draws_its_mask_in_float32():
    """A bf16 draw has steps of 1/256: at p = 0.001 nothing would drop."""
    x = torch.ones(1_000_000, dtype=torch.bfloat16)
    dropped = (StackedDropout(0.001)(x) == 0).double().mean()
    assert 0.0007 < dropped < 0.0013

