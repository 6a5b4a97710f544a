"""What a short run shows in TensorBoard, read back from its event files with tensorboard's EventAccumulator: one
custom-scalars chart per stage holding every block's curve, hp_metric = val/acc (fit) and = test/acc (test), and
the anytime curve at the end of test (scalars, figure, PNG beside the checkpoint)."""

import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

from lightning_noprop.cli import main
from lightning_noprop.reporting import custom_scalars_layout

from .conftest import REPO
from .test_cli import FAST, SMALL

# num_blocks, and whether the blocks have their own classifiers (per-block accuracies)
CASES = {"configs/noprop_dt.yaml": (2, False), "configs/bwbpf.yaml": (4, True)}


def _events(folder) -> EventAccumulator:
    (path,) = folder.glob("events.out.tfevents.*")
    events = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    return events


def _layout(events: EventAccumulator) -> layout_pb2.Layout:
    (event,) = events.Tensors("custom_scalars__config__")
    return layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())


def _last(events: EventAccumulator, tag: str) -> float:
    return events.Scalars(tag)[-1].value


@pytest.fixture(scope="module", params=list(CASES))
def fit_and_test(request, tmp_path_factory):
    """A 2-epoch fit (TensorBoard logger), then `test` of its last.ckpt in a run of its own."""
    config = request.param
    logs = tmp_path_factory.mktemp("logs")
    common = ["--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", "run",
              "--trainer.enable_progress_bar", "false", *SMALL[config], *FAST]  # fmt: skip
    main(args=["fit", "--config", str(REPO / config), "--trainer.max_epochs", "2", "--trainer.limit_train_batches",
               "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", *common])  # fmt: skip
    fit_dir = logs / "run" / "version_0"
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    main(args=["test", "--config", str(fit_dir / "config.yaml"), "--ckpt_path", str(checkpoint), *common])
    return config, fit_dir, logs / "run" / "version_1", checkpoint


def test_each_stage_has_one_chart_with_every_blocks_curve(fit_and_test):
    config, fit_dir, test_dir, _ = fit_and_test
    num_blocks, per_block_accuracy = CASES[config]
    for folder, stages in ((fit_dir, ("train (each step)", "train (epoch mean)", "val")), (test_dir, ("test",))):
        events = _events(folder)
        tags = events.Tags()["scalars"]
        layout = _layout(events)
        categories = {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}
        expected = ["per-block loss"] + (["per-block accuracy"] if per_block_accuracy else [])
        assert list(categories) == expected
        for category in categories.values():
            for title, regexes in category.items():
                matched = sorted(tag for tag in tags if any(re.search(regex, tag) for regex in regexes))
                if title.split(":")[0] in stages:  # this run logged that stage: one curve per block, in one chart
                    assert len(matched) == num_blocks, (title, matched)


def test_hp_metric_is_val_acc_after_fit_and_test_acc_after_test(fit_and_test):
    _, fit_dir, test_dir, _ = fit_and_test
    fit_events, test_events = _events(fit_dir), _events(test_dir)
    assert [e.value for e in fit_events.Scalars("hp_metric")][0] == -1  # Lightning's placeholder, then ours
    assert _last(fit_events, "hp_metric") == pytest.approx(_last(fit_events, "val/acc"))
    assert len(fit_events.Scalars("hp_metric")) == 1 + 2  # one per epoch's validation, none for the sanity check
    assert _last(test_events, "hp_metric") == pytest.approx(_last(test_events, "test/acc"))


def test_test_logs_the_anytime_curve_as_scalars_and_a_figure_and_saves_a_png(fit_and_test):
    config, _, test_dir, checkpoint = fit_and_test
    num_blocks, _ = CASES[config]
    events = _events(test_dir)
    curve = events.Scalars("test/anytime/acc")
    assert [e.step for e in curve] == list(range(1, num_blocks + 1))
    assert all(0.0 <= e.value <= 1.0 for e in curve)
    if config == "configs/bwbpf.yaml":  # deterministic inference: all K blocks is test/acc itself
        assert curve[-1].value == pytest.approx(_last(events, "test/acc"))
    (image,) = events.Images("test/anytime")
    assert image.encoded_image_string.startswith(b"\x89PNG")
    png = checkpoint.with_suffix(".anytime.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_the_layout_has_an_accuracy_category_only_for_per_block_classifiers():
    assert list(custom_scalars_layout(per_block_accuracy=False)) == ["per-block loss"]
    layout = custom_scalars_layout(per_block_accuracy=True)
    (regex,) = layout["per-block accuracy"]["val: val/block_*/acc"][1]
    assert re.search(regex, "val/block_3/acc") and not re.search(regex, "val/block_3/loss")
    assert not re.search(regex, "train/block_3/acc_epoch")
