"""Driver side of the orch launcher: plan the jobs, dedup, dispatch, record, ``JobReturn``s.

Each Hydra job becomes an orch :class:`~orchestrator.core.specs.Trial` of the ``hydra_job`` task
(``_job``), dispatched by orch's :class:`~orchestrator.runtime.dispatch.Dispatcher` on reusable
``TrialWorker`` actors, so jobs get what orch trials get: asynchronous slots, the memory
limit, system metrics, a retry after a worker death, cancellation. :class:`JobRecorder` is
the dispatcher's listener: the driver is the only writer to the tracking store.

A job's identity (``orch.trial_key``) is a hash of the app's job name and its resolved job
config (the ``hydra`` node excluded: sweep dir, job number). A key that already FINISHED in
the experiment, with its return value stored as JSON (tag ``orch.return_value``), is not run
again: it gets a child run pointing at the finished one (``orch.reused_from``, as orch's own
sweeps do) and Hydra gets the stored value.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict

# Ray's cloudpickle keeps code file names (tracebacks show the app's lines); cloudpickle 3.1
# drops them.
from ray import cloudpickle

from hydra_plugins.orch_launcher._job import (
    RECORD,
    TASK,
    Captured,
    JobPayload,
    JobRecord,
)
from orchestrator.core.results import Failure, NodeInfo
from orchestrator.core.specs import Resources, Trial
from orchestrator.runtime.cluster import init_ray
from orchestrator.runtime.dispatch import Cancelled, Dispatcher, GridSource
from orchestrator.runtime.sysmetrics import SystemMetrics
from orchestrator.store import schema, writer
from orchestrator.store.reader import StoreReader
from orchestrator.sweep import new_sweep_id
from tasks.events import Checkpoint, Metrics, Summary

log = logging.getLogger(__name__)

JOB_MODULE = "hydra_plugins.orch_launcher._job"  # imported by every worker: registers the task
TAG_RETURN = "orch.return_value"  # a finished job's return value as JSON (what dedup returns)
TAG_OVERRIDES = "orch.hydra.overrides"


class JobFailed(Exception):
    """A job failed on an orch worker; the message is ``Type: message`` and its traceback."""


@dataclass(frozen=True)
class LauncherOptions:
    address: str | None
    tracking_uri: str | None
    experiment: str | None
    resources: Resources
    max_concurrent: int | None

    @classmethod
    def from_config(
        cls,
        address: str | None,
        tracking_uri: str | None,
        experiment: str | None,
        resources: Any,
        max_concurrent: int | None,
    ) -> LauncherOptions:
        """Validated like an orch sweep's ``resources`` (a bad value fails before Ray starts)."""
        given = (
            OmegaConf.to_container(resources)
            if isinstance(resources, DictConfig)
            else dict(resources or {})
        )
        return cls(
            address, tracking_uri, experiment, Resources.model_validate(given), max_concurrent
        )


@dataclass
class Job:
    trial: Trial
    overrides: list[str]
    params: dict[str, str]
    sweep_config: DictConfig
    task_config: dict[str, Any]


@dataclass
class Session:
    """One multirun's run tree: its parent run, shared by every ``launch`` of the multirun."""

    tracker: writer.Tracker
    experiment_id: str
    sweep_id: str
    parent: str
    study: str
    commit: str | None
    outcomes: Counter[str]
    n_jobs: int = 0

    def trial_tags(self, job: Job) -> dict[str, Any]:
        tags: dict[str, Any] = {
            schema.TAG_PARENT: self.parent,
            schema.TAG_KIND: "trial",
            schema.TAG_SWEEP: self.sweep_id,
            schema.TAG_STUDY: self.study,
            schema.TAG_KEY: job.trial.key,
            schema.TAG_INDEX: job.trial.index,
            schema.TAG_ARM: json.dumps(job.params, sort_keys=True),
            TAG_OVERRIDES: json.dumps(job.overrides),
        }
        if self.commit:
            tags[schema.TAG_GIT] = self.commit
        return tags

    def finish(self, cancelled: bool) -> None:
        summary = {
            f"trials/{o}": float(self.outcomes[o])
            for o in ("finished", "failed", "diverged", "killed")
        }
        self.tracker.log_metrics(self.parent, summary, step=0)
        self.tracker.end_run(
            self.parent, "KILLED" if cancelled else "FINISHED", {"orch.n_trials": self.n_jobs}
        )
        self.tracker.close()


def launch(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    """Run a batch of jobs (Hydra's ``Launcher.launch``); their ``JobReturn``s in order."""
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    # Resolved once here: workers run in other processes (a relative path, ${now:...}).
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # Workers' private MLflow stores (``_job``): removed once this launch's actors are gone.
    store_dir = tempfile.mkdtemp(prefix="orch-hydra-jobs-")
    try:
        return _launch(launcher, job_overrides, initial_job_idx, sweep_dir, store_dir)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def _launch(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    sweep_dir: Path,
    store_dir: str,
) -> list[JobReturn]:
    config: DictConfig = launcher.config
    state = Singleton.get_state()
    jobs = [
        _prepare(launcher, sweep_dir, initial_job_idx + i, list(o), state, store_dir)
        for i, o in enumerate(job_overrides)
    ]
    # The sweeper reads HydraConfig after launching; _prepare set it per job.
    HydraConfig.instance().set_config(config)

    session = launcher.session = launcher.session or _open_session(launcher.options, config)
    session.n_jobs += len(jobs)
    tracker = session.tracker
    tracker.client.update_run(session.parent, status="RUNNING")  # a later batch of a sweeper
    done = {
        k: r
        for k, r in StoreReader(tracker.uri, tracker.client)
        .done_runs(session.experiment_id, {j.trial.key for j in jobs})
        .items()
        if TAG_RETURN in r.data.tags
    }
    recorder = JobRecorder(session, {j.trial.index: j for j in jobs})
    todo = []
    for job in jobs:
        if job.trial.key in done:
            recorder.reuse(job, done[job.trial.key])
        else:
            todo.append(job)
    log.info(
        f"orch launcher: {len(jobs)} jobs ({len(jobs) - len(todo)} already finished), "
        f"sweep {session.sweep_id} in {tracker.uri}, outputs in {sweep_dir}"
    )
    for job in jobs:
        log.info(f"\t#{job.trial.index} : {' '.join(filter_overrides(job.overrides))}")
    cancelled = False
    if todo:
        opts: LauncherOptions = launcher.options
        init_ray(opts.address)
        dispatcher = Dispatcher(opts.resources, opts.max_concurrent, task_modules=(JOB_MODULE,))
        dispatcher.start(dispatcher.slots_for(len(todo)))
        try:
            dispatcher.run(GridSource([j.trial for j in todo]), recorder)
        except Cancelled:
            cancelled = True
        finally:
            dispatcher.shutdown()
    session.finish(cancelled)
    if cancelled:  # Ctrl-C or `orch cancel`: jobs that never started have no JobReturn
        raise Cancelled(
            f"multirun {session.sweep_id} was cancelled; its finished jobs are "
            f"kept (the same command runs the rest)"
        )
    return [recorder.returns[j.trial.index] for j in jobs]


def tracking_uri(explicit: str | None, original_cwd: str) -> str:
    """The launcher's ``tracking_uri``, else $MLFLOW_TRACKING_URI, else ``mlflow.db`` in the
    directory the app was started from."""
    uri = schema.resolve_tracking_uri(explicit)
    if uri == schema.DEFAULT_TRACKING_URI and not explicit:
        uri = f"sqlite:///{Path(original_cwd) / 'mlflow.db'}"
    return uri


def _open_session(opts: LauncherOptions, config: DictConfig) -> Session:
    tracker = writer.Tracker(tracking_uri(opts.tracking_uri, config.hydra.runtime.cwd))
    tracker.check()
    name = str(config.hydra.job.name)
    experiment_id = tracker.experiment_id(opts.experiment or name)
    sweep_id = new_sweep_id(name)
    commit = writer.git_commit()
    tags: dict[str, Any] = {
        schema.TAG_KIND: "sweep",
        schema.TAG_SWEEP: sweep_id,
        schema.TAG_STUDY: name,
        "orch.launcher": "hydra",
        "orch.overrides": json.dumps(list(config.hydra.overrides.task)),
        "orch.hydra.sweep_dir": str(config.hydra.sweep.dir),
    }
    if commit:
        tags[schema.TAG_GIT] = commit
    params = {f"resources.{k}": v for k, v in opts.resources.model_dump().items()}
    parent = tracker.start_run(experiment_id, sweep_id, tags, params)
    return Session(tracker, experiment_id, sweep_id, parent, name, commit, Counter())


def _prepare(
    launcher: Any,
    sweep_dir: Path,
    idx: int,
    overrides: list[str],
    singleton_state: dict[Any, Any],
    store_dir: str,
) -> Job:
    """The job's config (as Hydra's basic launcher makes it), identity and payload."""
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, overrides
    )
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
        sweep_config.hydra.sweep.dir = str(sweep_dir)
    HydraConfig.instance().set_config(sweep_config)  # ${hydra:...} in the job's config
    task_cfg = copy.deepcopy(sweep_config)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    try:
        container = OmegaConf.to_container(task_cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the job reports the error when it runs; key it unresolved
        container = OmegaConf.to_container(task_cfg, resolve=False)
    assert isinstance(container, dict)
    resolved: dict[str, Any] = {str(k): v for k, v in container.items()}
    key = Trial.make_key(f"hydra:{sweep_config.hydra.job.name}", resolved)
    payload = cloudpickle.dumps(
        JobPayload(
            launcher.hydra_context, launcher.task_function, sweep_config, singleton_state, store_dir
        )
    )
    params = override_params(overrides)
    trial = Trial(index=idx, task=TASK, config={"payload": payload}, arm=params, seed=0, key=key)
    return Job(trial, overrides, params, sweep_config, resolved)


def override_params(overrides: Sequence[str]) -> dict[str, str]:
    """A job's overrides as MLflow params: key (or config group) -> the value as written."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed if not o.is_delete()}


class JobRecorder:
    """The dispatcher's listener for Hydra jobs: child runs, the jobs' ``JobReturn``s."""

    def __init__(self, session: Session, jobs: dict[int, Job]) -> None:
        self.session, self.jobs = session, jobs
        self.tracker = session.tracker
        self.run_ids: dict[int, str] = {}
        self.returns: dict[int, JobReturn] = {}
        self._last_cancel_check = time.monotonic()

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        job = self.jobs[trial.index]
        tags = {
            **self.session.trial_tags(job),
            schema.TAG_ATTEMPT: attempt,
            schema.TAG_NODE: node.hostname,
            schema.TAG_NODE_ID: node.node_id,
            schema.TAG_PID: node.pid,
        }
        name = f"{trial.index:04d}-" + ",".join(f"{k}={v}" for k, v in job.params.items())
        self.run_ids[trial.index] = self.tracker.start_run(
            self.session.experiment_id, name, tags, job.params, job.task_config
        )

    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        self.tracker.log_metrics(self.run_ids[trial.index], event.values, event.step)
        return False

    def trial_system_metrics(self, trial: Trial, event: SystemMetrics) -> None:
        self.tracker.log_metrics(
            self.run_ids[trial.index], event.values, event.step, event.timestamp_ms
        )

    def trial_retrying(self, trial: Trial, attempt: int, failure: Failure) -> None:
        self.tracker.end_run(
            self.run_ids[trial.index],
            "FAILED",
            {schema.TAG_OUTCOME: "retried", schema.TAG_ERROR: _error(failure)[:5000]},
        )

    def trial_ended(
        self, trial: Trial, outcome: str, summary: Summary | None, failure: Failure | None
    ) -> None:
        job, run_id = self.jobs[trial.index], self.run_ids[trial.index]
        record: JobRecord | None = None
        if summary is not None and RECORD in summary.artifacts:
            # Our own worker's bytes, through Ray (which unpickles its messages anyway).
            record = pickle.loads(summary.artifacts[RECORD])
            self._copy(run_id, job, record.captured)
        values = dict(summary.values) if summary else {}
        if values:  # at the job's last step, so a metric's "latest value" is the returned one
            last = max((m[3] for m in record.captured.metrics), default=0) if record else 0
            self.tracker.log_metrics(run_id, values, step=last)
        tags: dict[str, Any] = {schema.TAG_OUTCOME: outcome}
        if failure is not None:
            tags[schema.TAG_ERROR] = _error(failure)[:5000]
            if failure.traceback:
                self.tracker.log_text(run_id, failure.traceback, "error/traceback.txt")
        elif summary is not None and summary.reason:
            tags[schema.TAG_ERROR] = summary.reason[:5000]
        if record is not None and outcome in schema.DONE_OUTCOMES:
            stored = _as_json(record.job_return.return_value)
            if stored is not None:
                tags[TAG_RETURN] = stored
        self.tracker.end_run(run_id, schema.STATUS[outcome], tags)
        self.session.outcomes[outcome] += 1
        self.returns[trial.index] = self._job_return(job, record, failure)

    def resume_state(self, trial: Trial) -> Checkpoint | None:
        """A Hydra job has no checkpoints: every attempt starts from scratch."""
        return None

    def trial_checkpoint(self, trial: Trial, event: Checkpoint) -> None:
        """Not called: a job's task yields no checkpoints."""

    def tick(self) -> bool:
        self.tracker.maybe_flush()
        if time.monotonic() - self._last_cancel_check > 2.0:  # `orch cancel SWEEP_ID`
            self._last_cancel_check = time.monotonic()
            return self.tracker.cancel_requested(self.session.parent)
        return False

    def reuse(self, job: Job, run: Any) -> None:
        """A child run pointing at the finished run with the same key; its stored value."""
        outcome = run.data.tags.get(schema.TAG_OUTCOME, "finished")
        tags = {
            **self.session.trial_tags(job),
            schema.TAG_REUSED: run.info.run_id,
            schema.TAG_OUTCOME: outcome,
            TAG_RETURN: run.data.tags[TAG_RETURN],
        }
        run_id = self.tracker.start_run(
            self.session.experiment_id, f"{job.trial.index:04d}-reused", tags, job.params
        )
        self.tracker.log_metrics(run_id, dict(run.data.metrics), step=0)
        self.tracker.end_run(run_id, run.info.status)
        self.session.outcomes[outcome] += 1
        ret = _bare_return(job)
        ret.status = JobStatus.COMPLETED
        ret.return_value = json.loads(run.data.tags[TAG_RETURN])
        self.returns[job.trial.index] = ret

    def _copy(self, run_id: str, job: Job, captured: Captured) -> None:
        """What the job logged to its private run, into its child run."""
        from mlflow.entities import Param

        # A job may log a param its override already set (MLflow refuses a second value):
        # the same value is skipped, a different one goes under job/.
        params = [
            Param(k, v) if k not in job.params else Param(f"job/{k}", v)
            for k, v in captured.params.items()
            if job.params.get(k) != v
        ]
        if params:
            self.tracker.client.log_batch(run_id, params=params)
        if captured.tags:
            self.tracker.set_tags(run_id, captured.tags)
        for key, value, timestamp, step in captured.metrics:
            self.tracker.log_metrics(run_id, {key: value}, step, timestamp)
        folders: dict[str, dict[str, bytes]] = {}
        for path, data in captured.artifacts.items():
            folder, _, name = path.rpartition("/")
            folders.setdefault(folder, {})[name] = data
        for folder, files in folders.items():
            self.tracker.log_files(run_id, files, folder or None)

    def _job_return(self, job: Job, record: JobRecord | None, failure: Failure | None) -> JobReturn:
        ret = record.job_return if record is not None else _bare_return(job)
        if failure is not None:
            ret.status = JobStatus.FAILED
            ret.return_value = JobFailed(f"{_error(failure)}\n{failure.traceback}".rstrip())
        return ret


def _bare_return(job: Job) -> JobReturn:
    """A ``JobReturn`` for a job that did not come back from ``run_job`` (reused, or its
    worker died)."""
    hydra_cfg = OmegaConf.create({"hydra": job.sweep_config.hydra})
    cfg = copy.deepcopy(job.sweep_config)
    with open_dict(cfg):
        del cfg["hydra"]
    out = Path(str(job.sweep_config.hydra.sweep.dir)) / str(
        OmegaConf.select(job.sweep_config, "hydra.sweep.subdir")
    )
    return JobReturn(
        overrides=job.overrides,
        cfg=cfg,
        hydra_cfg=hydra_cfg,
        working_dir=str(out),
        task_name=str(job.sweep_config.hydra.job.name),
        status=JobStatus.FAILED,
    )


def _error(failure: Failure) -> str:
    return f"{failure.error_type}: {failure.message}"


def _as_json(value: Any) -> str | None:
    """The value as JSON if it is JSON data and fits in a tag; None otherwise (not reused)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return None
    return text if len(text) <= 5000 and json.loads(text) == value else None
