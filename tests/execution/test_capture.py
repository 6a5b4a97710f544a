"""capture_step: the compiled training step makes the eager step's draws and updates (CPU: torch.compile, inductor)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.execution.capture import CompiledUnit, LogWindow, fused, unit_compile_kwargs
from lightning_noprop.nn.backbones import Backbone, near_equal_chunks
from lightning_noprop.schedules import CosineSchedule, NoiseSchedule
from lightning_noprop.strategies import BWBPF, Backprop, NoPropCT, NoPropDT, NoPropFM

from ..helpers import FAST, run, synthetic_data, tiny_module, trainer

# PlainCNN's unit is its forward, as backprop's chain_loss is: it has the refusal and non-finite tests below.
STRATEGIES = {
    "dt": lambda: NoPropDT(num_blocks=3, width=16),
    "dt-vmap": lambda: NoPropDT(num_blocks=3, width=16),  # the blocks as one vmapped call (MODULE_OPTIONS)
    "backprop": lambda: Backprop(num_blocks=2, width=16),
    "ct": lambda: NoPropCT(width=16, inference_steps=3),
    "fm": lambda: NoPropFM(width=16, inference_steps=3),
    "fm-anchor": lambda: NoPropFM(width=16, inference_steps=3, anchor_loss=True, readout="head"),
    # BWBPF's blocks differ in shape: one graph each (capture_graphs).
    "bwbpf": lambda: BWBPF(_TinyBackbone(), num_blocks=2),
    "bwbpf-attached": lambda: BWBPF(_TinyBackbone(), num_blocks=2, detach_between_blocks=False),
}


class _TinyBackbone(Backbone):
    """Four conv-BN-ReLU units of growing width and shrinking size: BWBPF's path at a fraction of ResNet's compile
    time (a cold inductor cache takes ~2 minutes for ResNet-18's)."""

    def stages(self, in_channels: int) -> list[list[torch.nn.Module]]:
        widths = [in_channels, 4, 6, 8, 8]
        return [[torch.nn.Sequential(torch.nn.Conv2d(a, b, 3, stride=2 if i else 1, padding=1), torch.nn.BatchNorm2d(b),
                                     torch.nn.ReLU())] for i, (a, b) in enumerate(zip(widths, widths[1:]))]  # fmt: skip

    def split(self, stages: list[list[torch.nn.Module]], num_blocks: int) -> list[list[torch.nn.Module]]:
        return near_equal_chunks([unit for stage in stages for unit in stage], num_blocks)

    def describe(self) -> str:
        return "tiny"


class _Uncompilable(NoPropDT):
    """A strategy that names no pure loss method to compile."""

    capture_units = ()


class _NoClosedForm(CosineSchedule):
    """A schedule whose SNR'(t) falls back to autograd (the base class's)."""

    snr_derivative = NoiseSchedule.snr_derivative


#: module options of a STRATEGIES entry
MODULE_OPTIONS = {"dt-vmap": {"block_execution": "vmap"}}


def _module(name: str, **kwargs):
    """tiny_module with STRATEGIES[name], seeded first: CT's LearnedSchedule draws its weights when constructed."""
    torch.manual_seed(0)
    return tiny_module(strategy=STRATEGIES[name](), **{**MODULE_OPTIONS.get(name, {}), **kwargs})


#: compile options of the captured runs: a unit dynamo cannot trace in one graph fails with the reason.
FULLGRAPH = {"fullgraph": True}

# 58 training images in batches of 16: every epoch ends with a smaller batch of 10.
DATA = {"synthetic_size": 90, "val_size": 32}


def _state(module, fit_trainer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for i, optimizer in enumerate(fit_trainer.optimizers):
        for j, values in optimizer.state_dict()["state"].items():
            for name, value in values.items():
                state[f"optimizer{i}.{j}.{name}"] = torch.as_tensor(value).detach().clone()
    return state


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_captured_training_equals_eager_through_a_smaller_batch_and_a_resume(name, tmp_path):
    """Two epochs eager against one captured epoch, a checkpoint, and a captured resume for the second: parameters,
    BatchNorm buffers and optimizer states agree, with dropout on (float64, so that AdamW's division by sqrt(v)
    does not amplify float32 rounding of near-zero gradients into visible steps)."""
    eager = _module(name)
    eager_trainer = trainer(max_epochs=2, limit_val_batches=0, precision="64-true")
    eager_trainer.fit(eager, synthetic_data(**DATA))
    expected = _state(eager, eager_trainer)

    # Dynamo would run what it cannot trace, or a unit past its recompile limit, eagerly with a log line only, and
    # pass the comparison below: fullgraph and fail_on_recompile_limit_hit make either an error.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        captured = _module(name, capture_step=True, compile_options=FULLGRAPH)
        first = trainer(max_epochs=1, limit_val_batches=0, precision="64-true")
        first.fit(captured, synthetic_data(**DATA))
        assert all(o.defaults["fused"] for o in first.optimizers), "capture_step steps with torch's fused kernels"
        first.save_checkpoint(tmp_path / "epoch0.ckpt")
        resumed = _module(name, capture_step=True, compile_options=FULLGRAPH)
        second = trainer(max_epochs=2, limit_val_batches=0, precision="64-true")
        second.fit(resumed, synthetic_data(**DATA), ckpt_path=tmp_path / "epoch0.ckpt")
    assert second.global_step == eager_trainer.global_step == 8 * eager.num_optimizers
    got = _state(resumed, second)
    assert got.keys() == expected.keys()
    initial = _module(name).state_dict()
    assert any(not torch.equal(initial[k].double(), v.double()) for k, v in expected.items() if k in initial)
    # Every value agrees to 1e-9 but the biases in front of a BatchNorm (and the running means they feed): their
    # gradient is zero up to rounding (~1e-17), which AdamW normalises into steps of up to ~2e-8 over 8 batches,
    # against the 1e-3 a real update moves.
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value.double(), rtol=0, atol=1e-7, msg=key)


class LossesLogged(Callback):
    """The train/loss logged at each batch (with log_every_n_steps 1, a captured run logs every batch too)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.values.append(float(trainer.callback_metrics["train/loss_step"]))


# FM stands for CT here (one network, one compiled unit each): its graph compiles in a third of CT's time (7 against
# 23 s in the float64 test), which keeps the suite's compile time down.
BF16 = {
    "dt": lambda: NoPropDT(num_blocks=3, width=16, dropout=0.0),
    "fm": lambda: NoPropFM(width=16, inference_steps=3, dropout=0.0),
}


@pytest.mark.parametrize("name", list(BF16))
def test_captured_bf16_mixed_follows_eager(name):
    """Under bf16-mixed the compiled graph rounds at other points than eager autocast does, so the runs are compared
    to bf16's tolerance: the loss of every batch, and the update of the weights over 3 steps."""
    results = {}
    for capture in (False, True):
        torch.manual_seed(0)
        options = {"capture_step": True, "compile_options": FULLGRAPH} if capture else {}
        module = tiny_module(strategy=BF16[name](), **options)
        losses = LossesLogged()
        trainer(limit_train_batches=3, limit_val_batches=0, precision="bf16-mixed", log_every_n_steps=1,
                callbacks=[losses]).fit(module, synthetic_data())  # fmt: skip
        results[capture] = losses.values, {k: v.float() for k, v in module.state_dict().items()}
    assert len(results[True][0]) == 3
    torch.testing.assert_close(torch.tensor(results[True][0]), torch.tensor(results[False][0]), rtol=2e-2, atol=0)
    torch.manual_seed(0)
    initial = {k: v.float() for k, v in tiny_module(strategy=BF16[name]()).state_dict().items()}
    # AdamW turns bf16 rounding of near-zero gradients into full steps here and there, so elementwise equality is
    # not expected: the two runs' updates of all weights point the same way (cosine), and are as large.
    keys = [k for k in initial if initial[k].is_floating_point() and "running" not in k]
    moves = {c: torch.cat([(results[c][1][k] - initial[k]).flatten() for k in keys]) for c in (False, True)}
    assert moves[False].abs().max() > 1e-3, "nothing was trained"
    cosine = torch.nn.functional.cosine_similarity(moves[True], moves[False], dim=0)
    assert cosine > 0.9, cosine
    assert moves[True].norm() / moves[False].norm() == pytest.approx(1.0, rel=0.1)


def test_the_log_window_logs_sample_weighted_means_and_finds_a_non_finite_loss():
    window = LogWindow()
    window.add({0: {"loss": torch.tensor(1.0)}, 1: {"loss": torch.tensor(2.0)}}, batch_size=16)
    window.add({0: {"loss": torch.tensor(4.0)}, 1: {"loss": torch.tensor(float("nan"))}}, batch_size=8)
    means, samples = window.flush()
    assert samples == 24 and window.total is None
    assert means[0]["loss"].item() == pytest.approx((16 * 1.0 + 8 * 4.0) / 24)
    assert torch.isnan(means[1]["loss"])


def test_a_captured_run_stops_on_a_non_finite_loss_with_the_blocks_named():
    # 64-true and the equality test's blocks: inductor's cache holds the graph already.
    module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16), capture_step=True)
    module._images = lambda images: torch.full_like(images, float("nan"), dtype=torch.float64)  # a broken input
    with pytest.raises(Exception, match=r"Non-finite loss for block\(s\) \[0, 1, 2\] in batches 0-1 "):
        trainer(max_epochs=3, limit_val_batches=0, log_every_n_steps=2, precision="64-true").fit(module, synthetic_data())


def test_a_compile_mode_is_spelled_out_as_inductor_options_beside_ours():
    """torch.compile takes a mode or options, not both: the mode's options join ours (the user's win)."""
    kwargs = unit_compile_kwargs({"mode": "max-autotune-no-cudagraphs", "options": {"max_autotune": False}})
    assert "mode" not in kwargs and kwargs["dynamic"] is True
    assert kwargs["options"] == {"fallback_random": True, "max_autotune": False, "coordinate_descent_tuning": True}
    module = tiny_module(capture_step=True, compile_options={"mode": "max-autotune-no-cudagraphs"})
    assert "denoising_loss" in vars(module.strategy), "compiled (lazily) without torch's mode-and-options error"
    with pytest.raises(ConfigurationError, match="model.compile_options: Unrecognized mode=fast"):
        tiny_module(capture_step=True, compile_options={"mode": "fast"})
    # The units compile at their first call: a bad option is still refused when the module is built, in one line.
    with pytest.raises(ConfigurationError, match=r"model.compile_options: Unexpected optimization option no_such \("):
        tiny_module(capture_step=True, compile_options={"options": {"no_such": 1}})
    with pytest.raises(ConfigurationError, match="model.compile_options: .*unexpected keyword argument 'fullgraf'"):
        tiny_module(capture_step=True, compile_options={"fullgraf": True})


def test_a_unit_compiles_per_device_and_keeps_eagers_memory_layout_on_a_cpu(monkeypatch):
    """On a CPU inductor would turn every convolution channels-last and transpose around it (RESULTS.md section 23):
    a unit compiled for a CPU keeps the layout eager runs in, one compiled for a GPU keeps inductor's choice."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda unit, **kwargs: seen.append(kwargs) or unit)
    unit = CompiledUnit(lambda x: x * 2, {"options": {"max_autotune": False}}, graphs=1)
    assert not seen, "compiled when first called, on its inputs' device"
    for size in (2, 3):  # a second shape reuses the device's compiled unit
        assert torch.equal(unit(torch.ones(size)), torch.full((size,), 2.0))
    assert len(seen) == 1 and list(unit.compiled) == ["cpu"]
    assert seen[0]["options"] == {"fallback_random": True, "layout_optimization": False, "max_autotune": False}
    assert "layout_optimization" not in unit_compile_kwargs(None, "cuda")["options"]
    assert unit_compile_kwargs({"options": {"layout_optimization": True}}, "cpu")["options"]["layout_optimization"]


def test_fused_keeps_the_hyperparameters():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = fused(torch.optim.AdamW([param], lr=0.01, betas=(0.8, 0.9), weight_decay=0.5))
    assert optimizer.defaults["fused"] and optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 0.5
    assert fused(torch.optim.RMSprop([param])).defaults.get("fused") is None  # no fused kernel: unchanged


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": _Uncompilable(num_blocks=2, width=8)}, "does not support _Uncompilable"),
        ({"strategy": NoPropCT(width=16, inference_steps=3, snr_derivative="autograd")}, "snr_derivative analytic"),
        ({"strategy": NoPropCT(width=16, inference_steps=3, noise_schedule=_NoClosedForm())}, "snr_derivative analytic"),
        ({"compile_blocks": True}, "drop model.compile_blocks"),
        ({"nonfinite_loss": "skip"}, "nonfinite_loss error"),
    ],
)
def test_what_capture_cannot_run_is_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        tiny_module(capture_step=True, **options)


# FM stands for CT through the CLI (the same one-network path; test_captured_training_equals_eager covers both).
SMALL = {
    "dt": ["--config", "configs/noprop_dt.yaml", "--model.strategy.init_args.num_blocks", "3",
           "--model.strategy.init_args.width", "16"],
    "fm": ["--config", "configs/noprop_fm.yaml", "--model.strategy.init_args.width", "16",
           "--model.strategy.init_args.inference_steps", "3", "--model.validation_inference_steps", "2"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(SMALL))
def test_capture_step_through_the_cli(case, tmp_path):
    cli = run("fit", *SMALL[case], *FAST, "--model.capture_step", "true", "--trainer.precision", "64-true",
              "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path))  # fmt: skip
    assert list(tmp_path.rglob("last.ckpt")), "the captured run wrote its checkpoint"
    assert all(name in vars(cli.model.strategy) for name in cli.model.strategy.capture_units), "compiled units"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def _seeded_prediction(module, x, steps, seed, eager=False):
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    with torch.no_grad():
        return module.strategy.predict(x, steps) if eager else module.predict_batch(x, steps)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_captured_inference_is_the_eager_prediction_on_cpu(name):
    """On CPU capture_step's inference runs the strategy's own predict: the same draws give the same prediction."""
    module = tiny_module(strategy=STRATEGIES[name](), capture_step=True).eval()
    x = torch.randn(6, 1, 28, 28)
    got, expected = _seeded_prediction(module, x, None, 3), _seeded_prediction(module, x, None, 3, eager=True)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.z, expected.z, rtol=0, atol=0)
    assert len(module.executor._inference_graphs) == 0


def test_the_graph_cache_clones_every_tensor_of_a_tuple():
    from lightning_noprop.cuda_graphs import _clone

    a, b = torch.ones(2), torch.zeros(3)
    outputs = _clone((a, None, b))
    assert outputs[1] is None and torch.equal(outputs[0], a) and torch.equal(outputs[2], b)
    assert outputs[0].data_ptr() != a.data_ptr() and outputs[2].data_ptr() != b.data_ptr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_captured_inference_replays_the_eager_prediction_on_gpu(name):
    """capture_step's CUDA graph of the whole prediction (NoProp-DT's chain of Eq. 3, backprop's chain) computes what
    the eager predict does with the same seed; new inputs are copied in, an in-place parameter update is seen, a
    new batch size or step count gets its own graph, and every replay draws fresh noise."""
    module = tiny_module(strategy=STRATEGIES[name](), capture_step=True).cuda().eval()
    x = torch.randn(8, 1, 28, 28, device="cuda")
    for seed in (0, 1):  # the first call captures, the second replays
        got, expected = _seeded_prediction(module, x, None, seed), _seeded_prediction(module, x, None, seed, eager=True)
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.z, expected.z, rtol=1e-4, atol=1e-4)
    other = torch.randn_like(x)
    torch.testing.assert_close(_seeded_prediction(module, other, None, 2).logits,
                               _seeded_prediction(module, other, None, 2, eager=True).logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for p in module.strategy.parameters():
            p.mul_(1.1)
    torch.testing.assert_close(_seeded_prediction(module, x, None, 4).logits,
                               _seeded_prediction(module, x, None, 4, eager=True).logits, rtol=1e-4, atol=1e-4)
    assert len(module.executor._inference_graphs) == 1
    _seeded_prediction(module, x[:5], None, 5)
    _seeded_prediction(module, x, 1, 5)  # the anytime prediction after one block
    assert len(module.executor._inference_graphs) == 3
    assert None not in module.executor._inference_graphs._graphs.values(), "a capture failed (see its warning)"
    if name == "dt":  # Eq. 3 draws z_0 and each step's noise: a replay must draw afresh
        with torch.no_grad():
            assert not torch.equal(module.predict_batch(x).z, module.predict_batch(x).z)
    with torch.inference_mode():  # how Lightning validates and tests
        assert module.predict_batch(x).logits.shape == (8, 10)


def test_a_unit_with_many_shapes_gets_the_graphs_it_needs():
    """BWBPF's K blocks are K graphs, each for training and evaluation: past dynamo's recompile limit (8 a function)
    the rest would run eagerly with a warning, so the unit is allowed what it needs."""
    from lightning_noprop.execution.capture import with_graph_room

    def double(x):
        return x * 2

    graphs = []

    def counting_backend(graph_module, example_inputs):  # dynamo's eager backend, counting the graphs it is given
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    unit = with_graph_room(torch.compile(double, backend=counting_backend, dynamic=False), graphs=6)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # past the limit: an error, not eager
        for size in range(1, 13):  # 12 shapes: 12 graphs, as 6 blocks in training and evaluation would need
            assert torch.equal(unit(torch.ones(size)), torch.full((size,), 2.0))
    assert len(graphs) == 12
    assert torch._dynamo.config.recompile_limit == 8, "the limit is raised only inside the unit's calls"
    assert with_graph_room(double, graphs=1) is double, "a unit within the limit is left as it is"


def test_the_log_window_continues_from_its_state():
    window = LogWindow()
    window.add({0: {"loss": torch.tensor(1.0), "kl": torch.tensor(3.0)}}, batch_size=16)
    restored = LogWindow()
    restored.load_state_dict(window.state_dict())
    for w in (window, restored):
        w.add({0: {"loss": torch.tensor(4.0), "kl": torch.tensor(5.0)}}, batch_size=8)
    (means, samples), (restored_means, restored_samples) = window.flush(), restored.flush()
    assert samples == restored_samples == 24 and restored.batches == 0
    assert means == restored_means and means[0]["kl"].item() == pytest.approx((16 * 3.0 + 8 * 5.0) / 24)
    assert LogWindow().state_dict() == {"total": None, "samples": 0, "batches": 0, "layout": []}
