"""NoProp-DT, the paper's blocks and optimizer (AdamW lr 1e-3), trained briefly on real MNIST.

60 batches of 64 (~1 minute on 2 cores) is far too short for the linear head (spec: "the head, not the blocks,
limits short runs"; it is still at chance here), so the model reads out with the nearest class embedding
(``readout="nearest"``), which measures the blocks and the Eq. 3 chain themselves. Chance is 10%.

Measured on this budget (benchmarks/RESULTS.md): the correct code reaches 0.844; z_t instead of z_{t-1} in
Eq. 8 0.742, swapped a_t/b_t in Eq. 3 0.796, no softmax in u_hat 0.673: all below the threshold. alpha_bar u
instead of sqrt(alpha_bar) u in q(z_t|y) still reaches 0.865 (the blocks lean on the image); the moment test in
tests/test_diffusion.py is what catches that one.
"""

from functools import partial

import torch
from lightning.pytorch import seed_everything

from lightning_noprop.data import ImageDataModule
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.strategies import NoPropDT

from .helpers import trainer

THRESHOLD = 0.80


def test_noprop_dt_learns_an_mnist_subset(mnist_root):
    seed_everything(0, verbose=False)
    data = ImageDataModule(root=str(mnist_root), download=False, batch_size=64, val_size=0, train_size=3840,
                           test_size=1000)  # fmt: skip
    module = LocalLearningModule(
        NoPropDT(num_blocks=10, readout="nearest", inference_noise=True),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3),
        train_accuracy_every_n_steps=0,
    )
    fit_trainer = trainer(limit_val_batches=0)
    fit_trainer.fit(module, data)
    torch.manual_seed(1)
    (metrics,) = fit_trainer.test(module, data, verbose=False)
    print(f"MNIST subset test accuracy: {metrics['test/acc']:.4f}")
    assert metrics["test/acc"] > THRESHOLD
