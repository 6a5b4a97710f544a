"""Runs tiny fits in one process or as N block-parallel ranks (gloo on CPU), recording what crosses processes.

``launch`` starts the ranks as torchrun would (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set, so Lightning's
environment creates no processes of its own); each rank runs the same list of jobs and rank 0 writes each job's
checkpoint and the collectives counted inside the training steps.
"""

from __future__ import annotations

import faulthandler
import os
import socket
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_noprop.data import ImageDataModule
from lightning_noprop.execution import BlockParallelStrategy
from lightning_noprop.module import LocalLearningModule
from lightning_noprop.nn import LearnedEmbedding, ResNet
from lightning_noprop.strategies import BWBPF, NoPropDT

#: torch.distributed calls that move data between processes, and the argument holding the tensor(s).
COLLECTIVES = ("all_reduce", "broadcast", "isend", "irecv", "send", "recv", "all_gather", "reduce", "reduce_scatter",
               "all_to_all", "broadcast_object_list", "all_gather_object", "gather", "scatter", "barrier")  # fmt: skip


def build(model: str, backward_mode: str = "per_block") -> tuple[LocalLearningModule, ImageDataModule]:
    """A tiny model and synthetic data: "dt" (3 blocks, a learned embedding), "bwbpf2"/"bwbpf4" (ResNet-18, width
    4, cut into 2 or 4 blocks)."""
    seed_everything(0, verbose=False)
    if model == "dt":
        strategy, dataset = NoPropDT(num_blocks=3, width=16, embedding=LearnedEmbedding(8)), "mnist"
    else:
        strategy, dataset = BWBPF(ResNet(18, stem="cifar", width=4), num_blocks=int(model[-1])), "cifar10"
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3)
    image_shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    module = LocalLearningModule(strategy, num_classes=10, image_shape=image_shape, optimizer=optimizer,
                                 backward_mode=backward_mode, train_accuracy_every_n_steps=0)  # fmt: skip
    data = ImageDataModule(dataset, synthetic=True, synthetic_size=110, val_size=8, batch_size=16)  # 6 x 16 + 6
    return module, data


class CountCollectives(Callback):
    """Records every torch.distributed call made inside a training step: (batch, name, bytes)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, int]] = []
        self.batch: int | None = None
        self._originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
        for name, original in self._originals.items():
            setattr(dist, name, self._counted(name, original))

    def _counted(self, name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.batch is not None:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                self.records.append((self.batch, name, sum(t.numel() * t.element_size() for t in tensors)))
            return original(*args, **kwargs)

        return call

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batch = trainer.fit_loop.total_batch_idx

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch = None

    def restore(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)


def run_job(job: dict[str, Any], world_size: int, out_dir: Path) -> None:
    """Fit ``job["model"]`` for ``job["epochs"]`` epochs (from ``job.get("resume")``) and save its checkpoint."""
    module, data = build(job["model"], job.get("backward_mode", "per_block"))
    counter = CountCollectives()
    parallel = world_size > 1 or job.get("block_parallel", False)
    # One thread everywhere, so that every process runs the same kernels (a thread count changes their rounding).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(accelerator=job.get("accelerator", "cpu"), devices=world_size, strategy=BlockParallelStrategy() if parallel else "auto",
                      precision=job.get("precision", "32-true"), max_epochs=job["epochs"],
                      max_steps=job.get("max_steps", -1), limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[counter])  # fmt: skip
    try:
        trainer.fit(module, data, ckpt_path=job.get("resume"))
    finally:
        counter.restore()
        torch.set_num_threads(threads)
    trainer.save_checkpoint(out_dir / f"{job['name']}.ckpt")
    if trainer.global_rank == 0:
        torch.save({"records": counter.records, "global_step": trainer.global_step}, out_dir / f"{job['name']}.comm")


def _rank(local_rank: int, world_size: int, port: int, jobs: list[dict[str, Any]], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), NODE_RANK="0",
                      LOCAL_RANK=str(local_rank), RANK=str(local_rank))  # fmt: skip
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(300, exit=True)  # a deadlocked rank fails the test (with its stack), not CI
    for job in jobs:
        run_job(job, world_size, Path(out_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(jobs: list[dict[str, Any]], world_size: int, out_dir: Path) -> None:
    """Run ``jobs`` on ``world_size`` block-parallel ranks, each a fresh process, one thread each."""
    mp.start_processes(_rank, args=(world_size, free_port(), jobs, str(out_dir)), nprocs=world_size, join=True,
                       start_method="spawn")  # fmt: skip


def load(out_dir: Path, name: str) -> dict[str, Any]:
    return torch.load(out_dir / f"{name}.ckpt", weights_only=True)
