"""Stopping a training run on Ctrl-C or SIGTERM at the end of the current batch, so that its latest state can be
written and resumed exactly (``LatestCheckpoint``), rather than wherever the signal happened to land."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class TrainingStopped(Exception):
    """``fit`` stopped on a signal after the batch it was training, its latest state written to ``checkpoint``.

    Attributes:
        signal_number: the signal that asked for the stop.
        checkpoint: the last.ckpt holding the state at the stop, or None where nothing was written.
        exit_code: 128 + the signal's number, the shell's convention for a process stopped by a signal.
    """

    def __init__(self, signal_number: int, checkpoint: str | None, where: str) -> None:
        self.signal_number, self.checkpoint, self.exit_code = signal_number, checkpoint, 128 + signal_number
        saved = f"its latest state is in {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"Training stopped by {_NAMES.get(signal_number, signal_number)} {where}; {saved}.")


class StopRequest:
    """SIGINT and SIGTERM handlers that record a request to stop instead of stopping at once; training reads
    ``signal_number`` at its next batch boundary. A second signal does what it did before the handlers were installed
    (Ctrl-C raises KeyboardInterrupt at once)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (signals reach Python's main thread only: elsewhere, nothing is installed)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self.signal_number = None
        for signum in _NAMES:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # an ignored signal (a background job's) stays so
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that ``install`` replaced (idempotent)."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_number is not None:  # asked twice: stop as the previous handler would, at once
            self.restore()
            signal.raise_signal(signum)
            return
        self.signal_number = signum
        sys.stderr.write(f"\n{_NAMES[signum]}: stopping after this batch and writing the latest state to last.ckpt "
                         "(press Ctrl-C again to stop at once, without it).\n")  # fmt: skip
