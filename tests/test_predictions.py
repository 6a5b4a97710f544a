"""`python main.py predict` writes predictions.csv (one row per image) and prints its path; bad files fail clearly."""

import csv

import pytest
from PIL import Image

from lightning_noprop.cli import main
from lightning_noprop.data.idx import read_idx_split

from .conftest import REPO
from .test_cli import user_error

# A BWBPF ResNet-18 at width 16 with the ImageNet stem (28x28 -> 7x7 at once) and K = 1: 100 SGD steps on real
# MNIST take a few seconds on 2 CPU cores and reach 83% on 1,000 test images (91% on the first 64).
TINY_MNIST = ["--config", str(REPO / "configs/bwbpf.yaml"), "--data.dataset", "mnist", "--data.augment", "false",
              "--model.strategy.init_args.backbone.init_args.stem", "imagenet",
              "--model.strategy.init_args.backbone.init_args.width", "16", "--model.strategy.init_args.num_blocks", "1",
              "--model.optimizer.init_args.lr", "0.05", "--model.train_accuracy_every_n_steps", "0",
              "--data.batch_size", "64", "--data.val_size", "256", "--data.test_size", "64",
              "--trainer.logger.init_args.name", "tiny_mnist"]  # fmt: skip
NUM_IMAGES = 64


@pytest.fixture(scope="module")
def trained_run(mnist_root, tmp_path_factory):
    """(config.yaml, last.ckpt, data root) of a tiny model trained for 100 steps on real MNIST through the CLI."""
    logs = tmp_path_factory.mktemp("run")
    main(args=["fit", *TINY_MNIST, "--data.root", str(mnist_root), "--data.download", "false", "--data.train_size",
               "6400", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(logs)])  # fmt: skip
    (config,) = logs.rglob("config.yaml")
    return config, config.parent / "checkpoints" / "last.ckpt", mnist_root


def _predict(run, out, *args) -> list[dict]:
    config, checkpoint, root = run
    main(args=["predict", "--config", str(config), "--ckpt_path", str(checkpoint), "--data.root", str(root),
               "--trainer.logger", "false", "--trainer.default_root_dir", str(out), *args])  # fmt: skip
    with (out / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


def test_predict_on_the_test_split_writes_a_row_per_image_with_its_label(trained_run, tmp_path, capsys):
    rows = _predict(trained_run, tmp_path)
    assert f"written to {(tmp_path / 'predictions.csv').resolve()}" in capsys.readouterr().out
    assert list(rows[0]) == ["index", "predicted", "probability", "label"]
    assert [int(r["index"]) for r in rows] == list(range(NUM_IMAGES))
    assert all(0.1 <= float(r["probability"]) <= 1.0 for r in rows)  # the top class of 10: at least 1/10
    agreement = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert agreement > 0.6, f"the trained model agrees with only {agreement:.0%} of the test labels"


def test_predict_on_a_folder_of_pngs_agrees_with_the_test_split_and_the_labels(trained_run, tmp_path):
    """PNGs of the first MNIST test images (one as RGB at 56x56): the same classes as predicting the split itself."""
    images, labels = read_idx_split(trained_run[2] / "MNIST" / "raw", train=False)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(NUM_IMAGES):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:03d}_label{labels[i].item()}.png")
    (folder / "notes.txt").write_text("not an image, and skipped: a folder is read by image suffix")
    on_files = _predict(trained_run, tmp_path / "files", "--data.predict_path", str(folder))
    on_split = _predict(trained_run, tmp_path / "split")
    assert list(on_files[0]) == ["file", "predicted", "probability"]
    assert [r["file"] for r in on_files] == [str(p) for p in sorted(folder.glob("*.png"))]
    assert [r["predicted"] for r in on_files] == [r["predicted"] for r in on_split]
    assert all(abs(float(a["probability"]) - float(b["probability"])) < 1e-4 for a, b in zip(on_files, on_split))
    agreement = sum(int(r["predicted"]) == labels[i].item() for i, r in enumerate(on_files)) / NUM_IMAGES
    assert agreement > 0.6

    one = tmp_path / "one.jpg"  # one file, of another size and mode, is converted to 28x28 grayscale
    Image.fromarray(images[0, 0].numpy()).convert("RGB").resize((56, 56)).save(one, quality=95)
    (row,) = _predict(trained_run, tmp_path / "one", "--data.predict_path", str(one))
    assert row["file"] == str(one) and 0 <= int(row["predicted"]) < 10


@pytest.mark.parametrize("name", ["broken.png", "notes.txt"])
def test_a_non_image_file_is_one_clear_error_naming_it(trained_run, tmp_path, capsys, name):
    bad = tmp_path / name
    bad.write_text("this is not an image")
    config, checkpoint, root = trained_run
    err = user_error(capsys, "predict", "--config", str(config), "--ckpt_path", str(checkpoint), "--data.root", str(root),
                     "--data.predict_path", str(bad), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert str(bad) in err and "not a readable image" in err
