"""What the module logs: the keys train|val|test/<name> and <stage>/block_{i}/<name>, with their values."""

import pytest
import torch

from lightning_noprop.metric_logging import log_summary


class Recorder:
    """A stand-in LightningModule that keeps what ``log`` is called with."""

    def __init__(self) -> None:
        self.logged: dict[str, tuple[float, dict]] = {}

    def log(self, name, value, **options) -> None:
        self.logged[name] = (float(value), options)


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_a_summary_is_logged_per_block_with_the_total_loss_and_the_mean_of_each_term(stage):
    recorder = Recorder()
    summary = {
        0: {"loss": torch.tensor(1.0), "kl": torch.tensor(0.5), "acc": torch.tensor(0.25)},
        2: {"loss": torch.tensor(3.0), "kl": torch.tensor(1.5), "acc": torch.tensor(0.75)},
    }
    log_summary(recorder, stage, summary, batch_size=16)
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
