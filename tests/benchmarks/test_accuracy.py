"""benchmarks/accuracy.py's wall-time budget: whole epochs only, stopping before one that would overrun."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import accuracy  # noqa: E402


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
