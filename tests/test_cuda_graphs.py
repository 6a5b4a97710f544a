import copy

import pytest
import torch

from lightning_noprop.cuda_graphs import GraphCache
from lightning_noprop.strategies import NoPropCT, NoPropFM

from .strategies.helpers import batch, tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _predict(strategy, x, steps, seed):
    torch.manual_seed(seed)
    return strategy.predict(x, steps)


@pytest.mark.parametrize("strategy_class", [NoPropCT, NoPropFM])
def test_cuda_graph_option_changes_nothing_on_cpu(strategy_class):
    """On CPU the option falls back to the eager sampler: the same draws give the same prediction."""
    graphed = tiny(strategy_class, cuda_graph=True).eval()
    eager = copy.deepcopy(graphed)
    eager.cuda_graph = False
    x, _ = batch()
    assert not GraphCache.usable(x)
    torch.testing.assert_close(_predict(graphed, x, 7, seed=3).z, _predict(eager, x, 7, seed=3).z)
    assert len(graphed._graphs) == 0


def test_copies_of_a_strategy_start_with_an_empty_graph_cache():
    strategy = tiny(NoPropFM)
    strategy._graphs._graphs["fake"] = None
    assert len(copy.deepcopy(strategy)._graphs) == 0
    assert GraphCache().__getstate__() == {"_graphs": {}}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("strategy_class", [NoPropCT, NoPropFM])
def test_graph_replay_equals_the_eager_sampler_on_gpu(strategy_class):
    """The captured sampler computes what the eager one does: same seed, same z; new inputs are copied in; an
    in-place parameter update is seen by the next replay; a new batch size gets its own graph."""
    kwargs = {"inference_noise": False} if strategy_class is NoPropCT else {}
    graphed = tiny(strategy_class, **kwargs).cuda().eval()
    eager = copy.deepcopy(graphed)
    eager.cuda_graph = False
    x, _ = batch(size=8)
    x = x.cuda()
    for seed in (0, 1):  # the first call captures, the second replays
        torch.testing.assert_close(_predict(graphed, x, 50, seed).z, _predict(eager, x, 50, seed).z,
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    other = torch.randn_like(x)
    torch.testing.assert_close(_predict(graphed, other, 50, 2).z, _predict(eager, other, 50, 2).z, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for a, b in zip(graphed.parameters(), eager.parameters()):
            a.mul_(1.1)
            b.mul_(1.1)
    torch.testing.assert_close(_predict(graphed, x, 50, 4).z, _predict(eager, x, 50, 4).z, rtol=1e-4, atol=1e-4)
    assert len(graphed._graphs) == 1
    graphed.predict(x[:5], 50)
    assert len(graphed._graphs) == 2
    assert all(entry is not None for entry in graphed._graphs._graphs.values()), "a capture failed (see its warning)"
    first, second = graphed.predict(x, 50).z, graphed.predict(x, 50).z
    assert not torch.equal(first, second), "each replay must draw fresh noise"
    with torch.inference_mode():  # how Lightning validates and tests: a graph of its own
        assert graphed.predict(x, 50).z.shape == first.shape and len(graphed._graphs) == 3
    assert graphed.predict(x, 50).z.shape == first.shape, "no_grad after inference_mode (train/acc after validation)"


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
    graphed = tiny(strategy_class, **kwargs).cuda().eval()
    eager = copy.deepcopy(graphed)
    eager.cuda_graph = False
    x = batch(size=8)[0].cuda()
    for seed in (0, 1, 2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(_predict(graphed, x, 20, seed).z, _predict(eager, x, 20, seed).z,
                                       rtol=2e-2, atol=2e-2)  # fmt: skip
        with torch.no_grad():
            for a, b in zip(graphed.parameters(), eager.parameters()):
                a.mul_(0.5)
                b.mul_(0.5)
    assert len(graphed._graphs) == 1 and None not in graphed._graphs._graphs.values(), "one graph, captured once"
