"""A training loader that resumes within an epoch: Lightning's ``state_dict``/``load_state_dict`` interface for
dataloaders, on the seeded, per-epoch training order of ``DistributedSampler``."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (the order drawn from the seed and the epoch alone) whose next pass can begin after the
    first ``skip_batches`` batches of its epoch: those an interrupted run had already trained.

    ``len()`` stays the whole epoch's, so Lightning counts the resumed epoch's batches from where it stopped.

    Args:
        batch_size: the loader's batch size (the sampler skips ``skip_batches * batch_size`` indices).
    """

    def __init__(self, *args: Any, batch_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size
        self.skip_batches = 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip_batches = self.skip_batches, 0  # once: the epoch after it starts from its first batch
        indices = list(super().__iter__())
        return iter(indices[skip * self.batch_size :])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler`` that Lightning saves and restores with the fit loop: its state is the
    number of the current epoch's batches already trained, which a resumed run skips.

    Lightning's fetcher reads a batch ahead, so the loader cannot count what was trained; ``batches_trained`` tells it
    (the trainer's count of this epoch's processed batches).

    A pass draws its workers' base seed from the loader's own generator (seeded from the sampler's seed and epoch;
    persistent workers keep their first pass's), not from the global one: the global generator draws the augmentation
    and validation's noise, and a run resumed within an epoch begins its pass after restoring it, where the
    uninterrupted run began it before saving it. The workers themselves draw nothing (they index tensors).

    Args:
        batches_trained: returns how many of the current epoch's batches have been trained (0 at an epoch's end:
            the next pass starts an epoch from its first batch).
    """

    def __init__(self, *args: Any, batches_trained: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.batches_trained = batches_trained

    def __iter__(self) -> Any:
        if isinstance(self.sampler, DistributedSampler):
            self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"batches_trained": self.batches_trained()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Called by Lightning's fit loop, before its first pass, when a run resumes within an epoch."""
        if isinstance(self.sampler, ResumableSampler):  # Lightning's overfit_batches puts in a sequential one
            self.sampler.skip_batches = int(state["batches_trained"])


def ignore_stop_signals(worker_id: int) -> None:
    """In each loader worker: ignore Ctrl-C and SIGTERM, which a terminal or a scheduler sends to the whole process
    group. The main process acts on them at a batch's end (``LatestCheckpoint``) and still needs its workers then;
    it shuts them down itself, and torch stops a worker whose main process has died."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
