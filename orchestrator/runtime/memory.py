"""The per-trial memory limit (``resources.memory_mb``), enforced in the worker.

Ray's ``memory=`` actor option only *reserves* memory when it places the actor; nothing
stops the process from using more. Ray's own memory monitor acts only when the whole node
is nearly full (95 % by default) and then kills whichever worker it picks, and the kernel's
OOM killer is worse still. So the worker samples its resident memory while a trial runs
and ends the trial with a ``MemoryLimitExceeded`` failure once it is over the limit: the
trial that used the memory is the one that fails, with a message that says so.

The limit applies to the worker process and its children (data-loader workers, DDP
ranks), as the OS counts it. Sampling every ``interval_s`` makes it a soft limit: a trial
that allocates faster than that can overshoot by what it allocates between two samples.
"""

from __future__ import annotations

import time

from orchestrator.runtime.sysmetrics import ProcessTree

MB = 2**20  # resources.memory_mb counts MiB, like Ray's memory resource


class MemoryLimitExceeded(RuntimeError):
    """The trial's worker went over ``resources.memory_mb``."""


class MemoryWatchdog:
    """Checks the process tree's RSS against ``limit_mb`` at most every ``interval_s``."""

    def __init__(self, limit_mb: int | None, interval_s: float = 0.2) -> None:
        self.limit_mb = limit_mb
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._tree = ProcessTree()
        self._next = 0.0

    def check(self) -> str | None:
        """The failure message once RSS is over the limit (``rss 812 MB > limit 500 MB``),
        else None. Cheap to call often: it samples only when ``interval_s`` has passed."""
        if not self.limit_mb:
            return None
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        rss_mb = self._tree.rss() / MB
        self.peak_mb = max(self.peak_mb, rss_mb)
        if rss_mb > self.limit_mb:
            return (
                f"out of memory: rss {rss_mb:.0f} MB > limit {self.limit_mb} MB "
                f"(resources.memory_mb)"
            )
        return None


def is_out_of_memory(err: BaseException) -> bool:
    """True when Ray says a worker died for lack of memory: its memory monitor killed it
    (``OutOfMemoryError``, or an actor error whose reason is the node running low on memory).

    A plain SIGKILL is *not* taken for one: Ray's message for any unexpected exit lists
    "killed by SIGKILL by OOM killer" among possible causes, so that wording proves nothing.
    """
    from ray.exceptions import OutOfMemoryError

    if isinstance(err, OutOfMemoryError):
        return True
    text = str(err).lower()
    return "low on memory" in text or "killed by the memory monitor" in text
