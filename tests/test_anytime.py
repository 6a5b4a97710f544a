"""The anytime curve: which k it evaluates, that it counts like test/acc, leaves the RNG alone, and runs as a callback
on a plain Trainer (no logger, no checkpoint). Its TensorBoard side is in test_reporting.py."""

import pytest
import torch

from lightning_noprop.anytime import AnytimeCurve, anytime_accuracy, anytime_steps
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn import ResNet
from lightning_noprop.strategies import BWBPF, Backprop, NoPropFM

from .helpers import synthetic_data, tiny_module, trainer
from .strategies.helpers import IMAGE_SHAPE, batch, tiny, tiny_dt


def test_the_steps_are_the_blocks_or_a_coarse_sampler_grid():
    assert anytime_steps(tiny_dt(num_blocks=3)) == [1, 2, 3]
    backprop = Backprop(num_blocks=2, width=16)
    backprop.build(4, IMAGE_SHAPE)
    assert anytime_steps(backprop) == [1, 2]
    assert anytime_steps(tiny(NoPropFM, inference_steps=20)) == [1, 3, 10, 20]
    assert anytime_steps(tiny(NoPropFM, inference_steps=1000)) == [1, 3, 10, 30, 100, 300, 1000]


def test_counts_match_predict_and_the_caller_rng_is_untouched():
    strategy = BWBPF(ResNet(18, width=4), num_blocks=2).eval()
    strategy.build(4, IMAGE_SHAPE)
    batches = [batch(6), batch(5)]
    state = torch.get_rng_state()
    counts = anytime_accuracy(strategy.predict, batches, [1, 2])
    assert torch.equal(torch.get_rng_state(), state)
    for k in (1, 2):
        expected = sum(int((strategy.predict(x, k).logits.argmax(-1) == y).sum()) for x, y in batches)
        assert counts[k] == (expected, 11)


def test_noisy_inference_draws_the_same_noise_for_a_seed():
    strategy = tiny_dt(num_blocks=2).eval()
    batches = [batch(8)]
    first, second = (anytime_accuracy(strategy.predict, batches, [1, 2], seed=3) for _ in range(2))
    assert first == second


def test_the_callback_runs_at_the_end_of_test_on_a_plain_trainer(tmp_path):
    curve = AnytimeCurve(max_batches=1)
    data = synthetic_data()
    model = tiny_module()
    run = trainer(tmp_path, callbacks=[curve], limit_train_batches=1)
    run.fit(model, data)
    assert curve.accuracy == {}, "only test computes it"
    run.test(model, data, verbose=False)
    assert list(curve.accuracy) == [1, 2, 3] and all(0.0 <= a <= 1.0 for a in curve.accuracy.values())
    assert curve.png_path == tmp_path / "anytime.png" and curve.png_path.is_file()  # no checkpoint: the log folder


def test_steps_beyond_the_blocks_and_bad_options_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="max_batches"):
        AnytimeCurve(max_batches=0)
    with pytest.raises(ConfigurationError, match="k >= 1"):
        AnytimeCurve(steps=[0, 1])
    data, model = synthetic_data(), tiny_module()  # 3 blocks
    with pytest.raises(ConfigurationError, match="beyond the strategy's 3 blocks"):
        trainer(tmp_path, callbacks=[AnytimeCurve(steps=[1, 4])]).test(model, data, verbose=False)


def test_disabled_computes_nothing(tmp_path):
    curve = AnytimeCurve(enabled=False)
    data, model = synthetic_data(), tiny_module()
    trainer(tmp_path, callbacks=[curve], limit_train_batches=1).test(model, data, verbose=False)
    assert curve.accuracy == {} and not (tmp_path / "anytime.png").exists()
