"""Asynchronous dispatch of trials on Ray core.

A fixed pool of :class:`~orchestrator.runtime.worker.TrialWorker` actors (one per slot) pulls
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
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
)

from orchestrator.core.results import Failure, NodeInfo, Stopped
from orchestrator.core.specs import Resources, Trial
from orchestrator.errors import SpecError
from orchestrator.runtime import service
from orchestrator.runtime.memory import is_out_of_memory
from orchestrator.runtime.slots import ActorSlot, new_slot
from orchestrator.runtime.sysmetrics import SystemMetrics
from orchestrator.runtime.worker import TrialWorkerActor
from tasks.events import Checkpoint, CheckpointError, Metrics, Summary


class TrialSource(Protocol):
    """Where trials come from: a grid queue, or an Optuna study asked on demand."""

    #: True when the next trial depends on the results so far (a sampler): each result is
    #: then recorded and handed over before the freed slot asks again. A grid does not
    #: care, so its slot takes the next trial first and the result is recorded after.
    learns_from_results: bool

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

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        """Tags of the source's own for the trial's run (an Optuna trial number)."""

    def started(self, trial: Trial, run_id: str) -> None:
        """The trial's run exists (a sampler links it from its own trial)."""

    def final_values(self, trial: Trial, summary: Summary | None) -> dict[str, float]:
        """Values the source tracked that the trial's result should carry too."""


class Listener(Protocol):
    """Receives everything that happens to trials, on the driver."""

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None: ...
    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        """Log the event; return True to stop the trial (pruning)."""

    def trial_system_metrics(self, trial: Trial, event: SystemMetrics) -> None:
        """Log a sample of the worker's system metrics (not fed to pruners)."""

    def trial_ended(
        self, trial: Trial, outcome: str, summary: Summary | None, failure: Failure | None
    ) -> None: ...
    def trial_retrying(self, trial: Trial, attempt: int, failure: Failure) -> None: ...
    def resume_state(self, trial: Trial) -> Checkpoint | None:
        """The checkpoint the trial's attempt about to start resumes from (None: from
        scratch); asked right before each launch."""

    def trial_checkpoint(self, trial: Trial, event: Checkpoint) -> None:
        """Store a checkpoint (rank 0's, with its state) of the trial's running attempt."""

    def tick(self) -> bool:
        """Called every loop turn; flush buffers. Return True to cancel the sweep."""


def longest_first(trials: list[Trial]) -> list[Trial]:
    """``trials`` longest first where their configs say how long they run (``Trial.cost``),
    else as planned: with uneven lengths a long trial started last holds the sweep's end
    while the other slots sit idle. Ties keep the planned order."""
    if any(t.cost is None for t in trials) or len({t.cost for t in trials}) < 2:
        return trials
    return sorted(trials, key=lambda t: -(t.cost or 0.0))


class GridSource:
    """A fixed list of trials, retried trials first."""

    learns_from_results = False

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

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        return {}

    def started(self, trial: Trial, run_id: str) -> None:
        pass

    def final_values(self, trial: Trial, summary: Summary | None) -> dict[str, float]:
        return {}


class Cancelled(Exception):
    """The sweep was cancelled (Ctrl-C or ``orch cancel``); running trials were killed."""


@dataclass
class _Running:
    trial: Trial
    slot: int
    attempt: int
    resumed: bool = False
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
    #: World size of the slots' trials (set by :meth:`start`; default resources.workers).
    workers: int = 1
    _actors: list[Any] = field(default_factory=list)
    _nodes: list[NodeInfo] = field(default_factory=list)
    _attempts: dict[int, int] = field(default_factory=dict)
    #: Trials that ended, not yet handed to the listener (see :meth:`run`).
    _ended: deque[tuple[Trial, str, Summary | None, Failure | None, TrialSource]] = field(
        default_factory=deque
    )
    #: Upstream artifacts in the object store, by upstream trial key (put once, shared).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: Slots on workers leased from ``orch up``'s pool (slot -> worker name): given back,
    #: not killed, unless a trial still ran on them (``_busy``) or they were replaced (``_lost``).
    _warm: dict[int, str] = field(default_factory=dict)
    _busy: set[int] = field(default_factory=set)
    _lost: list[str] = field(default_factory=list)

    def slots_for(self, n_trials: int, workers: int | None = None) -> int:
        """How many trials of ``workers`` ranks (default ``resources.workers``) can run at
        once on this cluster: a k-worker trial holds k x the per-worker cpus and gpus."""
        k = workers or self.resources.workers
        total = ray.cluster_resources()
        cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        per = "per trial" if k == 1 else f"per worker x {k} workers"
        if k * self.resources.gpus > gpus:
            raise SpecError(
                f"resources.gpus: {self.resources.gpus:g} {per} asked, but the "
                f"cluster has {gpus:g} GPUs; allowed: 0..{gpus / k:g}"
            )
        if k * self.resources.cpus > cpus + 1e-9:
            raise SpecError(
                f"resources.cpus: {self.resources.cpus:g} {per} asked, but the "
                f"cluster has {cpus:g} CPUs; allowed: (0, {cpus / k:g}]"
            )
        n = math.floor(cpus / (k * self.resources.cpus) + 1e-9)
        if self.resources.gpus > 0:
            n = min(n, math.floor(gpus / (k * self.resources.gpus) + 1e-9))
        return max(1, min(n, n_trials, self.max_concurrent or n))

    def _new_actor(self) -> Any:
        opts: dict[str, Any] = {"num_cpus": self.resources.cpus, "num_gpus": self.resources.gpus}
        if self.resources.memory_mb:
            opts["memory"] = self.resources.memory_mb * 2**20
        threads = max(1, int(self.resources.cpus))
        return TrialWorkerActor.options(**opts).remote(
            threads, self.task_modules, self.resources.memory_mb
        )

    def _new_slot(self) -> Any:
        """One actor, or a gang of ``workers`` actors in a placement group (``group.py``)."""
        return new_slot(self._new_actor, self.resources, self.workers, self.task_modules)

    def start(self, n_slots: int, workers: int | None = None) -> None:
        """Create the slots' actors without waiting: their processes boot (torch imports)
        while the driver sets up tracking; :meth:`run` waits for them. ``workers`` sets
        the world size of the slots' trials (default ``resources.workers``)."""
        self.workers = workers or self.resources.workers
        r = self.resources
        warm = (
            service.lease(n_slots, r.cpus, r.gpus, r.memory_mb, self.task_modules)
            if self.workers == 1
            else {}
        )
        self._warm = dict(enumerate(warm))
        if warm:  # the warm workers hold the service's CPUs: no cold ones beside them
            self._actors = [ActorSlot(a) for a in warm.values()]
        else:
            self._actors = [self._new_slot() for _ in range(n_slots)]

    def run(self, source: TrialSource, listener: Listener) -> None:
        """Run until the source is exhausted and no trial is running."""
        self._nodes = ray.get([a.info() for a in self._actors])
        free = deque(range(len(self._actors)))
        running: dict[Any, _Running] = {}
        try:
            while True:
                while free:
                    trial = source.next_trial()
                    if trial is None:
                        break
                    self._launch(free.popleft(), trial, running, listener)
                # Record the trials that just ended only now: their slots already run the
                # next ones (the tracking writes cost ~10-40 ms a trial on sqlite).
                self.report_ended(listener)
                if not running:
                    if source.exhausted():
                        return
                    # A source (Optuna) may have nothing to hand out until others finish, or
                    # waits for another sweep's claim: still a turn for signals, cancels, counts.
                    if listener.tick():
                        raise Cancelled()
                    time.sleep(self.poll_s)
                    continue
                ready, _ = ray.wait(
                    list(running), num_returns=len(running), timeout=self.poll_s, fetch_local=True
                )
                for gen in ready:
                    if self._drain(gen, running, listener, source):
                        free.append(running.pop(gen).slot)
                for gen in self._check_ranks(running, listener, source):
                    free.append(running.pop(gen).slot)
                if listener.tick():
                    raise Cancelled()
        except (KeyboardInterrupt, Cancelled):
            self.report_ended(listener)
            self._kill_all(running, listener, source)
            raise Cancelled() from None
        finally:
            self._busy |= {s.slot for s in running.values()}
            self.report_ended(listener)

    def report_ended(self, listener: Listener) -> None:
        """Hand the trials that ended to the listener (the store), then to their source."""
        while self._ended:
            trial, outcome, summary, failure, source = self._ended.popleft()
            listener.trial_ended(trial, outcome, summary, failure)
            source.finish(trial, outcome, summary)

    def _launch(
        self, slot: int, trial: Trial, running: dict[Any, _Running], listener: Listener
    ) -> None:
        attempt = self._attempts[trial.index] = self._attempts.get(trial.index, 0) + 1
        upstream = self.inputs[trial.upstream.key] if trial.upstream else None
        ckpt = listener.resume_state(trial)
        # Put once: every rank of a gang resolves the same object.
        resume = ray.put(ckpt.state) if ckpt is not None else None
        gen = self._actors[slot].launch(trial.index, trial.task, trial.config, upstream, resume)
        running[gen] = _Running(trial, slot, attempt, resumed=ckpt is not None)
        listener.trial_started(trial, attempt, self._nodes[slot])

    def _drain(
        self, gen: Any, running: dict[Any, _Running], listener: Listener, source: TrialSource
    ) -> bool:
        """Consume the generator's ready events; True when the trial is over."""
        state = running[gen]
        while gen.next_ready() or gen.is_finished():
            try:
                event = ray.get(next(gen))
            except StopIteration:
                # A gang: the other ranks end too; one that died makes this a dead worker.
                died = self._actors[state.slot].settle(state.failure is not None)
                if died is not None:
                    self._worker_died(state, died, listener, source)
                    return True
                if self._restart_unusable(state, listener, source):
                    return True
                self._end(state, listener, source)
                if self._actors[state.slot].broken:
                    self._replace_actor(state.slot, kill=True)
                return True
            except (ActorDiedError, ActorUnavailableError, RayActorError, OutOfMemoryError) as e:
                self._worker_died(state, e, listener, source)
                return True
            except RayTaskError as e:
                # The task got past the worker's own error handling (a BaseException such
                # as SystemExit): a failure of this trial, not of the sweep.
                state.failure = Failure(
                    type(e.cause).__name__ if e.cause else "RayTaskError",
                    _first_line(e),
                    str(e),
                    restart_worker=True,
                )
                self._end(state, listener, source)
                return True
            if isinstance(event, SystemMetrics):
                listener.trial_system_metrics(state.trial, event)
            elif isinstance(event, Metrics):
                stop = listener.trial_metrics(state.trial, event)
                if (source.report(state.trial, event) or stop) and not state.stopping:
                    state.stopping = True
                    self._actors[state.slot].stop(state.trial.index)
            elif isinstance(event, Checkpoint):
                if event.state:  # an empty state (a rank > 0's) is nothing to resume from
                    listener.trial_checkpoint(state.trial, event)
            elif isinstance(event, Summary):
                state.summary = event
            elif isinstance(event, Failure):
                state.failure = event
            elif isinstance(event, Stopped):
                state.outcome = "pruned"
        return False

    def _end(self, state: _Running, listener: Listener, source: TrialSource) -> None:
        if state.failure is not None and state.failure.restart_worker:
            self._replace_actor(state.slot, kill=True)
        if state.failure is not None:
            outcome = "failed"
        elif state.outcome:
            outcome = state.outcome
        elif state.summary is not None:
            outcome = state.summary.outcome
            bad = [k for k, v in state.summary.values.items() if not math.isfinite(v)]
            if outcome == "finished" and bad:
                # A "finished" trial whose final metrics are NaN/inf diverged: it must not
                # count as done with a result, nor be the sweep's best.
                outcome = "diverged"
                state.summary = replace(
                    state.summary,
                    outcome=outcome,
                    reason=(f"{bad[0]} is {state.summary.values[bad[0]]} at the end of the trial"),
                )
        else:
            outcome = "failed"
            state.failure = Failure("NoSummary", "the task ended without a summary", "")
        # The store first, then the source, so a result the source counts (an Optuna
        # COMPLETE) is never missing from the store if the driver dies in between. For a
        # grid both wait until the freed slot has its next trial (see run).
        self._ended.append((state.trial, outcome, state.summary, state.failure, source))
        if source.learns_from_results:
            self.report_ended(listener)

    def _restart_unusable(self, state: _Running, listener: Listener, source: TrialSource) -> bool:
        """A resumed attempt whose task refused its checkpoint (``CheckpointError``): run the
        trial again from scratch (the listener drops the checkpoint, so this happens once
        per checkpoint, not in a loop). True when it was queued again."""
        failure = state.failure
        if not (
            state.resumed
            and failure is not None
            and failure.error_type == CheckpointError.__name__
            and source.retry(state.trial)
        ):
            return False
        listener.trial_retrying(state.trial, state.attempt, failure)
        if self._actors[state.slot].broken:
            self._replace_actor(state.slot, kill=True)
        return True

    def _worker_died(
        self, state: _Running, err: Exception, listener: Listener, source: TrialSource
    ) -> None:
        oom = is_out_of_memory(err)
        message = _first_line(err)
        if oom:  # Ray says so: report it as such, not as a silent death
            message = f"out of memory (the worker was killed by Ray's memory monitor): {message}"
        failure = Failure("OutOfMemoryError" if oom else type(err).__name__, message, str(err))
        # The process is gone: give the slot a fresh actor before it takes another trial.
        self._replace_actor(state.slot, kill=False)
        # An out-of-memory trial would most likely run out again: it is not retried.
        if not oom and state.attempt <= self.retries and source.retry(state.trial):
            listener.trial_retrying(state.trial, state.attempt, failure)
        else:
            listener.trial_ended(state.trial, "failed", None, failure)
            source.finish(state.trial, "failed", None)

    def _replace_actor(self, slot: int, kill: bool) -> None:
        """A fresh actor for ``slot``; ``kill`` ends the old process first (its memory is
        freed before the new one starts)."""
        # A gang's surviving ranks are killed too: its process group is unusable.
        if kill or self._actors[slot].workers > 1:
            self._actors[slot].kill()
        if slot in self._warm:
            self._lost.append(self._warm.pop(slot))
        self._actors[slot] = self._new_slot()
        self._nodes[slot] = ray.get(self._actors[slot].info())

    def _check_ranks(
        self, running: dict[Any, _Running], listener: Listener, source: TrialSource
    ) -> list[Any]:
        """Gangs whose rank > 0 died or failed while rank 0 still runs (it may be blocked
        in a collective): end those trials; their generators, to free the slots."""
        over = []
        for gen, state in running.items():
            problem = self._actors[state.slot].poll()
            if problem is None:
                continue
            kind, detail = problem
            if kind == "died":
                self._worker_died(state, detail, listener, source)
            else:
                state.failure = detail
                self._end(state, listener, source)
                self._replace_actor(state.slot, kill=True)
            over.append(gen)
        return over

    def _kill_all(
        self, running: dict[Any, _Running], listener: Listener, source: TrialSource
    ) -> None:
        """A cancel: trials whose result already reached the driver are recorded with it
        (they ended); the others end killed."""
        for gen, state in running.items():
            self._collect(gen, state, listener)
            if state.summary is not None and state.failure is None:
                self._end(state, listener, source)
                continue
            listener.trial_ended(
                state.trial, "killed", None, Failure("Cancelled", "the sweep was cancelled", "")
            )
            source.finish(state.trial, "killed", None)
        self.report_ended(listener)
        self._busy |= {s.slot for s in running.values()}
        self.shutdown()

    def _collect(self, gen: Any, state: _Running, listener: Listener) -> None:
        """The events of a trial that are already on the driver, without waiting (and
        without the replacement of a dead worker that :meth:`_drain` would start)."""
        try:
            while gen.next_ready():
                event = ray.get(next(gen), timeout=1)
                if isinstance(event, Metrics):
                    listener.trial_metrics(state.trial, event)
                elif isinstance(event, Summary):
                    state.summary = event
                elif isinstance(event, Failure):
                    state.failure = event
        except Exception:  # noqa: BLE001 - the stream ended or its worker died: nothing more
            return

    def shutdown(self) -> None:
        """Kill the actors now: their processes end, whatever they were running. Idle warm
        workers go back to ``orch up``'s pool instead."""
        idle: list[str] = []
        for i, slot in enumerate(self._actors):
            if i in self._warm and i not in self._busy:
                idle.append(self._warm[i])
                continue
            slot.kill()
            if i in self._warm:
                self._lost.append(self._warm[i])
        if self._warm or self._lost:
            try:
                service.release(idle, self._lost)
            except Exception:  # noqa: BLE001 - the pool is the service's; this sweep's
                pass  # runs (trials and parent) must still be written, whatever it raised
        self._actors, self._warm, self._busy, self._lost = [], {}, set(), []


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
