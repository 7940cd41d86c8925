"""Run a planned sweep: Ray up, parent run, dedup, dispatch, final record.

:func:`run_sweep` is what ``orch sweep`` and :meth:`Client.sweep` call. The order matters:
everything that can be wrong with the input is found before a run is written, and the
cluster's capacity is checked before the store is touched.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from rich.console import Console

from orchestrator.dispatch import Cancelled, Dispatcher, GridSource
from orchestrator.plan import SweepPlan
from orchestrator.progress import SweepProgress
from orchestrator.specs import Trial
from orchestrator import tracking as tr
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

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)


def new_sweep_id(study: str) -> str:
    return f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address``, or start Ray in-process bound to loopback (secure default)."""
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

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        tags = {tr.TAG_PARENT: self.parent, tr.TAG_KIND: self.kind, tr.TAG_SWEEP: self.sweep_id,
                tr.TAG_STUDY: self.plan.spec.study.name, tr.TAG_KEY: trial.key,
                tr.TAG_INDEX: trial.index, tr.TAG_ARM: json.dumps(trial.arm, sort_keys=True)}
        if self.commit:
            tags[tr.TAG_GIT] = self.commit
        return tags

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"task": trial.task, **tr.flatten(trial.config)}

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        tags = {**self.trial_tags(trial), tr.TAG_ATTEMPT: attempt, tr.TAG_NODE: node.hostname,
                "orch.node_id": node.node_id}
        name = (f"{trial.index:04d}-" if trial.index >= 0 else "") + \
            "-".join(str(v) for v in trial.arm.values())
        self.run_ids[trial.index] = self.tracker.start_run(
            self.experiment_id, f"{name}-s{trial.seed}", tags, self.trial_params(trial),
            {"task": trial.task, **trial.config})
        self.progress.started()

    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        self.tracker.log_metrics(self.run_ids[trial.index], event.values, event.step)
        self.last_step[trial.index] = event.step
        return False

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
        self.tracker.set_tags(run_id, tags)
        self.tracker.end_run(run_id, tr.STATUS[outcome])
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
    init_ray(address or spec.cluster.address, spec.cluster.num_cpus, spec.cluster.num_gpus)
    dispatcher = dispatcher or Dispatcher(spec.resources, spec.sweep.max_concurrent,
                                          spec.sweep.retries, task_modules)
    slots = dispatcher.slots_for(len(plan.trials))  # SpecError before anything is written
    dispatcher.start(slots)  # workers boot while the store is opened

    tracker = tr.Tracker(tr.resolve_tracking_uri(tracking_uri or spec.tracking.uri))
    tracker.check()
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

    with SweepProgress(console, len(plan.trials), spec.sweep.metric, spec.sweep.mode) as progress:
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
            if todo:
                todo = _run_upstreams(tracker, plan, rec, dispatcher, todo)
                dispatcher.run(GridSource(todo), rec)
        except Cancelled:
            cancelled = True
        finally:
            dispatcher.shutdown()
        tracker.flush()

    _finish_parent(tracker, parent, rec.results, spec.sweep.metric, spec.sweep.mode, cancelled)
    rec.results.sort(key=lambda r: r.trial.index)
    return SweepResult(sweep_id, parent, experiment_id, rec.results, cancelled, tracker.unwritten,
                       spec.sweep.metric)


def resume_sweep(sweep_id: str, tracking_uri: str | None = None, address: str | None = None,
                 console: Console | None = None) -> SweepResult:
    """Re-plan a sweep from its parent run's tags and run what it has not settled."""
    from orchestrator.compose import composer
    from orchestrator.plan import plan_sweep
    from tasks import registry

    tracker = tr.Tracker(tr.resolve_tracking_uri(tracking_uri))
    tracker.check()
    tags = tracker.find_sweep(sweep_id).data.tags
    modules = tuple(json.loads(tags.get("orch.tasks", "[]")))
    registry.load_plugins(modules)
    plan = plan_sweep(composer(tags.get("orch.config_dir") or None), tags[tr.TAG_STUDY],
                      json.loads(tags["orch.overrides"]), quick=tags.get("orch.quick") == "1")
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
        if run.info.status == "RUNNING":
            tracker.set_tags(run.info.run_id, {tr.TAG_OUTCOME: "interrupted",
                                               tr.TAG_ERROR: "the driver stopped while it ran"})
            tracker.end_run(run.info.run_id, "KILLED")
        elif tags.get(tr.TAG_OUTCOME) in RESUME_DONE and tags.get(tr.TAG_KEY) in by_key:
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
