"""Short NoProp-DT run on an MNIST subset: head vs nearest-embedding readout, with and without Eq. 3 noise.

    python benchmarks/short_mnist_probe.py --data-root ../shared/datasets

Trains the paper's NoProp-DT (T = 10, one-hot, AdamW lr 1e-3, wd 1e-3) for one pass over 3,840 training
images (60 batches of 64, seed 0) and prints a markdown row of test accuracies on the first 1,000 test
images. It chose the readout and threshold of tests/test_mnist_real.py (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_noprop.data import ImageDataModule  # noqa: E402
from lightning_noprop.module import LocalLearningModule  # noqa: E402
from lightning_noprop.strategies import NoPropDT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets", help="folder holding MNIST/raw")
    args = parser.parse_args()
    seed_everything(0, verbose=False)
    data = ImageDataModule(root=args.data_root, download=False, batch_size=64, val_size=0, train_size=3840,
                           test_size=1000)  # fmt: skip
    strategy = NoPropDT(num_blocks=10)
    module = LocalLearningModule(strategy, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3),
                                 train_accuracy_every_n_steps=0)  # fmt: skip
    start = time.perf_counter()
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(module, data)  # fmt: skip
    seconds = time.perf_counter() - start
    data.setup("test")
    images, labels = data.test_set.tensors
    images = data.normalize_images(images)
    strategy.eval()
    cells = []
    for noise in (True, False):
        strategy.inference_noise = noise
        torch.manual_seed(1)
        prediction = strategy.predict(images)
        head = (prediction.logits.argmax(1) == labels).float().mean().item()
        nearest = (torch.cdist(prediction.z, strategy.embedding.weight).argmin(1) == labels).float().mean().item()
        cells += [f"{head:.3f}", f"{nearest:.3f}"]
    print("| fit s | head (noise) | nearest (noise) | head (no noise) | nearest (no noise) |")
    print("|---|---|---|---|---|")
    print(f"| {seconds:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
