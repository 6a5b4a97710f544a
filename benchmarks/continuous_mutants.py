"""What the short real-MNIST tests of NoProp-CT/FM score when one equation is broken.

    python benchmarks/continuous_mutants.py --data-root ../shared/datasets

Same setup as tests/test_mnist_real.py (seed 0, 200 batches of 64, Adam lr 1e-3 wd 1e-3, nearest-embedding
readout, 100 inference steps, first 1,000 test images); each row patches one line of the maths.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_noprop.data import ImageDataModule  # noqa: E402
from lightning_noprop.diffusion import mix_embeddings  # noqa: E402
from lightning_noprop.module import LocalLearningModule  # noqa: E402
from lightning_noprop.strategies import NoPropCT, NoPropFM  # noqa: E402


def ct_snr_not_derivative(s: NoPropCT) -> None:
    s.snr_prime = lambda t: s.noise_schedule.snr(t)


def ct_time_reversed_in_inference(s: NoPropCT) -> None:
    denoise = s.denoise
    s.denoise = lambda x, z, t, W, f=None: denoise(x, z, t if s.training else 1 - t, W, f)


def ct_no_softmax(s: NoPropCT) -> None:
    s.denoise = lambda x, z, t, W, f=None: mix_embeddings(s.network(x, z, t), W)


def fm_target_u(s: NoPropFM) -> None:
    loss = s.loss

    def patched(x, y, t=None, z_0=None):
        z_0 = torch.randn_like(s.embedding(y)) if z_0 is None else z_0
        return loss(x, y, t, torch.zeros_like(z_0) + 0 * z_0)  # path from 0: target u_y, not u_y - z_0

    s.loss = patched


def fm_softmax_velocity(s: NoPropFM) -> None:
    s.velocity = lambda x, z, t, W, f=None: mix_embeddings(
        s.network.from_image_features(s.network.image_encoder(x) if f is None else f, z, t).softmax(-1), W
    )


CASES = {
    "NoProp-CT, correct": (lambda: NoPropCT(readout="nearest", inference_steps=100), None),
    "NoProp-CT, SNR(t) instead of SNR'(t)": (lambda: NoPropCT(readout="nearest", inference_steps=100), ct_snr_not_derivative),
    "NoProp-CT, time reversed at inference": (lambda: NoPropCT(readout="nearest", inference_steps=100), ct_time_reversed_in_inference),
    "NoProp-CT, no softmax in u_hat": (lambda: NoPropCT(readout="nearest", inference_steps=100), ct_no_softmax),
    "NoProp-FM, correct": (lambda: NoPropFM(inference_steps=100), None),
    "NoProp-FM, z_0 = 0 in training (target u_y)": (lambda: NoPropFM(inference_steps=100), fm_target_u),
    "NoProp-FM, softmax in v_hat": (lambda: NoPropFM(inference_steps=100), fm_softmax_velocity),
}


def run(root: str, make, mutate) -> float:
    seed_everything(0, verbose=False)
    data = ImageDataModule(root=root, download=False, batch_size=64, val_size=0, train_size=64 * 200, test_size=1000)
    strategy = make()
    module = LocalLearningModule(strategy, optimizer=partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-3),
                                 train_accuracy_every_n_steps=0)  # fmt: skip
    if mutate is not None:
        mutate(strategy)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(module, data)
    torch.manual_seed(1)
    (metrics,) = trainer.test(module, data, verbose=False)
    return metrics["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets")
    args = parser.parse_args()
    print("| variant | test acc (1,000 images) |\n|---|---|")
    for name, (make, mutate) in CASES.items():
        print(f"| {name} | {run(args.data_root, make, mutate):.3f} |", flush=True)


if __name__ == "__main__":
    main()
