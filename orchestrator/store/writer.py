"""MLflow tracking: one parent run per sweep, one child run per trial.

The driver is the only writer (workers stream events back), so the embedded sqlite store
never sees concurrent writers; a tracking server works through the same client. Metrics
are buffered and written in batches (``log_batch``) at most every ``flush_s`` seconds, so
the MLflow UI shows live curves within seconds without one request per value.

On sqlite and PostgreSQL stores the batches are written to MLflow's tables directly
(:func:`_write_sql`): one transaction per flush for every run with something buffered, and a
run's end (status, end time) in the same transaction as its last metrics, params and outcome
tag. MLflow's own ``log_batch`` + ``set_terminated`` take 6-8 transactions per run (each of
``_log_params``, ``_log_metrics``, ``_set_tags`` opens its own session) and were two thirds of
the tracking cost per trial (bench/README.md, "Tracking floor"). Runs are still created with
MLflow's ``create_run`` (its run name, artifact location, tags), and a server is written
through the client as before.

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
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from orchestrator.errors import TrackingUnavailable
from orchestrator.store.create import open_store
from orchestrator.store.schema import (
    MLFLOW_SCHEMA_MAJOR,
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
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@contextlib.contextmanager
def fast_http(retries: int = 0, timeout_s: int = 5) -> Iterator[None]:
    """MLflow's HTTP client retries a failed request 7 times with exponential backoff (minutes
    in all) by default. Within this block a request fails within ``timeout_s`` instead, so the
    caller decides how long to wait. MLflow reads these variables at every request."""
    names = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }
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
    db = Path(uri[len("sqlite:///") :]).resolve()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).as_uri()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: one append to the log per commit instead of a rollback journal created, synced and
    # deleted; synchronous=NORMAL: the log is synced at checkpoints, not at every commit. A
    # commit survives the driver being killed; only an OS crash or power loss may undo the
    # last ones (`orch resume` re-runs what the store does not show as settled).
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def fast_sqlite(client: MlflowClient) -> None:
    """Make an sqlite store's commits cheap (see ``_sqlite_pragmas``): MLflow's
    SqlAlchemyStore commits 7-8 times per trial, and each commit's fsyncs were a third of the
    tracking cost (bench/README.md, "Tracking floor"). Other stores are left as they are."""
    import sqlalchemy

    engine = getattr(getattr(client._tracking_client, "store", None), "engine", None)
    if not isinstance(engine, sqlalchemy.engine.Engine) or engine.dialect.name != "sqlite":
        return
    if not sqlalchemy.event.contains(engine, "connect", _sqlite_pragmas):
        sqlalchemy.event.listen(engine, "connect", _sqlite_pragmas)
        engine.dispose()  # pooled connections were opened without the pragmas


_T = TypeVar("_T")
_UNSET = object()


class Tracker:
    """Writes a sweep's run tree; buffers metrics and flushes them in batches."""

    def __init__(
        self,
        tracking_uri: str,
        flush_s: float = 1.0,
        outage_s: float | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.uri = tracking_uri
        # MlflowClient opens (and creates, migrating in place) an sqlite file at once.
        open_store(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.flush_s = flush_s
        #: How long a write is retried while the store is unreachable before it is given up
        #: (``$ORCH_TRACKING_OUTAGE_S``, default 300 s); at the end of a sweep, how long
        #: buffered metrics are retried.
        self.outage_s = (
            float(os.environ.get("ORCH_TRACKING_OUTAGE_S", 300)) if outage_s is None else outage_s
        )
        self.max_backoff_s = max_backoff_s
        self._buffer: dict[str, list[Metric]] = defaultdict(list)
        #: Params and tags written with the run's next metric batch: one store transaction
        #: instead of three per trial (create, params, tags), see :meth:`flush`.
        self._pending: dict[str, tuple[list[Param], list[RunTag]]] = {}
        #: Artifact repositories by run id, from the run's creation: MLflow would look the
        #: run up (a store query) before every artifact write.
        self._repos: dict[str, Any] = {}
        #: Runs ended on a database store: (status, end time ms), written by the next flush
        #: together with the run's last metrics and tags.
        self._ends: dict[str, tuple[str, int]] = {}
        self._engine: Any = _UNSET  # looked up at the first write: that opens the store
        self._last_flush = time.monotonic()
        self._backoff_s = 0.0  # 0 while the store answers; then 1, 2, 4, ... seconds
        self._retry_at = 0.0  # no metric flush is tried before this (monotonic)
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
            fast_sqlite(self.client)
        except Exception as e:  # noqa: BLE001 - any failure means "cannot track"
            first = str(e).splitlines()[0] if str(e) else repr(e)
            hint = ""
            if "401" in first or "403" in first or "credentials" in first.lower():
                hint = " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            raise TrackingUnavailable(
                f"tracking store {self.uri!r} is unreachable: {first}{hint}"
            ) from None

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, retried with exponential backoff for up to ``outage_s`` while the store
        is unreachable; then :class:`TrackingUnavailable`. Bad requests are not retried."""
        deadline = time.monotonic() + self.outage_s
        delay = 0.5
        while True:
            try:
                with fast_http() if is_server(self.uri) else contextlib.nullcontext():
                    return fn()
            except Exception as e:
                if not _is_outage(e) or time.monotonic() + delay > deadline:
                    if _is_outage(e):
                        raise TrackingUnavailable(
                            f"tracking store {self.uri!r} unreachable for {self.outage_s:.0f} s "
                            f"while it was asked to {what}: {_first_line(e)}"
                        ) from None
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
        fast_sqlite(self.client)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=artifact_root(self.uri, name)
            )
        except MlflowException:  # created meanwhile by another sweep
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(
        self,
        experiment_id: str,
        name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a run with its tags, params and (optionally) ``config.yaml``."""
        # A request that timed out may still have created the run on the server: each
        # retry first looks for the run by a token of this call, so it is never made twice.
        token = uuid.uuid4().hex
        tags = {**tags, TAG_TOKEN: token}

        tries = []

        def create() -> Any:
            tries.append(1)
            found = (
                self.client.search_runs([experiment_id], f"tags.`{TAG_TOKEN}` = '{token}'")
                if len(tries) > 1
                else []
            )
            return (
                found[0]
                if found
                else self.client.create_run(
                    experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}
                )
            )

        run = self._retrying(f"create run {name!r}", create)
        run_id = run.info.run_id
        self._repos[run_id] = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        # Written with the first metric flush (within flush_s) or when the run ends.
        self._pending[run_id] = ([Param(k[:250], param_value(v)) for k, v in params.items()], [])
        if config is not None:
            self.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        return run_id

    def log_metrics(
        self, run_id: str, values: Mapping[str, float], step: int, timestamp_ms: int | None = None
    ) -> None:
        """Buffer metric values (written at the next flush); ``timestamp_ms`` defaults to now."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._buffer[run_id].extend(Metric(k, float(v), ts, step) for k, v in values.items())

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._best_effort(f"tag {run_id}", lambda: self._log_batch(run_id, tags=batch))

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.log_files(
            run_id, {os.path.basename(path): text.encode()}, os.path.dirname(path) or None
        )

    def log_files(self, run_id: str, files: Mapping[str, bytes], folder: str | None) -> None:
        """Store in-memory files (a task's ``Summary.artifacts``) as artifacts."""
        import tempfile

        repo = self._repos.get(run_id)
        if isinstance(repo, LocalArtifactRepository):
            # A local store: written in place; MLflow would copy them from a temporary folder.
            dest = Path(repo.artifact_dir, folder or "")
            self._best_effort(
                f"store {folder or 'files'}/ of {run_id}", lambda: _write_files(dest, files)
            )
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self._best_effort(
                f"store {folder or 'files'}/ of {run_id}",
                lambda: (
                    repo.log_artifacts(tmp, folder)
                    if repo is not None
                    else self.client.log_artifacts(run_id, tmp, folder)
                ),
            )

    def read_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The artifacts under ``folder`` of a run, as bytes."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(run_id, folder, tmp))
            return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Flush the run's metrics, params and ``tags`` (one batch; kept buffered if the
        store is down) and set its status."""
        if tags:
            self._pending.setdefault(run_id, ([], []))[1].extend(
                RunTag(k, str(v)) for k, v in tags.items()
            )
        self._repos.pop(run_id, None)
        if self._sql() is not None:
            # One transaction with the run's metrics and tags; if the store is down it stays
            # queued with them, so the run never shows an end status before its results.
            self._ends[run_id] = (status, int(time.time() * 1000))
            self.flush(run_id)
            return
        self.flush(run_id)
        self._best_effort(
            f"end {run_id} as {status}", lambda: self.client.set_terminated(run_id, status)
        )

    def maybe_flush(self) -> None:
        """Flush if ``flush_s`` has passed and no backoff after a failed flush is pending."""
        now = time.monotonic()
        if now - self._last_flush >= self.flush_s and now >= self._retry_at:
            self.flush()

    def flush(self, run_id: str | None = None) -> bool:
        """Write buffered metrics (of one run, or all). On failure they stay buffered and
        the next :meth:`maybe_flush` waits 1, 2, 4, ... ``max_backoff_s`` seconds. True when
        nothing is left buffered."""
        ids = (
            [run_id]
            if run_id is not None
            else list({**self._buffer, **self._pending, **self._ends})
        )
        engine = self._sql()
        if engine is not None:
            self._flush_sql(engine, ids)
            ids = []
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
        return not any(self._buffer.values()) and not self._pending and not self._ends

    def _sql(self) -> Any:
        """The store's engine when batches go to its tables directly (see ``_engine``)."""
        if self._engine is _UNSET:
            self._engine = _engine(self.client)
        return self._engine

    def _flush_sql(self, engine: Any, ids: list[str]) -> None:
        """:meth:`flush` on a database store: every run's batch in one transaction."""
        batches = {}
        for rid in ids:
            batch = (
                self._buffer.pop(rid, []),
                *self._pending.pop(rid, ([], [])),
                self._ends.pop(rid, None),
            )
            if any(batch):
                batches[rid] = batch
        if not batches:
            return
        try:
            _write_sql(engine, batches)
        except Exception as e:  # noqa: BLE001 - keep the sweep going; retry later
            for rid, (metrics, params, tags, end) in batches.items():
                self._buffer[rid][:0] = metrics
                if params or tags:
                    self._pending[rid] = (params, tags)
                if end is not None:
                    self._ends[rid] = end
            self._last_error = _first_line(e)
            self._backoff_s = min(max(1.0, self._backoff_s * 2), self.max_backoff_s)
            self._retry_at = time.monotonic() + self._backoff_s
            return
        self._backoff_s = 0.0

    def close(self, wait_s: float | None = None) -> list[str]:
        """Write what is still buffered, retrying for up to ``wait_s`` (default
        ``outage_s``); what cannot be written is added to :attr:`unwritten`, returned."""
        deadline = time.monotonic() + (self.outage_s if wait_s is None else wait_s)
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
        for rid, metrics in self._buffer.items():
            if metrics:
                self.unwritten.append(
                    f"{len(metrics)} metric values of run {rid} ({self._last_error})"
                )
        for rid, (params, tags) in self._pending.items():
            self.unwritten.append(
                f"{len(params)} params and {len(tags)} tags of run {rid} ({self._last_error})"
            )
        for rid, (status, _) in self._ends.items():
            self.unwritten.append(f"end of run {rid} as {status} ({self._last_error})")
        self._buffer.clear()
        self._pending.clear()
        self._ends.clear()
        return self.unwritten

    def _log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
    ) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self.client.log_batch(
                run_id,
                metrics=metrics[: _BATCH["metrics"]],
                params=params[: _BATCH["params"]],
                tags=tags[: _BATCH["tags"]],
            )
            metrics = metrics[_BATCH["metrics"] :]
            params = params[_BATCH["params"] :]
            tags = tags[_BATCH["tags"] :]

    def find_sweep(self, sweep_id: str) -> Any:
        """The parent run of sweep ``sweep_id`` (exact id)."""
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        runs = self.client.search_runs(
            ids, f"tags.`{TAG_KIND}` = 'sweep' and tags.`{TAG_SWEEP}` = '{sweep_id}'"
        )
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


def _engine(client: MlflowClient) -> Any:
    """The SQLAlchemy engine of the client's store when batches may be written to its tables
    directly: sqlite or PostgreSQL, MLflow's table layout (``schema.MLFLOW_SCHEMA_MAJOR``); else
    None (a server, a file store, another database)."""
    import mlflow
    import sqlalchemy

    if int(mlflow.__version__.split(".")[0]) != MLFLOW_SCHEMA_MAJOR:
        return None
    engine = getattr(getattr(client._tracking_client, "store", None), "engine", None)
    if isinstance(engine, sqlalchemy.engine.Engine) and engine.dialect.name in (
        "sqlite",
        "postgresql",
    ):
        return engine
    return None


def _write_sql(
    engine: Any,
    batches: Mapping[str, tuple[list[Metric], list[Param], list[RunTag], tuple[str, int] | None]],
) -> None:
    """Runs' metrics, params, tags and ends in one transaction, as MLflow's ``log_batch`` and
    ``set_terminated`` would leave them: metric history rows (a point already there is
    skipped), ``latest_metrics`` kept at the greatest (step, timestamp, value), params added,
    tags set, status and end time. Inputs are checked with MLflow's own validation first."""
    import math

    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.utils.validation import _validate_batch_log_data
    from sqlalchemy.dialects import postgresql, sqlite

    # Both dialects' INSERT ... ON CONFLICT (MLflow's tables have the same keys on both).
    insert: Any = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
    metrics: list[dict[str, Any]] = []
    params: list[dict[str, Any]] = []
    tags: dict[tuple[str, str], str] = {}
    ends: list[dict[str, Any]] = []
    latest: dict[tuple[str, str], tuple[int, int, float, bool]] = {}
    for rid, (ms, ps, ts, end) in batches.items():
        _validate_batch_log_data(ms, ps, ts)
        for m in ms:
            # As MLflow stores them: NaN is 0 with is_nan, +-inf the largest finite float.
            nan = math.isnan(m.value)
            value = (
                0.0 if nan else max(min(m.value, 1.7976931348623157e308), -1.7976931348623157e308)
            )
            metrics.append(
                {
                    "run_uuid": rid,
                    "key": m.key,
                    "value": value,
                    "timestamp": m.timestamp,
                    "step": m.step,
                    "is_nan": nan,
                }
            )
            point = (m.step, m.timestamp, value, nan)
            if (rid, m.key) not in latest or point[:3] > latest[rid, m.key][:3]:
                latest[rid, m.key] = point
        params += [{"run_uuid": rid, "key": p.key, "value": p.value} for p in ps]
        tags.update({(rid, t.key): t.value for t in ts})  # the last value of a key wins
        if end is not None:
            ends.append({"b_run": rid, "b_status": end[0], "b_end": end[1]})
    lm = SqlLatestMetric.__table__
    with engine.begin() as conn:
        if metrics:
            conn.execute(insert(SqlMetric.__table__).on_conflict_do_nothing(), metrics)
            runs = sorted({rid for rid, _ in latest})
            stored = {}
            for i in range(0, len(runs), 900):
                rows = conn.execute(
                    sa.select(lm.c.run_uuid, lm.c.key, lm.c.step, lm.c.timestamp, lm.c.value).where(
                        lm.c.run_uuid.in_(runs[i : i + 900])
                    )
                )
                stored.update({(r, k): (st, ts, v) for r, k, st, ts, v in rows})
            fresh = [k for k in latest if k not in stored]
            newer = [k for k in latest if k in stored and latest[k][:3] > stored[k]]
            if fresh:
                conn.execute(
                    sa.insert(lm),
                    [
                        {
                            "run_uuid": r,
                            "key": k,
                            "step": latest[r, k][0],
                            "timestamp": latest[r, k][1],
                            "value": latest[r, k][2],
                            "is_nan": latest[r, k][3],
                        }
                        for r, k in fresh
                    ],
                )
            if newer:
                conn.execute(
                    sa.update(lm)
                    .where(
                        lm.c.run_uuid == sa.bindparam("b_run"), lm.c.key == sa.bindparam("b_key")
                    )
                    .values(
                        step=sa.bindparam("b_step"),
                        timestamp=sa.bindparam("b_ts"),
                        value=sa.bindparam("b_value"),
                        is_nan=sa.bindparam("b_nan"),
                    ),
                    [
                        {
                            "b_run": r,
                            "b_key": k,
                            "b_step": latest[r, k][0],
                            "b_ts": latest[r, k][1],
                            "b_value": latest[r, k][2],
                            "b_nan": latest[r, k][3],
                        }
                        for r, k in newer
                    ],
                )
        if params:
            conn.execute(insert(SqlParam.__table__).on_conflict_do_nothing(), params)
        if tags:
            stmt = insert(SqlTag.__table__)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key", "run_uuid"], set_={"value": stmt.excluded.value}
                ),
                [{"run_uuid": r, "key": k, "value": v} for (r, k), v in tags.items()],
            )
        if ends:
            runs_t = SqlRun.__table__
            conn.execute(
                sa.update(runs_t)
                .where(runs_t.c.run_uuid == sa.bindparam("b_run"))
                .values(status=sa.bindparam("b_status"), end_time=sa.bindparam("b_end")),
                ends,
            )


def _write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else type(err).__name__


def _is_outage(err: BaseException) -> bool:
    """A failure to reach the store (connection refused, timeout, 5xx), not a bad request."""
    import requests

    if isinstance(
        err,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    if isinstance(err, MlflowException):
        text = str(err)
        return (
            "Max retries exceeded" in text
            or "Connection" in text
            or "timed out" in text
            or err.get_http_status_code() >= 500
        )
    import sqlalchemy.exc

    return isinstance(err, sqlalchemy.exc.OperationalError)
