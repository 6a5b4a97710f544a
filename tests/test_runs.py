"""A run's folder through the CLI: --ckpt_path last, a requeued run continuing in its own folder (fixed logger
version), evaluation in a training run's folder, and a new run into an occupied one."""

import pytest
import torch

from .helpers import FAST, run, user_error
from .test_checkpointing import DT, TINY, fit, fit_cli

LIGHTNING_S_HINT = "there is no last checkpoint available"  # Lightning's warning, which advises save_last


def test_ckpt_path_last_in_a_new_runs_folder_starts_afresh_and_names_the_newest_run(tmp_path):
    _, first_last = fit(tmp_path, "--trainer.max_epochs", "1")
    assert first_last.parent.parent.name == "version_0"
    with pytest.warns(UserWarning) as caught:
        fresh = fit_cli(tmp_path, "--trainer.max_epochs", "1", "--ckpt_path", "last")
    messages = [str(w.message) for w in caught]
    assert any("version_1) has no last.ckpt, so training starts from scratch there" in m
               and f"--ckpt_path {first_last}" in m for m in messages), messages  # fmt: skip
    assert not any(LIGHTNING_S_HINT in m for m in messages), messages
    assert fresh.trainer.ckpt_path is None and fresh.trainer.current_epoch == 1


def test_a_requeued_run_continues_in_its_own_folder(tmp_path):
    """The same command twice, as a requeued job runs it: a fixed version and --ckpt_path last. The first starts
    afresh; the second resumes from the folder's last.ckpt and rewrites its config.yaml (with the new max_epochs)."""
    requeue = ["--trainer.logger.init_args.version", "0", "--ckpt_path", "last"]
    with pytest.warns(UserWarning, match="starts from scratch there"):
        fit_cli(tmp_path, "--trainer.max_epochs", "1", *requeue)
    (last,) = tmp_path.rglob("last.ckpt")
    resumed = fit_cli(tmp_path, "--trainer.max_epochs", "2", *requeue)
    assert resumed.trainer.ckpt_path == str(last) and resumed.trainer.current_epoch == 2
    assert "max_epochs: 2" in (last.parent.parent / "config.yaml").read_text()
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_a_requeued_run_stopped_before_its_first_checkpoint_starts_again_there(tmp_path):
    requeue = ["--trainer.logger.init_args.version", "0", "--ckpt_path", "last"]
    with pytest.warns(UserWarning, match="starts from scratch there"):
        fit_cli(tmp_path, "--trainer.max_epochs", "1", *requeue)
    for checkpoint in tmp_path.rglob("*.ckpt"):  # stopped in its first epoch: config.yaml, no checkpoint yet
        checkpoint.unlink()
    with pytest.warns(UserWarning, match="starts from scratch there"):
        again = fit_cli(tmp_path, "--trainer.max_epochs", "1", *requeue)
    assert again.trainer.state.finished and list(tmp_path.rglob("last.ckpt"))


@pytest.mark.parametrize("checkpointing", ["true", "false"])
def test_a_checkpoint_of_the_runs_own_folder_continues_it(tmp_path, checkpointing):
    _, last = fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.logger.init_args.version", "0")
    resumed = fit_cli(tmp_path, "--trainer.max_epochs", "2", "--trainer.logger.init_args.version", "0",
                   "--trainer.enable_checkpointing", checkpointing, "--ckpt_path", str(last))  # fmt: skip
    assert resumed.trainer.current_epoch == 2


def test_evaluating_in_a_training_runs_folder_keeps_its_config(tmp_path):
    """A fixed-version run's saved config.yaml names its own folder: test from it runs there, leaving the file."""
    _, last = fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.logger.init_args.version", "0")
    saved = last.parent.parent / "config.yaml"
    before = saved.read_text()
    cli = run("test", "--config", str(saved), "--ckpt_path", str(last), "--trainer.enable_progress_bar", "false")
    assert "test/acc" in cli.trainer.callback_metrics
    assert saved.read_text() == before


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_ckpt_path_last_without_a_checkpoint_is_refused_for_evaluation(subcommand, tmp_path, capsys):
    """Lightning would evaluate the untrained weights and exit 0."""
    _, first_last = fit(tmp_path, "--trainer.max_epochs", "1")
    err = user_error(capsys, subcommand, "--config", DT, *TINY[DT], *FAST,
                     "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", "last")  # fmt: skip
    assert f"has no last.ckpt, so there are no trained weights to {subcommand}" in err
    assert f"e.g. --ckpt_path {first_last}" in err


def test_a_new_run_into_another_runs_folder_is_a_user_error(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_epochs", "1")
    err = user_error(capsys, "fit", "--config", DT, *TINY[DT], *FAST, "--trainer.max_epochs", "1",
                     "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.version", "0")  # fmt: skip
    assert "holds another run (its config.yaml): to continue that run, pass --ckpt_path last or its checkpoint" in err


def test_without_a_logger_a_second_run_into_the_same_root_dir_is_a_user_error(tmp_path, capsys):
    args = ["fit", "--config", DT, *TINY[DT], *FAST, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.logger", "false", "--trainer.default_root_dir",
            str(tmp_path)]  # fmt: skip
    run(*args)
    err = user_error(capsys, *args)
    assert "holds another run (its config.yaml)" in err and "choose another trainer.default_root_dir" in err


def test_with_checkpointing_off_ckpt_path_last_says_so(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.logger.init_args.version", "0")
    err = user_error(capsys, "test", "--config", DT, *TINY[DT], *FAST, "--trainer.logger.init_args.save_dir",
                     str(tmp_path), "--trainer.enable_checkpointing", "false", "--ckpt_path", "last")  # fmt: skip
    assert "checkpointing is off (--trainer.enable_checkpointing false), so it finds no last.ckpt" in err


def test_without_a_versioned_logger_another_runs_checkpoint_does_not_continue_the_root_dir(tmp_path, capsys):
    """default_root_dir holds every logger-less run, so a checkpoint somewhere below it is not this run's."""
    _, other = fit(tmp_path / "logs", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path))
    no_logger = ["fit", "--config", DT, *TINY[DT], *FAST, "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                 "1", "--trainer.limit_val_batches", "1", "--trainer.logger", "false", "--trainer.default_root_dir",
                 str(tmp_path)]  # fmt: skip
    run(*no_logger)  # writes tmp_path/config.yaml
    err = user_error(capsys, *no_logger, "--ckpt_path", str(other))
    assert "holds another run" in err


def test_on_slurm_ckpt_path_last_leaves_lightning_its_hpc_checkpoint(tmp_path, monkeypatch, recwarn):
    """Lightning resumes an HPC checkpoint only when ckpt_path is None (checkpoint_connector._parse_ckpt_path)."""
    from types import SimpleNamespace

    from lightning_noprop import runs

    trainer = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path), checkpoint_callbacks=[], callbacks=[])
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    monkeypatch.setattr(runs.SLURMEnvironment, "detect", staticmethod(lambda: True))
    assert runs.resolve_fit_ckpt_path(trainer, "last") == (None, True)
    assert not [w for w in recwarn if "starts from scratch" in str(w.message)]
    monkeypatch.setattr(runs.SLURMEnvironment, "detect", staticmethod(lambda: False))
    with pytest.warns(UserWarning, match="starts from scratch there"):
        assert runs.resolve_fit_ckpt_path(trainer, "last") == (None, True)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused(subcommand, tmp_path, capsys):
    # Lightning would evaluate the untrained weights and exit 0.
    err = user_error(capsys, subcommand, "--config", DT, *TINY[DT], *FAST, "--trainer.logger.init_args.save_dir",
                     str(tmp_path))  # fmt: skip
    assert f"{subcommand} needs trained weights: pass --ckpt_path" in err


#: Lightning's messages that ask nothing of the user here (lightning_noprop/lightning_noise.py says why each).
NOISE = ("LeafSpec", "not supported by the model summary", "exists and is not empty", "The dirpath has changed",
         "seamless cloud logging")  # fmt: skip


def test_a_requeued_run_and_its_evaluation_print_none_of_lightnings_noise(tmp_path, recwarn, caplog, capsys):
    requeue = ["--trainer.logger.init_args.version", "0", "--ckpt_path", "last", "--trainer.precision", "bf16-mixed",
               "--trainer.enable_model_summary", "true"]  # fmt: skip
    fit_cli(tmp_path, "--trainer.max_epochs", "1", *requeue)
    fit_cli(tmp_path, "--trainer.max_epochs", "2", *requeue)  # continues in its folder, which holds its checkpoints
    (last,) = tmp_path.rglob("last.ckpt")
    run("test", "--config", DT, *TINY[DT], *FAST, "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path",
        str(last), "--trainer.enable_progress_bar", "false")  # fmt: skip
    printed = [str(w.message) for w in recwarn] + [caplog.text, *capsys.readouterr()]
    assert [noise for noise in NOISE if any(noise in text for text in printed)] == []
    assert any("starts from scratch there" in str(w.message) for w in recwarn), "our own warnings are still heard"


def test_the_litlogger_tip_is_quiet_within_a_cli_run_only():
    import logging

    from lightning.pytorch.utilities import rank_zero_info
    from lightning_utilities.core import rank_zero

    from lightning_noprop.lightning_noise import quiet_lightning

    heard = []
    handler = logging.Handler()
    handler.emit = heard.append
    rank_zero.log.addHandler(handler)
    try:
        tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)"
        with quiet_lightning():
            rank_zero_info(tip)
            rank_zero_info("our own line")
        rank_zero_info(tip)
    finally:
        rank_zero.log.removeHandler(handler)
    assert [record.getMessage()[:6] for record in heard] == ["our ow", tip[:6]]


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    """The version folder a run began (config.yaml, the logger's files) goes with a user error raised before any
    loop; a run stopped once training began keeps its logs, and so does another run's folder."""
    refused = ["fit", "--config", DT, *TINY[DT], *FAST, "--trainer.logger.init_args.save_dir", str(tmp_path)]
    user_error(capsys, *refused, "--trainer.precision", "16-true")  # refused in the module's setup
    assert list(tmp_path.rglob("version_*")) == []
    user_error(capsys, *refused, "--model.optimizer.init_args.lr", "1e30")  # a non-finite loss in the first batches
    (stopped,) = tmp_path.rglob("version_*")
    kept = sorted(p.name for p in stopped.iterdir())
    user_error(capsys, *refused, "--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau")
    user_error(capsys, *refused, "--trainer.logger.init_args.version", "0")  # another run's folder: refused, kept
    assert list(tmp_path.rglob("version_*")) == [stopped] and set(kept) <= {p.name for p in stopped.iterdir()}
    assert "config.yaml" in kept
