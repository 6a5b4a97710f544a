"""benchmarks/gpu_session.sh runs only on a lent GPU, where a mistake costs the session's device time: its syntax,
and every case it names, are checked here (nothing is run)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_overhead
import throughput

SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def _commands() -> list[list[str]]:
    """The script's commands as words, with continuation lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def test_the_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_case_it_names_exists():
    throughput_cases, overhead_cases = [], []
    for words in _commands():
        if "tp" in words:  # tp LIMIT CASE...: throughput.py's cases
            throughput_cases += words[words.index("tp") + 2 :]
        if "benchmarks/step_overhead.py" in words:  # ... --cases CASE... --out ...
            rest = words[words.index("--cases") + 1 :]
            overhead_cases += rest[: next(i for i, w in enumerate(rest) if w.startswith("--"))]
    assert len(throughput_cases) >= 10 and overhead_cases, "the parser no longer finds the cases"
    assert set(throughput_cases) <= set(throughput.CASES), set(throughput_cases) - set(throughput.CASES)
    assert set(overhead_cases) <= set(step_overhead.CASES), set(overhead_cases) - set(step_overhead.CASES)


def test_its_groups_are_the_ones_it_documents():
    groups = set(re.findall(r"^\s*(?:if )?has (\w+)", SCRIPT.read_text(), flags=re.MULTILINE))
    assert groups == {"capture", "fused", "layout", "compiled", "vmap", "budget"}, groups


def _budget_command() -> list[str]:
    """The budget group's accuracy.py command, with each ${NAME:-default} as its default and $minutes/$out filled."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if "benchmarks/accuracy.py" in line and "#" not in line.split()[0]]
    line = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line.split("2>&1")[0]).replace("$minutes", "6").replace("$out", "OUT")
    words = shlex.split(line)
    return words[words.index("benchmarks/accuracy.py") + 1 :]


def test_the_budget_run_is_the_issues_row_and_its_options_parse():
    import accuracy

    args = accuracy.build_parser().parse_args(_budget_command())
    # Issue 15's full budget: NoProp-DT one-hot, 100 epochs, seed 0, 5 inference runs, MNIST from the repo's copy.
    assert (args.rows, args.seeds, args.epochs, args.inference_runs) == (["dt-onehot"], [0], 100, 5)
    assert args.max_minutes == 6 and (ROOT / args.data_root / "MNIST" / "raw").is_dir()
    # no checkpoints (229 MiB each, not carried back), then the mode: BUDGET_ARGS, by default capture_step
    assert args.extra == ["--trainer.enable_checkpointing", "false", "--model.capture_step", "true"]


def test_the_budget_runs_cli_options_are_accepted(tmp_path):
    import accuracy

    from lightning_noprop.cli import main as cli_main

    command = _budget_command()
    extra = command[command.index("--") + 1 :]
    config, overrides = accuracy.ROWS["dt-onehot"]
    cli = cli_main(args=["--config", str(ROOT / config), *overrides, *extra, "--data.synthetic", "true",
                         "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"], run=False)  # fmt: skip
    assert cli.model.hparams.capture_step is True and not cli.trainer.checkpoint_callbacks
