"""Checkpoint-on-interrupt, shared by every training loop.

Both loops (``train lm``, ``train control``) install :class:`StopOnSignal` around their main
loop and poll :attr:`StopOnSignal.requested` at each step boundary: the first SIGINT (Ctrl-C)
or SIGTERM only sets a flag, so the loop finishes the step it is in, writes a checkpoint and
returns; ``--resume`` then continues exactly. A second signal raises ``KeyboardInterrupt`` at
once (for a user who does not want to wait for the step to end). A crash or ``kill -9`` cannot
be caught: there the loop's periodic checkpoints are what ``--resume`` continues from.

Signal handlers can only be installed from the main thread; elsewhere (a notebook's worker
thread, a test runner thread) the context manager does nothing and ``requested`` stays False.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopOnSignal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Turn SIGINT/SIGTERM into a stop request polled at step boundaries.

    Use::

        with StopOnSignal() as stop:
            while not done:
                step()
                if stop.requested:
                    save_checkpoint()
                    break
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
