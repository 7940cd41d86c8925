"""MLflow tracking: one parent run per sweep, one child run per trial.

The driver is the only writer (workers stream events back), so the embedded sqlite store
never sees concurrent writers; a tracking server works through the same client. Metrics
are buffered and written in batches (``log_batch``) at most every ``flush_s`` seconds, so
the MLflow UI shows live curves within seconds without one request per value.

A tracking server can go away mid-sweep (restart, network). The sweep does not: buffered
metrics stay buffered and their ``log_batch`` is retried with exponential backoff; the
other writes (runs, tags, artifacts) are retried for up to ``outage_s``. Whatever could
still not be written when the sweep ends is listed in :attr:`Tracker.unwritten`, which the
CLI prints before exiting 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from orchestrator.errors import TrackingUnavailable
from orchestrator.store.create import open_store
from orchestrator.store.schema import (
    TAG_CANCEL,
    TAG_KIND,
    TAG_SWEEP,
    TAG_TOKEN,
    is_server,
)

_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits



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



@contextlib.contextmanager
def fast_http(retries: int = 0, timeout_s: int = 5) -> Iterator[None]:
    """MLflow's HTTP client retries a failed request 7 times with exponential backoff (minutes
    in all) by default. Within this block a request fails within ``timeout_s`` instead, so the
    caller decides how long to wait. MLflow reads these variables at every request."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
             "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an sqlite store's file, so the store
    is one self-contained folder (MLflow's own default is ``./mlruns`` of whatever directory
    the command ran in). None elsewhere: a server or file store decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).resolve()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).as_uri()


_T = TypeVar("_T")


class Tracker:
    """Writes a sweep's run tree; buffers metrics and flushes them in batches."""

    def __init__(self, tracking_uri: str, flush_s: float = 1.0, outage_s: float | None = None,
                 max_backoff_s: float = 30.0) -> None:
        self.uri = tracking_uri
        # MlflowClient opens (and creates, migrating in place) an sqlite file at once.
        open_store(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.flush_s = flush_s
        #: How long a write is retried while the store is unreachable before it is given up
        #: (``$ORCH_TRACKING_OUTAGE_S``, default 300 s); at the end of a sweep, how long
        #: buffered metrics are retried.
        self.outage_s = float(os.environ.get("ORCH_TRACKING_OUTAGE_S", 300)) \
            if outage_s is None else outage_s
        self.max_backoff_s = max_backoff_s
        self._buffer: dict[str, list[Metric]] = defaultdict(list)
        #: Params and tags written with the run's next metric batch: one store transaction
        #: instead of three per trial (create, params, tags), see :meth:`flush`.
        self._pending: dict[str, tuple[list[Param], list[RunTag]]] = {}
        #: Artifact repositories by run id, from the run's creation: MLflow would look the
        #: run up (a store query) before every artifact write.
        self._repos: dict[str, Any] = {}
        self._last_flush = time.monotonic()
        self._backoff_s = 0.0      # 0 while the store answers; then 1, 2, 4, ... seconds
        self._retry_at = 0.0       # no metric flush is tried before this (monotonic)
        self._last_error = ""
        self.unwritten: list[str] = []

    def check(self) -> None:
        """Fail fast (before any trial is dispatched) when the store is unreachable.

        A server gets one request with a 5 s timeout and no retries, so a wrong URI or a
        server that is down is reported in seconds, naming the URI. (An sqlite file was
        checked, or created whole, when the tracker was made: ``store/create.py``.)"""
        try:
            with fast_http() if is_server(self.uri) else contextlib.nullcontext():
                self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot track"
            first = str(e).splitlines()[0] if str(e) else repr(e)
            hint = ""
            if "401" in first or "403" in first or "credentials" in first.lower():
                hint = " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            raise TrackingUnavailable(f"tracking store {self.uri!r} is unreachable: "
                                      f"{first}{hint}") from None

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, retried with exponential backoff for up to ``outage_s`` while the store
        is unreachable; then :class:`TrackingUnavailable`. Bad requests are not retried."""
        deadline = time.monotonic() + self.outage_s
        delay = 0.5
        while True:
            try:
                with fast_http() if is_server(self.uri) else contextlib.nullcontext():
                    return fn()
            except Exception as e:  # noqa: BLE001 - decide below whether it is an outage
                if not _is_outage(e) or time.monotonic() + delay > deadline:
                    if _is_outage(e):
                        raise TrackingUnavailable(
                            f"tracking store {self.uri!r} unreachable for {self.outage_s:.0f} s "
                            f"while it was asked to {what}: {_first_line(e)}") from None
                    raise
                self._last_error = _first_line(e)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _best_effort(self, what: str, fn: Callable[[], Any]) -> None:
        """A write retried like :meth:`_retrying`, whose loss is recorded, not raised: the
        sweep goes on and the user is told at the end."""
        try:
            self._retrying(what, fn)
        except TrackingUnavailable as e:
            self.unwritten.append(str(e))

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root(self.uri, name))
        except MlflowException:  # created meanwhile by another sweep
            return self.client.get_experiment_by_name(name).experiment_id

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str],
                  params: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
        """Create a run with its tags, params and (optionally) ``config.yaml``."""
        # A request that timed out may still have created the run on the server: each
        # retry first looks for the run by a token of this call, so it is never made twice.
        token = uuid.uuid4().hex
        tags = {**tags, TAG_TOKEN: token}

        tries = []

        def create() -> Any:
            tries.append(1)
            found = self.client.search_runs(
                [experiment_id], f"tags.`{TAG_TOKEN}` = '{token}'") if len(tries) > 1 else []
            return found[0] if found else self.client.create_run(
                experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})

        run = self._retrying(f"create run {name!r}", create)
        run_id = run.info.run_id
        self._repos[run_id] = get_artifact_repository(run.info.artifact_uri,
                                                      tracking_uri=self.uri)
        # Written with the first metric flush (within flush_s) or when the run ends.
        self._pending[run_id] = ([Param(k[:250], param_value(v)) for k, v in params.items()], [])
        if config is not None:
            self.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        return run_id

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int,
                    timestamp_ms: int | None = None) -> None:
        """Buffer metric values (written at the next flush); ``timestamp_ms`` defaults to now."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._buffer[run_id].extend(Metric(k, float(v), ts, step) for k, v in values.items())

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._best_effort(f"tag {run_id}", lambda: self._log_batch(run_id, tags=batch))

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.log_files(run_id, {os.path.basename(path): text.encode()},
                       os.path.dirname(path) or None)

    def log_files(self, run_id: str, files: Mapping[str, bytes], folder: str | None) -> None:
        """Store in-memory files (a task's ``Summary.artifacts``) as artifacts."""
        import tempfile
        from pathlib import Path

        repo = self._repos.get(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self._best_effort(f"store {folder or 'files'}/ of {run_id}",
                              lambda: repo.log_artifacts(tmp, folder) if repo is not None
                              else self.client.log_artifacts(run_id, tmp, folder))

    def read_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The artifacts under ``folder`` of a run, as bytes."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(run_id, folder, tmp))
            return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Flush the run's metrics, params and ``tags`` (one batch; kept buffered if the
        store is down) and set its status."""
        if tags:
            self._pending.setdefault(run_id, ([], []))[1].extend(
                RunTag(k, str(v)) for k, v in tags.items())
        self.flush(run_id)
        self._repos.pop(run_id, None)
        self._best_effort(f"end {run_id} as {status}",
                          lambda: self.client.set_terminated(run_id, status))

    def maybe_flush(self) -> None:
        """Flush if ``flush_s`` has passed and no backoff after a failed flush is pending."""
        now = time.monotonic()
        if now - self._last_flush >= self.flush_s and now >= self._retry_at:
            self.flush()

    def flush(self, run_id: str | None = None) -> bool:
        """Write buffered metrics (of one run, or all). On failure they stay buffered and
        the next :meth:`maybe_flush` waits 1, 2, 4, ... ``max_backoff_s`` seconds. True when
        nothing is left buffered."""
        ids = [run_id] if run_id is not None else list({**self._buffer, **self._pending})
        for rid in ids:
            metrics = self._buffer.pop(rid, [])
            params, tags = self._pending.pop(rid, ([], []))
            if not (metrics or params or tags):
                continue
            try:
                with fast_http() if is_server(self.uri) else contextlib.nullcontext():
                    self._log_batch(rid, metrics=metrics, params=params, tags=tags)
            except Exception as e:  # noqa: BLE001 - keep the sweep going; retry later
                self._buffer[rid][:0] = metrics
                if params or tags:
                    self._pending[rid] = (params, tags)
                self._last_error = _first_line(e)
                self._backoff_s = min(max(1.0, self._backoff_s * 2), self.max_backoff_s)
                self._retry_at = time.monotonic() + self._backoff_s
                break  # the store is down: the other runs' batches would fail the same way
            self._backoff_s = 0.0
        if run_id is None:
            self._last_flush = time.monotonic()
        return not any(self._buffer.values()) and not self._pending

    def close(self, wait_s: float | None = None) -> list[str]:
        """Write what is still buffered, retrying for up to ``wait_s`` (default
        ``outage_s``); what cannot be written is added to :attr:`unwritten`, returned."""
        deadline = time.monotonic() + (self.outage_s if wait_s is None else wait_s)
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
        for rid, metrics in self._buffer.items():
            if metrics:
                self.unwritten.append(f"{len(metrics)} metric values of run {rid} "
                                      f"({self._last_error})")
        for rid, (params, tags) in self._pending.items():
            self.unwritten.append(f"{len(params)} params and {len(tags)} tags of run {rid} "
                                  f"({self._last_error})")
        self._buffer.clear()
        self._pending.clear()
        return self.unwritten

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
        """Whether ``orch cancel`` tagged the sweep; False while the store is unreachable."""
        try:
            with fast_http() if is_server(self.uri) else contextlib.nullcontext():
                return self.client.get_run(run_id).data.tags.get(TAG_CANCEL) == "1"
        except Exception:  # noqa: BLE001 - asked again 2 s later; an outage must not end the sweep
            return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else type(err).__name__


def _is_outage(err: BaseException) -> bool:
    """A failure to reach the store (connection refused, timeout, 5xx), not a bad request."""
    import requests

    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(err, MlflowException):
        text = str(err)
        return ("Max retries exceeded" in text or "Connection" in text or "timed out" in text
                or err.get_http_status_code() >= 500)
    import sqlalchemy.exc

    return isinstance(err, sqlalchemy.exc.OperationalError)
