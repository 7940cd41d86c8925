"""The Ray actors that run trials: one per slot, or one per rank of a data-parallel gang.

Each actor is a long-lived worker process reused for every trial its slot takes: the
Python process, the torch import and the datasets (cached per process by ``tasks.data``)
are paid once per slot, not once per trial. Both kinds hand their trials to the one
:class:`~orchestrator.runtime.runner.TrialRunner`, so the memory limit, system metrics,
stop requests and event streaming are the same for every trial. The actors are threaded
(``max_concurrency=2``) so that ``stop`` can arrive while ``run`` is streaming.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import ray

from orchestrator.core.results import Failure, NodeInfo

#: How long a trial's call waits for its rank to have joined the process group.
JOIN_TIMEOUT_S = 300.0


def _setup(num_threads: int, task_modules: tuple[str, ...]) -> NodeInfo:
    # torch and the task modules are imported here, in the worker, never in the driver.
    import torch

    from tasks import registry

    torch.set_num_threads(num_threads)
    registry.load_plugins(task_modules)
    return NodeInfo(ray.get_runtime_context().get_node_id(), socket.gethostname(), os.getpid())


class TrialWorker:
    """A single-worker slot: runs trials one after another in one process."""

    def __init__(
        self, num_threads: int, task_modules: tuple[str, ...] = (), memory_mb: int | None = None
    ) -> None:
        from orchestrator.runtime.runner import TrialRunner  # imports torch: worker side only

        self._info = _setup(num_threads, task_modules)
        self._runner = TrialRunner(memory_mb)

    def info(self) -> NodeInfo:
        return self._info

    def load_tasks(self, task_modules: tuple[str, ...]) -> None:
        """Import a sweep's own task modules (a warm worker of ``orch up`` serves many)."""
        from tasks import registry  # as in _setup: the task modules load in the worker

        registry.load_plugins(task_modules)

    def stop(self, trial_index: int) -> None:
        self._runner.stop(trial_index)

    def run(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None = None,
        resume: bytes | None = None,
    ) -> Iterator[object]:
        """The trial's events, streamed. ``upstream`` (resolved by Ray from an object ref)
        holds the artifacts of the run the task needs first, for tasks with an upstream;
        ``resume`` the state of a checkpoint of an earlier attempt to continue from."""
        yield from self._runner.run(trial_index, task_name, config, upstream, resume)


class GroupWorker:
    """One rank of a data-parallel gang; runs its slot's trials one after another."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        num_threads: int,
        gpus: float,
        task_modules: tuple[str, ...] = (),
        memory_mb: int | None = None,
    ) -> None:
        self._info = _setup(num_threads, task_modules)
        self.rank, self.world_size, self.gpus = rank, world_size, gpus
        self.memory_mb = memory_mb
        self._store: Any = None
        self._runner: Any = None
        # The actor is threaded: a trial's call may start before ``join`` has returned in
        # the other thread, and a rank without its group would train alone (and rank 0
        # would wait for it forever). Trials wait for this first.
        self._joined = threading.Event()

    def open_store(self) -> tuple[str, int]:
        """Rank 0: start the rendezvous store; its address for the other ranks."""
        from tasks import distributed  # imports torch: worker side only

        host = ray.util.get_node_ip_address()
        self._store, port = distributed.open_store(host)
        return host, port

    def join(self, address: tuple[str, int]) -> NodeInfo:
        """Join the gang's process group (blocks until every rank has); this rank's node."""
        from orchestrator.runtime.runner import TrialRunner  # imports torch: worker side only
        from tasks import distributed

        backend = distributed.backend_for(self.gpus)
        ctx = distributed.join(
            address[0], address[1], self.rank, self.world_size, backend, store=self._store
        )
        # Only rank 0 reports, so only it samples system metrics.
        self._runner = TrialRunner(self.memory_mb, self.rank, ctx, sample=self.rank == 0)
        self._joined.set()
        return self._info

    def node(self, *joined: NodeInfo) -> NodeInfo:
        """This rank's node; called with every rank's ``join`` ref, so it answers only
        once the whole gang has formed its group."""
        return self._info

    def stop(self, trial_index: int) -> None:
        if self._runner is not None:
            self._runner.stop(trial_index)

    def run(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None = None,
        resume: bytes | None = None,
    ) -> Iterator[object]:
        """Rank 0: the trial's events, streamed."""
        yield from self._events(trial_index, task_name, config, upstream, resume)

    def run_rank(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None = None,
        resume: bytes | None = None,
    ) -> Failure | None:
        """Ranks > 0: run the trial in step with rank 0, discarding its events; its error."""
        failure = None
        for event in self._events(trial_index, task_name, config, upstream, resume):
            if isinstance(event, Failure):
                failure = event
        return failure

    def _events(
        self,
        trial_index: int,
        task_name: str,
        config: dict[str, Any],
        upstream: dict[str, bytes] | None,
        resume: bytes | None,
    ) -> Iterator[object]:
        if not self._joined.wait(JOIN_TIMEOUT_S):
            yield Failure(
                "RuntimeError",
                f"rank {self.rank} did not join its process group in {JOIN_TIMEOUT_S:.0f}s",
                "",
            )
            return
        yield from self._runner.run(trial_index, task_name, config, upstream, resume)


# Ray's actor classes, made here rather than with the decorator: the decorated class's
# ``.remote``/``.options`` are invisible to type checkers. The process title stays the
# class's name (``ray::TrialWorker``), which the tests look for.
TrialWorkerActor: Any = ray.remote(max_concurrency=2)(TrialWorker)
GroupWorkerActor: Any = ray.remote(max_concurrency=2)(GroupWorker)
