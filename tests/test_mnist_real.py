"""Each NoProp variant, with the paper's network and optimizer, trained briefly on real MNIST.

These budgets (~1 minute of CPU for DT, ~20 s for CT/FM on 2 cores) are far too short for the linear head
(spec: "the head, not the blocks, limits short runs"; it is still near chance here), so the models read out
with the nearest class embedding (``readout="nearest"``), which measures the denoising network and its sampler
themselves. Chance is 10%. Measured accuracies and what broken equations score are in benchmarks/RESULTS.md.

NoProp-DT: the correct code reaches 0.844; z_t instead of z_{t-1} in Eq. 8 0.742, swapped a_t/b_t in Eq. 3
0.796, no softmax in u_hat 0.673: all below the threshold. alpha_bar u instead of sqrt(alpha_bar) u in q(z_t|y)
still reaches 0.865 (the blocks lean on the image); the moment test in tests/test_diffusion.py catches that one.
"""

from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from lightning_noprop.data import ImageDataModule
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.nn import ResNet
from lightning_noprop.strategies import BWBPF, NoPropCT, NoPropDT, NoPropFM

from .helpers import trainer


def _fit_and_test(root, strategy, optimizer, batches: int, augment: bool = False) -> float:
    seed_everything(0, verbose=False)
    data = ImageDataModule(root=str(root), download=False, batch_size=64, val_size=0, train_size=64 * batches,
                           test_size=1000, augment=augment)  # fmt: skip
    module = LocalLearningModule(strategy, optimizer=optimizer, train_accuracy_every_n_steps=0)
    fit_trainer = trainer(limit_val_batches=0)
    fit_trainer.fit(module, data)
    torch.manual_seed(1)
    (metrics,) = fit_trainer.test(module, data, verbose=False)
    print(f"{type(strategy).__name__} MNIST subset test accuracy: {metrics['test/acc']:.4f}")
    return metrics["test/acc"]


def test_noprop_dt_learns_an_mnist_subset(mnist_root):
    accuracy = _fit_and_test(mnist_root, NoPropDT(num_blocks=10, readout="nearest", inference_noise=True),
                             partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3), batches=60)  # fmt: skip
    assert accuracy > 0.80


# CT/FM: Table 3's Adam (coupled L2), 200 batches of 64, inference on a 100-step grid (the fit takes ~18 s).
# CT's threshold: at this budget its accuracy spreads over 0.43-0.72 with the seed and the noise draws (28 runs,
# RESULTS.md section 17), so 0.45 asks for clear learning; without the softmax in u_hat CT scores 0.275 (section 4).
@pytest.mark.parametrize(
    ("strategy", "threshold"),
    [
        (lambda: NoPropCT(readout="nearest", inference_noise=True, inference_steps=100), 0.45),
        (lambda: NoPropFM(inference_steps=100), 0.75),
    ],
    ids=["noprop_ct", "noprop_fm"],
)
def test_continuous_variants_learn_an_mnist_subset(mnist_root, strategy, threshold):
    accuracy = _fit_and_test(mnist_root, strategy(), partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-3), batches=200)
    assert accuracy > threshold


def test_bwbpf_learns_an_mnist_subset(mnist_root):
    """BWBPF's pipeline (CIFAR-stem ResNet-18 at width 16, K = 4, SGD 0.1 momentum 0.9 wd 5e-4, crop + flip) on
    28x28 MNIST, 200 batches of 64 (~27 s). At width 16 the final head reached 0.840 on a 2-core AMD EPYC (AVX512)
    host (2026-12-03; chance 0.10). At width 32 (~70 s, the suite's budget before) it had reached 0.882, 0.638 and
    0.390 on three 2-core hosts: at SGD lr 0.1 this short a run lands far apart on CPUs whose kernels round
    differently, so the threshold asks for clear learning, three times chance, not a particular figure."""
    accuracy = _fit_and_test(mnist_root, BWBPF(ResNet(18, width=16), num_blocks=4),
                             partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), batches=200,
                             augment=True)  # fmt: skip
    assert accuracy > 0.30
