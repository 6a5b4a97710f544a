"""Checkpoints through the CLI, as a user meets them: last.ckpt is the latest state and resumes exactly, and a
checkpoint of another model configuration is refused with the list of differences."""

from contextlib import nullcontext

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_noprop.checkpointing import LatestCheckpoint, check_checkpoint_callbacks, config_differences
from lightning_noprop.errors import ConfigurationError

from .conftest import REPO
from .helpers import FAST, run, user_error

DT = str(REPO / "configs/noprop_dt.yaml")
BACKPROP = str(REPO / "configs/backprop.yaml")
TINY = {DT: ["--model.strategy.init_args.num_blocks", "2", "--model.strategy.init_args.width", "16"],
        BACKPROP: ["--model.strategy.init_args.num_blocks", "2", "--model.strategy.init_args.width", "16"]}  # fmt: skip
# An epoch-wise lr schedule, so that resuming must also restore where each scheduler stands.
SCHEDULE = ["--model.lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--model.lr_scheduler.init_args.step_size", "1",
            "--model.lr_scheduler.init_args.gamma", "0.5"]  # fmt: skip


def fit_cli(save_dir, *args, config=DT):
    """A tiny fit through the CLI, logging under ``save_dir``."""
    return run("fit", "--config", config, *TINY[config], *FAST, "--trainer.limit_val_batches", "1",
               "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", *args)  # fmt: skip


def fit(save_dir, *args, config=DT):
    """``fit_cli``, and the one last.ckpt under ``save_dir``."""
    cli = fit_cli(save_dir, *args, config=config)
    (last,) = save_dir.rglob("last.ckpt")
    return cli, last


def assert_same_state(checkpoint, cli):
    """Every parameter, buffer and optimizer state of ``checkpoint`` equals the trained model's in ``cli``."""
    state = cli.model.state_dict()
    assert checkpoint["state_dict"].keys() == state.keys()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, state[key]), key
    optimizers = [optimizer.optimizer.state_dict() for optimizer in cli.model._optimizers()]
    assert len(checkpoint["optimizer_states"]) == len(optimizers)
    for saved, current in zip(checkpoint["optimizer_states"], optimizers):
        assert saved["param_groups"] == current["param_groups"]  # the scheduled lr included
        assert saved["state"].keys() == current["state"].keys()
        for index, entries in saved["state"].items():
            for name, value in entries.items():
                assert torch.equal(value, current["state"][index][name]), (index, name)
    assert checkpoint["lr_schedulers"] == [scheduler.state_dict() for scheduler in cli.model._schedulers()]


def test_last_ckpt_is_the_latest_state_and_resumes_exactly(tmp_path):
    # Validation every second epoch: the third epoch's val/acc cannot improve (it is not measured), so a monitored
    # ModelCheckpoint(save_last=true) would leave last.ckpt at the second epoch.
    every_other = ["--trainer.check_val_every_n_epoch", "2", *SCHEDULE]
    straight, straight_last = fit(tmp_path / "straight", "--trainer.max_epochs", "3", *every_other)
    saved = torch.load(straight_last, weights_only=True)
    assert saved["epoch"] == 2 and saved["global_step"] == straight.trainer.global_step
    assert_same_state(saved, straight)

    _, first_last = fit(tmp_path / "first", "--trainer.max_epochs", "1", *every_other)
    assert torch.load(first_last, weights_only=True)["epoch"] == 0
    resumed, _ = fit(tmp_path / "resumed", "--trainer.max_epochs", "3", "--ckpt_path", str(first_last), *every_other)
    assert resumed.trainer.current_epoch == 3
    assert_same_state(saved, resumed)


def test_a_step_bounded_run_resumes_exactly_from_an_epochs_end(tmp_path):
    """Under max_steps Lightning restarts even a finished epoch: from an epoch's last.ckpt it ran that epoch's end again
    and stopped, counting two epochs after one (closed by ``close_finished_epoch``), and then spent an iteration on no
    batch that the loggers counted, so every later logged step was one ahead (``start_closed_epoch``). 4 batches of 3
    steps an epoch, step values written every batch."""
    steps = ["--trainer.max_steps", "24", "--trainer.log_every_n_steps", "1", *SCHEDULE]
    straight, straight_last = fit(tmp_path / "straight", "--trainer.max_epochs", "3", *steps)
    _, first_last = fit(tmp_path / "first", "--trainer.max_epochs", "1", *steps)
    resumed, _ = fit(tmp_path / "resumed", "--trainer.max_epochs", "3", "--ckpt_path", str(first_last), *steps)
    assert resumed.trainer.global_step == straight.trainer.global_step == 24 and resumed.trainer.current_epoch == 2
    assert_same_state(torch.load(straight_last, weights_only=True), resumed)

    def logged(run: str, tag: str) -> list[int]:
        (path,) = (tmp_path / run).rglob("events.out.tfevents.*")
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        return [event.step for event in events.Scalars(tag)]

    for tag in ("train/loss_step", "train/loss_epoch", "val/acc"):
        assert logged("straight", tag) == logged("first", tag) + logged("resumed", tag), tag
    assert logged("resumed", "train/loss_step") == [4, 5, 6, 7]


def test_last_ckpt_follows_training_when_val_acc_does_not_improve(tmp_path):
    # Validated every epoch on one image, so val/acc is 0 or 1 and often does not improve; whatever it does, last.ckpt
    # is the latest epoch (the test above makes the no-improvement case certain).
    cli, last = fit(tmp_path, "--trainer.max_epochs", "2", "--data.val_size", "1")
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1
    assert_same_state(saved, cli)


def test_a_monitored_save_last_checkpoint_is_refused(tmp_path, capsys):
    err = user_error(capsys, "fit", "--config", DT, *TINY[DT], *FAST, "--trainer.max_epochs", "1",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
                     "--trainer.callbacks+=ModelCheckpoint",
                     "--trainer.callbacks.monitor", "val/acc", "--trainer.callbacks.save_last", "true")  # fmt: skip
    assert "LatestCheckpoint" in err and "save_last" in err
    with pytest.raises(ConfigurationError, match="best epoch, not the latest"):
        from lightning.pytorch.callbacks import ModelCheckpoint

        check_checkpoint_callbacks([LatestCheckpoint(), ModelCheckpoint(monitor="val/acc", save_last=True)])
    check_checkpoint_callbacks([LatestCheckpoint(), ModelCheckpoint(save_last=True)])  # no monitor: the latest


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """last.ckpt of a one-epoch NoProp-DT run and of a one-epoch backprop run."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: fit(root / name, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                      config=config)[1] for name, config in (("dt", DT), ("backprop", BACKPROP))}  # fmt: skip


@pytest.mark.parametrize("subcommand", ["test", "fit"])
@pytest.mark.parametrize(("trained", "config"), [("backprop", DT), ("dt", BACKPROP)], ids=["bp-into-dt", "dt-into-bp"])
def test_a_checkpoint_of_another_strategy_is_refused(checkpoints, trained, config, subcommand, tmp_path, capsys):
    err = user_error(capsys, subcommand, "--config", config, *TINY[config], *FAST, "--ckpt_path",
                     str(checkpoints[trained]), "--trainer.max_epochs", "2", "--trainer.default_root_dir",
                     str(tmp_path), "--trainer.logger", "false")  # fmt: skip
    assert "another model configuration" in err
    assert "strategy.class_path: checkpoint 'lightning_noprop.strategies." in err
    assert "--model_from_checkpoint true" in err and "config.yaml" in err


def test_a_changed_training_recipe_is_refused_on_resume_but_not_for_test(checkpoints, tmp_path, capsys):
    lower_lr = ["--config", DT, *TINY[DT], *FAST, "--ckpt_path", str(checkpoints["dt"]), "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path), "--model.optimizer.init_args.lr", "0.0005"]  # fmt: skip
    err = user_error(capsys, "fit", *lower_lr, "--trainer.max_epochs", "2")
    assert "optimizer.init_args.lr: checkpoint 0.001, current 0.0005" in err
    assert "test/acc" in run("test", *lower_lr).trainer.callback_metrics


def test_execution_options_may_differ_and_are_honoured(checkpoints, tmp_path):
    cli = run("test", "--config", DT, *TINY[DT], *FAST, "--ckpt_path", str(checkpoints["dt"]), "--trainer.logger",
              "false", "--trainer.default_root_dir", str(tmp_path), "--model.strategy.init_args.inference_noise",
              "false", "--model.validation_inference_steps", "1")  # fmt: skip
    assert cli.model.strategy.inference_noise is False  # the user's option, not the checkpoint's
    assert "test/acc" in cli.trainer.callback_metrics


def test_model_from_checkpoint_uses_the_checkpoints_own_configuration(checkpoints, tmp_path):
    cli = run("test", "--config", BACKPROP, *FAST, "--ckpt_path", str(checkpoints["dt"]), "--model_from_checkpoint",
              "true", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert type(cli.model.strategy).__name__ == "NoPropDT" and cli.model.strategy.num_blocks == 2
    assert "test/acc" in cli.trainer.callback_metrics


def test_config_differences_lists_each_changed_leaf():
    saved = {"strategy": {"class_path": "A", "init_args": {"eta": 0.1, "readout": "head"}}, "optimizer": {"lr": 1}}
    current = {"strategy": {"class_path": "A", "init_args": {"eta": 0.2, "readout": "nearest", "new": 1}},
               "optimizer": {"lr": 2}}  # fmt: skip
    assert config_differences(saved, current, ["optimizer", "strategy.init_args.readout"]) == [
        "strategy.init_args.eta: checkpoint 0.1, current 0.2",
        "strategy.init_args.new: checkpoint '(not set)', current 1",
    ]
    assert config_differences({"shape": (1, 2)}, {"shape": [1, 2]}, []) == []
    # Another class: its init_args are not comparable, the class is the difference.
    other = {**current, "strategy": {**current["strategy"], "class_path": "B"}}
    assert config_differences(saved, other, ["optimizer"]) == ["strategy.class_path: checkpoint 'A', current 'B'"]


def test_a_float64_run_resumes_exactly(tmp_path):
    """Lightning restores the weights before converting the module to 64-true's dtype; without the module converting
    itself first, they were rounded through float32 (a resumed run differed by ~1e-8 after one batch)."""
    from .execution.harness import load, run_job

    for job in ({"name": "first", "epochs": 1}, {"name": "straight", "epochs": 2, "max_steps": 32},
                {"name": "resumed", "epochs": 2, "max_steps": 32, "resume": str(tmp_path / "first.ckpt")}):
        run_job({"model": "dt", "precision": "64-true", **job}, 1, tmp_path)
    straight, resumed = load(tmp_path, "straight"), load(tmp_path, "resumed")
    assert straight["global_step"] == resumed["global_step"] == 32
    for key, value in straight["state_dict"].items():
        assert value.dtype != torch.float32 or not value.is_floating_point(), key
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_checkpoint_from_before_the_executor_resumes(tmp_path):
    """Checkpoints written before ``block_execution`` and ``sampler_cuda_graph`` moved to the module hold them (or
    DT's alone) among the strategy's arguments: they resume, with the current config or with their own."""
    _, last = fit(tmp_path / "old", "--trainer.max_epochs", "1")
    checkpoint = torch.load(last, weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    assert hparams.pop("block_execution") == "loop" and hparams.pop("sampler_cuda_graph") is True
    assert hparams["strategy"]["init_args"]["block_execution"] is None
    hparams["strategy"]["init_args"]["block_execution"] = "loop"  # what a config of that time resolved to
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    for extra in ([], ["--model_from_checkpoint", "true"]):
        with pytest.warns(DeprecationWarning, match="block_execution is deprecated") if extra else nullcontext():
            cli, resumed = fit(tmp_path / f"resumed{len(extra)}", "--ckpt_path", str(old), "--trainer.max_epochs", "2",
                               *extra)  # fmt: skip
        assert torch.load(resumed, weights_only=False)["epoch"] == 1 and cli.model.executor.block_execution == "loop"

