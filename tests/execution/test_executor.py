"""The Executor: the module's execution options in one place, checked early, and what each does to a step."""

import pytest
import torch

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.executor import Executor
from lightning_noprop.strategies import NoPropCT, NoPropDT, NoPropFM

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
    with pytest.raises(ConfigurationError, match="drop model.compile_blocks"):
        Executor(capture_step=True, compile_blocks=True).prepare(NoPropDT(num_blocks=2, width=8), "error")


def test_block_execution_is_the_module_s_and_vmap_needs_a_batched_form():
    from lightning_noprop.strategies import Backprop

    module = tiny_module(block_execution="vmap")
    assert module.executor.batches_blocks and module.executor.block_dependency(module.strategy) is None
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    module.strategy.train()
    torch.manual_seed(0)
    expected = module.strategy.stacked_block_losses(x, y, [0, 1, 2])
    torch.manual_seed(0)
    losses = module.executor.local_losses(module.strategy, x, y, [0, 1, 2])
    assert [float(r.loss) for r in losses] == [float(r.loss) for r in expected]
    assert tiny_module().executor.block_dependency(module.strategy) == "independent"
    with pytest.raises(ConfigurationError, match="Backprop has no batched form: set model.block_execution loop"):
        tiny_module(strategy=Backprop(num_blocks=2, width=8), block_execution="vmap")


@pytest.mark.parametrize(("strategy", "module_options", "expected"), [
    (lambda: NoPropDT(num_blocks=2, width=8, block_execution="vmap"), {}, {"block_execution": "vmap"}),
    (lambda: NoPropDT(num_blocks=2, width=8, block_execution="loop"), {}, {"block_execution": "loop"}),
    (lambda: NoPropDT(num_blocks=2, width=8, block_execution="vmap"), {"block_execution": "vmap"},
     {"block_execution": "vmap"}),
    (lambda: NoPropCT(width=8, inference_steps=2, cuda_graph=False), {}, {"sampler_cuda_graph": False}),
    (lambda: NoPropFM(width=8, inference_steps=2, cuda_graph=True), {}, {"sampler_cuda_graph": True}),
], ids=["dt-vmap", "dt-loop", "dt-both", "ct-off", "fm-on"])  # fmt: skip
def test_the_strategies_deprecated_execution_arguments_still_work(strategy, module_options, expected):
    """Configs and checkpoints written before the Executor set block_execution / cuda_graph on the strategy."""
    with pytest.deprecated_call(match="is deprecated: set model."):
        module = tiny_module(strategy=strategy(), **module_options)
    for name, value in expected.items():
        assert getattr(module.executor, name) == value


@pytest.mark.parametrize(("strategy", "module_options", "message"), [
    (lambda: NoPropDT(num_blocks=2, width=8, block_execution="loop"), {"block_execution": "vmap"},
     "model.block_execution is 'vmap' but model.strategy.init_args.block_execution is 'loop'"),
    (lambda: NoPropCT(width=8, inference_steps=2, cuda_graph=True), {"sampler_cuda_graph": False},
     "model.sampler_cuda_graph is False but model.strategy.init_args.cuda_graph is True"),
], ids=["dt", "ct"])  # fmt: skip
def test_a_deprecated_argument_that_contradicts_the_module_is_refused(strategy, module_options, message):
    with pytest.raises(ConfigurationError, match=message):
        tiny_module(strategy=strategy(), **module_options)


def test_compile_blocks_gives_blocks_of_different_shapes_the_graphs_they_need():
    """Every compiled block runs one code object (Module._call_impl), so all share dynamo's recompile limit (8).
    BWBPF's blocks and heads differ in shape: in training and evaluation, with a smaller last batch, they need more
    graphs than that, and past the limit dynamo ran the rest eagerly with a warning only."""
    from lightning_noprop.strategies import BWBPF

    from ..helpers import synthetic_data, trainer
    from .test_capture import _TinyBackbone

    graphs = []

    def counting_backend(graph_module, example_inputs):  # dynamo's eager backend, counting the graphs it is given
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    # fullgraph: a block dynamo cannot trace whole fails; fail_on_recompile_limit_hit: one past the limit fails
    # instead of running eagerly.
    module = tiny_module(strategy=BWBPF(_TinyBackbone(), num_blocks=2), compile_blocks=True,
                         compile_options={"backend": counting_backend, "fullgraph": True})  # fmt: skip
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        trainer(max_epochs=1, limit_val_batches=2).fit(module, synthetic_data(synthetic_size=90, val_size=32))
    assert len(graphs) > torch._dynamo.config.recompile_limit, "the test no longer needs more graphs than the limit"
    assert torch._dynamo.config.recompile_limit == 8, "the limit is raised only inside the blocks' calls"
