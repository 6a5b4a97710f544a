"""Ctrl-C and SIGTERM during fit: training stops after the batch it was on, last.ckpt holds that state with the
loader's position, and resuming from it gives exactly the uninterrupted run (through the CLI, as a user meets it)."""

import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

from lightning_noprop.checkpointing import LatestCheckpoint
from lightning_noprop.errors import NonFiniteLossError
from lightning_noprop.interrupts import TrainingStopped

from .conftest import REPO
from .helpers import SignalAt, synthetic_data, tiny_module, trainer
from .test_checkpointing import assert_same_state, fit, fit_cli

EPOCHS = ["--trainer.max_epochs", "2"]  # 4 training batches an epoch (32 images, batch 8)


def signal_at(epoch, batch, signum=signal.SIGINT, times=1, group=False):
    return ["--trainer.callbacks+=tests.helpers.SignalAt", "--trainer.callbacks.epoch", str(epoch),
            "--trainer.callbacks.batch", str(batch), "--trainer.callbacks.signum", str(int(signum)),
            "--trainer.callbacks.times", str(times), "--trainer.callbacks.group", str(group).lower()]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """last.ckpt of the uninterrupted two-epoch run."""
    _, last = fit(tmp_path_factory.mktemp("straight"), *EPOCHS)
    return torch.load(last, weights_only=True)


def stop(save_dir, *args):
    """A fit that a signal stops: its exit code, and the last.ckpt it wrote."""
    with pytest.raises(SystemExit) as exit_info:
        fit_cli(save_dir, *EPOCHS, *args)
    (last,) = save_dir.rglob("last.ckpt")
    return exit_info.value.code, last


@pytest.mark.parametrize(("epoch", "batch", "signum", "options", "step", "loader"), [
    (1, 1, signal.SIGINT, [], 18, 2),  # within an epoch: 6 batches of 3 optimizer steps
    # Workers read ahead, and begin an epoch before Lightning numbers it: the resumed epoch's order must be epoch 1's.
    (1, 2, signal.SIGTERM, ["--data.num_workers", "1"], 21, 3),
    (0, 3, signal.SIGINT, [], 12, None),  # the epoch's last batch: the epoch finishes (validation, its last.ckpt)
    (0, 1, signal.SIGINT, ["--trainer.val_check_interval", "2"], 9, 3),  # validation due: stops a batch later
], ids=["sigint-within-epoch", "sigterm-with-a-worker", "sigint-on-the-last-batch", "validation-due"])  # fmt: skip
def test_a_stopped_run_resumes_exactly(straight, tmp_path, epoch, batch, signum, options, step, loader, capsys):
    code, last = stop(tmp_path / "stopped", *options, *signal_at(epoch, batch, signum))
    assert code == 128 + signum
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Resume it exactly with: python main.py fit --config" in err
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == step
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_trained": loader or 0}]
    resumed, resumed_last = fit(tmp_path / "resumed", *EPOCHS, *options, "--ckpt_path", str(last))
    assert_same_state(straight, resumed)
    assert resumed.trainer.global_step == straight["global_step"]
    assert_same_rng(straight, torch.load(resumed_last, weights_only=True))


def assert_same_rng(checkpoint, other):
    """The global generators (which draw validation's noise and the augmentation) stand where they stand in
    ``checkpoint``: a resumed run drew nothing more or less than the uninterrupted one."""
    (mine, theirs) = (c["lightning_noprop"]["rng_states"] for c in (checkpoint, other))
    assert torch.equal(mine["torch"], theirs["torch"]), "torch's CPU generator"
    assert torch.equal(mine["numpy"][1], theirs["numpy"][1]) and mine["numpy"][2:] == theirs["numpy"][2:], "numpy's"
    assert mine["python"] == theirs["python"], "Python's"


def test_an_augmented_run_stopped_within_an_epoch_resumes_exactly_validation_included(tmp_path, capsys):
    """The augmentation (random crops and flips) and validation's noise draw from the global generators: the resumed
    run trains on the same crops and validates on the same draws as the uninterrupted one."""
    augment = ["--data.augment", "true", "--trainer.val_check_interval", "2"]  # a validation within each epoch too
    straight_cli, straight_last = fit(tmp_path / "straight", *EPOCHS, *augment)
    _, last = stop(tmp_path / "stopped", *augment, *signal_at(0, 0))
    assert torch.load(last, weights_only=True)["global_step"] == 3
    capsys.readouterr()
    resumed, resumed_last = fit(tmp_path / "resumed", *EPOCHS, *augment, "--ckpt_path", str(last))
    straight = torch.load(straight_last, weights_only=True)
    assert_same_state(straight, resumed)
    assert_same_rng(straight, torch.load(resumed_last, weights_only=True))
    for key in ("val/loss", "val/acc"):
        assert torch.equal(resumed.trainer.callback_metrics[key], straight_cli.trainer.callback_metrics[key]), key


def test_a_second_ctrl_c_stops_at_once_without_writing(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, last = stop(tmp_path, *signal_at(1, 1, times=2))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    assert code == 1  # Lightning's KeyboardInterrupt shutdown
    assert torch.load(last, weights_only=True)["global_step"] == 12  # still epoch 0's end


def test_fit_raises_training_stopped_in_python(tmp_path):
    latest = LatestCheckpoint(dirpath=str(tmp_path))
    run = trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[latest, SignalAt(1, 0)])
    with pytest.raises(TrainingStopped, match="in epoch 1, after batch 1 of 4") as stopped:
        run.fit(tiny_module(), datamodule=synthetic_data(synthetic_size=48, val_size=16, batch_size=8))
    assert stopped.value.checkpoint == latest.last_model_path and stopped.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_main_py_stops_and_its_printed_command_resumes(straight, tmp_path):
    """``python main.py fit`` with a loader worker, and a Ctrl-C to its whole process group (as a terminal sends it) on
    an epoch's last batch; then the command it printed, as written: the run ends where the uninterrupted one does."""
    args = ["--config", str(REPO / "configs/noprop_dt.yaml"), "--model.strategy.init_args.num_blocks", "2",
            "--model.strategy.init_args.width", "16", "--data.synthetic", "true", "--data.synthetic_size", "48",
            "--data.val_size", "16", "--data.batch_size", "8", "--data.num_workers", "1",
            "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", *EPOCHS, *signal_at(0, 3, group=True)]  # fmt: skip
    main = [sys.executable, str(REPO / "main.py")]
    first = subprocess.run([*main, "fit", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
                           start_new_session=True)  # its own process group: the signal reaches it and its worker
    assert first.returncode == 130, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    command = re.search(r"Resume it exactly with: python main.py (.*)", first.stderr).group(1)
    second = subprocess.run([*main, *shlex.split(command)], check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    (last,) = (tmp_path / "noprop_dt_mnist" / "version_1").rglob("last.ckpt")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == straight["global_step"]
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_an_epoch_that_max_steps_cut_short_is_not_closed():
    """``close_finished_epoch`` closes only an epoch whose batches were all trained."""
    from lightning_noprop.checkpointing import close_finished_epoch

    def checkpoint(trained):
        progress = {"ready": 1, "started": 1, "processed": 1, "completed": 0}
        batches = {"ready": 2, "started": 2, "processed": 2, "completed": 2}
        return {"lightning_noprop": {"epoch_trained": trained}, "loops": {"fit_loop": {
            "epoch_progress": {"current": dict(progress), "total": dict(progress)}, "state_dict": {},
            "epoch_loop.batch_progress": {"current": dict(batches), "total": dict(batches), "is_last_batch": False}}}}

    cut_short, finished = checkpoint(False), checkpoint(True)
    close_finished_epoch(cut_short)
    close_finished_epoch(finished)
    assert cut_short == checkpoint(False)
    assert finished["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    assert finished["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 0


def captured_fit(tmp_path, module, *callbacks, ckpt_path=None):
    """Two epochs of 4 batches under capture_step (the capture equality test's blocks, so inductor's cache serves),
    with a log window longer than the run: only each epoch's last batch writes the training values."""
    latest = LatestCheckpoint(dirpath=str(tmp_path))
    run = trainer(tmp_path, max_epochs=2, limit_val_batches=0, log_every_n_steps=50, precision="64-true",
                  enable_checkpointing=True, callbacks=[latest, *callbacks])  # fmt: skip
    run.fit(module, datamodule=synthetic_data(), ckpt_path=ckpt_path)
    return run


def test_a_captured_run_stopped_within_its_log_window_logs_what_an_uninterrupted_one_logs(tmp_path):
    """capture_step logs the means of the batches since the last write: a stop within that window keeps it in
    last.ckpt, so the resumed run's epoch-end values average all of the epoch's batches, as the uninterrupted run's."""
    straight = captured_fit(tmp_path / "straight", tiny_module(capture_step=True))
    with pytest.raises(TrainingStopped, match="in epoch 1, after batch 2 of 4"):
        captured_fit(tmp_path / "stopped", tiny_module(capture_step=True), SignalAt(1, 1))
    saved = torch.load(tmp_path / "stopped" / "last.ckpt", weights_only=True)["lightning_noprop"]["log_window"]
    assert saved["batches"] == 2 and saved["samples"] == 32 and [block for block, _ in saved["layout"]] == [0, 1, 2]
    resumed = captured_fit(tmp_path / "resumed", tiny_module(capture_step=True),
                           ckpt_path=str(tmp_path / "stopped" / "last.ckpt"))  # fmt: skip
    keys = [f"train/{name}_{when}" for name in ("loss", "block_0/loss", "block_2/loss", "kl", "denoise")
            for when in ("step", "epoch")]  # fmt: skip
    for key in keys:  # without the saved window, the resumed values would be those of the last two batches only
        assert resumed.callback_metrics[key] == straight.callback_metrics[key], key
    assert resumed.global_step == straight.global_step


def test_a_non_finite_loss_not_yet_checked_is_not_written_at_a_stop(tmp_path):
    """capture_step checks the losses when it logs them: a stop within the window checks them before last.ckpt is
    written, and writes nothing over a non-finite loss (last.ckpt stays the previous epoch's)."""
    module = tiny_module(capture_step=True)
    images = module._images
    module._images = lambda x: images(x) * float("nan") if module.current_epoch == 1 else images(x)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss for block\(s\) \[0, 1, 2\] in batches 4-5 of "
                                                 r"training \(epoch 1\)"):  # fmt: skip
        captured_fit(tmp_path, module, SignalAt(1, 1))
    # epoch 0's end: 4 batches x 4 optimizers
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 16
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
