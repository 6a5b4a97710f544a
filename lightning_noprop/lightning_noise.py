"""Lightning's messages that tell a user of this CLI nothing to act on, quieted for the CLI's run alone.

Each is quieted only where it is noise: Lightning's own call into torch's deprecated pytree API (a warning per
run that names no option), the model summary's note that it estimates a bf16-mixed model's size at 32 bits, the
litlogger advertisement, and two checkpoint-folder notes, when they describe what the run means to do: an
evaluation's checkpoint callbacks (which write nothing) meeting a training run's folder, and a requeued run
continuing in its own, non-empty folder.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lightning_utilities.core import rank_zero

#: Quieted in every run of the CLI.
ALWAYS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6's _pytree under torch >= 2.10
    r"Precision bf16-mixed is not supported by the model summary",  # the size estimate only; the run is bf16
)
#: An evaluation restores the checkpoint callbacks' state from the checkpoint, whose folder is the training run's.
EVALUATION = (r"The dirpath has changed from",)
#: A run continuing in its own folder (a requeue: fixed version, --ckpt_path last) finds its checkpoints there.
CONTINUATION = (r"Checkpoint directory .* exists and is not empty",)
_TIP = "💡 Tip: For seamless cloud logging"


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


def quiet(messages: tuple[str, ...]) -> None:
    """Ignore the warnings whose message matches one of ``messages`` (regular expressions), until the enclosing
    ``quiet_lightning`` ends."""
    for message in messages:
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """The scope of one CLI run: the ``ALWAYS`` warnings and the litlogger tip quieted; ``quiet`` adds more."""
    tip_logger = rank_zero.log  # the logger of Lightning's rank_zero_info
    drop_tip = _DropTip()
    with warnings.catch_warnings():
        quiet(ALWAYS)
        tip_logger.addFilter(drop_tip)
        try:
            yield
        finally:
            tip_logger.removeFilter(drop_tip)
