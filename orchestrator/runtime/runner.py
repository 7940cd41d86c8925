"""The one trial runner: every trial, single-process or a rank of a data-parallel gang.

A worker process (:mod:`orchestrator.runtime.worker`) owns one :class:`TrialRunner` and
hands it trials one after another. The runner runs the task's generator in a thread of its
own and puts its events on a queue; the caller's loop waits on that queue with a short
timeout, so between two events of the task (an epoch can be minutes) it still samples
system metrics (:mod:`orchestrator.runtime.sysmetrics`), enforces ``resources.memory_mb``
(:mod:`orchestrator.runtime.memory`) and sees stop requests. One place does all four, for
every kind of trial.

Data-parallel ranks. The stop decision after each event is a collective
(``tasks.distributed.any_rank``) taken in the task's own thread, in step with the task's
other collectives, so every rank stops at the same step or none does (a rank that stopped
alone would leave the others blocked in a collective). A rank over its memory limit asks
for a stop like a prune does; its own stream ends with the memory failure.
"""

from __future__ import annotations

import inspect
import queue
import threading
import traceback
from collections.abc import Generator, Iterator
from typing import Any, cast

from orchestrator.core.results import Failure, Stopped
from orchestrator.runtime.memory import MemoryWatchdog
from orchestrator.runtime.sysmetrics import SystemSampler
from tasks import distributed, registry

#: How often the caller's loop wakes between two events of the task.
POLL_S = 0.2


def accepts(fn: Any, keyword: str) -> bool:
    """Whether a task's ``run`` takes ``keyword`` (``dist``: it is data-parallel aware)."""
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class TrialRunner:
    """Runs trials one at a time in this process, with a memory limit and system metrics.

    Args:
        memory_mb: ``resources.memory_mb`` of the trials (None: no limit).
        rank: This process's rank in its gang (0 for a single worker).
        dist: The gang's ``tasks.distributed`` context, kept across trials (None alone).
        sample: Whether to stream system metrics (only the rank that reports needs them).
    """

    def __init__(
        self, memory_mb: int | None = None, rank: int = 0, dist: Any = None, sample: bool = True
    ) -> None:
        self.memory_mb, self.rank, self.dist, self.sample = memory_mb, rank, dist, sample
        self._stop: set[int] = set()

    def stop(self, trial_index: int) -> None:
        """Ask the trial to stop after its next event (pruned or cancelled)."""
        self._stop.add(trial_index)

    def run(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None = None,
        resume: bytes | None = None,
    ) -> Iterator[object]:
        """The trial's events, then possibly :class:`Stopped` or a :class:`Failure`.

        ``resume`` (a Checkpoint's state of an earlier attempt) goes to a task that accepts
        it, which then continues after that checkpoint's step (``tasks.events``).

        A raised error of the task becomes a ``Failure`` event; going over the memory limit
        ends the stream with ``Failure("MemoryLimitExceeded", ..., restart_worker=True)``.
        """
        self._stop.discard(trial_index)
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._produce,
            name=f"trial-{trial_index}",
            args=(trial_index, task_name, config, upstream, resume, events),
            daemon=True,
        )
        sampler = SystemSampler() if self.sample else None
        watchdog = MemoryWatchdog(self.memory_mb)
        thread.start()
        while True:
            try:
                event = events.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            if event is _DONE:
                return
            if event is not None:
                yield event
            sample = sampler.poll() if sampler is not None else None
            if sample is not None:
                yield sample
            over = watchdog.check()
            if over is not None:
                # A thread cannot be killed: ask it to stop at its next event, and have the
                # dispatcher replace this process, which frees the memory for sure.
                self._stop.add(trial_index)
                yield Failure(
                    "MemoryLimitExceeded",
                    over if self.dist is None else f"rank {self.rank}: {over}",
                    "",
                    restart_worker=True,
                )
                return

    def _produce(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None,
        resume: bytes | None,
        events: queue.SimpleQueue[object],
    ) -> None:
        """Run the task in this thread, putting its events (then ``_DONE``) on ``events``."""
        try:
            task = registry.get(task_name)
            spec = task.spec.model_validate(config)
            kwargs: dict[str, Any] = {"upstream": upstream} if task.upstream else {}
            if resume is not None and registry.accepts(task.run, "resume"):
                kwargs["resume"] = resume
            ctx = None
            if self.dist is not None and accepts(task.run, "dist"):
                kwargs["dist"] = ctx = self.dist
            elif self.rank != 0:
                return  # not data-parallel: rank 0 runs it alone, the others idle
            # A task is a generator function: close() runs its cleanup (finally blocks).
            gen = cast(Generator[object, None, None], task.run(spec, **kwargs))
            for event in gen:
                events.put(event)
                if distributed.any_rank(trial_index in self._stop, ctx):
                    gen.close()
                    events.put(Stopped())
                    return
        except Exception as e:  # noqa: BLE001 - any error of the trial is reported, not raised
            message = str(e) or type(e).__name__
            if self.dist is not None:
                message = f"rank {self.rank}: {message}"
            events.put(Failure(type(e).__name__, message, traceback.format_exc()))
        finally:
            events.put(_DONE)


_DONE = object()  # end of a trial's event queue
