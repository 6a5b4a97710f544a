"""Every config runs through the CLI; bad input fails early and clearly."""

import pytest
import torch

from lightning_noprop.cli import USER_ERROR_EXIT_CODE, main

from .conftest import CONFIGS, REPO

FAST = ["--data.synthetic", "true", "--data.synthetic_size", "48", "--data.val_size", "16", "--data.batch_size", "8"]


def run(*args):
    return main(args=list(args))


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


def user_error(capsys, *args) -> str:
    """Run the CLI on ``args``, expect a user error (exit 2, no traceback) and return its message."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


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


def test_predict_under_precision_64_true(tmp_path):
    cli = run("predict", "--config", str(REPO / "configs/noprop_dt.yaml"), "--trainer.precision", "64-true",
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), *SMALL["configs/noprop_dt.yaml"],
              *FAST)  # fmt: skip
    predictions = cli.trainer.predict_loop.predictions
    assert sum(p.logits.shape[0] for p in predictions) == len(cli.datamodule.test_set)
    assert all(p.logits.dtype == p.z.dtype == torch.float64 for p in predictions)
