import types
from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lightning_noprop.checkpointing import AtomicCheckpointIO, CheckpointMismatchError
from lightning_noprop.nn import LearnedEmbedding, PrototypeEmbedding
from lightning_noprop.schedules import LearnedSchedule
from lightning_noprop.strategies import Backprop, NoPropCT, NoPropDT, NoPropFM
from lightning_noprop.trainer_checks import check_trainer_arguments, check_trainer_supports

from .helpers import synthetic_data, tiny_module, trainer


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_joint_and_per_block_give_the_same_updates():
    results = {}
    for mode in ("joint", "per_block"):
        module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16, embedding=LearnedEmbedding(8)), backward_mode=mode)
        # float64: in float32 the joint sum rounds the shared gradient differently, and AdamW's normalisation can
        # magnify a rounding of a near-zero gradient to a visible update on some CPUs.
        trainer(limit_train_batches=3, limit_val_batches=0, precision="64-true").fit(module, synthetic_data())
        results[mode] = _params(module)
    initial = _params(tiny_module(strategy=NoPropDT(num_blocks=3, width=16, embedding=LearnedEmbedding(8))))
    for key, value in results["joint"].items():
        assert torch.allclose(value.double(), results["per_block"][key].double(), atol=1e-9), key
    assert any(not torch.equal(results["joint"][k].double(), initial[k].double()) for k in initial), "nothing was trained"


def test_sequential_block_order_trains_one_block_per_epoch():
    module = tiny_module(block_order="sequential")
    before = _params(module)
    trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(module, synthetic_data())
    after = _params(module)
    changed = {i for i in range(3) if not torch.equal(before[f"strategy.blocks.{i}.image_encoder.0.weight"],
                                                       after[f"strategy.blocks.{i}.image_encoder.0.weight"])}  # fmt: skip
    assert changed == {0, 1}, "epoch e trains block e mod T"


def test_one_optimizer_per_block_plus_shared():
    module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16, embedding=LearnedEmbedding(8)))
    fit_trainer = trainer(limit_train_batches=1, limit_val_batches=0)
    fit_trainer.fit(module, synthetic_data())
    assert len(fit_trainer.optimizers) == 4
    assert len(fit_trainer.optimizers[3].param_groups[0]["params"]) == 3  # head weight, head bias, W_Embed


@pytest.mark.parametrize(
    ("make", "optimizers"),
    [
        (lambda: NoPropCT(width=16, inference_steps=5, noise_schedule=LearnedSchedule(hidden=8)), 2),
        (lambda: NoPropFM(width=16, inference_steps=5), 1),  # one-hot: no anchor, so no shared parameters
        (lambda: NoPropFM(width=16, inference_steps=5, embedding=LearnedEmbedding(8)), 2),
    ],
    ids=["ct", "fm-one-hot", "fm-learned"],
)
@pytest.mark.parametrize("mode", ["joint", "per_block"])
def test_continuous_strategies_train_through_the_same_mechanics(make, optimizers, mode):
    module = tiny_module(strategy=make(), backward_mode=mode)
    before = _params(module)
    fit_trainer = trainer(limit_train_batches=2, limit_val_batches=1)
    fit_trainer.fit(module, synthetic_data())
    assert len(fit_trainer.optimizers) == optimizers
    after = module.state_dict()
    assert not torch.equal(before["strategy.network.fuse.0.weight"], after["strategy.network.fuse.0.weight"])
    if isinstance(module.strategy, NoPropCT):
        assert before["strategy.noise_schedule.gamma_0"] != after["strategy.noise_schedule.gamma_0"], "schedule not trained"
    assert 0.0 <= fit_trainer.callback_metrics["val/acc"] <= 1.0


def test_validation_inference_steps_shortens_validation_but_not_test():
    strategy = NoPropFM(width=16, inference_steps=12)
    module = tiny_module(strategy=strategy, validation_inference_steps=3)
    steps = []
    original = strategy.predict
    strategy.predict = lambda x, num_steps=None: steps.append(num_steps) or original(x, num_steps)
    fit_trainer = trainer(limit_train_batches=1, limit_val_batches=1, limit_test_batches=1)
    fit_trainer.fit(module, synthetic_data())
    fit_trainer.test(module, synthetic_data(), verbose=False)
    assert steps == [3, None], "validation on the short grid, test on the strategy's full inference_steps"


def test_per_block_gradient_clipping_bounds_each_block():
    clip, lr = 1e-3, 1.0
    module = tiny_module(gradient_clip_val=clip, optimizer=partial(torch.optim.SGD, lr=lr))
    before = _params(module)
    trainer(limit_train_batches=1, limit_val_batches=0).fit(module, synthetic_data())
    after = _params(module)
    for i in range(3):
        keys = [k for k, p in module.strategy.blocks[i].named_parameters()]
        step = torch.cat([(after[f"strategy.blocks.{i}.{k}"] - before[f"strategy.blocks.{i}.{k}"]).flatten() for k in keys])
        assert step.norm() <= lr * clip * 1.001, f"block {i} moved {step.norm()} > lr * clip"


def test_nonfinite_loss_is_an_error_naming_the_block():
    module = tiny_module()
    original = module.strategy.block_loss
    module.strategy.block_loss = lambda x, y, t, *shared: (  # noqa: E731
        (lambda r: setattr(r, "loss", r.loss * float("nan")) or r)(original(x, y, t, *shared)) if t == 1
        else original(x, y, t, *shared)
    )
    with pytest.raises(FloatingPointError, match="block 1"):
        trainer(limit_train_batches=1, limit_val_batches=0).fit(module, synthetic_data())


def test_nonfinite_loss_skip_leaves_that_block_unchanged():
    module = tiny_module(nonfinite_loss="skip", backward_mode="per_block")
    original = module.strategy.block_loss
    module.strategy.block_loss = lambda x, y, t, *shared: (  # noqa: E731
        (lambda r: setattr(r, "loss", r.loss * float("inf")) or r)(original(x, y, t, *shared)) if t == 1
        else original(x, y, t, *shared)
    )
    before = _params(module)
    run = trainer(limit_train_batches=2, limit_val_batches=0)
    run.fit(module, synthetic_data())
    after = _params(module)
    key = "strategy.blocks.{}.image_encoder.0.weight"
    assert torch.equal(before[key.format(1)], after[key.format(1)])
    assert not torch.equal(before[key.format(0)], after[key.format(0)])
    assert run.callback_metrics["train/skipped_updates"].item() == 2, "block 1 on each of the 2 batches"


def _fit_with_checkpoints(tmp_path, max_epochs, ckpt_path=None):
    module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16, embedding=LearnedEmbedding(8)),
                         train_accuracy_every_n_steps=2)  # fmt: skip
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit_trainer = trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[checkpoint],
                          num_sanity_val_steps=2, plugins=[AtomicCheckpointIO()])  # fmt: skip
    fit_trainer.fit(module, synthetic_data(), ckpt_path=ckpt_path)
    return module, fit_trainer


def test_resume_restores_every_optimizer_and_continues_identically(tmp_path):
    straight, _ = _fit_with_checkpoints(tmp_path / "straight", max_epochs=3)
    _fit_with_checkpoints(tmp_path / "first", max_epochs=2)
    saved = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)
    assert len(saved["optimizer_states"]) == 4
    resumed, resumed_trainer = _fit_with_checkpoints(tmp_path / "resumed", 3, ckpt_path=tmp_path / "first" / "last.ckpt")
    for key, value in _params(straight).items():
        assert torch.allclose(value.float(), _params(resumed)[key].float(), atol=1e-6), key
    assert resumed_trainer.current_epoch == 3


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    _fit_with_checkpoints(tmp_path, max_epochs=1)
    other = tiny_module(strategy=NoPropDT(num_blocks=2, width=16, embedding=LearnedEmbedding(8)))
    with pytest.raises(CheckpointMismatchError, match="num_local_losses: checkpoint 3, current 2"):
        trainer().validate(other, synthetic_data(), ckpt_path=tmp_path / "last.ckpt")
    backprop = tiny_module(strategy=Backprop(num_blocks=3, width=16, embedding=LearnedEmbedding(8)))
    with pytest.raises(CheckpointMismatchError, match="strategy: checkpoint 'NoPropDT', current 'Backprop'"):
        trainer().validate(backprop, synthetic_data(), ckpt_path=tmp_path / "last.ckpt")


def test_foreign_checkpoint_is_refused(tmp_path):
    module = tiny_module()
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.6"}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not written by lightning_noprop"):
        trainer().validate(module, synthetic_data(), ckpt_path=tmp_path / "foreign.ckpt")


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "model.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def broken_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"], "no temporary file may be left behind"


def _fake_trainer(precision="32-true", strategy=None):
    loop = types.SimpleNamespace(min_epochs=None, epoch_loop=types.SimpleNamespace(min_steps=None))
    return types.SimpleNamespace(precision=precision, strategy=strategy or object(), log_every_n_steps=50,
                                 check_val_every_n_epoch=1, num_sanity_val_steps=2, fit_loop=loop,
                                 accumulate_grad_batches=1, val_check_interval=1.0)  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("log_every_n_steps", -2, "log_every_n_steps must be >= 0"),  # Lightning logs it as if it were 2
        ("check_val_every_n_epoch", 0, "check_val_every_n_epoch must be >= 1"),  # Lightning: ZeroDivisionError
        ("num_sanity_val_steps", -5, "num_sanity_val_steps must be >= -1"),
        ("min_epochs", -3, "min_epochs must be >= 0"),
        ("val_check_interval", 0, "an int counts training batches and must be >= 1"),  # Lightning: ZeroDivisionError
    ],
)
def test_trainer_options_out_of_range_are_refused_through_the_python_api(option, value, phrase, tmp_path):
    from lightning_noprop.errors import ConfigurationError

    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, **{option: value})
    with pytest.raises(ConfigurationError, match=phrase):
        fit.fit(tiny_module(), datamodule=synthetic_data())


def test_trainer_options_at_their_bounds_are_accepted_and_accumulation_is_refused():
    loop = types.SimpleNamespace(min_epochs=0, epoch_loop=types.SimpleNamespace(min_steps=0))
    edge = types.SimpleNamespace(log_every_n_steps=0, check_val_every_n_epoch=None, num_sanity_val_steps=-1,
                                 fit_loop=loop, accumulate_grad_batches=1, val_check_interval=1)  # fmt: skip
    check_trainer_arguments(edge)
    # Lightning refuses accumulation before setup with advice the CLI replaces (its advice: automatic optimization)
    with pytest.raises(ValueError, match="raise --data.batch_size"):
        check_trainer_arguments(types.SimpleNamespace(**{**vars(edge), "accumulate_grad_batches": 2}))


@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_fp16_is_refused_with_advice(precision):
    with pytest.raises(ValueError, match="bf16-mixed"):
        check_trainer_supports(_fake_trainer(precision), "joint", "every_batch", 10)


def test_bf16_and_fp32_are_accepted():
    for precision in ("bf16-mixed", "32-true"):
        check_trainer_supports(_fake_trainer(precision), "per_block", "every_batch", 10)


def test_ddp_per_block_needs_find_unused_parameters():
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        check_trainer_supports(_fake_trainer(strategy=DDPStrategy()), "per_block", "every_batch", 10)
    check_trainer_supports(_fake_trainer(strategy=DDPStrategy(find_unused_parameters=True)), "per_block", "every_batch", 10)
    check_trainer_supports(_fake_trainer(strategy=DDPStrategy()), "joint", "every_batch", 10)
    with pytest.raises(ValueError, match="sequential"):
        check_trainer_supports(_fake_trainer(strategy=DDPStrategy()), "joint", "sequential", 10)


def test_fsdp_is_refused():
    with pytest.raises(ValueError, match="19685"):
        check_trainer_supports(_fake_trainer(strategy=FSDPStrategy()), "joint", "every_batch", 10)


def test_bad_module_options_are_refused():
    with pytest.raises(ValueError, match="backward_mode must be one of"):
        tiny_module(backward_mode="sideways")
    with pytest.raises(ValueError, match="gradient_clip_val"):
        tiny_module(gradient_clip_val=0.0)
    # a block chain stops after that many blocks (NoProp-DT's sampler asserted it; the backprop chain ignored it)
    for strategy in (NoPropDT(num_blocks=3, width=16), Backprop(num_blocks=3, width=16)):
        with pytest.raises(ValueError, match=f"validation_inference_steps must be <= 3, the blocks of {type(strategy).__name__}"):
            tiny_module(strategy=strategy, validation_inference_steps=4)
    tiny_module(strategy=NoPropDT(num_blocks=3, width=16), validation_inference_steps=3)
    tiny_module(strategy=NoPropFM(width=16, inference_steps=5), validation_inference_steps=50)  # any sampler grid


@pytest.mark.parametrize(("interval", "expected_steps"), [("epoch", 2), ("step", 4)])
def test_one_lr_scheduler_per_optimizer_stepped_by_the_module(interval, expected_steps):
    module = tiny_module(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                         lr_scheduler_interval=interval)  # fmt: skip
    fit_trainer = trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    fit_trainer.fit(module, synthetic_data())
    assert len(fit_trainer.lr_scheduler_configs) == len(fit_trainer.optimizers) == 4
    for optimizer in fit_trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**expected_steps)


def test_reduce_on_plateau_is_refused():
    module = tiny_module(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        trainer(limit_train_batches=1, limit_val_batches=0).fit(module, synthetic_data())


def test_channels_last_changes_the_layout_not_the_updates():
    """Without dropout (whose masks are drawn in memory order, so the layout changes which units drop) the
    channels-last model trains to the same parameters: to 1e-6 against Adam steps of 1e-3 (the CPU's channels-last
    float64 convolution rounds differently, ~1e-8). In float64: in float32 Adam turns the rounding noise in the
    gradients of biases that feed BatchNorm (zero in exact arithmetic) into full +-lr steps."""
    results = {}
    for channels_last in (False, True):
        module = tiny_module(strategy=NoPropDT(num_blocks=3, width=16, dropout=0.0), channels_last=channels_last)
        trainer(limit_train_batches=2, limit_val_batches=0, precision="64-true").fit(module, synthetic_data())
        results[channels_last] = _params(module)
        conv = module.strategy.blocks[0].image_encoder[4].weight  # 32 -> 64 channels (with 1 channel both agree)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        images = module._images(torch.randn(2, 3, 8, 8, dtype=torch.float64))
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
    for key, value in results[False].items():
        torch.testing.assert_close(results[True][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("make", [lambda: NoPropDT(num_blocks=3, width=16), lambda: NoPropFM(width=16, inference_steps=3)],
                         ids=["dt", "fm"])  # fmt: skip
def test_compile_blocks_compiles_each_block_and_keeps_the_updates(make):
    """compile_blocks wraps every block module (dynamo's eager backend here: the tracing without codegen), and
    training through the compiled blocks gives the updates of the eager ones."""
    torch._dynamo.reset()
    results = {}
    for compile_blocks in (False, True):
        options = {"compile_blocks": True, "compile_options": {"backend": "eager"}} if compile_blocks else {}
        module = tiny_module(strategy=make(), **options)
        blocks = module.strategy.block_modules()
        assert blocks and all((b._compiled_call_impl is not None) == compile_blocks for b in blocks)
        trainer(limit_train_batches=2, limit_val_batches=0).fit(module, synthetic_data())
        results[compile_blocks] = _params(module)
    assert results[True].keys() == results[False].keys(), "compiling must not rename the checkpoint's keys"
    for key, value in results[False].items():
        torch.testing.assert_close(results[True][key], value, rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(ValueError, match="compile_blocks or capture_step true"):
        tiny_module(compile_options={"mode": "max-autotune"})


def test_max_steps_warns_with_the_number_of_batches_it_will_really_train(tmp_path):
    # global_step counts optimizer steps: a budget of S steps is ceil(S / optimizers) batches, and the warning says so.
    module = tiny_module()
    steps_per_batch = module.num_optimizers
    assert steps_per_batch > 1
    batches = []
    module.on_train_batch_end = lambda outputs, batch, batch_idx: batches.append(batch_idx)
    with pytest.warns(UserWarning, match=rf"max_steps={steps_per_batch + 1} will stop fit after 2 batch\(es\)"):
        trainer(tmp_path, max_steps=steps_per_batch + 1, limit_val_batches=0).fit(module, synthetic_data())
    assert batches == [0, 1], "the warning's batch count is what Lightning trains"


def test_fast_dev_run_above_one_warns_and_names_the_options_that_train_that_many_batches(tmp_path):
    with pytest.warns(UserWarning, match="fast_dev_run=3 will train 1 batch.*limit_train_batches 3"):
        trainer(tmp_path, fast_dev_run=3).fit(tiny_module(), synthetic_data())


def test_no_step_warning_without_a_step_budget(tmp_path, recwarn):
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(tiny_module(), synthetic_data())
    assert not [w for w in recwarn if "global_step counts optimizer steps" in str(w.message)]


@pytest.mark.parametrize(("interval", "t_max", "warning"), [
    ("epoch", 400, ("T_max is 400 but this run is 1 epoch(s) long (lr_scheduler_interval epoch), so the learning "
                    "rate will not reach its minimum: set --model.lr_scheduler.init_args.T_max 1")),
    ("epoch", 1, None),
    ("step", 2, None),  # 2 batches
    ("step", 1, ("this run is 2 training batch(es) long (lr_scheduler_interval step), so the learning rate will "
                 "rise again after T_max")),
])  # fmt: skip
def test_a_cosine_schedule_of_another_length_than_the_run_warns(interval, t_max, warning, tmp_path, recwarn):
    schedule = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=t_max)
    module = tiny_module(lr_scheduler=schedule, lr_scheduler_interval=interval)
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(module, synthetic_data())
    heard = [str(w.message) for w in recwarn if "CosineAnnealingLR's T_max" in str(w.message)]
    assert len(heard) == (warning is not None), heard
    assert warning is None or warning in heard[0]


@pytest.mark.parametrize(
    "make",
    [lambda: NoPropDT(num_blocks=2, width=8), lambda: Backprop(num_blocks=2, width=8),
     lambda: NoPropCT(width=8, inference_steps=3, noise_schedule=LearnedSchedule(hidden=4)),
     lambda: NoPropFM(width=8, inference_steps=3, embedding=LearnedEmbedding(6))],
    ids=["dt", "backprop", "ct", "fm"],
)  # fmt: skip
def test_precision_64_true_tests_and_predicts_every_embedding_strategy(make):
    """Under "64-true" the weights are float64: z_0 (and CT's schedule input t) must be drawn in float64 too."""
    module = tiny_module(strategy=make())
    run = trainer(limit_test_batches=1, limit_predict_batches=1, precision="64-true")
    run.test(module, synthetic_data(), verbose=False)
    assert 0.0 <= run.callback_metrics["test/acc"] <= 1.0
    (prediction,) = run.predict(module, synthetic_data())
    assert prediction.z.dtype == prediction.logits.dtype == torch.float64
    assert prediction.logits.shape == (16, 10) and torch.isfinite(prediction.logits).all()


def test_prototypes_are_initialised_on_the_first_fit_only():
    """A fresh model starts from the class medoids; a second fit continues from the trained prototypes."""
    data = synthetic_data()
    medoids = PrototypeEmbedding()
    medoids.build(10, (1, 28, 28))
    medoids.initialize_from_data(*data.training_images())
    module = tiny_module(strategy=NoPropDT(num_blocks=2, width=8, embedding=PrototypeEmbedding()))
    embedding = module.strategy.embedding
    assert not embedding.data_initialized
    trainer(limit_train_batches=1, limit_val_batches=0).fit(module, data)
    # One AdamW step at lr 1e-3 moves each value by at most ~1e-3.
    torch.testing.assert_close(embedding.weight.detach(), medoids.weight, rtol=0, atol=2e-3)
    with torch.no_grad():
        embedding.weight.add_(1.0)  # as if trained far from the medoids
    changed = embedding.weight.detach().clone()
    trainer(limit_train_batches=1, limit_val_batches=0).fit(module, data)
    torch.testing.assert_close(embedding.weight.detach(), changed, rtol=0, atol=2e-3)


@pytest.mark.parametrize("mode", ["joint", "per_block"])
def test_every_optimizer_steps_on_the_current_batch_s_gradient_alone(mode):
    """At each step an optimizer's gradients are what this batch's backward passes produced, nothing left over from
    the previous batch: in particular the shared (head, W_Embed) optimizer's, which every block's loss reaches."""
    module = tiny_module(strategy=NoPropDT(num_blocks=2, width=8, embedding=LearnedEmbedding(6)), backward_mode=mode)
    this_batch: dict[int, torch.Tensor] = {}  # id(parameter) -> sum of the gradients this batch's backwards sent it
    for p in module.parameters():
        p.register_hook(lambda grad, key=id(p): this_batch.__setitem__(key, this_batch.get(key, 0) + grad))
    module.on_train_batch_start = lambda batch, batch_idx: this_batch.clear()
    stepped = []
    clip = module.on_before_optimizer_step

    def check(optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p in params:
            torch.testing.assert_close(p.grad, this_batch[id(p)], rtol=1e-6, atol=0)
        stepped.append({id(p) for p in params})
        clip(optimizer)

    module.on_before_optimizer_step = check
    trainer(limit_train_batches=2, limit_val_batches=0).fit(module, synthetic_data())
    shared = {id(p) for p in module.strategy.shared_parameters()}
    assert len(stepped) == 2 * 3 and stepped.count(shared) == 2, "two batches, each stepping 2 blocks and the shared"


def test_test_accuracy_is_the_count_over_the_whole_test_set():
    """trainer.test's test/acc equals argmax(logits) == label counted by hand over all 24 test images, in batches of
    10, 10 and 4 (a per-batch average would weigh the last 4 like 10), with the same noise: each predict call is seeded
    by its rank."""
    module = tiny_module(strategy=NoPropDT(num_blocks=2, width=8, readout="nearest"),
                         optimizer=partial(torch.optim.AdamW, lr=1e-2))  # fmt: skip
    data = synthetic_data(eval_batch_size=10, val_size=0)
    run = trainer(limit_val_batches=0)
    run.fit(module, data)
    predict, calls = module.strategy.predict, []

    def seeded_predict(x, num_steps=None):
        torch.manual_seed(len(calls))
        calls.append(num_steps)
        return predict(x, num_steps)

    module.strategy.predict = seeded_predict
    run.test(module, data, verbose=False)
    assert calls == [None] * 3, "test/acc uses the full inference"
    images, labels = data.test_set.tensors
    module.eval()
    correct = 0
    with torch.no_grad():
        for call, start in enumerate(range(0, len(labels), 10)):
            torch.manual_seed(call)
            logits = predict(data.normalize_images(images[start : start + 10])).logits
            correct += (logits.argmax(1) == labels[start : start + 10]).sum().item()
    assert 0 < correct < len(labels), "a count that says something: neither none nor all right"
    assert run.callback_metrics["test/acc"].item() == pytest.approx(correct / len(labels), abs=1e-6)
