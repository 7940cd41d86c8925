"""MLflow tracking: one parent run per sweep, one child run per trial.

The driver is the only writer (workers stream events back), so the embedded sqlite store
never sees concurrent writers; a tracking server works through the same client. Metrics
are buffered and written in batches (``log_batch``) at most every ``flush_s`` seconds, so
the MLflow UI shows live curves within seconds without one request per value.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Tag names (the "orch." namespace keeps them apart from MLflow's own).
TAG_KIND = "orch.kind"            # "sweep" or "trial"
TAG_SWEEP = "orch.sweep_id"
TAG_STUDY = "orch.study"
TAG_KEY = "orch.trial_key"
TAG_INDEX = "orch.trial_index"
TAG_OUTCOME = "orch.outcome"      # finished | failed | diverged | pruned | killed
TAG_ERROR = "orch.error"
TAG_ARM = "orch.arm"
TAG_NODE = "orch.node"
TAG_ATTEMPT = "orch.attempt"
TAG_REUSED = "orch.reused_from"
TAG_CANCEL = "orch.cancel_requested"
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT = "mlflow.source.git.commit"

#: MLflow run status for each trial outcome. A diverged run is FAILED (its training did)
#: but counts as done: re-running the same seed would diverge again.
STATUS = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED",
          "pruned": "KILLED", "killed": "KILLED"}
DONE_OUTCOMES = ("finished", "diverged")

_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, then ``$MLFLOW_TRACKING_URI``, then MLflow's own default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys (``optimizer.lr``); lists stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def param_value(value: Any) -> str:
    """A param's string form; values over MLflow's limit point to the config artifact."""
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        return f"(in config.yaml: {len(text)} chars)"
    return text


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or opened."""


class Tracker:
    """Writes a sweep's run tree; buffers metrics and flushes them in batches."""

    def __init__(self, tracking_uri: str, flush_s: float = 1.0) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.flush_s = flush_s
        self._buffer: dict[str, list[Metric]] = defaultdict(list)
        self._last_flush = time.monotonic()
        self.unwritten: list[str] = []

    def check(self) -> None:
        """Fail fast (before any trial is dispatched) when the store is unreachable."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot track"
            raise TrackingUnavailable(f"tracking store {self.uri!r} is unreachable: "
                                      f"{str(e).splitlines()[0] if str(e) else e!r}") from None

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by another sweep
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str],
                  params: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
        """Create a run with its tags, params and (optionally) ``config.yaml``."""
        run = self.client.create_run(experiment_id, run_name=name,
                                     tags={k: str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        self._log_batch(run_id, params=[Param(k[:250], param_value(v)) for k, v in params.items()])
        if config is not None:
            self.client.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False),
                                 "config.yaml")
        return run_id

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._buffer[run_id].extend(Metric(k, float(v), ts, step) for k, v in values.items())

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_files(self, run_id: str, files: Mapping[str, bytes], folder: str) -> None:
        """Store in-memory files (a task's ``Summary.artifacts``) as artifacts."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(run_id, tmp, folder)

    def read_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The artifacts under ``folder`` of a run, as bytes."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(run_id, folder, tmp))
            return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def end_run(self, run_id: str, status: str) -> None:
        self.flush(run_id)
        self.client.set_terminated(run_id, status)

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self, run_id: str | None = None) -> None:
        """Write buffered metrics (of one run, or all); failures are retried next flush."""
        ids = [run_id] if run_id is not None else list(self._buffer)
        for rid in ids:
            metrics = self._buffer.pop(rid, [])
            if not metrics:
                continue
            try:
                self._log_batch(rid, metrics=metrics)
            except Exception as e:  # noqa: BLE001 - keep the sweep going; retry later
                self._buffer[rid][:0] = metrics
                self.unwritten.append(f"{rid}: {e}")
        if run_id is None:
            self._last_flush = time.monotonic()

    def _log_batch(self, run_id: str, metrics: Iterable[Metric] = (),
                   params: Iterable[Param] = (), tags: Iterable[RunTag] = ()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self.client.log_batch(run_id, metrics=metrics[:_BATCH["metrics"]],
                                  params=params[:_BATCH["params"]], tags=tags[:_BATCH["tags"]])
            metrics = metrics[_BATCH["metrics"]:]
            params = params[_BATCH["params"]:]
            tags = tags[_BATCH["tags"]:]

    def find_sweep(self, sweep_id: str) -> Any:
        """The parent run of sweep ``sweep_id`` (exact id)."""
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        runs = self.client.search_runs(ids, f"tags.`{TAG_KIND}` = 'sweep' and "
                                            f"tags.`{TAG_SWEEP}` = '{sweep_id}'")
        if not runs:
            raise KeyError(f"no sweep {sweep_id!r} in {self.uri}")
        return runs[0]

    def cancel_requested(self, run_id: str) -> bool:
        return self.client.get_run(run_id).data.tags.get(TAG_CANCEL) == "1"
