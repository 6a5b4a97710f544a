"""Every config resolves to the settings it had when it spelled out everything (issue 16 section 3).

The configs state only what differs from the shared defaults (lightning_noprop/cli.py) and the classes' own;
tests/resolved_configs/ holds the `--print_config` output of each config recorded before they were shortened. If a
setting changes on purpose, rewrite the records with `python -m tests.test_configs` and review the diff in git.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_noprop import cli

from .conftest import CONFIGS, REPO

RECORDS = REPO / "tests" / "resolved_configs"


def _name(config: Path) -> str:
    return str(config.relative_to(REPO / "configs"))


def print_config(*args: str) -> str:
    """What `python main.py fit ARGS --print_config...` writes (the last of ``args`` is the --print_config option)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(args=["fit", *args])
    assert exit_info.value.code in (None, 0), exit_info.value.code
    return out.getvalue()


def differences(expected: Any, actual: Any, key: str = "") -> list[str]:
    """The settings that differ, one `key: expected -> actual` line each (dict order does not matter)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(expected.keys() | actual.keys(), key=str)
        pairs = [(expected.get(k, "<absent>"), actual.get(k, "<absent>"), f"{key}.{k}".lstrip(".")) for k in keys]
        return [line for e, a, k in pairs for line in differences(e, a, k)]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{key}[{i}]")]
    return [] if expected == actual else [f"{key}: {expected!r} -> {actual!r}"]


@pytest.fixture(autouse=True)
def _cpu_precision(monkeypatch):
    # The records were made on CPU; on a bf16 GPU the default precision is bf16-mixed, by design.
    monkeypatch.setattr(cli, "default_precision", lambda: "32-true")


def test_differences_finds_a_changed_setting():
    expected = {"model": {"optimizer": {"init_args": {"lr": 0.001}}}, "trainer": {"callbacks": [{"a": 1}]}}
    actual = {"model": {"optimizer": {"init_args": {"lr": 0.01}}}, "trainer": {"callbacks": [{"a": 1, "b": 2}]}}
    assert differences(expected, actual) == ["model.optimizer.init_args.lr: 0.001 -> 0.01",
                                             "trainer.callbacks[0].b: '<absent>' -> 2"]  # fmt: skip
    assert differences(expected, expected) == []


def test_every_config_has_a_record():
    assert sorted(_name(c) for c in CONFIGS) == sorted(str(p.relative_to(RECORDS)) for p in RECORDS.rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
def test_config_resolves_to_its_recorded_settings(config):
    resolved = yaml.safe_load(print_config("--config", str(config), "--print_config"))
    recorded = yaml.safe_load((RECORDS / _name(config)).read_text())
    changed = differences(recorded, resolved)
    assert not changed, f"{_name(config)} resolves to other settings than recorded:\n  " + "\n  ".join(changed)


def test_print_config_is_complete_and_skip_default_is_short():
    config = str(REPO / "configs/noprop_ct.yaml")
    full = yaml.safe_load(print_config("--config", config, "--print_config"))
    short_text = print_config("--config", config, "--print_config=skip_default")
    short = yaml.safe_load(short_text)
    assert full["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/acc"  # the shared defaults are shown
    assert full["model"]["strategy"]["init_args"]["inference_steps"] == 1000  # and the classes' own
    assert full["data"]["batch_size"] == 128
    assert short["trainer"]["logger"]["init_args"] == {"name": "noprop_ct_mnist"}
    assert short["model"]["strategy"]["class_path"] == "lightning_noprop.strategies.NoPropCT"
    assert "callbacks" not in short["trainer"] and "batch_size" not in short["data"]
    assert len(short_text.splitlines()) < 40 and len(yaml.safe_dump(full).splitlines()) > 150


def _record_all() -> None:
    """Rewrite tests/resolved_configs/ from the current configs and defaults."""
    cli.default_precision = lambda: "32-true"
    for config in CONFIGS:
        record = RECORDS / _name(config)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(print_config("--config", str(config), "--print_config"))
        print(f"wrote {record.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    _record_all()
