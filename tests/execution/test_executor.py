"""The Executor: the module's execution options in one place, checked early, and what each does to a step."""

import pytest
import torch

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.executor import Executor
from lightning_noprop.strategies import NoPropDT

from ..helpers import tiny_module


def test_the_module_builds_its_executor_from_its_arguments():
    module = tiny_module(backward_mode="per_block", channels_last=True)
    assert module.executor == Executor(backward_mode="per_block", channels_last=True)
    conv = next(m for m in module.strategy.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last), "prepare laid the blocks out"
    images = module.executor.images(torch.randn(2, 3, 4, 4))  # 3 channels: NHWC differs from NCHW
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert Executor().images(images) is images


@pytest.mark.parametrize(
    ("options", "message"),
    [({"backward_mode": "both"}, "backward_mode must be one of"),
     ({"compile_options": {"mode": "default"}}, "compile_options only apply")],
)  # fmt: skip
def test_wrong_options_are_refused_with_what_to_change(options, message):
    with pytest.raises(ConfigurationError, match=message):
        Executor(**options)


def test_capture_step_fuses_the_optimizers_and_checks_on_the_device():
    eager, captured = Executor(), Executor(capture_step=True)
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    assert eager.optimizers([optimizer]) == [optimizer] and eager.checks_every_batch
    (fused,) = captured.optimizers([optimizer])
    assert fused.defaults["fused"] and not captured.checks_every_batch


def test_prepare_refuses_what_capture_cannot_run():
    with pytest.raises(ConfigurationError, match="block_execution"):
        Executor(capture_step=True).prepare(NoPropDT(num_blocks=2, width=8, block_execution="vmap"), "error")
