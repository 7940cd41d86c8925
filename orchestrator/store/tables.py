"""MLflow's tables read directly: the runs of a sweep, and ``orch ls``/``orch show`` on sqlite.

:func:`select_runs` is the one query of runs by tags that :class:`~orchestrator.store.reader.
StoreReader` runs through SQLAlchemy on any database store. :func:`open_sqlite` serves the
listing commands on an sqlite store with the standard library's ``sqlite3`` alone: importing
MLflow (its ORM models, alembic) and pandas took seconds before a row was read (issue 18).
It opens the store as MLflow would (the same checks, a missing store created from the same
template, MLflow's Default experiment added to a new one) and answers MLflow's own queries
(``search_runs``' filter, order and latest metrics) with the same SQL semantics; anything it
does not reproduce (another MLflow major, workspaces, a server's artifact root, an sqlite
file without MLflow's tables) returns None and the caller goes through MLflow.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from orchestrator.store import schema
from orchestrator.store.create import open_store, sqlite_path

if TYPE_CHECKING:
    import pandas as pd

#: ``query(sql, binds)``: the rows of one ``SELECT`` with ``:name`` parameters.
Query = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]
#: MLflow variables that change which store class opens a file or where its artifacts go.
MLFLOW_STORE_ENV = ("MLFLOW_ENABLE_WORKSPACES", "_MLFLOW_SERVER_ARTIFACT_ROOT")
#: MLflow's Default experiment (``SqlAlchemyStore._create_default_experiment``).
DEFAULT_EXPERIMENT_ID, DEFAULT_WORKSPACE = 0, "default"
#: The seconds a read waits for a writer's lock (MLflow's ``busy_timeout``).
BUSY_TIMEOUT_S = 20.0


#: A trial attempt as :func:`trials_frame` reads it: run id, status, start time, tags,
#: params and final metrics.
Attempt = tuple[str, str, int | None, dict[str, str], dict[str, str], dict[str, float]]


@dataclass
class RunRow:
    """A run as read from the tables, with its tags, params and latest metrics
    (key -> (value, timestamp, step); NaN where MLflow stored one)."""

    run_id: str
    experiment_id: str
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str
    name: str | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    def metric_values(self) -> dict[str, float]:
        return {k: v for k, (v, _, _) in self.metrics.items()}

    def attempt(self) -> Attempt:
        """The run as :func:`trials_frame` reads a trial attempt."""
        return (
            self.run_id,
            self.status,
            self.start_time,
            self.tags,
            self.params,
            self.metric_values(),
        )


def select_runs(
    query: Query,
    tags: dict[str, str],
    experiment_ids: Sequence[str] | None = None,
    like: tuple[str, str] | None = None,
    order: str = "start_time, run_uuid",
) -> list[RunRow]:
    """Active runs carrying every tag ``key = value`` (and ``like``'s tag matching its
    pattern), of the experiments given (None: all), in ``order``: four queries however many
    runs there are."""
    where = ["r.lifecycle_stage = 'active'"]
    binds: dict[str, Any] = {}
    if experiment_ids is not None:
        names = [f"e{i}" for i in range(len(experiment_ids))]
        where.append(f"r.experiment_id IN ({', '.join(':' + n for n in names) or 'NULL'})")
        binds.update({n: int(e) for n, e in zip(names, experiment_ids)})
    conditions = [(k, "=", v) for k, v in tags.items()]
    if like is not None:
        conditions.append((like[0], "LIKE", like[1]))
    for j, (k, op, v) in enumerate(conditions):
        where.append(
            f"EXISTS (SELECT 1 FROM tags t{j} WHERE t{j}.run_uuid = r.run_uuid "
            f"AND t{j}.key = :k{j} AND t{j}.value {op} :v{j})"
        )
        binds[f"k{j}"], binds[f"v{j}"] = k, v
    ids = f"SELECT r.run_uuid FROM runs r WHERE {' AND '.join(where)}"
    rows = {
        info[0]: RunRow(info[0], str(info[1]), *info[2:])
        for info in query(
            "SELECT run_uuid, experiment_id, user_id, status, start_time, end_time, "
            f"lifecycle_stage, artifact_uri, name FROM runs WHERE run_uuid IN ({ids}) "
            f"ORDER BY {order}",
            binds,
        )
    }
    for rid, k, v in query(
        f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({ids})", binds
    ):
        rows[rid].tags[k] = v
    for rid, k, v in query(
        f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({ids})", binds
    ):
        rows[rid].params[k] = v
    for rid, k, v, ts, step, nan in query(
        "SELECT run_uuid, key, value, timestamp, step, is_nan FROM latest_metrics "
        f"WHERE run_uuid IN ({ids})",
        binds,
    ):
        rows[rid].metrics[k] = (float("nan") if nan else v, ts, step)
    return list(rows.values())


def param_value(text: str) -> Any:
    """A logged param back as a value (params are stored as JSON text where they can be)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def trials_frame(attempts: Sequence[Attempt]) -> pd.DataFrame:
    """One row per trial from its attempts (see ``StoreReader.trials``)."""
    import pandas as pd

    rows = []
    for run_id, status, start_time, t, params, metrics in attempts:
        if t.get(schema.TAG_OUTCOME) == schema.RETRIED:
            continue
        row: dict[str, Any] = {
            "run_id": run_id,
            "trial_index": int(t.get(schema.TAG_INDEX, -1)),
            "trial_key": t.get(schema.TAG_KEY),
            "outcome": t.get(schema.TAG_OUTCOME, "running"),
            "status": status,
            "error": t.get(schema.TAG_ERROR, ""),
            "node": t.get(schema.TAG_NODE, ""),
            "reused_from": t.get(schema.TAG_REUSED),
            "attempt": int(t.get(schema.TAG_ATTEMPT, 1)),
            "start_time": start_time,
            # The step of the checkpoint this attempt continued from (None: from scratch).
            "resumed_from_step": int(t[schema.TAG_RESUMED_STEP])
            if schema.TAG_RESUMED_STEP in t
            else None,
        }
        row.update(json.loads(t.get(schema.TAG_ARM, "{}")))
        row["_also"] = t.get(schema.TAG_ALSO)
        row.update({k: param_value(v) for k, v in params.items()})
        row.update(metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # A row per trial: a later attempt (a retry, or a resumed sweep's re-run) replaces
    # the earlier one.
    df = df.sort_values(["trial_index", "start_time"]).drop_duplicates("trial_index", keep="last")
    # A trial shared by overlapping sub-grids ran once; it gets a row in each grid.
    extra = [
        {**row, **arm}
        for row in df.to_dict("records")
        if isinstance(row["_also"], str)
        for arm in json.loads(row["_also"])
    ]
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    return df.drop(columns="_also").reset_index(drop=True)


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact URI; None for any remote store."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


@dataclass(frozen=True)
class SweepLine:
    """One sweep as ``orch ls`` lists it."""

    sweep_id: str | None
    study: str | None
    status: str
    started: str  # YYYY-mm-dd HH:MM (UTC)
    n_trials: int
    finished: int
    failed: int
    metric: str | None
    best: float | None


def sweep_line(
    status: str, start_time: int | None, tags: dict[str, str], metrics: dict[str, float]
) -> SweepLine:
    """A parent run's line (``Client.sweeps``' columns)."""
    metric = tags.get(schema.TAG_METRIC)
    return SweepLine(
        tags.get(schema.TAG_SWEEP),
        tags.get(schema.TAG_STUDY),
        status,
        started_minute(start_time),
        int(tags.get(schema.TAG_N_TRIALS, 0)),
        int(metrics.get("trials/finished", 0)),
        int(metrics.get("trials/failed", 0)),
        metric,
        metrics.get(f"best/{metric}"),
    )


def started_minute(start_ms: int | None) -> str:
    """A run's start as ``orch ls`` shows it: ``YYYY-mm-dd HH:MM`` (UTC), the start of
    pandas' timestamp (``NaT`` for none)."""
    if start_ms is None:
        return "NaT"
    start = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=int(start_ms))
    return start.strftime("%Y-%m-%d %H:%M")


class SqliteTables:
    """An sqlite store opened for reading with ``sqlite3`` (see :func:`open_sqlite`)."""

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        # MLflow's sessions on sqlite: a writer's lock is waited for, and LIKE is
        # case-sensitive (a sweep id prefix matches as in search_runs).
        self._con = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
        )
        self._con.execute("PRAGMA case_sensitive_like = true")

    def query(self, sql: str, binds: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self._con.execute(sql, binds).fetchall()

    def close(self) -> None:
        self._con.close()

    def sweeps(self) -> list[SweepLine]:
        """Every sweep's parent run, oldest first (``search_runs``' order: a run without a
        start time last, ties by run id)."""
        rows = select_runs(
            self.query,
            {schema.TAG_KIND: schema.KIND_SWEEP},
            order="start_time IS NULL, start_time, run_uuid",
        )
        return [sweep_line(r.status, r.start_time, r.tags, r.metric_values()) for r in rows]

    def sweep_run(self, sweep_id: str) -> RunRow:
        """``StoreReader.sweep_run``: the parent run by id or unique prefix.

        Raises:
            KeyError: No such sweep, or the prefix matches several.
        """
        runs = select_runs(
            self.query,
            {schema.TAG_KIND: schema.KIND_SWEEP},
            like=(schema.TAG_SWEEP, f"{sweep_id}%"),
            order="start_time DESC, run_uuid",  # search_runs' default order
        )
        return pick_sweep(runs, [r.tags[schema.TAG_SWEEP] for r in runs], sweep_id, self.uri)

    def trials(self, parent: RunRow) -> pd.DataFrame:
        """``StoreReader.trials`` of the sweep of ``parent``."""
        rows = select_runs(
            self.query,
            {schema.TAG_SWEEP: parent.tags[schema.TAG_SWEEP], schema.TAG_KIND: schema.KIND_TRIAL},
            [parent.experiment_id],
        )
        return trials_frame([r.attempt() for r in rows])


def open_sqlite(uri: str) -> SqliteTables | None:
    """The sqlite store of ``uri`` opened for reading as MLflow would open it, or None where
    MLflow must (not an ``sqlite:///`` file, another MLflow major, MLflow's store variables
    set, no MLflow tables yet, or experiments in other workspaces).

    Raises:
        TrackingUnavailable: The store cannot be used (one line, as for every command).
    """
    path = sqlite_path(uri)
    if path is None or any(os.environ.get(v) for v in MLFLOW_STORE_ENV):
        return None
    try:
        major = int(metadata.version("mlflow").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None
    if major != schema.MLFLOW_SCHEMA_MAJOR:
        return None
    open_store(uri)  # checked, and a missing store created, exactly as StoreReader does
    with sqlite3.connect(path, timeout=BUSY_TIMEOUT_S) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"experiments", "runs", "tags", "params", "latest_metrics"} <= tables:
            return None
        if con.execute(
            "SELECT 1 FROM experiments WHERE workspace IS NOT NULL AND workspace != :w",
            {"w": DEFAULT_WORKSPACE},
        ).fetchone():
            return None
        if not con.execute(
            "SELECT 1 FROM experiments WHERE experiment_id = :id", {"id": DEFAULT_EXPERIMENT_ID}
        ).fetchone():
            _create_default_experiment(con)
    con.close()
    return SqliteTables(uri, path)


def _create_default_experiment(con: sqlite3.Connection) -> None:
    """MLflow's Default experiment, as its SqlAlchemyStore adds it to a store that lacks it:
    artifacts under ``./mlruns/0`` of the current directory."""
    now = int(time.time() * 1000)
    try:
        con.execute(
            "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
            "creation_time, last_update_time, workspace) VALUES (:id, 'Default', :loc, "
            "'active', :now, :now, :ws)",
            {
                "id": DEFAULT_EXPERIMENT_ID,
                "loc": f"{Path.cwd().joinpath('mlruns').as_posix()}/{DEFAULT_EXPERIMENT_ID}",
                "now": now,
                "ws": DEFAULT_WORKSPACE,
            },
        )
    except sqlite3.IntegrityError:  # another command added it first
        pass


R = TypeVar("R")


def pick_sweep(runs: list[R], ids: list[str], sweep_id: str, uri: str) -> R:
    """The sweep ``sweep_id`` names among ``runs`` (their sweep ids ``ids``), matched by
    prefix: the exact one, else the only one.

    Raises:
        KeyError: None matches, or the prefix is ambiguous.
    """
    exact = [r for r, i in zip(runs, ids) if i == sweep_id]
    if exact:
        return exact[0]
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise KeyError(f"no sweep {sweep_id!r} in {uri}")
    raise KeyError(f"{sweep_id!r} matches {len(runs)} sweeps; give more of the id")
