"""SIGINT, SIGTERM and SIGHUP during a sweep: a cancel, never a lost write.

Python's default Ctrl-C (and Ray's SIGTERM handler, ``sys.exit``) raise wherever the driver
happens to be, possibly between writing a trial's metrics and its status, so a trial that
ended could stay RUNNING. Here:

* the first signal only sets a flag; the dispatcher sees it at its next turn (every 0.2 s)
  and cancels as ``orch cancel`` does: trials whose result reached the driver are written
  with it, running ones end KILLED, then the parent; the command exits 128 + the signal
  (130, 143, 129);
* a second signal forces the exit: raised at once (but never inside a trial's end being
  written, see :meth:`Signals.shielded`), the sweep marks what it can without waiting for
  the report or Ray, and exits;
* a third exits on the spot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ForcedExit(KeyboardInterrupt):
    """A second signal: stop now, mark what can be marked, skip everything else."""


class Interrupted(KeyboardInterrupt):
    """A signal arrived before the sweep had written anything: nothing to mark."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class Signals:
    """The driver's handler for the three signals (one per process: handlers are)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._shielded = 0
        self._pending = False
        self._saved: dict[int, Any] = {}
        #: Set by the ``orch`` command, whose process exists to run the sweep: the handlers
        #: stay after it (a signal while Ray shuts down at exit must not kill the process
        #: by default action), and a second signal then exits at once.
        self.whole_process = False
        self._active = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def forced(self) -> bool:
        return self.count > 1

    def exit_code(self, default: int) -> int:
        """128 + the first signal's number (the shell's convention), else ``default``."""
        return 128 + self.signum if self.signum is not None else default

    def install(self) -> None:
        """Take the three signals (again: ``ray.init`` sets its own SIGTERM handler)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread; a caller elsewhere keeps its own
        if not self._saved and not self._active:  # a new sweep in this process
            self.signum, self.count, self._pending = None, 0, False
        self._active = True
        for sig in HANDLED:
            previous = signal.signal(sig, self._handle)
            if previous is not self._handle:
                self._saved.setdefault(sig, previous)

    def restore(self) -> None:
        """The handlers from before :meth:`install` (``Client.sweep`` in a notebook); the
        ``orch`` command keeps its own (see :attr:`whole_process`)."""
        self._active = False
        if self.whole_process:
            return
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved.clear()

    def raise_if_requested(self) -> None:
        """Before the sweep's parent run exists there is nothing to mark: just stop."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A write that must be whole (a trial's end: metrics, outcome, status): a forced
        exit waits for it to finish."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
            if not self._shielded and self._pending:
                self._pending = False
                raise ForcedExit()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            return
        if self.count > 2 or not self._active:  # the store is written: nothing to wait for
            os._exit(128 + self.signum)
        if self._shielded:
            self._pending = True
            return
        raise ForcedExit()


#: The process's one handler (signal handlers belong to the process).
SIGNALS = Signals()
