"""capture_step on a GPU: the whole training step replayed from one CUDA graph per batch signature (StepGraph).

The host half (when to warm up, capture and replay, the static inputs, Lightning's step count, new graphs for a new
lr, what is refused) runs on CPU with a stand-in for the device half that runs the captured step again at each
replay; the CUDA graphs themselves are tested on a GPU (marked).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from lightning_noprop.execution.step_graph import CudaGraphs, StepGraph

from ..helpers import synthetic_data, trainer
from .test_capture import DATA, _module, _state


class _Rerun:
    """StepGraph's device half on CPU: "capture" keeps the step without running it, each "replay" runs it again
    (with everything the capture switched: uncounted steps, the blocks' own states). The states are plain seeds."""

    def __init__(self) -> None:
        self.captures = self.replays = 0

    def new_state(self) -> SimpleNamespace:
        state = SimpleNamespace(seed=None)
        state.manual_seed = lambda seed: setattr(state, "seed", seed)
        return state

    @contextmanager
    def stream(self, state):
        assert state.seed is not None, "a block's state is seeded before every replay"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.seed)
            yield

    def on_stream(self):
        return nullcontext()

    def capture(self, step, states):
        self.captures += 1
        for state in states:
            state.seed = None  # a capture draws nothing: replays must seed each state

        def replay():
            self.replays += 1
            return step()

        return replay


def _with_rerun(module):
    module.executor.step_graph.backend = _Rerun()
    return module


def test_replayed_steps_equal_eager_through_a_smaller_batch_and_a_resume(tmp_path):
    """Two eager epochs against one epoch through the graph path, a checkpoint and a resumed second: the same
    parameters, optimizer states and step count. Each signature's first batch runs eagerly, its second is captured,
    every later one only replays (the replay copies each new batch into the static inputs)."""
    eager = _module("dt")
    eager_trainer = trainer(max_epochs=2, limit_val_batches=0, precision="64-true")
    eager_trainer.fit(eager, synthetic_data(**DATA))

    first = _with_rerun(_module("dt", capture_step=True))
    trainer(max_epochs=1, limit_val_batches=0, precision="64-true").fit(first, synthetic_data(**DATA))
    backend = first.executor.step_graph.backend
    # Batches of 16, 16, 16, 10: the 16s warm up, capture (and replay) and replay; the 10 warms up.
    assert (backend.captures, backend.replays) == (1, 2)
    assert StepGraph.refusal(first) is None, "on a GPU this run would be replayed (fused AdamW, one process, no scaler)"
    first.trainer.save_checkpoint(tmp_path / "epoch0.ckpt")

    resumed = _with_rerun(_module("dt", capture_step=True))
    second = trainer(max_epochs=2, limit_val_batches=0, precision="64-true")
    second.fit(resumed, synthetic_data(**DATA), ckpt_path=tmp_path / "epoch0.ckpt")
    assert second.global_step == eager_trainer.global_step == 8 * eager.num_optimizers, "Lightning counts replays"
    assert (resumed.executor.step_graph.backend.captures, resumed.executor.step_graph.backend.replays) == (1, 2)
    expected, got = _state(eager, eager_trainer), _state(resumed, second)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value.double(), rtol=0, atol=1e-7, msg=key)


def test_a_new_learning_rate_gets_a_new_graph():
    """The fused kernels take the lr by value: after an epoch-interval scheduler changes it the step is captured again,
    and the stale graph is dropped."""
    module = _with_rerun(_module("dt", capture_step=True,
                                 lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)))  # fmt: skip
    trainer(max_epochs=2, limit_val_batches=0, precision="64-true").fit(module, synthetic_data(**DATA))
    # Epoch 0: the 16s are captured once. Epoch 1 (half the lr): the 16s again, and the 10s for the first time.
    assert module.executor.step_graph.backend.captures == 3
    assert len(module.executor.step_graph) == 2, "one graph per batch signature"
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


def _run(precision_scaler=None, interval="epoch", schedulers=(), optimizer=None, compile_options=None, world_size=1):
    optimizer = optimizer or torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
    return SimpleNamespace(trainer=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=precision_scaler),
                                                   world_size=world_size),
                           executor=SimpleNamespace(compile_options=compile_options),
                           hparams=SimpleNamespace(lr_scheduler_interval=interval), _schedulers=lambda: list(schedulers),
                           _optimizers=lambda: [SimpleNamespace(optimizer=optimizer)])  # fmt: skip


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (_run(world_size=2), "data-parallel gradients"),
        (_run(precision_scaler=object()), "precision 16-mixed"),
        (_run(interval="step", schedulers=[object()]), "every batch"),
        (_run(optimizer=torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))])), "RMSprop has neither"),
        (_run(compile_options={"mode": "reduce-overhead"}), "inductor's own CUDA graphs"),
        (_run(compile_options={"options": {"triton.cudagraphs": True}}), "inductor's own CUDA graphs"),
    ],
)
def test_what_a_graph_cannot_replay_falls_back_with_a_reason(run, message):
    assert message in StepGraph.refusal(run)


def test_fused_capturable_and_epoch_schedules_are_replayed():
    assert StepGraph.refusal(_run()) is None
    assert StepGraph.refusal(_run(schedulers=[object()])) is None
    capturable = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], capturable=True)
    assert StepGraph.refusal(_run(optimizer=capturable)) is None
    assert StepGraph.refusal(_run(compile_options={"mode": "max-autotune-no-cudagraphs"})) is None


def test_a_cpu_batch_steps_without_a_graph():
    graph = StepGraph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not graph.usable(None, torch.zeros(2))
    assert graph.backend is None and graph.refused is None


# ------------------------------------------------------------------------------------------------------- GPU
GPU_CASES = ["dt", "fm", "bwbpf-attached"]  # blocks with dropout, one network, a joint backward across blocks


def _cuda_fit(name, epochs, precision, capture, ckpt=None):
    module = _module(name, capture_step=capture)
    fit = trainer(max_epochs=epochs, limit_val_batches=0, precision=precision, accelerator="gpu", devices=1)
    fit.fit(module, synthetic_data(**DATA), ckpt_path=ckpt)
    return module, fit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", GPU_CASES)
def test_cuda_graph_steps_equal_eager_through_a_smaller_batch_and_a_resume(name, tmp_path):
    """On a GPU, in float64: two eager epochs against a graphed epoch, a checkpoint and a graphed resume. Every replay
    draws each block's noise and dropout afresh from its own seeded state, as the eager stream does."""
    eager, eager_trainer = _cuda_fit(name, 2, "64-true", capture=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="capture_step")  # no fallback
        first, first_trainer = _cuda_fit(name, 1, "64-true", capture=True)
        assert isinstance(first.executor.step_graph.backend, CudaGraphs)
        assert len(first.executor.step_graph) == 1 and None not in first.executor.step_graph._graphs.values()
        first_trainer.save_checkpoint(tmp_path / "epoch0.ckpt")
        resumed, second = _cuda_fit(name, 2, "64-true", capture=True, ckpt=tmp_path / "epoch0.ckpt")
    assert second.global_step == eager_trainer.global_step
    expected, got = _state(eager, eager_trainer), _state(resumed, second)
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double().cpu(), value.double().cpu(), rtol=0, atol=1e-7, msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_follow_eager_under_bf16_mixed():
    """bf16-mixed inside the capture (autocast's weight cache off): the graphed run's update follows the eager one to
    bf16's tolerance."""
    results = {}
    for capture in (False, True):
        torch.manual_seed(0)
        module = _module("dt", capture_step=capture)
        trainer(max_epochs=2, limit_val_batches=0, precision="bf16-mixed", accelerator="gpu",
                devices=1).fit(module, synthetic_data(**DATA))  # fmt: skip
        results[capture] = {k: v.float().cpu() for k, v in module.state_dict().items()}
    initial = {k: v.float() for k, v in _module("dt").state_dict().items()}
    keys = [k for k in initial if initial[k].is_floating_point() and "running" not in k]
    moves = {c: torch.cat([(results[c][k] - initial[k]).flatten() for k in keys]) for c in (False, True)}
    assert torch.nn.functional.cosine_similarity(moves[True], moves[False], dim=0) > 0.9
    assert moves[True].norm() / moves[False].norm() == pytest.approx(1.0, rel=0.1)

