"""The Ray actor that runs trials.

One actor per slot, reused for every trial the slot takes: the Python process, the torch
import and the datasets (cached per process by ``tasks.data``) are paid once per slot, not
once per trial. The actor is threaded (``max_concurrency=2``) so that ``stop`` can arrive
while ``run`` is training; ``run`` checks for it after every event it yields, so a pruned or
cancelled trial stops within one reporting step.

The task runs in a thread of its own and hands its events over a queue; the actor's
``run`` waits on that queue with a short timeout, so between two events of the task (an
epoch can be minutes) it still samples system metrics (:mod:`orchestrator.sysmetrics`)
and enforces ``resources.memory_mb`` (:mod:`orchestrator.memory`).
"""

from __future__ import annotations

import queue
import socket
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class Failure:
    """A trial raised: the error's type, message and traceback."""

    error_type: str
    message: str
    traceback: str
    #: The worker process is unfit for another trial (the trial's thread could not be
    #: stopped and still holds its memory): the dispatcher replaces the actor.
    restart_worker: bool = False


@dataclass(frozen=True)
class Stopped:
    """The trial was stopped on request (pruned or cancelled) after its last event."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    hostname: str
    pid: int


@ray.remote(max_concurrency=2)
class TrialWorker:
    """Runs trials one after another in a long-lived worker process."""

    def __init__(self, num_threads: int, task_modules: tuple[str, ...] = (),
                 memory_mb: int | None = None) -> None:
        import os

        import torch

        from tasks import registry

        torch.set_num_threads(num_threads)
        registry.load_plugins(task_modules)
        self._stop: set[int] = set()
        self._memory_mb = memory_mb
        self._info = NodeInfo(ray.get_runtime_context().get_node_id(), socket.gethostname(),
                              os.getpid())

    def info(self) -> NodeInfo:
        return self._info

    def stop(self, trial_index: int) -> None:
        self._stop.add(trial_index)

    def run(self, trial_index: int, task_name: str, config: dict,
            upstream: dict[str, bytes] | None = None) -> Iterator[object]:
        """Yield the trial's events; a raised error becomes a :class:`Failure` event.

        ``upstream`` (resolved by Ray from an object ref) holds the artifacts of the run
        the task needs first, for tasks registered with an ``upstream``.
        """
        from orchestrator.memory import MemoryWatchdog
        from orchestrator.sysmetrics import SystemSampler

        self._stop.discard(trial_index)
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        thread = threading.Thread(target=self._produce, name=f"trial-{trial_index}",
                                  args=(trial_index, task_name, config, upstream, events),
                                  daemon=True)
        sampler, watchdog = SystemSampler(), MemoryWatchdog(self._memory_mb)
        thread.start()
        while True:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                event = None
            if event is _DONE:
                break
            if event is not None:
                yield event
            sample = sampler.poll()
            if sample is not None:
                yield sample
            over = watchdog.check()
            if over is not None:
                # The thread cannot be killed; ask it to stop at its next event, and have
                # the dispatcher replace this process, which frees the memory for sure.
                self._stop.add(trial_index)
                yield Failure("MemoryLimitExceeded", over, "", restart_worker=True)
                return

    def _produce(self, trial_index: int, task_name: str, config: dict,
                 upstream: dict[str, bytes] | None, events: queue.SimpleQueue) -> None:
        """Run the task in this thread, putting its events (then ``_DONE``) on ``events``."""
        from tasks import registry

        try:
            task = registry.get(task_name)
            spec = task.spec.model_validate(config)
            gen = task.run(spec, upstream=upstream) if task.upstream else task.run(spec)
            for event in gen:
                events.put(event)
                if trial_index in self._stop:
                    gen.close()
                    events.put(Stopped())
                    return
        except Exception as e:  # noqa: BLE001 - any error of the trial is reported, not raised
            events.put(Failure(type(e).__name__, str(e) or type(e).__name__,
                               traceback.format_exc()))
        finally:
            events.put(_DONE)


_DONE = object()  # end of a trial's event queue
