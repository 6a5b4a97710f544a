import copy

import pytest
import torch

from lightning_noprop.cuda_graphs import GraphCache
from lightning_noprop.execution.executor import Executor
from lightning_noprop.strategies import Backprop, NoPropCT, NoPropDT, NoPropFM

from .strategies.helpers import batch, tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _predict(strategy, x, steps, seed, executor=None):
    """The prediction as ``executor`` runs it (default: eager, no CUDA graph)."""
    torch.manual_seed(seed)
    return (executor or Executor(sampler_cuda_graph=False)).predict(strategy, x, steps)


@pytest.mark.parametrize("strategy_class", [NoPropCT, NoPropFM])
def test_sampler_cuda_graph_changes_nothing_on_cpu(strategy_class):
    """On CPU the option falls back to the eager sampler: the same draws give the same prediction."""
    strategy, graphs = tiny(strategy_class).eval(), Executor()
    x, _ = batch()
    assert not GraphCache.usable(x)
    torch.testing.assert_close(_predict(strategy, x, 7, 3, graphs).z, _predict(strategy, x, 7, seed=3).z)
    assert len(graphs._inference_graphs) == 0


@pytest.mark.parametrize(("strategy", "capture_step", "sampler_cuda_graph", "graphs"), [
    (NoPropCT, False, True, True), (NoPropFM, False, True, True), (NoPropFM, False, False, False),
    (NoPropDT, False, True, False), (Backprop, False, True, False), (NoPropDT, True, False, True),
], ids=["ct", "fm", "fm-off", "dt", "backprop", "dt-captured"])  # fmt: skip
def test_which_inference_replays_a_cuda_graph(strategy, capture_step, sampler_cuda_graph, graphs):
    """A sampler (CT/FM) by default, every strategy under capture_step, nothing else."""
    executor = Executor(capture_step=capture_step, sampler_cuda_graph=sampler_cuda_graph)
    assert executor.graphs_inference(strategy) is graphs


def test_copies_of_an_executor_start_with_an_empty_graph_cache():
    executor = Executor()
    executor._inference_graphs._graphs["fake"] = None
    assert len(copy.deepcopy(executor)._inference_graphs) == 0
    assert GraphCache().__getstate__() == {"_graphs": {}}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("strategy_class", [NoPropCT, NoPropFM])
def test_graph_replay_equals_the_eager_sampler_on_gpu(strategy_class):
    """The captured sampler computes what the eager one does: same seed, same z; new inputs are copied in; an
    in-place parameter update is seen by the next replay; a new batch size gets its own graph."""
    kwargs = {"inference_noise": False} if strategy_class is NoPropCT else {}
    strategy, executor = tiny(strategy_class, **kwargs).cuda().eval(), Executor()
    graphs = executor._inference_graphs
    x, _ = batch(size=8)
    x = x.cuda()
    for seed in (0, 1):  # the first call captures, the second replays
        torch.testing.assert_close(_predict(strategy, x, 50, seed, executor).z, _predict(strategy, x, 50, seed).z,
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    other = torch.randn_like(x)
    torch.testing.assert_close(_predict(strategy, other, 50, 2, executor).z, _predict(strategy, other, 50, 2).z,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    with torch.no_grad():
        for parameter in strategy.parameters():
            parameter.mul_(1.1)
    torch.testing.assert_close(_predict(strategy, x, 50, 4, executor).z, _predict(strategy, x, 50, 4).z,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    assert len(graphs) == 1
    executor.predict(strategy, x[:5], 50)
    assert len(graphs) == 2
    assert all(entry is not None for entry in graphs._graphs.values()), "a capture failed (see its warning)"
    first, second = executor.predict(strategy, x, 50).z, executor.predict(strategy, x, 50).z
    assert not torch.equal(first, second), "each replay must draw fresh noise"
    with torch.inference_mode():  # how Lightning validates and tests: a graph of its own
        assert executor.predict(strategy, x, 50).z.shape == first.shape and len(graphs) == 3
    assert executor.predict(strategy, x, 50).z.shape == first.shape, "no_grad after inference_mode (train/acc after validation)"


def test_capture_runs_with_the_autocast_cache_off(monkeypatch):
    """A graph captured with autocast's weight cache on would replay reads of a freed, never-updated cast copy of
    the parameters. Warm-up and capture must therefore cast afresh; the caller's cache setting comes back after.
    (The CUDA calls are replaced by stand-ins, so this runs on CPU; the GPU test below checks the numbers.)"""
    import contextlib
    from types import SimpleNamespace

    stream = SimpleNamespace(wait_stream=lambda other: None)
    for name, value in {"get_rng_state": lambda device=None: None, "set_rng_state": lambda state, device=None: None,
                        "Stream": lambda: stream, "current_stream": lambda: stream,
                        "stream": lambda s: contextlib.nullcontext(), "CUDAGraph": lambda: "graph",
                        "graph": lambda graph, **kwargs: contextlib.nullcontext()}.items():  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, value)
    seen = []

    def fn(x):
        seen.append(torch.is_autocast_cache_enabled())
        return x + 1

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_cache_enabled()
        graph, static_inputs, output = GraphCache._capture(fn, [torch.zeros(2)])
        assert torch.is_autocast_cache_enabled(), "the caller's autocast cache setting must be restored"
    assert seen == [False, False], "warm-up and capture must not use autocast's weight cache"
    assert graph == "graph" and torch.equal(output, torch.ones(2)) and torch.equal(static_inputs[0], torch.zeros(2))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("strategy_class", [NoPropCT, NoPropFM])
def test_graph_replay_under_bf16_autocast_follows_the_parameters(strategy_class):
    """Lightning's bf16-mixed opens one autocast context per step: a graph captured in one must compute what the
    eager sampler computes in the next, after an optimizer-like in-place update of the parameters."""
    kwargs = {"inference_noise": False} if strategy_class is NoPropCT else {}
    strategy, executor = tiny(strategy_class, **kwargs).cuda().eval(), Executor()
    x = batch(size=8)[0].cuda()
    for seed in (0, 1, 2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(_predict(strategy, x, 20, seed, executor).z, _predict(strategy, x, 20, seed).z,
                                       rtol=2e-2, atol=2e-2)  # fmt: skip
        with torch.no_grad():
            for parameter in strategy.parameters():
                parameter.mul_(0.5)
    graphs = executor._inference_graphs
    assert len(graphs) == 1 and None not in graphs._graphs.values(), "one graph, captured once"
