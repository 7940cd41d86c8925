"""Run a planned sweep: Ray up, parent run, dedup, dispatch, final record.

:func:`run_sweep` is what ``orch sweep`` and :meth:`Client.sweep` call. The order matters:
everything that can be wrong with the input is found before a run is written, and the
cluster's capacity is checked before the store is touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import ray
from mlflow.entities import Run
from rich.console import Console

from orchestrator.config.compose import composer
from orchestrator.config.overrides import parse_overrides
from orchestrator.config.plan import SweepPlan, plan_sweep
from orchestrator.config.space import budget
from orchestrator.core.results import Failure, NodeInfo, SweepResult, TrialResult
from orchestrator.core.specs import Trial
from orchestrator.errors import SpecError, TrackingUnavailable
from orchestrator.report import report_at_end
from orchestrator.runtime.cluster import init_ray
from orchestrator.runtime.dispatch import Cancelled, Dispatcher, GridSource, longest_first
from orchestrator.runtime.signals import SIGNALS, ForcedExit
from orchestrator.search import SearchRun, resolve_storage
from orchestrator.store import schema, writer
from orchestrator.store.create import check_store
from orchestrator.store.lease import Leases
from orchestrator.store.reader import StoreReader
from orchestrator.sweep import adaptive, mlflow_ui
from orchestrator.sweep.leased import LeasedSource
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.recorder import Recorder
from tasks import registry


def new_sweep_id(study: str) -> str:
    return f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def run_sweep(
    plan: SweepPlan,
    tracking_uri: str | None = None,
    address: str | None = None,
    task_modules: tuple[str, ...] = (),
    console: Console | None = None,
    dispatcher: Dispatcher | None = None,
    resume: str | None = None,
) -> SweepResult:
    """Run every trial of ``plan`` not already done in the store; record everything.

    With ``resume`` (a sweep id) the trials go under that sweep's parent run: its runs left
    RUNNING by a dead driver are marked interrupted, and only trials without a finished,
    diverged or failed run in that sweep are run.

    SIGINT, SIGTERM and SIGHUP cancel the sweep (``orchestrator/runtime/signals.py``); the
    result says ``cancelled`` and :data:`SIGNALS` which signal it was.
    """
    SIGNALS.install()
    live = _Live()
    try:
        return _run_sweep(
            plan, tracking_uri, address, task_modules, console, dispatcher, resume, live
        )
    except ForcedExit:
        if live.parent is None:  # nothing written yet: nothing to mark
            raise
        return _forced_stop(live)
    finally:
        SIGNALS.restore()


@dataclass
class _Live:
    """What a forced exit (a second signal) needs to mark the sweep's runs."""

    tracker: writer.Tracker | None = None
    dispatcher: Dispatcher | None = None
    parent: str | None = None
    experiment_id: str = ""
    sweep_id: str = ""
    rec: Recorder | None = None
    plan: SweepPlan | None = None


#: How long a forced exit retries writes to a store that does not answer.
FORCED_WAIT_S = 5.0


def _forced_stop(live: _Live) -> SweepResult:
    """Mark what can be marked, fast: trials whose result reached the driver with it, the
    others and the parent killed; no report, no waiting for Ray."""
    assert live.tracker is not None and live.parent is not None and live.plan is not None
    results: list[TrialResult] = []
    with SIGNALS.shielded():
        if live.rec is not None:
            if live.dispatcher is not None:
                live.dispatcher.report_ended(live.rec)
            live.rec.kill_open("the sweep was stopped by a second signal")
            results = live.rec.results
        if live.dispatcher is not None:
            live.dispatcher.shutdown()
        spec = live.plan.spec
        _finish_parent(
            live.tracker, live.parent, results, spec.sweep.metric, spec.sweep.mode, cancelled=True
        )
        live.tracker.close(wait_s=FORCED_WAIT_S)
    return SweepResult(
        live.sweep_id,
        live.parent,
        live.experiment_id,
        results,
        True,
        live.tracker.unwritten,
        spec.sweep.metric,
        live.tracker.uri,
    )


def _run_sweep(
    plan: SweepPlan,
    tracking_uri: str | None,
    address: str | None,
    task_modules: tuple[str, ...],
    console: Console | None,
    dispatcher: Dispatcher | None,
    resume: str | None,
    live: _Live,
) -> SweepResult:
    live.plan = plan
    console = console or Console(stderr=True)
    spec = plan.spec
    uri = schema.resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    tracker = None
    if schema.is_server(uri):
        # A server that is down is found in seconds, before Ray starts (exit 1). A database
        # or file store is opened after the capacity check below: opening creates it, and
        # bad input (a GPU asked of a cluster with none) must leave nothing behind.
        tracker = writer.Tracker(uri)
        tracker.check()
    else:  # a file that is not a usable store: one line in a second, before Ray starts
        check_store(uri)
    storage, n_search = None, 0
    if plan.search is not None:  # an Optuna search: trials are asked for while it runs
        storage, n_search = resolve_storage(plan.search.spec, uri), budget(plan.search)
    init_ray(address or spec.cluster.address, spec.cluster.num_cpus, spec.cluster.num_gpus)
    SIGNALS.install()  # ray.init sets its own SIGTERM handler (sys.exit anywhere)
    dispatcher = live.dispatcher = dispatcher or Dispatcher(
        spec.resources, spec.sweep.max_concurrent, spec.sweep.retries, task_modules
    )
    phases = _phases(plan.trials, spec.resources.workers)
    for k, trials in phases:  # SpecError before anything is written
        dispatcher.slots_for(len(trials) or n_search, k)
    first_k, first = phases[0]
    dispatcher.start(dispatcher.slots_for(len(first) or n_search, first_k), first_k)  # workers boot
    # while the store is opened

    if tracker is None:
        try:
            tracker = writer.Tracker(uri)
            tracker.check()
        except TrackingUnavailable:
            dispatcher.shutdown()
            raise
    if SIGNALS.requested:  # before anything is written: stop, nothing to mark
        dispatcher.shutdown()
        SIGNALS.raise_if_requested()
    live.tracker = tracker
    reader = StoreReader(tracker.uri, tracker.client)
    if resume is None:
        experiment_id = tracker.experiment_id(spec.tracking.experiment or spec.study.name)
        sweep_id = new_sweep_id(spec.study.name)
        parent = _start_parent(tracker, plan, experiment_id, sweep_id, task_modules)
        previous: list[TrialResult] = []
    else:
        parent_run = reader.sweep_run(resume, prefix=False)
        sweep_id, parent = resume, parent_run.info.run_id
        experiment_id = parent_run.info.experiment_id
        tracker.client.update_run(parent, status="RUNNING")
        previous = _previous_results(tracker, reader, plan, experiment_id, sweep_id)
    live.parent, live.experiment_id, live.sweep_id = parent, experiment_id, sweep_id
    finished_here = {r.trial.key for r in previous}

    search = None
    with SweepProgress(
        console,
        len(plan.trials) or n_search,
        spec.sweep.metric,
        spec.sweep.mode,
        mlflow_ui.start(tracker, experiment_id, parent, plan, sweep_id),
    ) as progress:
        if plan.search is not None and storage is not None:
            recorded = (
                SearchRun.recorded_runs(reader, experiment_id, sweep_id)
                if resume is not None
                else None
            )
            search = SearchRun(plan, tracker, storage, sweep_id, resume is not None, recorded)
            tracker.set_tags(parent, search.parent_tags())
            rec = Recorder(
                tracker, plan, experiment_id, parent, sweep_id, progress, source=search.source
            )
            if resume is not None:
                previous = search.previous_results()
        else:
            rec = Recorder(tracker, plan, experiment_id, parent, sweep_id, progress)
        live.rec = rec
        rec.results.extend(previous)
        pending = [t for t in plan.trials if t.key not in finished_here]
        if resume is not None:  # interrupted trials continue from their latest checkpoint
            rec.checkpoints.find_interrupted(
                reader, experiment_id, sweep_id, {t.key for t in pending}
            )
        for r in previous:
            progress.reused(r.metrics.get(spec.sweep.metric))
        done = reader.done_runs(experiment_id, {t.key for t in pending})
        todo = [t for t in pending if t.key not in done]
        for t in pending:
            if t.key in done:
                rec.results.append(_reuse(tracker, rec, t, done[t.key]))
                progress.reused(rec.results[-1].metrics.get(spec.sweep.metric))
        cancelled = False
        try:
            if search is not None:
                dispatcher.run(search.source, rec)
            else:
                # Each trial is claimed before it trains; one another sweep holds is waited
                # for and reported as reused from it.
                rec.leases = Leases(tracker, experiment_id, spec.sweep.lease_timeout_s)

                def reused(trial: Trial, run: Run) -> None:
                    rec.results.append(_reuse(tracker, rec, trial, run))
                    progress.reused(rec.results[-1].metrics.get(spec.sweep.metric))

                def dispatch(trials: list[Trial]) -> None:
                    _dispatch(tracker, reader, plan, rec, dispatcher, trials, reused)

                dispatch(todo)
                if adaptive.is_adaptive(plan):  # more seeds for the claims still open
                    adaptive.run_rounds(plan, tracker, reader, rec, dispatch, console)
        except Cancelled:
            cancelled = True
        finally:
            dispatcher.shutdown()
        tracker.flush()
    # Write what an outage of the store kept buffered (or give up on it) before anything
    # reads the store back (analysis, report): they must see every trial's metrics.
    tracker.close(FORCED_WAIT_S if SIGNALS.forced else None)
    cancelled = cancelled or SIGNALS.requested  # a signal after the last trial: still a cancel

    if search is not None and not cancelled:  # importances, plots, HP verdicts on the parent
        search.analyse(parent, console)
    if tracker.unwritten:  # the store lost writes: a report from it would be wrong (or hang)
        console.print(
            f"no report: the tracking store is incomplete (rebuild it with: "
            f"orch report {sweep_id})",
            highlight=False,
        )
    elif not cancelled:  # a cancelled sweep was asked to stop now; `orch report` builds it later
        # MLflow's default HTTP retries would hold a report against a server that just went
        # away for minutes; a failed report is only a warning (`orch report` rebuilds it).
        with (
            writer.fast_http(retries=2, timeout_s=60)
            if schema.is_server(tracker.uri)
            else contextlib.nullcontext()
        ):
            report_at_end(tracker.uri, sweep_id, console)  # verdicts + report on the parent
    mlflow_ui.finish(tracker, parent, sweep_id, plan, rec.results, cancelled)  # its description
    _finish_parent(tracker, parent, rec.results, spec.sweep.metric, spec.sweep.mode, cancelled)
    # What a lost store kept buffered: retried, else listed in unwritten.
    tracker.close(FORCED_WAIT_S if SIGNALS.forced else None)
    rec.results.sort(key=lambda r: r.trial.index)
    return SweepResult(
        sweep_id,
        parent,
        experiment_id,
        rec.results,
        cancelled,
        tracker.unwritten,
        spec.sweep.metric,
        tracker.uri,
    )


def _dispatch(
    tracker: writer.Tracker,
    reader: StoreReader,
    plan: SweepPlan,
    rec: Recorder,
    dispatcher: Dispatcher,
    todo: list[Trial],
    reused: Callable[[Trial, Run], None],
) -> None:
    """Run grid trials to the end: their upstreams first, then one phase per world size;
    each trial claimed first (``LeasedSource``), ``reused`` told of those another sweep ran."""
    if not todo:
        return
    todo = _run_upstreams(tracker, reader, plan, rec, dispatcher, todo)
    for k, trials in _phases(todo, dispatcher.workers):
        if k != dispatcher.workers:  # a gang size of its own: new slots
            dispatcher.shutdown()
            dispatcher.start(dispatcher.slots_for(len(trials), k), k)
        dispatcher.run(LeasedSource(GridSource(longest_first(trials)), rec, reused), rec)


def _phases(trials: list[Trial], default: int) -> list[tuple[int, list[Trial]]]:
    """Trials grouped by world size, smallest first (plan order within a group).

    Slots are sized for one world size at a time (a gang of k ranks per slot), so a sweep
    with a ``resources.workers`` axis runs one phase per size; within a phase dispatch is
    asynchronous as usual. No trials: one phase of the sweep's own size.
    """
    sizes = sorted({t.workers for t in trials}) or [default]
    return [(k, [t for t in trials if t.workers == k]) for k in sizes]


#: Keys ``orch resume SWEEP_ID KEY=VALUE`` may change: more trials for a search. Anything
#: else would change what the finished trials mean.
RESUME_OVERRIDES = ("search.n_trials",)


def resume_sweep(
    sweep_id: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    console: Console | None = None,
    overrides: list[str] | None = None,
) -> SweepResult:
    """Re-plan a sweep from its parent run's tags and run what it has not settled.

    ``overrides`` may raise a search's budget (``search.n_trials=80``): the search goes on
    with the same Optuna study until that many trials are settled; the new value is kept on
    the parent run, so a later resume keeps it.
    """
    extra = list(overrides or [])
    for o in parse_overrides(extra):
        if o.key_or_group not in RESUME_OVERRIDES or o.is_sweep_override():
            raise SpecError(
                f"resume: {o.input_line!r} cannot be changed on resume; allowed: "
                f"{', '.join(k + '=N' for k in RESUME_OVERRIDES)}"
            )
    tracker = writer.Tracker(schema.resolve_tracking_uri(tracking_uri))
    tracker.check()
    parent = StoreReader(tracker.uri).sweep_run(sweep_id, prefix=False)
    tags = parent.data.tags
    modules = tuple(json.loads(tags.get(schema.TAG_TASKS, "[]")))
    registry.load_plugins(modules)
    given = [*json.loads(tags[schema.TAG_OVERRIDES]), *extra]
    plan = plan_sweep(
        composer(tags.get(schema.TAG_CONFIG_DIR) or None),
        tags[schema.TAG_STUDY],
        given,
        quick=tags.get(schema.TAG_QUICK) == "1",
    )
    if extra:
        if plan.search is None:
            raise SpecError(
                f"resume: {extra[0]!r}: sweep {sweep_id} is a grid, not a search; "
                f"allowed: no overrides"
            )
        tracker.set_tags(parent.info.run_id, {schema.TAG_OVERRIDES: json.dumps(given)})
    return run_sweep(plan, tracker.uri, address, modules, console, resume=sweep_id)


def _start_parent(
    tracker: writer.Tracker,
    plan: SweepPlan,
    experiment_id: str,
    sweep_id: str,
    task_modules: tuple[str, ...],
) -> str:
    """The sweep's parent run, tagged with everything ``orch resume`` needs to re-plan it."""
    spec = plan.spec
    tags = {
        schema.TAG_KIND: "sweep",
        schema.TAG_SWEEP: sweep_id,
        schema.TAG_STUDY: spec.study.name,
        schema.TAG_OVERRIDES: json.dumps(plan.overrides),
        schema.TAG_QUICK: int(plan.quick),
        schema.TAG_CONFIG_DIR: plan.config_dir or "",
        schema.TAG_TASKS: json.dumps(task_modules),
        schema.TAG_N_TRIALS: len(plan.trials),
        schema.TAG_METRIC: spec.sweep.metric,
        schema.TAG_MODE: spec.sweep.mode,
        schema.TAG_AXES: json.dumps(list(plan.axes)),
        schema.TAG_DRIVER_PID: os.getpid(),
    }
    commit = writer.git_commit()
    if commit:
        tags[schema.TAG_GIT] = commit
    params = writer.flatten(
        {"sweep": {"axes": plan.axes}, "resources": spec.resources.model_dump()}
    )
    return tracker.start_run(experiment_id, sweep_id, tags, params, plan.config)


def _previous_results(
    tracker: writer.Tracker, reader: StoreReader, plan: SweepPlan, experiment_id: str, sweep_id: str
) -> list[TrialResult]:
    """The trials a sweep already settled; its runs still RUNNING are marked interrupted."""
    by_key = {t.key: t for t in plan.trials}
    settled: dict[str, TrialResult] = {}
    for run in reader.sweep_runs(experiment_id, sweep_id):
        tags = run.data.tags
        if run.info.status == "RUNNING" and tags.get(schema.TAG_OUTCOME) in schema.SETTLED_OUTCOMES:
            # The driver died between writing the trial's outcome and its status: the
            # trial is settled, only its status is missing.
            tracker.end_run(run.info.run_id, schema.STATUS[tags[schema.TAG_OUTCOME]])
        elif run.info.status == "RUNNING":
            tracker.end_run(
                run.info.run_id,
                "KILLED",
                {
                    schema.TAG_OUTCOME: "interrupted",
                    schema.TAG_ERROR: "the driver stopped while it ran",
                },
            )
            continue
        if (
            tags.get(schema.TAG_OUTCOME) in schema.SETTLED_OUTCOMES
            and tags.get(schema.TAG_KEY) in by_key
        ):
            key = tags[schema.TAG_KEY]
            settled[key] = TrialResult(
                by_key[key],
                run.info.run_id,
                tags[schema.TAG_OUTCOME],
                dict(run.data.metrics),
                tags.get(schema.TAG_ERROR, ""),
                reused=schema.TAG_REUSED in tags,
            )
    return list(settled.values())


def _run_upstreams(
    tracker: writer.Tracker,
    reader: StoreReader,
    plan: SweepPlan,
    rec: Recorder,
    dispatcher: Dispatcher,
    todo: list[Trial],
) -> list[Trial]:
    """Run (or find in the store) each distinct upstream of ``todo`` once and put its
    artifacts in Ray's object store. Returns the trials that can run; those whose upstream
    failed are recorded FAILED with the reason.

    An upstream is claimed in the store before it trains, as a trial is (``LeasedSource``):
    two sweeps needing the same pre-training at once train it once, the second waits for
    the first's run and takes its artifacts."""
    needed = {t.upstream.key: t.upstream for t in todo if t.upstream is not None}
    if not needed:
        return todo
    done = reader.done_runs(rec.experiment_id, set(needed), kind=schema.KIND_UPSTREAM)
    for key, run in done.items():
        dispatcher.inputs[key] = ray.put(reader.read_files(run.info.run_id, schema.OUTPUTS_FOLDER))
    missing = [replace(t, index=-1 - i) for i, t in enumerate(needed.values()) if t.key not in done]
    if missing:
        up = Recorder(
            tracker,
            plan,
            rec.experiment_id,
            rec.parent,
            rec.sweep_id,
            rec.progress,
            kind=schema.KIND_UPSTREAM,
        )
        rec.progress.add_total(len(missing))
        up.leases = rec.leases

        def reused(t: Trial, run: Run) -> None:  # another sweep trained it while we waited
            dispatcher.inputs[t.key] = ray.put(
                reader.read_files(run.info.run_id, schema.OUTPUTS_FOLDER)
            )
            rec.progress.reused(None)

        source = GridSource(missing)
        dispatcher.run(source if up.leases is None else LeasedSource(source, up, reused), up)
        for t in missing:
            if t.key in up.outputs:
                dispatcher.inputs[t.key] = ray.put(up.outputs[t.key])
    runnable = []
    for t in todo:
        if t.upstream is None or t.upstream.key in dispatcher.inputs:
            runnable.append(t)
            continue
        rec.trial_started(t, 1, NodeInfo("", "", 0))
        rec.trial_ended(
            t,
            "failed",
            None,
            Failure("UpstreamFailed", f"its upstream {t.upstream.task} run did not finish", ""),
        )
    return runnable


def _reuse(tracker: writer.Tracker, rec: Recorder, trial: Trial, run: Run) -> TrialResult:
    """A child run pointing at the finished run with the same key: no training is repeated."""
    metrics = dict(run.data.metrics)
    outcome = run.data.tags.get(schema.TAG_OUTCOME, "finished")
    tags = {
        **rec.trial_tags(trial),
        schema.TAG_REUSED: run.info.run_id,
        schema.TAG_OUTCOME: outcome,
    }
    run_id = tracker.start_run(
        rec.experiment_id, f"{trial.index:04d}-reused", tags, rec.trial_params(trial)
    )
    tracker.log_metrics(run_id, metrics, step=0)
    tracker.end_run(run_id, run.info.status)
    return TrialResult(trial, run_id, outcome, metrics, reused=True)


def _finish_parent(
    tracker: writer.Tracker,
    parent: str,
    results: list[TrialResult],
    metric: str,
    mode: str,
    cancelled: bool,
) -> None:
    values = [
        r.metrics[metric]
        for r in results
        if r.outcome == "finished" and math.isfinite(r.metrics.get(metric, math.nan))
    ]
    summary = {
        f"trials/{o}": float(sum(r.outcome == o for r in results))
        for o in ("finished", "failed", "diverged", "pruned", "killed")
    }
    if values:
        summary[f"best/{metric}"] = max(values) if mode == "max" else min(values)
    tracker.log_metrics(parent, summary, step=0)
    tracker.end_run(parent, "KILLED" if cancelled else "FINISHED")
