"""What the module logs: the keys train|val|test/<name> and <stage>/block_{i}/<name>, with their values."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from lightning_noprop.metric_logging import QuietSyncDistAdvice, _log, log_summary, mean_over_processes
from lightning_noprop.strategies import NoPropDT


class Recorder:
    """A stand-in LightningModule that keeps what ``log`` is called with, on ``world_size`` processes whose
    ``reduce`` averages a packed tensor with ``other`` (another process's values; default: the same)."""

    def __init__(self, world_size: int = 1, block_parallel: bool = False, other=None) -> None:
        self.logged: dict[str, tuple[float, dict]] = {}
        self.reduced: list[torch.Tensor] = []
        self.block_parallel = object() if block_parallel else None
        self.trainer = SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(reduce=self._reduce))
        self.other = other

    def _reduce(self, tensor, reduce_op):
        assert reduce_op == "mean"
        self.reduced.append(tensor.clone())
        return (tensor + (tensor if self.other is None else self.other)) / 2

    def log(self, name, value, **options) -> None:
        self.logged[name] = (float(value), options)


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_a_summary_is_logged_per_block_with_the_total_loss_and_the_mean_of_each_term(stage):
    recorder = Recorder()
    summary = {
        0: {"loss": torch.tensor(1.0), "kl": torch.tensor(0.5), "acc": torch.tensor(0.25)},
        2: {"loss": torch.tensor(3.0), "kl": torch.tensor(1.5), "acc": torch.tensor(0.75)},
    }
    _log(recorder, stage, summary, batch_size=16)
    values = {name: value for name, (value, _) in recorder.logged.items()}
    assert values == {f"{stage}/loss": 4.0, f"{stage}/block_0/loss": 1.0, f"{stage}/block_0/acc": 0.25,
                      f"{stage}/block_2/loss": 3.0, f"{stage}/block_2/acc": 0.75, f"{stage}/kl": 1.0}  # fmt: skip
    options = recorder.logged[f"{stage}/block_2/loss"][1]
    assert options["on_step"] is (stage == "train") and options["on_epoch"] and options["batch_size"] == 16
    assert recorder.logged[f"{stage}/loss"][1]["prog_bar"]


def test_an_empty_summary_logs_nothing():
    recorder = Recorder()
    log_summary(recorder, "train", {})
    assert recorder.logged == {}


SUMMARY = {0: {"loss": torch.tensor(1.0), "kl": torch.tensor(2.0)}, 3: {"loss": torch.tensor(3.0), "kl": torch.tensor(4.0)}}


def test_under_ddp_a_batch_of_training_values_is_averaged_over_the_processes_in_one_reduce():
    recorder = Recorder(world_size=2, other=torch.tensor([3.0, 6.0, 5.0, 0.0]))  # the other process's values
    log_summary(recorder, "train", SUMMARY)
    (packed,) = recorder.reduced
    assert packed.tolist() == [1.0, 2.0, 3.0, 4.0]
    values = {name: value for name, (value, _) in recorder.logged.items()}
    assert values == {"train/loss": 2.0 + 4.0, "train/block_0/loss": 2.0, "train/block_3/loss": 4.0, "train/kl": 3.0}
    assert not any(options["sync_dist"] for _, options in recorder.logged.values())


@pytest.mark.parametrize(("world_size", "block_parallel", "synced"), [(1, False, False), (2, False, True),
                                                                      (2, True, False)])  # fmt: skip
def test_evaluation_values_are_synced_only_where_processes_see_different_images(world_size, block_parallel, synced):
    recorder = Recorder(world_size, block_parallel)
    log_summary(recorder, "val", SUMMARY)
    assert not recorder.reduced, "evaluation values are synced once an epoch by Lightning, not per batch"
    assert {options["sync_dist"] for _, options in recorder.logged.values()} == {synced}
    log_summary(recorder, "train", SUMMARY)
    assert len(recorder.reduced) == int(synced), "block_parallel's processes hold the same training values"


def test_one_process_reduces_nothing():
    recorder = Recorder()
    assert mean_over_processes(recorder, SUMMARY) is SUMMARY and not recorder.reduced


def advice(key: str) -> str:
    return (f"It is recommended to use `self.log('{key}', ..., sync_dist=True)` when logging on epoch level in "
            "distributed setting to accumulate the metric across devices.")  # fmt: skip


@pytest.mark.parametrize(("block_parallel", "quiet"), [(False, {"train/loss"}), (True, {"train/loss", "val/loss"})])
@pytest.mark.parametrize("end", ["teardown", "on_exception"])
def test_the_sync_dist_advice_is_quiet_for_the_values_that_need_no_sync_until_the_run_ends(block_parallel, quiet, end):
    module, callback = Recorder(world_size=2, block_parallel=block_parallel), QuietSyncDistAdvice()
    before = list(warnings.filters)
    callback.setup(module.trainer, module, "fit")
    callback.setup(module.trainer, module, "validate")  # a second setup replaces its filter
    assert len(warnings.filters) == len(before) + 1
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always", append=True)  # after the quiet filter, which must still win
        for key in ("train/loss", "val/loss", "my/value"):
            warnings.warn(advice(key), UserWarning)
    getattr(callback, end)(module.trainer, module, RuntimeError() if end == "on_exception" else "fit")
    assert warnings.filters == before
    assert {str(w.message).split("'")[1] for w in heard} == {"train/loss", "val/loss", "my/value"} - quiet


class SaveMetrics(Callback):
    """Each process saves the values it would log at the end of the fit (rank{r}.pt)."""

    def __init__(self, out) -> None:
        self.out = out

    def on_fit_end(self, trainer, pl_module) -> None:
        values = {name: value.item() for name, value in trainer.callback_metrics.items()}
        torch.save(values, self.out / f"rank{trainer.global_rank}.pt")


def test_under_ddp_every_process_logs_the_runs_values_not_its_own(tmp_path, monkeypatch):
    """2 CPU processes (gloo) train and validate on different images; what each would log is the same (each
    process's own values differ: the test fails without the averaging)."""
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from .helpers import synthetic_data, tiny_module, trainer

    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    data = synthetic_data(synthetic_size=64, val_size=24, batch_size=8)
    run = trainer(devices=2, strategy="ddp_fork", callbacks=[SaveMetrics(tmp_path)], limit_train_batches=2)
    run.fit(tiny_module(strategy=NoPropDT(num_blocks=2, width=8)), data)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert {"train/loss_epoch", "train/block_1/loss_epoch", "val/loss", "val/block_0/loss"} <= set(ranks[0])
    assert ranks[0] == ranks[1]
