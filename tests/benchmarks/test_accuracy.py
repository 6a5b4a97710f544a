"""benchmarks/accuracy.py's wall-time budget (whole epochs only, stopping before one that would overrun), its
resumable run directory, and its rows (Table 1's methods x embeddings)."""

import json
import os
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import accuracy  # noqa: E402

from lightning_noprop.cli import main as cli_main  # noqa: E402


def test_the_budget_stops_at_the_epoch_boundary_before_the_first_epoch_that_would_overrun(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(accuracy.time, "perf_counter", lambda: clock[0])
    budget = accuracy.EpochBudget(minutes=1.0)  # 60 s
    trainer = SimpleNamespace(should_stop=False)
    stopped_after = None
    for epoch, seconds in enumerate([10.0, 12.0, 11.0, 12.0, 9.0, 9.0], start=1):
        budget.on_train_epoch_start(trainer, None)
        clock[0] += seconds
        budget.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            stopped_after = epoch
            break
    # After 4 epochs 45 s have passed; a fifth as long as the longest (12 s) ends at 57 s <= 60 s, so it runs.
    # After 5 (54 s) another 12 s would end at 66 s: stop there.
    assert stopped_after == 5
    assert clock[0] <= 60.0


def test_an_epoch_longer_than_the_budget_still_completes_once(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(accuracy.time, "perf_counter", lambda: clock[0])
    budget = accuracy.EpochBudget(minutes=0.5)
    trainer = SimpleNamespace(should_stop=False)
    budget.on_train_epoch_start(trainer, None)
    clock[0] += 45.0
    budget.on_train_epoch_end(trainer, None)
    assert trainer.should_stop, "one whole epoch is trained, then the run stops"


def _args(tmp_path, root, **overrides):
    options = dict(epochs=2, train_size=128, val_size=64, test_size=64, inference_steps=2, inference_runs=1,
                   data_root=str(root), max_minutes=None, run_dir=None, extra=[])  # fmt: skip
    return Namespace(**{**options, **overrides})


def test_a_run_stopped_by_its_budget_resumes_from_its_run_dir_and_matches_an_uninterrupted_run(tmp_path, mnist_root):
    # The first call's budget ends it after one whole epoch; the second resumes from last.ckpt and trains epoch 2.
    first = accuracy.run("fm-onehot", 0, _args(tmp_path, mnist_root, max_minutes=1e-9, run_dir=str(tmp_path / "runs")))
    assert first["epochs"] == 1
    assert list((tmp_path / "runs" / "fm-onehot-seed0").glob("**/last.ckpt")), "the run dir keeps last.ckpt"
    resumed = accuracy.run("fm-onehot", 0, _args(tmp_path, mnist_root, run_dir=str(tmp_path / "runs")))
    assert [point[0] for point in resumed["curve"]] == [1, 2], "the curve goes on from the checkpoint"
    assert resumed["curve"][0] == first["curve"][0], "epoch 1's point comes back from the checkpoint"
    assert resumed["curve"][1][1] > resumed["curve"][0][1], "wall time goes on"
    whole = accuracy.run("fm-onehot", 0, _args(tmp_path, mnist_root))
    assert [p[2] for p in whole["curve"]] == [p[2] for p in resumed["curve"]], "same validation accuracy, epoch by epoch"
    assert whole["test_acc"] == resumed["test_acc"]


def test_the_rows_are_table_1s_grid_and_each_builds_its_method_and_embedding(tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "ROWS", dict(accuracy.ROWS))
    methods = {"backprop": "Backprop", "dt": "NoPropDT", "ct": "NoPropCT", "fm": "NoPropFM"}
    embeddings = {"onehot": "OneHotEmbedding", "dim20": "LearnedEmbedding", "prototype": "PrototypeEmbedding"}
    built = set()
    reference = accuracy.ROWS.pop("plain-cnn")  # not Table 1's: the plain CNN trained by backprop
    cli = cli_main(args=["--config", reference[0], *reference[1], "--data.root", str(tmp_path), "--data.download", "false",
                         "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    assert type(cli.model.strategy).__name__ == "PlainCNN"
    for row, (config, overrides) in accuracy.ROWS.items():
        method, _, embedding = row.partition("-")
        embedding = embedding or "onehot"  # "backprop" is the one-hot backprop row
        cli = cli_main(args=["--config", config, *overrides, "--data.root", str(tmp_path), "--data.download", "false",
                             "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
        assert type(cli.model.strategy).__name__ == methods[method], row
        assert type(cli.model.strategy.embedding).__name__ == embeddings[embedding], row
        assert (row in accuracy.CONTINUOUS) == (method in ("ct", "fm")), "CT/FM rows take --inference-steps"
        built.add((method, embedding))
    assert built == {(m, e) for m in methods for e in embeddings}, "every method with every embedding"


def _result(row, seed, test_acc, epochs=1):
    return {"row": row, "seed": seed, "epochs": epochs, "test_acc": test_acc, "curve": [[1, 10.0, 0.5]],
            "anytime": {"1": 0.2, "10": 0.5}}  # fmt: skip


def test_replot_reads_every_run_and_keeps_the_newest_line_of_each_row_and_seed(tmp_path, monkeypatch, capsys):
    lines = [_result("dt-onehot", 0, [0.90, 0.92], epochs=1),  # replaced by the next instalment of the same run
             _result("fm-dim20", 0, [0.50, 0.70]),
             _result("dt-onehot", 0, [0.96, 0.98], epochs=2),
             _result("dt-onehot", 1, [0.97, 0.97], epochs=2)]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = accuracy.read_results(tmp_path / "results.jsonl")
    assert [(r["row"], r["seed"], r["epochs"]) for r in results] == [("dt-onehot", 0, 2), ("fm-dim20", 0, 1),
                                                                     ("dt-onehot", 1, 2)]  # fmt: skip
    plotted = []
    monkeypatch.setattr(accuracy, "plot", lambda results, out_dir: plotted.append((len(results), out_dir)))
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--replot", "--out-dir", str(tmp_path)])
    accuracy.main()
    rows = capsys.readouterr().out.splitlines()[2:]
    # dt-onehot: 0.96, 0.98, 0.97, 0.97 -> mean 97.00, sample sd 0.008165, s.e. 0.004082; fm-dim20: 60.00 +- 10.00.
    assert rows == ["| dt-onehot | 2 | 2 x 2 | 97.00 +- 0.41 |", "| fm-dim20 | 1 | 1 x 2 | 60.00 +- 10.00 |"]
    assert plotted == [(3, tmp_path)]


def test_replot_without_results_names_the_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--replot", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        accuracy.main()
    assert exit_.value.code == 2
    assert f"{tmp_path / 'results.jsonl'}, which does not exist" in capsys.readouterr().err


def test_curves_draw_from_results_read_back_from_json(tmp_path):
    if os.environ.get("CI"):
        import matplotlib  # noqa: F401  requirements-dev.txt has it: under CI its absence is a failure, not a skip
    else:
        pytest.importorskip("matplotlib")
    (tmp_path / "results.jsonl").write_text(json.dumps(_result("ct-dim20", 0, [0.8])) + "\n")
    accuracy.plot(accuracy.read_results(tmp_path / "results.jsonl"), tmp_path)  # anytime's keys are str here
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["accuracy_vs_epoch.png", "accuracy_vs_time.png",
                                                                   "anytime.png"]  # fmt: skip
