"""Worker side: a Hydra job as an orch task (``hydra_job``), run by orch's ``TrialWorker``.

The job runs through Hydra's own ``run_job`` (output dir, ``.hydra/`` files, job logging,
callbacks), exactly as Hydra's basic launcher would run it, inside an active MLflow run of a
store private to this worker process: a sqlite file in a temporary directory that only this
process writes. ``mlflow.log_*`` calls of the job land there; when the job ends, its params,
tags, metric histories (with steps and timestamps) and artifacts are read back and sent to
the driver, which copies them into the job's child run. So the job sees an active run
(``mlflow.active_run()``) and the sweep's store has a single writer, the driver: no
"database is locked" with sqlite. The private store is made once per worker process (its
schema migration costs ~1.5 s) under a directory the driver names per launch and removes
when the launch ends (the actors are killed then, so no handler of theirs would run); each
job's artifacts are deleted once sent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tasks.events import Summary
from tasks.registry import register
from tasks.spec import StrictModel

TASK = "hydra_job"
#: Key of the :class:`JobRecord` (pickled) in the task's ``Summary.artifacts``.
RECORD = "hydra_job_record"


@dataclass
class Captured:
    """What the job logged to its private MLflow run."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: (key, value, timestamp_ms, step), in logging order.
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    #: Artifact path relative to the run's root -> content.
    artifacts: dict[str, bytes] = field(default_factory=dict)


@dataclass
class JobRecord:
    """What the driver gets back: Hydra's ``JobReturn`` (its return value replaced by None
    when the job failed: the error travels as orch's ``Failure``) and the captured run."""

    job_return: Any
    captured: Captured


class HydraJobSpec(StrictModel):
    #: cloudpickle of :class:`JobPayload`: unpickled inside the task, so a function that
    #: cannot be imported on the worker fails this job with a traceback, not the worker.
    payload: bytes


@dataclass
class JobPayload:
    hydra_context: Any
    task_function: Any
    config: Any
    singleton_state: dict[Any, Any]
    #: Where workers make their private stores (one subdirectory per process).
    store_dir: str


class _PrivateStore:
    """This process's MLflow store for jobs' in-job logging (one run per job)."""

    def __init__(self, store_dir: str) -> None:
        from mlflow.tracking import MlflowClient

        self.store_dir = store_dir
        self.root = Path(store_dir) / str(os.getpid())
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{self.root / 'jobs.db'}"
        self.client = MlflowClient(self.uri)
        # An explicit artifact location: MLflow's default is ./mlruns in the job's cwd.
        self.experiment_id = self.client.create_experiment(
            "jobs", artifact_location=(self.root / "artifacts").as_uri()
        )

    def collect(self, run_id: str) -> Captured:
        run = self.client.get_run(run_id)
        tags = {
            k: v
            for k, v in run.data.tags.items()
            if not k.startswith("mlflow.") or k == "mlflow.note.content"
        }
        metrics = [
            (m.key, m.value, m.timestamp, m.step)
            for key in run.data.metrics
            for m in self.client.get_metric_history(run_id, key)
        ]
        root = Path(unquote(urlparse(run.info.artifact_uri).path))
        artifacts = (
            {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
            if root.exists()
            else {}
        )
        shutil.rmtree(root, ignore_errors=True)
        return Captured(dict(run.data.params), tags, metrics, artifacts)


_store: _PrivateStore | None = None


def _private_store(store_dir: str) -> _PrivateStore:
    global _store
    if _store is None or _store.store_dir != store_dir:
        _store = _PrivateStore(store_dir)
    return _store


def _run_in_private_run(payload: JobPayload) -> tuple[Any, Captured]:
    """Hydra's ``run_job`` inside an active run of the private store; (JobReturn, Captured)."""
    import mlflow
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    store = _private_store(payload.store_dir)
    setup_globals()
    Singleton.set_state(payload.singleton_state)
    # The job's mlflow calls go to the private store whatever $MLFLOW_TRACKING_URI says.
    mlflow.set_tracking_uri(store.uri)
    run = mlflow.start_run(experiment_id=store.experiment_id)
    cwd = os.getcwd()
    try:
        ret = run_job(
            hydra_context=payload.hydra_context,
            task_function=payload.task_function,
            config=payload.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    finally:
        while mlflow.active_run() is not None:  # the job may have left nested runs open
            mlflow.end_run()
        os.chdir(cwd)  # a job that changed directory itself: the next job starts here again
    return ret, store.collect(run.info.run_id)


@register(TASK, HydraJobSpec, "a job of a Hydra app launched with hydra/launcher=orch")
def run(spec: HydraJobSpec) -> Iterator[Summary]:
    """Run the job; yield one Summary carrying its :class:`JobRecord`; re-raise its error
    (after the Summary, so what it logged before failing still reaches its run)."""
    from hydra.core.utils import JobStatus
    from ray import cloudpickle

    payload: JobPayload = cloudpickle.loads(spec.payload)
    ret, captured = _run_in_private_run(payload)
    error = ret._return_value if ret.status == JobStatus.FAILED else None
    if error is not None:
        ret.return_value = None
    values = return_metrics(ret.return_value) if error is None else {}
    yield Summary(values, artifacts={RECORD: cloudpickle.dumps(JobRecord(ret, captured))})
    if error is not None:
        raise error


def return_metrics(value: Any) -> dict[str, float]:
    """A job's return value as metrics: a number as ``return_value``, a dict's numbers by key."""
    if _is_number(value):
        return {"return_value": float(value)}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items() if _is_number(v)}
    return {}


def _is_number(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)
