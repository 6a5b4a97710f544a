"""The CLI's precision default: bf16-mixed (and channels-last on CPU) where the hardware has native bf16."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_noprop import cli
from lightning_noprop.cli import CPU_BF16_ENV, cpu_bf16_default, cpu_bf16_native, default_precision

from .conftest import REPO
from .helpers import FAST, run, user_error

DT = str(REPO / "configs/noprop_dt.yaml")


def _cpu_with(monkeypatch, **capabilities):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)


@pytest.mark.parametrize(("capabilities", "native"), [
    ({"avx512_bf16": True, "avx512": True}, True),
    ({"amx_bf16": True}, True),
    ({"avx512": True, "avx512_bf16": False, "amx_bf16": False}, False),
    ({"avx2": True}, False),
], ids=["avx512-bf16", "amx-bf16", "avx512-only", "avx2"])  # fmt: skip
def test_the_cpu_decides_when_the_variable_is_unset(monkeypatch, capabilities, native):
    _cpu_with(monkeypatch, **capabilities)
    assert cpu_bf16_native() is native
    assert cpu_bf16_default() is native
    assert default_precision() == ("bf16-mixed" if native else "32-true")


@pytest.mark.parametrize(("value", "bf16"), [("0", False), ("1", True)])
@pytest.mark.parametrize("capabilities", [{"avx512_bf16": True}, {}], ids=["bf16-cpu", "plain-cpu"])
def test_the_variable_overrides_the_cpu(monkeypatch, capabilities, value, bf16):
    _cpu_with(monkeypatch, **capabilities)
    monkeypatch.setenv(CPU_BF16_ENV, value)
    assert cpu_bf16_default() is bf16
    assert default_precision() == ("bf16-mixed" if bf16 else "32-true")


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_a_gpu_decides_by_itself_and_keeps_the_contiguous_layout(monkeypatch, bf16_gpu):
    _cpu_with(monkeypatch, avx512_bf16=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_gpu)
    assert default_precision() == ("bf16-mixed" if bf16_gpu else "32-true")
    assert cpu_bf16_default() is False  # channels_last stays a choice on GPU


@pytest.mark.parametrize("value", ["yes", "true", "", "2"])
def test_a_bad_value_is_a_user_error(monkeypatch, capsys, value):
    monkeypatch.setenv(CPU_BF16_ENV, value)
    err = user_error(capsys, "fit", "--config", DT, "--print_config")
    assert f"{CPU_BF16_ENV} must be 0" in err and repr(value) in err and "unset it" in err


def _printed_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", DT, *args, "--print_config")
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_bf16_default_and_options_override_it(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    config = _printed_config(capsys)
    assert (config["trainer"]["precision"], config["model"]["channels_last"]) == ("bf16-mixed", True)
    config = _printed_config(capsys, "--trainer.precision", "32-true", "--model.channels_last", "false")
    assert (config["trainer"]["precision"], config["model"]["channels_last"]) == ("32-true", False)
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    config = _printed_config(capsys)
    assert (config["trainer"]["precision"], config["model"]["channels_last"]) == ("32-true", False)


def test_main_py_refuses_a_bad_value_in_one_line():
    env = {**os.environ, CPU_BF16_ENV: "yes"}
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", DT, "--print_config"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env=env, check=False)  # fmt: skip
    assert result.returncode == cli.USER_ERROR_EXIT_CODE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {CPU_BF16_ENV} must be 0 (float32 on CPU) or 1 (bf16-mixed on CPU), got 'yes'; unset it to let the CPU "
        + "decide."
    ]


def test_fit_on_cpu_under_the_bf16_default(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    cli_run = run("fit", "--config", DT, "--model.strategy.init_args.num_blocks", "2", *FAST,
                  "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert cli_run.trainer.precision == "bf16-mixed"
    convolutions = [p for p in cli_run.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert all(p.dtype == torch.float32 for p in cli_run.model.parameters())  # autocast: float32 master weights
    losses = {k: v for k, v in cli_run.trainer.callback_metrics.items() if k.startswith("train/")}
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
