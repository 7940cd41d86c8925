"""The Ray actor that runs trials.

One actor per slot, reused for every trial the slot takes: the Python process, the torch
import and the datasets (cached per process by ``tasks.data``) are paid once per slot, not
once per trial. The actor is threaded (``max_concurrency=2``) so that ``stop`` can arrive
while ``run`` is training; ``run`` checks for it after every event it yields, so a pruned or
cancelled trial stops within one reporting step.
"""

from __future__ import annotations

import socket
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

    def __init__(self, num_threads: int, task_modules: tuple[str, ...] = ()) -> None:
        import os

        import torch

        from tasks import registry

        torch.set_num_threads(num_threads)
        registry.load_plugins(task_modules)
        self._stop: set[int] = set()
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
        from tasks import registry

        self._stop.discard(trial_index)
        try:
            task = registry.get(task_name)
            spec = task.spec.model_validate(config)
            events = task.run(spec, upstream=upstream) if task.upstream else task.run(spec)
            for event in events:
                yield event
                if trial_index in self._stop:
                    events.close()
                    yield Stopped()
                    return
        except Exception as e:  # noqa: BLE001 - any error of the trial is reported, not raised
            yield Failure(type(e).__name__, str(e) or type(e).__name__, traceback.format_exc())
