"""Asynchronous dispatch of trials on Ray core.

A fixed pool of :class:`~orchestrator.worker.TrialWorker` actors (one per slot) pulls
trials from a :class:`TrialSource`. There is no batch barrier: the moment a trial ends,
its slot asks the source for the next one. Trials stream their events back through Ray
streaming generators; the driver waits on all of them at once (``ray.wait``) and hands
each event to a :class:`Listener` (tracking, progress, pruning), so the driver is the only
writer to the tracking store.

Ray Tune was measured at ~3.7 ms x trials of fixed overhead per trial more than actor
reuse on this workload (DEVELOPERS.md), which is why this is Ray core and not Tune.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from orchestrator.errors import SpecError
from orchestrator.specs import Resources, Trial
from orchestrator.worker import Failure, NodeInfo, Stopped, TrialWorker
from tasks.events import Metrics, Summary


class TrialSource(Protocol):
    """Where trials come from: a grid queue, or an Optuna study asked on demand."""

    def next_trial(self) -> Trial | None:
        """The next trial to run, or None when there is none to start now."""

    def exhausted(self) -> bool:
        """True once no trial will ever come again (the sweep can end when none run)."""

    def report(self, trial: Trial, event: Metrics) -> bool:
        """An intermediate result; return True to stop (prune) the trial."""

    def finish(self, trial: Trial, outcome: str, summary: Summary | None) -> None:
        """The trial ended (finished, failed, diverged, pruned or killed)."""

    def retry(self, trial: Trial) -> bool:
        """Queue the trial again after its worker died; False if the source cannot."""


class Listener(Protocol):
    """Receives everything that happens to trials, on the driver."""

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None: ...
    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        """Log the event; return True to stop the trial (pruning)."""
    def trial_ended(self, trial: Trial, outcome: str, summary: Summary | None,
                    failure: Failure | None) -> None: ...
    def trial_retrying(self, trial: Trial, attempt: int, failure: Failure) -> None: ...
    def tick(self) -> bool:
        """Called every loop turn; flush buffers. Return True to cancel the sweep."""


class GridSource:
    """A fixed list of trials, retried trials first."""

    def __init__(self, trials: list[Trial]) -> None:
        self._queue: deque[Trial] = deque(trials)

    def next_trial(self) -> Trial | None:
        return self._queue.popleft() if self._queue else None

    def exhausted(self) -> bool:
        return not self._queue

    def retry(self, trial: Trial) -> bool:
        self._queue.appendleft(trial)
        return True

    def report(self, trial: Trial, event: Metrics) -> bool:
        return False

    def finish(self, trial: Trial, outcome: str, summary: Summary | None) -> None:
        pass


class Cancelled(Exception):
    """The sweep was cancelled (Ctrl-C or ``orch cancel``); running trials were killed."""


@dataclass
class _Running:
    trial: Trial
    slot: int
    attempt: int
    stopping: bool = False
    summary: Summary | None = None
    failure: Failure | None = None
    outcome: str = ""


@dataclass
class Dispatcher:
    """Runs trials from a source on ``slots`` reusable actors."""

    resources: Resources
    max_concurrent: int | None = None
    retries: int = 1
    task_modules: tuple[str, ...] = ()
    poll_s: float = 0.2
    _actors: list[Any] = field(default_factory=list)
    _nodes: list[NodeInfo] = field(default_factory=list)
    _attempts: dict[int, int] = field(default_factory=dict)
    #: Upstream artifacts in the object store, by upstream trial key (put once, shared).
    inputs: dict[str, Any] = field(default_factory=dict)

    def slots_for(self, n_trials: int) -> int:
        """How many trials can run at once on this cluster with these resources."""
        total = ray.cluster_resources()
        cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        if self.resources.gpus > gpus:
            raise SpecError(f"resources.gpus: {self.resources.gpus:g} per trial asked, but the "
                            f"cluster has {gpus:g} GPUs; allowed: 0..{gpus:g}")
        if self.resources.cpus > cpus:
            raise SpecError(f"resources.cpus: {self.resources.cpus:g} per trial asked, but the "
                            f"cluster has {cpus:g} CPUs; allowed: (0, {cpus:g}]")
        n = math.floor(cpus / self.resources.cpus + 1e-9)
        if self.resources.gpus > 0:
            n = min(n, math.floor(gpus / self.resources.gpus + 1e-9))
        return max(1, min(n, n_trials, self.max_concurrent or n))

    def _new_actor(self) -> Any:
        opts: dict[str, Any] = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus}
        if self.resources.memory_mb:
            opts["memory"] = self.resources.memory_mb * 2**20
        threads = max(1, int(self.resources.cpus))
        return TrialWorker.options(**opts).remote(threads, self.task_modules)

    def start(self, n_slots: int) -> None:
        """Create the slots' actors without waiting: their processes boot (torch imports)
        while the driver sets up tracking; :meth:`run` waits for them."""
        self._actors = [self._new_actor() for _ in range(n_slots)]

    def run(self, source: TrialSource, listener: Listener) -> None:
        """Run until the source is exhausted and no trial is running."""
        self._nodes = ray.get([a.info.remote() for a in self._actors])
        free = deque(range(len(self._actors)))
        running: dict[Any, _Running] = {}
        try:
            while True:
                while free:
                    trial = source.next_trial()
                    if trial is None:
                        break
                    self._launch(free.popleft(), trial, running, listener)
                if not running:
                    if source.exhausted():
                        return
                    # A source (Optuna) may have nothing to hand out until others finish.
                    time.sleep(self.poll_s)
                    continue
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=self.poll_s,
                                    fetch_local=True)
                for gen in ready:
                    if self._drain(gen, running, listener, source):
                        free.append(running.pop(gen).slot)
                if listener.tick():
                    raise Cancelled()
        except (KeyboardInterrupt, Cancelled):
            self._kill_all(running, listener, source)
            raise Cancelled() from None

    def _launch(self, slot: int, trial: Trial, running: dict[Any, _Running],
                listener: Listener) -> None:
        attempt = self._attempts[trial.index] = self._attempts.get(trial.index, 0) + 1
        upstream = self.inputs[trial.upstream.key] if trial.upstream else None
        gen = self._actors[slot].run.options(num_returns="streaming").remote(
            trial.index, trial.task, trial.config, upstream)
        running[gen] = _Running(trial, slot, attempt)
        listener.trial_started(trial, attempt, self._nodes[slot])

    def _drain(self, gen: Any, running: dict[Any, _Running], listener: Listener,
               source: TrialSource) -> bool:
        """Consume the generator's ready events; True when the trial is over."""
        state = running[gen]
        while gen.next_ready() or gen.is_finished():
            try:
                event = ray.get(next(gen))
            except StopIteration:
                self._end(state, listener, source)
                return True
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                self._worker_died(state, e, listener, source)
                return True
            if isinstance(event, Metrics):
                stop = listener.trial_metrics(state.trial, event)
                if (source.report(state.trial, event) or stop) and not state.stopping:
                    state.stopping = True
                    self._actors[state.slot].stop.remote(state.trial.index)
            elif isinstance(event, Summary):
                state.summary = event
            elif isinstance(event, Failure):
                state.failure = event
            elif isinstance(event, Stopped):
                state.outcome = "pruned"
        return False

    def _end(self, state: _Running, listener: Listener, source: TrialSource) -> None:
        if state.failure is not None:
            outcome = "failed"
        elif state.outcome:
            outcome = state.outcome
        elif state.summary is not None:
            outcome = state.summary.outcome
        else:
            outcome = "failed"
            state.failure = Failure("NoSummary", "the task ended without a summary", "")
        listener.trial_ended(state.trial, outcome, state.summary, state.failure)
        source.finish(state.trial, outcome, state.summary)

    def _worker_died(self, state: _Running, err: Exception, listener: Listener,
                     source: TrialSource) -> None:
        failure = Failure(type(err).__name__, _first_line(err), str(err))
        # The process is gone: give the slot a fresh actor before it takes another trial.
        self._actors[state.slot] = self._new_actor()
        self._nodes[state.slot] = ray.get(self._actors[state.slot].info.remote())
        if state.attempt <= self.retries and source.retry(state.trial):
            listener.trial_retrying(state.trial, state.attempt, failure)
        else:
            listener.trial_ended(state.trial, "failed", None, failure)
            source.finish(state.trial, "failed", None)

    def _kill_all(self, running: dict[Any, _Running], listener: Listener,
                  source: TrialSource) -> None:
        for state in running.values():
            listener.trial_ended(state.trial, "killed", None,
                                 Failure("Cancelled", "the sweep was cancelled", ""))
            source.finish(state.trial, "killed", None)
        self.shutdown()

    def shutdown(self) -> None:
        """Kill the actors now: their processes end, whatever they were running."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
