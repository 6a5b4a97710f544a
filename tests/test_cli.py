"""Every config runs through the CLI; bad input fails early and clearly."""

import subprocess
import sys

import pytest
import torch

from lightning_noprop.cli import main

from .conftest import CONFIGS, REPO
from .helpers import FAST, run, user_error


def test_configs_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    assert {"noprop_dt.yaml", "backprop.yaml", "cifar10/noprop_dt.yaml", "cifar10/backprop.yaml",
            "cifar100/noprop_dt.yaml", "cifar100/backprop.yaml", "noprop_ct.yaml", "noprop_fm.yaml",
            "cifar10/noprop_ct.yaml", "cifar10/noprop_fm.yaml", "cifar100/noprop_ct.yaml",
            "cifar100/noprop_fm.yaml", "bwbpf.yaml", "bwbpf/backprop_resnet18.yaml", "bwbpf/resnet50.yaml",
            "bwbpf/resnet101.yaml", "bwbpf/resnet152.yaml", "bwbpf/vgg19.yaml",
            "bwbpf/tiny_imagenet_resnet50.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_runs_with_fast_dev_run(config, tmp_path):
    cli = run("fit", "--config", str(config), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir",
              str(tmp_path), *FAST)  # fmt: skip
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_step"])


@pytest.mark.parametrize("embedding", ["LearnedEmbedding", "PrototypeEmbedding"])
@pytest.mark.parametrize("head", ["SoftmaxHead", "PosteriorHead"])
def test_embedding_and_head_are_one_config_line(embedding, head, tmp_path):
    cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.fast_dev_run", "1",
              "--trainer.default_root_dir", str(tmp_path),
              "--model.strategy.init_args.num_blocks", "2",
              "--model.strategy.init_args.embedding", f"lightning_noprop.nn.{embedding}",
              "--model.strategy.init_args.head", f"lightning_noprop.nn.{head}", *FAST)  # fmt: skip
    assert type(cli.model.strategy.embedding).__name__ == embedding and type(cli.model.strategy.head).__name__ == head


SMALL = {
    "configs/noprop_dt.yaml": ["--model.strategy.init_args.num_blocks", "2"],
    "configs/noprop_ct.yaml": ["--model.strategy.init_args.inference_steps", "5", "--model.validation_inference_steps", "2"],
    "configs/noprop_fm.yaml": ["--model.strategy.init_args.inference_steps", "5", "--model.validation_inference_steps", "2"],
    "configs/bwbpf.yaml": ["--model.strategy.init_args.backbone.init_args.width", "8"],
}


def _fit_small(tmp_path, config="configs/noprop_dt.yaml"):
    run("fit", "--config", str(REPO / config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
        *SMALL[config], *FAST)  # fmt: skip
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    (config_file,) = tmp_path.rglob("config.yaml")
    return checkpoint, config_file


@pytest.mark.parametrize("config", list(SMALL))
def test_fit_then_validate_test_predict_from_checkpoint(tmp_path, config):
    checkpoint, config_file = _fit_small(tmp_path, config)
    for subcommand in ("validate", "test"):
        cli = run(subcommand, "--config", str(config_file), "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path / subcommand))  # fmt: skip
        assert f"{'val' if subcommand == 'validate' else 'test'}/acc" in cli.trainer.callback_metrics
    cli = run("predict", "--config", str(config_file), "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
              "--trainer.limit_predict_batches", "2", "--trainer.default_root_dir", str(tmp_path / "predict"))  # fmt: skip
    data = cli.datamodule.hparams
    expected_batch = min(data.eval_batch_size or data.batch_size, len(cli.datamodule.test_set))
    assert cli.trainer.predict_loop.predictions[0].logits.shape == (expected_batch, 10)


def test_checkpoint_from_another_dataset_is_refused(tmp_path, capsys):
    checkpoint, _ = _fit_small(tmp_path)
    err = user_error(capsys, "test", "--config", str(REPO / "configs/cifar100/noprop_dt.yaml"), "--ckpt_path",
                     str(checkpoint), "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "test"),
                     *FAST)  # fmt: skip
    assert "num_classes: checkpoint 10, current 100" in err


def test_help_explains_every_model_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("--model.backward_mode", "frees each graph", "--data.val_size", "validation (seeded)"):
        assert phrase in text


def test_print_config_shows_the_strategy(capsys):
    with pytest.raises(SystemExit):
        run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), "--print_config")
    assert "lightning_noprop.strategies.NoPropDT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.not_an_option", "1"], "not_an_option"),
        (["--model.backward_mode", "sideways"], "backward_mode"),
        (["--data.batch_size", "many"], "batch_size"),
        (["--model.strategy.init_args.eta", "lots"], "eta"),
    ],
)
def test_bad_config_keys_and_types_fail_early(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *args)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_missing_data_offline_is_one_clear_error(tmp_path, capsys):
    err = user_error(capsys, "fit", "--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.fast_dev_run", "1",
                     "--data.root", str(tmp_path), "--data.download", "false", "--trainer.default_root_dir",
                     str(tmp_path))  # fmt: skip
    assert "expected files" in err


def _truncated_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + bytes(100))
    return ["--data.synthetic", "false", "--data.root", str(tmp_path), "--data.download", "false"]


def _garbage_checkpoint(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(bytes(range(256)) * 4)
    return ["--ckpt_path", str(tmp_path / "garbage.ckpt")]


def _foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    return ["--ckpt_path", str(tmp_path / "foreign.ckpt")]


def _truncated_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "lightning_noprop": {}}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return ["--ckpt_path", str(tmp_path / "cut.ckpt")]


# Each a kind of bad input a user can type; the CLI must print one message that says what to change, exit 2 and
# show no traceback. An entry is (options, or a function of tmp_path that makes them; a phrase of the message).
BAD_INPUTS = {
    # config values
    "negative batch": (["--data.batch_size", "-4"], "batch_size must be >= 1, got -4"),
    "no blocks": (["--model.strategy.init_args.num_blocks", "0"], "num_blocks must be >= 1"),
    "val split too large": (["--data.val_size", "100000"], "lower --data.val_size"),
    "negative lr": (["--model.optimizer.init_args.lr", "-1"], "change it in model.optimizer.init_args"),
    "zero embedding dim": (["--model.strategy.init_args.embedding", "lightning_noprop.nn.LearnedEmbedding",
                            "--model.strategy.init_args.embedding.init_args.dim", "0"], "dim must be >= 1"),
    "zero eval batch": (["--data.eval_batch_size", "0"], "eval_batch_size must be >= 1"),
    "negative train size": (["--data.train_size", "-10"], "train_size must be >= 1"),  # [:-10] took all but 10
    "zero test size": (["--data.test_size", "0"], "test_size must be >= 1"),
    "negative train accuracy interval": (["--model.train_accuracy_every_n_steps", "-1"],
                                         "train_accuracy_every_n_steps must be >= 0 (0 disables), got -1."),
    "zero validation steps": (["--model.validation_inference_steps", "0"], "validation_inference_steps must be >= 1"),
    "negative epochs": (["--trainer.max_epochs", "-5"], "max_epochs"),
    "dropout above 1": (["--model.strategy.init_args.dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    "zero width": (["--model.strategy.init_args.width", "0"], "width must be >= 1, got 0"),
    "trainer's clipping": (["--trainer.gradient_clip_val", "1.0"], "use --model.gradient_clip_val 1.0 instead"),
    "negative logging interval": (["--trainer.log_every_n_steps", "-2"], "log_every_n_steps must be >= 0 (0 writes no step values), got -2"),
    "negative min_epochs": (["--trainer.min_epochs", "-3"], "min_epochs must be >= 0 (or null), got -3"),
    "gradient accumulation": (["--trainer.accumulate_grad_batches", "4"], "raise --data.batch_size"),
    "trainer's negative clipping": (["--trainer.gradient_clip_val", "-1"], "use --model.gradient_clip_val <a value > 0>"),
    # option combinations
    "vmap with per_block": (["--model.block_execution", "vmap", "--model.backward_mode",
                             "per_block"], "needs backward_mode='joint'"),
    "compile options alone": (["--model.compile_options", "{mode: default}"], "compile_options only apply"),
    "plateau scheduler": (["--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"], "ReduceLROnPlateau"),
    # data
    "missing data folder": (lambda tmp: ["--data.synthetic", "false", "--data.root", str(tmp / "none"),
                                         "--data.download", "false"], "expected files"),
    "truncated dataset file": (_truncated_mnist, "corrupt"),
    # checkpoints
    "missing checkpoint": (lambda tmp: ["--ckpt_path", str(tmp / "no.ckpt")], "no such file"),
    "checkpoint is a folder": (lambda tmp: ["--ckpt_path", str(tmp)], "a folder, not a file; pass a .ckpt file"),
    "garbage checkpoint": (_garbage_checkpoint, "is not a checkpoint"),
    "truncated checkpoint": (_truncated_checkpoint, "is not a checkpoint"),
    "foreign checkpoint": (_foreign_checkpoint, "not written by lightning_noprop"),
    # devices
    "no such device count": (["--trainer.devices", "0"], "not a valid input"),
    "fsdp on cpu": (["--trainer.strategy", "fsdp", "--trainer.accelerator", "cpu"], "requires a GPU"),
    "a plugin's missing package": (["--trainer.precision", "transformer-engine"], "transformer_engine"),
    # the parser's own errors
    "abbreviated option": (["--trainer.max_epoch", "1"], "--trainer.max_epoch"),  # not silently max_epochs
    "misspelt option": (["--trainer.max_epochz", "1"], "--trainer.max_epochz"),
}  # fmt: skip
if not torch.cuda.is_available():
    BAD_INPUTS["gpu without one"] = (["--trainer.accelerator", "gpu"], "This machine has no CUDA GPU")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_user_error_is_one_message_without_traceback(case, tmp_path, capsys):
    options, phrase = BAD_INPUTS[case]
    options = options(tmp_path) if callable(options) else options
    err = user_error(capsys, "fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"],
                     *FAST, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path), *options)  # fmt: skip
    assert phrase in err
    assert err.count("error: ") == 1
    assert "usage:" not in err, "one error, not the parser's whole usage"


@pytest.mark.parametrize(("options", "message"), [
    # Lightning takes it and divides by it at the first epoch's end (ZeroDivisionError)
    (["--trainer.check_val_every_n_epoch", "0"],
     "--trainer.check_val_every_n_epoch must be >= 1 (or null to validate by val_check_interval alone), got 0."),
    # ... and at the first batch
    (["--trainer.val_check_interval", "0"], ("--trainer.val_check_interval 0: an int counts training batches and "
                                             "must be >= 1, a float is a fraction of the epoch in (0, 1] (1.0 its end).")),
    (["--trainer.val_check_interval", "0.0"], "--trainer.val_check_interval 0.0: an int"),  # Lightning: every batch
    # Lightning's own message, which it raises once it knows the epoch's batches (here 2)
    (["--trainer.val_check_interval", "100"], ("Trainer options: `val_check_interval` (100) must be less than or "
                                               "equal to the number of the training batches (2).")),
    # NoProp-DT's sampler asserted it in the sanity check
    (["--model.validation_inference_steps", "3"], "validation_inference_steps must be <= 2, the blocks of NoPropDT, got 3."),
], ids=["validation every 0 epochs", "validation every 0 batches", "validation every 0.0 epochs", "validation after the epoch",
        "more steps than blocks"])  # fmt: skip
def test_an_option_lightning_would_crash_on_is_a_user_error(options, message, tmp_path, capsys):
    # fast_dev_run (the parametrised test above) would set the validation options itself
    err = user_error(capsys, "fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"],
                     *FAST, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
                     "1", "--trainer.logger.init_args.save_dir", str(tmp_path), *options)  # fmt: skip
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("*.ckpt")), "nothing trained, nothing written"


@pytest.mark.parametrize("off", [["--data.val_size", "0"], ["--trainer.limit_val_batches", "0"]], ids=["no split", "no batches"])
def test_with_validation_off_no_best_checkpoint_is_monitored(off, tmp_path):
    import logging
    import warnings

    from lightning_utilities.core import rank_zero

    heard = []
    handler = logging.Handler()
    handler.emit = heard.append
    rank_zero.log.addHandler(handler)  # where Lightning's rank_zero_info writes
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
                      "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
                      "--trainer.logger.init_args.save_dir", str(tmp_path), *off)  # fmt: skip
    finally:
        rank_zero.log.removeHandler(handler)
    noted = [str(w.message) for w in caught if "monitored key" in str(w.message) or "across ranks is zero" in str(w.message)]
    assert not noted, "Lightning's warning at every epoch that val/acc is missing"
    said = "Validation is off, so the 1 checkpoint callback(s) monitoring ['val/acc'] are left out; last.ckpt is still"
    assert any(record.getMessage().startswith(said) for record in heard)
    assert not [c for c in cli.trainer.checkpoint_callbacks if c.monitor]
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["last.ckpt"]


def test_a_time_based_validation_interval_trains(tmp_path):
    # Lightning leaves Trainer.val_check_interval unset then: the option checks must not read it
    cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.val_check_interval", "00:00:10:00")  # fmt: skip
    assert cli.trainer.global_step == 2 * cli.model.num_optimizers


def test_ckpt_path_best_in_a_new_process_is_a_user_error(tmp_path, capsys):
    common = ["--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
              "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", "best"]  # fmt: skip
    err = user_error(capsys, "test", *common)
    assert err == ("error: --ckpt_path best: test in a new process knows no best checkpoint (Lightning's alias is for "
                   "one saved by the same Trainer): pass its path (fit writes it beside last.ckpt, in checkpoints/).\n")
    run("fit", *common[:-2], "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1")  # fmt: skip
    (best,) = (path for path in tmp_path.rglob("*.ckpt") if path.name != "last.ckpt")
    for subcommand in ("validate", "predict", "fit"):
        assert f"{subcommand} in a new process knows no best checkpoint" in user_error(capsys, subcommand, *common)
    assert f"pass its path, e.g. {best} (the newest of the run's other checkpoints)." in user_error(capsys, "test", *common)


def test_one_batch_is_one_batch(capsys):
    # Lightning 2.6 annotates the limits Union[float, int, None]: jsonargparse read "1" as 1.0, i.e. every batch.
    cli = main(args=["--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
                     "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1.0",
                     "--trainer.limit_test_batches", "0.5", "--trainer.logger", "false"], run=False)  # fmt: skip
    limits = (cli.trainer.limit_train_batches, cli.trainer.limit_val_batches, cli.trainer.limit_test_batches)
    assert limits == (1, 1.0, 0.5) and [type(v) for v in limits] == [int, float, float]
    # and in every subcommand's parser
    with pytest.raises(SystemExit):
        run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.limit_train_batches", "1",
            "--print_config")  # fmt: skip
    assert "limit_train_batches: 1\n" in capsys.readouterr().out


def test_an_untrained_prototype_embedding_is_a_user_error(tmp_path):
    # The CLI refuses test without --ckpt_path (test_runs.py); through the Python API the embedding says what to do.
    from lightning_noprop.errors import ConfigurationError

    cli = main(args=["--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
                     "--model.strategy.init_args.embedding", "lightning_noprop.nn.PrototypeEmbedding",
                     "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    with pytest.raises(ConfigurationError, match="never initialised from training data.*--ckpt_path"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from lightning_noprop.module import LocalLearningModule

    def broken(self, batch, batch_idx):
        raise RuntimeError("a bug")

    monkeypatch.setattr(LocalLearningModule, "training_step", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
            "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [
    (["fit", "--config", "configs/noprop_dt.yaml", "--data.batch_size", "-4"], "error: batch_size must be >= 1, got -4."),
    (["test", "--config", "configs/noprop_dt.yaml", "--ckpt_path", "missing.ckpt"], "error: --ckpt_path missing.ckpt: no such file"),
], ids=["config-value", "missing-checkpoint"])  # fmt: skip
def test_main_py_prints_the_message_and_exits_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)


def test_predict_under_precision_64_true(tmp_path):
    common = ["--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.precision", "64-true", "--trainer.logger",
              "false", "--trainer.default_root_dir", str(tmp_path), *SMALL["configs/noprop_dt.yaml"], *FAST]  # fmt: skip
    run("fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches",
        "1", "--trainer.enable_progress_bar", "false")  # fmt: skip
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    cli = run("predict", *common, "--ckpt_path", str(checkpoint))
    predictions = cli.trainer.predict_loop.predictions
    assert sum(p.logits.shape[0] for p in predictions) == len(cli.datamodule.test_set)
    assert all(p.logits.dtype == p.z.dtype == torch.float64 for p in predictions)


@pytest.mark.parametrize("option", ["--model.block_execution", "--model.strategy.init_args.block_execution"],
                         ids=["module", "deprecated-strategy-argument"])  # fmt: skip
def test_vmapped_blocks_train_through_the_cli(option, tmp_path):
    cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *SMALL["configs/noprop_dt.yaml"], *FAST,
              option, "vmap", "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert cli.model.executor.block_execution == "vmap"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("callbacks", ["shared defaults", "one in a config"])
def test_enable_checkpointing_false_writes_no_checkpoint(tmp_path, callbacks):
    # The shared defaults add ModelCheckpoint and LatestCheckpoint, which Lightning refuses beside
    # enable_checkpointing false; the user's option wins. A config may give one callback, not a list.
    extra = []
    if callbacks == "one in a config":
        (tmp_path / "one.yaml").write_text("trainer:\n  callbacks:\n    class_path: lightning.pytorch.callbacks."
                                           "ModelCheckpoint\n    init_args: {monitor: val/acc, mode: max}\n")  # fmt: skip
        extra = ["--config", str(tmp_path / "one.yaml")]
    cli = run("fit", "--config", str(REPO / "configs/noprop_dt.yaml"), *extra, *SMALL["configs/noprop_dt.yaml"], *FAST,
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.logger.init_args.save_dir", str(tmp_path))  # fmt: skip
    assert cli.trainer.state.finished
    assert cli.trainer.checkpoint_callbacks == []
    assert not list(tmp_path.rglob("*.ckpt"))
