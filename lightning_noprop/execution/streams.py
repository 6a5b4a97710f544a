"""One random stream per block and training batch, so a block draws the same numbers wherever it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import ContextManager

import torch

_MASK = (1 << 63) - 1


def stream_seed(run_seed: int, block: int, batch: int, replica: int = 0) -> int:
    """A 63-bit seed for (run, block, batch, data replica): splitmix64's finaliser over the four counters."""
    value = (run_seed * 0x9E3779B97F4A7C15 + (block + 1) * 0xBF58476D1CE4E5B9 + (batch + 1) * 0x94D049BB133111EB
             + replica * 0xD6E8FEB86659FD93) & _MASK  # fmt: skip
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


class BlockStreams:
    """Seeds the random draws of block ``b`` on training batch ``i`` from (run seed, b, i) alone.

    Inside ``stream(b)`` the global torch generators (CPU and the current CUDA device) are re-seeded and restored on
    exit, so the block's noise samples and dropout masks do not depend on which process trains it, which blocks ran
    before it, or how many numbers anything else drew: one process and ``block_parallel`` on N ranks give the same
    updates, and a resumed run the same as an uninterrupted one. Outside a training batch (``batch`` is None) a
    stream is a no-op and draws come from the global generator, as validation and inference expect.

    Args:
        run_seed: the run's seed (``seed_everything``); recorded in checkpoints.

    ``replica`` is the data-parallel rank (DDP: each rank trains on other images, so its draws differ too; 0 in one
    process and under ``block_parallel``, where every rank sees the same images).
    """

    def __init__(self, run_seed: int) -> None:
        self.run_seed = int(run_seed)
        self.replica = 0
        self.batch: int | None = None

    @contextmanager
    def training_batch(self, batch: int) -> Iterator[None]:
        """Streams seeded for training batch ``batch`` (the count of batches trained before it) inside the block."""
        self.batch = batch
        try:
            yield
        finally:
            self.batch = None

    def seed(self, block: int, batch: int) -> int:
        """The seed of ``block``'s stream on training batch ``batch`` (what ``stream`` seeds the generators with)."""
        return stream_seed(self.run_seed, block, batch, self.replica)

    def stream(self, block: int, batch: int | None = None) -> ContextManager[None]:
        """The stream of ``block`` on ``batch`` (default: the current training batch); a no-op outside training."""
        batch = self.batch if batch is None else batch
        if batch is None:
            return nullcontext()
        return self._seeded(self.seed(block, batch))

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # Only an initialised CUDA device: torch.manual_seed would queue a seeding for one initialised later. Not
        # is_available(): under Lightning (PYTORCH_NVML_BASED_CUDA_CHECK=1) it loads NVML at every call until CUDA is
        # initialised, 42 us a block and batch on a CPU host with a CUDA build of torch (0.4 ms a batch of ten blocks).
        cuda = torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            yield
