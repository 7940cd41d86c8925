"""Run a planned sweep: Ray up, parent run, dedup, dispatch, final record.

:func:`run_sweep` is what ``orch sweep`` and :meth:`Client.sweep` call. The order matters:
everything that can be wrong with the input is found before a run is written, and the
cluster's capacity is checked before the store is touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from rich.console import Console

from orchestrator.dispatch import Cancelled, Dispatcher, GridSource
from orchestrator.metrics import SweepMetrics
from orchestrator.plan import SweepPlan
from orchestrator.progress import SweepProgress
from orchestrator.specs import Trial
from orchestrator import tracking as tr
from orchestrator.sysmetrics import SystemMetrics
from orchestrator.worker import Failure, NodeInfo
from tasks.events import Metrics, Summary


@dataclass
class TrialResult:
    trial: Trial
    run_id: str
    outcome: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    reused: bool = False


@dataclass
class SweepResult:
    sweep_id: str
    parent_run_id: str
    experiment_id: str
    results: list[TrialResult]
    cancelled: bool = False
    unwritten: list[str] = field(default_factory=list)
    metric: str = ""
    tracking_uri: str = ""

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)


def new_sweep_id(study: str) -> str:
    return f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address``, or start a local Ray cluster in-process.

    A local cluster starts without the dashboard's web UI and job API
    (``include_dashboard=False``), and with Ray's token authentication (on by default
    since Ray 2.5x unless ``RAY_AUTH_MODE=disabled``): its ports refuse callers without
    the token in ``~/.ray/auth_token``. Ray 2.60 does not bind to loopback, whatever
    ``_node_ip_address`` says: it resolves 127.0.0.1 to the node's routable address and its
    gRPC servers listen on all interfaces, so the token is what keeps others out
    (``tests/test_failures.py::test_local_cluster_secure_defaults`` checks both).
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)


class _Recorder:
    """The dispatcher's listener: MLflow child runs, progress, results."""

    def __init__(self, tracker: tr.Tracker, plan: SweepPlan, experiment_id: str,
                 parent: str, sweep_id: str, progress: SweepProgress, kind: str = "trial") -> None:
        self.tracker, self.plan, self.experiment_id = tracker, plan, experiment_id
        self.parent, self.sweep_id, self.progress = parent, sweep_id, progress
        self.kind = kind
        self.outputs: dict[str, dict[str, bytes]] = {}  # trial key -> Summary.artifacts
        self.run_ids: dict[int, str] = {}
        self.last_step: dict[int, int] = {}
        self.results: list[TrialResult] = []
        self.commit = tr.git_commit()
        self._last_cancel_check = time.monotonic()
        # Prometheus series through Ray's metrics agent (orchestrator/metrics.py).
        self.metrics = SweepMetrics(plan.spec.study.name, sweep_id, kind)

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        tags = {tr.TAG_PARENT: self.parent, tr.TAG_KIND: self.kind, tr.TAG_SWEEP: self.sweep_id,
                tr.TAG_STUDY: self.plan.spec.study.name, tr.TAG_KEY: trial.key,
                tr.TAG_INDEX: trial.index, tr.TAG_ARM: json.dumps(trial.arm, sort_keys=True)}
        if trial.also:
            tags[tr.TAG_ALSO] = json.dumps(list(trial.also), sort_keys=True)
        if trial.upstream is not None:
            tags[tr.TAG_UPSTREAM] = trial.upstream.key
        if self.commit:
            tags[tr.TAG_GIT] = self.commit
        return tags

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        # The world size is not in the task's config; record it where it matters.
        world = {"resources.workers": trial.workers} if trial.workers > 1 else {}
        return {"task": trial.task, **tr.flatten(trial.config), **world}

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        tags = {**self.trial_tags(trial), tr.TAG_ATTEMPT: attempt, tr.TAG_NODE: node.hostname,
                "orch.node_id": node.node_id, tr.TAG_PID: node.pid}
        name = (f"{trial.index:04d}-" if trial.index >= 0 else "") + \
            "-".join(str(v) for v in trial.arm.values())
        self.run_ids[trial.index] = self.tracker.start_run(
            self.experiment_id, f"{name}-s{trial.seed}", tags, self.trial_params(trial),
            {"task": trial.task, **trial.config})
        self.progress.started()
        self.metrics.started(trial.index)

    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        self.tracker.log_metrics(self.run_ids[trial.index], event.values, event.step)
        self.last_step[trial.index] = event.step
        return False

    def trial_system_metrics(self, trial: Trial, event: SystemMetrics) -> None:
        """The worker's CPU/memory/GPU sample, on the trial's run (see ``sysmetrics``)."""
        self.tracker.log_metrics(self.run_ids[trial.index], event.values, event.step,
                                 event.timestamp_ms)

    def trial_retrying(self, trial: Trial, attempt: int, failure: Failure) -> None:
        self._close(trial, "failed", None, failure, final=False)

    def trial_ended(self, trial: Trial, outcome: str, summary: Summary | None,
                    failure: Failure | None) -> None:
        self._close(trial, outcome, summary, failure, final=True)

    def _close(self, trial: Trial, outcome: str, summary: Summary | None,
               failure: Failure | None, final: bool) -> None:
        run_id = self.run_ids[trial.index]
        metrics = dict(summary.values) if summary else {}
        if metrics:
            # At the last step, so MLflow's "latest value" of a metric is the final one.
            self.tracker.log_metrics(run_id, metrics, step=self.last_step.pop(trial.index, 0))
        if summary is not None and summary.artifacts:
            self.tracker.log_files(run_id, summary.artifacts, OUTPUTS)
            self.outputs[trial.key] = summary.artifacts
        tags: dict[str, Any] = {tr.TAG_OUTCOME: outcome if final else "retried"}
        error = ""
        if failure is not None:
            error = f"{failure.error_type}: {failure.message}"
            tags[tr.TAG_ERROR] = error[:5000]
            if failure.traceback:
                self.tracker.log_text(run_id, failure.traceback, "error/traceback.txt")
        elif summary is not None and summary.reason:
            error = summary.reason
            tags[tr.TAG_ERROR] = summary.reason[:5000]
        self.tracker.end_run(run_id, tr.STATUS[outcome], tags)
        self.metrics.ended(trial.index, outcome if final else "retried")
        if not final:  # a retry ends this attempt only; the trial runs again
            self.progress.running -= 1
        else:
            self.results.append(TrialResult(trial, run_id, outcome, metrics, error))
            label = " ".join(f"{k}={v}" for k, v in trial.arm.items()) + f" seed={trial.seed}"
            self.progress.ended(label, outcome, metrics.get(self.plan.spec.sweep.metric))

    def tick(self) -> bool:
        self.tracker.maybe_flush()
        if time.monotonic() - self._last_cancel_check > 2.0:
            self._last_cancel_check = time.monotonic()
            return self.tracker.cancel_requested(self.parent)
        return False


OUTPUTS = "outputs"  # artifact folder of a task's Summary.artifacts


def find_done(tracker: tr.Tracker, experiment_id: str, keys: set[str], kind: str = "trial"
              ) -> dict[str, Any]:
    """Runs in the experiment whose trial key is in ``keys`` and whose outcome counts as done."""
    done: dict[str, Any] = {}
    token = None
    while keys:
        page = tracker.client.search_runs(
            [experiment_id], filter_string=f"tags.`{tr.TAG_KIND}` = '{kind}'",
            max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(tr.TAG_KEY)
            if key in keys and run.data.tags.get(tr.TAG_OUTCOME) in tr.DONE_OUTCOMES \
                    and tr.TAG_REUSED not in run.data.tags and key not in done:
                done[key] = run
        token = page.token
        if not token:
            break
    return done


def run_sweep(plan: SweepPlan, tracking_uri: str | None = None, address: str | None = None,
              task_modules: tuple[str, ...] = (), console: Console | None = None,
              dispatcher: Dispatcher | None = None, resume: str | None = None) -> SweepResult:
    """Run every trial of ``plan`` not already done in the store; record everything.

    With ``resume`` (a sweep id) the trials go under that sweep's parent run: its runs left
    RUNNING by a dead driver are marked interrupted, and only trials without a finished,
    diverged or failed run in that sweep are run.
    """
    console = console or Console(stderr=True)
    spec = plan.spec
    uri = tr.resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    tracker = None
    if tr.is_server(uri):
        # A server that is down is found in seconds, before Ray starts (exit 1). A database
        # or file store is opened after the capacity check below: opening creates it, and
        # bad input (a GPU asked of a cluster with none) must leave nothing behind.
        tracker = tr.Tracker(uri)
        tracker.check()
    storage, n_search = None, 0
    if plan.search is not None:  # an Optuna search: trials are asked for while it runs
        from orchestrator.search import budget, resolve_storage

        storage, n_search = resolve_storage(plan.search.spec, uri), budget(plan.search)
    init_ray(address or spec.cluster.address, spec.cluster.num_cpus, spec.cluster.num_gpus)
    dispatcher = dispatcher or Dispatcher(spec.resources, spec.sweep.max_concurrent,
                                          spec.sweep.retries, task_modules)
    phases = _phases(plan.trials, spec.resources.workers)
    for k, trials in phases:  # SpecError before anything is written
        dispatcher.slots_for(len(trials) or n_search, k)
    first_k, first = phases[0]
    dispatcher.start(dispatcher.slots_for(len(first) or n_search, first_k), first_k)  # workers boot
    # while the store is opened

    if tracker is None:
        tracker = tr.Tracker(uri)
        try:
            tracker.check()
        except tr.TrackingUnavailable:
            dispatcher.shutdown()
            raise
    if resume is None:
        experiment_id = tracker.experiment_id(spec.tracking.experiment or spec.study.name)
        sweep_id = new_sweep_id(spec.study.name)
        parent = _start_parent(tracker, plan, experiment_id, sweep_id, task_modules)
        previous: list[TrialResult] = []
    else:
        parent_run = tracker.find_sweep(resume)
        sweep_id, parent = resume, parent_run.info.run_id
        experiment_id = parent_run.info.experiment_id
        tracker.client.update_run(parent, status="RUNNING")
        previous = _previous_results(tracker, plan, experiment_id, sweep_id)
    finished_here = {r.trial.key for r in previous}

    search = None
    with SweepProgress(console, len(plan.trials) or n_search, spec.sweep.metric,
                       spec.sweep.mode) as progress:
        if plan.search is not None:
            from orchestrator.search import SearchRun

            search = SearchRun(plan, tracker, storage, sweep_id, resume is not None)
            rec = search.recorder(experiment_id, parent, progress)
        else:
            rec = _Recorder(tracker, plan, experiment_id, parent, sweep_id, progress)
        rec.results.extend(previous)
        pending = [t for t in plan.trials if t.key not in finished_here]
        for r in previous:
            progress.reused(r.metrics.get(spec.sweep.metric))
        done = find_done(tracker, experiment_id, {t.key for t in pending})
        todo = [t for t in pending if t.key not in done]
        for t in pending:
            if t.key in done:
                rec.results.append(_reuse(tracker, rec, t, done[t.key]))
                progress.reused(rec.results[-1].metrics.get(spec.sweep.metric))
        cancelled = False
        try:
            if search is not None:
                dispatcher.run(search.source, rec)
            elif todo:
                todo = _run_upstreams(tracker, plan, rec, dispatcher, todo)
                for k, trials in _phases(todo, dispatcher.workers):
                    if k != dispatcher.workers:  # a gang size of its own: new slots
                        dispatcher.shutdown()
                        dispatcher.start(dispatcher.slots_for(len(trials), k), k)
                    dispatcher.run(GridSource(trials), rec)
        except Cancelled:
            cancelled = True
        finally:
            dispatcher.shutdown()
        tracker.flush()
    # Write what an outage of the store kept buffered (or give up on it) before anything
    # reads the store back (analysis, report): they must see every trial's metrics.
    tracker.close()

    if search is not None and not cancelled:  # importances, plots, HP verdicts on the parent
        search.analyse(parent, console)
    if tracker.unwritten:  # the store lost writes: a report from it would be wrong (or hang)
        console.print(f"no report: the tracking store is incomplete (rebuild it with: "
                      f"orch report {sweep_id})", highlight=False)
    elif not cancelled:  # a cancelled sweep was asked to stop now; `orch report` builds it later
        from orchestrator.reporting import report_at_end

        # MLflow's default HTTP retries would hold a report against a server that just went
        # away for minutes; a failed report is only a warning (`orch report` rebuilds it).
        with tr.fast_http(retries=2, timeout_s=60) if tr.is_server(tracker.uri) \
                else contextlib.nullcontext():
            report_at_end(tracker.uri, sweep_id, console)  # verdicts + report on the parent
    _finish_parent(tracker, parent, rec.results, spec.sweep.metric, spec.sweep.mode, cancelled)
    tracker.close()  # what a lost store kept buffered: retried, else listed in unwritten
    rec.results.sort(key=lambda r: r.trial.index)
    return SweepResult(sweep_id, parent, experiment_id, rec.results, cancelled, tracker.unwritten,
                       spec.sweep.metric, tracker.uri)


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


def resume_sweep(sweep_id: str, tracking_uri: str | None = None, address: str | None = None,
                 console: Console | None = None, overrides: list[str] | None = None
                 ) -> SweepResult:
    """Re-plan a sweep from its parent run's tags and run what it has not settled.

    ``overrides`` may raise a search's budget (``search.n_trials=80``): the search goes on
    with the same Optuna study until that many trials are settled; the new value is kept on
    the parent run, so a later resume keeps it.
    """
    from orchestrator.compose import composer
    from orchestrator.plan import parse_overrides, plan_sweep
    from orchestrator.errors import SpecError
    from tasks import registry

    extra = list(overrides or [])
    for o in parse_overrides(extra):
        if o.key_or_group not in RESUME_OVERRIDES or o.is_sweep_override():
            raise SpecError(f"resume: {o.input_line!r} cannot be changed on resume; allowed: "
                            f"{', '.join(k + '=N' for k in RESUME_OVERRIDES)}")
    tracker = tr.Tracker(tr.resolve_tracking_uri(tracking_uri))
    tracker.check()
    parent = tracker.find_sweep(sweep_id)
    tags = parent.data.tags
    modules = tuple(json.loads(tags.get("orch.tasks", "[]")))
    registry.load_plugins(modules)
    given = [*json.loads(tags["orch.overrides"]), *extra]
    plan = plan_sweep(composer(tags.get("orch.config_dir") or None), tags[tr.TAG_STUDY],
                      given, quick=tags.get("orch.quick") == "1")
    if extra:
        if plan.search is None:
            raise SpecError(f"resume: {extra[0]!r}: sweep {sweep_id} is a grid, not a search; "
                            f"allowed: no overrides")
        tracker.set_tags(parent.info.run_id, {"orch.overrides": json.dumps(given)})
    return run_sweep(plan, tracker.uri, address, modules, console, resume=sweep_id)


def _start_parent(tracker: tr.Tracker, plan: SweepPlan, experiment_id: str, sweep_id: str,
                  task_modules: tuple[str, ...]) -> str:
    """The sweep's parent run, tagged with everything ``orch resume`` needs to re-plan it."""
    spec = plan.spec
    tags = {tr.TAG_KIND: "sweep", tr.TAG_SWEEP: sweep_id, tr.TAG_STUDY: spec.study.name,
            "orch.overrides": json.dumps(plan.overrides), "orch.quick": int(plan.quick),
            "orch.config_dir": plan.config_dir or "", "orch.tasks": json.dumps(task_modules),
            "orch.n_trials": len(plan.trials), "orch.metric": spec.sweep.metric,
            "orch.mode": spec.sweep.mode, "orch.axes": json.dumps(list(plan.axes))}
    commit = tr.git_commit()
    if commit:
        tags[tr.TAG_GIT] = commit
    params = tr.flatten({"sweep": {"axes": plan.axes}, "resources": spec.resources.model_dump()})
    return tracker.start_run(experiment_id, sweep_id, tags, params, plan.config)


#: Outcomes a resumed sweep does not run again (killed and interrupted trials it does).
RESUME_DONE = ("finished", "diverged", "failed")


def _previous_results(tracker: tr.Tracker, plan: SweepPlan, experiment_id: str,
                      sweep_id: str) -> list[TrialResult]:
    """The trials a sweep already settled; its runs still RUNNING are marked interrupted."""
    by_key = {t.key: t for t in plan.trials}
    settled: dict[str, TrialResult] = {}
    for run in tracker.client.search_runs(
            [experiment_id], f"tags.`{tr.TAG_SWEEP}` = '{sweep_id}' and "
                             f"tags.`{tr.TAG_KIND}` = 'trial'", max_results=50000):
        tags = run.data.tags
        if run.info.status == "RUNNING" and tags.get(tr.TAG_OUTCOME) in RESUME_DONE:
            # The driver died between writing the trial's outcome and its status: the
            # trial is settled, only its status is missing.
            tracker.end_run(run.info.run_id, tr.STATUS[tags[tr.TAG_OUTCOME]])
        elif run.info.status == "RUNNING":
            tracker.end_run(run.info.run_id, "KILLED",
                            {tr.TAG_OUTCOME: "interrupted",
                             tr.TAG_ERROR: "the driver stopped while it ran"})
            continue
        if tags.get(tr.TAG_OUTCOME) in RESUME_DONE and tags.get(tr.TAG_KEY) in by_key:
            key = tags[tr.TAG_KEY]
            settled[key] = TrialResult(by_key[key], run.info.run_id, tags[tr.TAG_OUTCOME],
                                       dict(run.data.metrics), tags.get(tr.TAG_ERROR, ""),
                                       reused=tr.TAG_REUSED in tags)
    return list(settled.values())


def _run_upstreams(tracker: tr.Tracker, plan: SweepPlan, rec: _Recorder,
                   dispatcher: Dispatcher, todo: list[Trial]) -> list[Trial]:
    """Run (or find in the store) each distinct upstream of ``todo`` once and put its
    artifacts in Ray's object store. Returns the trials that can run; those whose upstream
    failed are recorded FAILED with the reason."""
    needed = {t.upstream.key: t.upstream for t in todo if t.upstream is not None}
    if not needed:
        return todo
    done = find_done(tracker, rec.experiment_id, set(needed), kind="upstream")
    for key, run in done.items():
        dispatcher.inputs[key] = ray.put(tracker.read_files(run.info.run_id, OUTPUTS))
    missing = [replace(t, index=-1 - i) for i, t in enumerate(needed.values()) if t.key not in done]
    if missing:
        up = _Recorder(tracker, plan, rec.experiment_id, rec.parent, rec.sweep_id, rec.progress,
                       kind="upstream")
        rec.progress.add_total(len(missing))
        dispatcher.run(GridSource(missing), up)
        for t in missing:
            if t.key in up.outputs:
                dispatcher.inputs[t.key] = ray.put(up.outputs[t.key])
    runnable = []
    for t in todo:
        if t.upstream is None or t.upstream.key in dispatcher.inputs:
            runnable.append(t)
            continue
        rec.trial_started(t, 1, NodeInfo("", "", 0))
        rec.trial_ended(t, "failed", None, Failure(
            "UpstreamFailed", f"its upstream {t.upstream.task} run did not finish", ""))
    return runnable


def _reuse(tracker: tr.Tracker, rec: _Recorder, trial: Trial, run: Any) -> TrialResult:
    """A child run pointing at the finished run with the same key: no training is repeated."""
    metrics = dict(run.data.metrics)
    outcome = run.data.tags.get(tr.TAG_OUTCOME, "finished")
    tags = {**rec.trial_tags(trial), tr.TAG_REUSED: run.info.run_id, tr.TAG_OUTCOME: outcome}
    run_id = tracker.start_run(rec.experiment_id, f"{trial.index:04d}-reused", tags,
                               rec.trial_params(trial))
    tracker.log_metrics(run_id, metrics, step=0)
    tracker.end_run(run_id, run.info.status)
    return TrialResult(trial, run_id, outcome, metrics, reused=True)


def _finish_parent(tracker: tr.Tracker, parent: str, results: list[TrialResult], metric: str,
                   mode: str, cancelled: bool) -> None:
    values = [r.metrics[metric] for r in results
              if r.outcome == "finished" and math.isfinite(r.metrics.get(metric, math.nan))]
    summary = {f"trials/{o}": float(sum(r.outcome == o for r in results))
               for o in ("finished", "failed", "diverged", "pruned", "killed")}
    if values:
        summary[f"best/{metric}"] = max(values) if mode == "max" else min(values)
    tracker.log_metrics(parent, summary, step=0)
    tracker.end_run(parent, "KILLED" if cancelled else "FINISHED")
