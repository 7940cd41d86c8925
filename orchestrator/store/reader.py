"""Reading sweeps back from the store: every query pages, none is cut at a fixed size.

One place answers "the runs of a sweep", "the finished run with this trial key", "the
parent run of this sweep id" and the one-row-per-trial table that :class:`orchestrator.Client`,
the report, the search's resume and ``orch resume`` all read.

On a database store (sqlite, PostgreSQL, MySQL) the runs of a sweep and the metric histories
are read from MLflow's tables directly, a few plain ``SELECT``s: MLflow's ``search_runs``
builds each run through the ORM with its tags, params and metrics loaded per page, which
took ~20 s for 10,000 runs and minutes for 60,000 (bench/README.md, "Scale"). The table
layout is MLflow's own and stable within a major version (checked:
``schema.MLFLOW_SCHEMA_MAJOR``); a server or a file store goes through ``search_runs`` as before.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import mlflow
import sqlalchemy
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag, ViewType
from mlflow.tracking import MlflowClient

from orchestrator.store import schema
from orchestrator.store.create import open_store

if TYPE_CHECKING:
    import pandas as pd

#: Runs per request. MLflow allows up to 50,000; a page of 5,000 keeps one request's
#: memory and time modest while a 10,000-trial sweep reads in two.
PAGE = 5000
#: The MLflow major version whose table layout the direct reads below were written for.
#: Run ids per ``IN (...)`` list: under every database's bound-parameter limit.
_CHUNK = 900


def is_database(uri: str) -> bool:
    """An SQLAlchemy database URI that MLflow's SQL store serves (not a server, not files)."""
    return uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


def param_value(text: str) -> Any:
    """A logged param back as a value (params are stored as JSON text where they can be)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class _Row(NamedTuple):
    """A run as read from the tables: ``runs`` columns, then tags, params and latest metrics
    (key -> (value, timestamp, step))."""

    info: tuple[Any, ...]
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, tuple[float, int, int]]

    def run(self) -> Run:
        rid, exp, user, status, start, end, stage, art, name = self.info
        return Run(
            RunInfo(rid, str(exp), user or "", status, start, end, stage, art, name),
            RunData(
                [Metric(k, v, ts, step) for k, (v, ts, step) in self.metrics.items()],
                [Param(k, v) for k, v in self.params.items()],
                [RunTag(k, v) for k, v in self.tags.items()],
            ),
        )


class StoreReader:
    """Paged queries over one tracking store (``MlflowClient`` underneath)."""

    def __init__(self, tracking_uri: str | None = None, client: MlflowClient | None = None) -> None:
        self.uri = schema.resolve_tracking_uri(tracking_uri)
        if client is None:
            open_store(self.uri)  # MLflow would migrate a new file in place, racing others
        self.client = client or MlflowClient(self.uri)
        self._engine: sqlalchemy.engine.Engine | None = None
        self.direct = (
            is_database(self.uri)
            and int(mlflow.__version__.split(".")[0]) == schema.MLFLOW_SCHEMA_MAJOR
        )

    def _db(self) -> sqlalchemy.engine.Engine:
        # Created on first use: a store that does not exist yet is never opened (or made) here.
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.uri)
        return self._engine

    def _select(self, tags: dict[str, str], experiment_ids: list[str]) -> list[_Row]:
        """Active runs of the experiments carrying every tag ``key = value``, oldest first:
        four queries however many runs there are, rows fetched whole (``all``)."""
        where = ["r.lifecycle_stage = 'active'", "r.experiment_id IN :exps"]
        binds: dict[str, Any] = {"exps": [int(e) for e in experiment_ids]}
        for j, (k, v) in enumerate(tags.items()):
            where.append(
                f"EXISTS (SELECT 1 FROM tags t{j} WHERE t{j}.run_uuid = r.run_uuid "
                f"AND t{j}.key = :k{j} AND t{j}.value = :v{j})"
            )
            binds[f"k{j}"], binds[f"v{j}"] = k, v
        ids = f"SELECT r.run_uuid FROM runs r WHERE {' AND '.join(where)}"

        def query(sql: str) -> Any:
            return conn.execute(
                sqlalchemy.text(sql).bindparams(sqlalchemy.bindparam("exps", expanding=True)), binds
            ).all()

        with self._db().connect() as conn:
            infos = query(
                "SELECT run_uuid, experiment_id, user_id, status, start_time, "
                "end_time, lifecycle_stage, artifact_uri, name FROM runs WHERE "
                f"run_uuid IN ({ids}) ORDER BY start_time, run_uuid"
            )
            rows = {info[0]: _Row(info, {}, {}, {}) for info in infos}
            for rid, k, v in query(
                f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({ids})"
            ):
                rows[rid].tags[k] = v
            for rid, k, v in query(
                f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({ids})"
            ):
                rows[rid].params[k] = v
            for rid, k, v, ts, step, nan in query(
                "SELECT run_uuid, key, value, timestamp, step, is_nan FROM latest_metrics "
                f"WHERE run_uuid IN ({ids})"
            ):
                rows[rid].metrics[k] = (float("nan") if nan else v, ts, step)
        return list(rows.values())

    def _select_runs(self, tags: dict[str, str], experiment_ids: list[str]) -> list[Run]:
        """:meth:`_select` as MLflow ``Run`` entities."""
        return [row.run() for row in self._select(tags, experiment_ids)]

    def experiment_ids(self) -> list[str]:
        ids: list[str] = []
        token = None
        while True:
            page = self.client.search_experiments(
                view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            ids.extend(e.experiment_id for e in page)
            token = page.token
            if not token:
                return ids

    def runs(
        self,
        filter_string: str,
        experiment_ids: Iterable[str] | None = None,
        order_by: list[str] | None = None,
    ) -> Iterator[Run]:
        """Every run matching ``filter_string``, page after page."""
        ids = list(experiment_ids) if experiment_ids is not None else self.experiment_ids()
        token = None
        while ids:
            page = self.client.search_runs(
                ids,
                filter_string=filter_string,
                max_results=PAGE,
                page_token=token,
                order_by=order_by,
            )
            yield from page
            token = page.token
            if not token:
                return

    # -- sweeps ---------------------------------------------------------------------------
    def sweeps(self) -> list[Run]:
        """Every sweep's parent run, oldest first."""
        return list(
            self.runs(
                f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'",
                order_by=["attributes.start_time ASC"],
            )
        )

    def sweep_run(self, sweep_id: str, prefix: bool = True) -> Run:
        """The parent run of a sweep, by id or (``prefix``) a unique prefix of it.

        Raises:
            KeyError: No such sweep, or the prefix matches several.
        """
        op = f"LIKE '{sweep_id}%'" if prefix else f"= '{sweep_id}'"
        runs = list(
            self.runs(
                f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}' and "
                f"tags.`{schema.TAG_SWEEP}` {op}"
            )
        )
        exact = [r for r in runs if r.data.tags[schema.TAG_SWEEP] == sweep_id]
        if exact:
            return exact[0]
        if len(runs) == 1:
            return runs[0]
        if not runs:
            raise KeyError(f"no sweep {sweep_id!r} in {self.uri}")
        raise KeyError(f"{sweep_id!r} matches {len(runs)} sweeps; give more of the id")

    def sweep_runs(
        self, experiment_id: str, sweep_id: str, kind: str = schema.KIND_TRIAL
    ) -> list[Run]:
        """The child runs of one kind of a sweep, every attempt, oldest first."""
        if self.direct:
            return self._select_runs(
                {schema.TAG_SWEEP: sweep_id, schema.TAG_KIND: kind}, [experiment_id]
            )
        return list(
            self.runs(
                f"tags.`{schema.TAG_SWEEP}` = '{sweep_id}' and tags.`{schema.TAG_KIND}` = '{kind}'",
                [experiment_id],
                order_by=["attributes.start_time ASC"],
            )
        )

    def done_runs(
        self, experiment_id: str, keys: set[str], kind: str = schema.KIND_TRIAL
    ) -> dict[str, Run]:
        """Runs of the experiment, any sweep, whose trial key is in ``keys`` and whose outcome
        counts as done (not themselves reuses): what a new sweep need not train again."""
        done: dict[str, Run] = {}
        if not keys:
            return done
        if self.direct:  # newest first (MLflow's default order): the newest done run is reused
            rows = reversed(self._select({schema.TAG_KIND: kind}, [experiment_id]))
            runs: Iterable[tuple[dict[str, str], Any]] = ((r.tags, r) for r in rows)
        else:
            runs = (
                (r.data.tags, r)
                for r in self.runs(f"tags.`{schema.TAG_KIND}` = '{kind}'", [experiment_id])
            )
        for tags, run in runs:
            key = tags.get(schema.TAG_KEY)
            if (
                key in keys
                and key not in done
                and schema.TAG_REUSED not in tags
                and tags.get(schema.TAG_OUTCOME) in schema.DONE_OUTCOMES
            ):
                done[key] = run.run() if isinstance(run, _Row) else run
        return done

    # -- trials ---------------------------------------------------------------------------
    def trials(self, sweep_id: str) -> pd.DataFrame:
        """One row per trial of a sweep: outcome, axes, params (dotted) and final metrics.

        Attempts that were retried are left out: the row is the trial's last attempt, and
        ``resumed_from_step`` the checkpoint step it continued from (None if it did not). A
        trial that overlapping sub-grids share ran once and has a row per grid (same
        ``run_id``), so each grid's claims see it.
        """
        import pandas as pd

        parent = self.sweep_run(sweep_id)
        sid = parent.data.tags[schema.TAG_SWEEP]
        # (run id, status, start time, tags, params, final metrics) of every attempt; on a
        # database store straight from the tables, without building MLflow entities.
        runs: Iterable[tuple[str, str, int, dict[str, str], dict[str, str], dict[str, float]]]
        if self.direct:
            runs = (
                (
                    r.info[0],
                    r.info[3],
                    r.info[4],
                    r.tags,
                    r.params,
                    {k: v for k, (v, _, _) in r.metrics.items()},
                )
                for r in self._select(
                    {schema.TAG_SWEEP: sid, schema.TAG_KIND: schema.KIND_TRIAL},
                    [parent.info.experiment_id],
                )
            )
        else:
            runs = (
                (
                    r.info.run_id,
                    r.info.status,
                    r.info.start_time,
                    r.data.tags,
                    r.data.params,
                    r.data.metrics,
                )
                for r in self.sweep_runs(parent.info.experiment_id, sid)
            )
        rows = []
        for run_id, status, start_time, t, params, metrics in runs:
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
        df = df.sort_values(["trial_index", "start_time"]).drop_duplicates(
            "trial_index", keep="last"
        )
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

    def history(
        self, run_id: str, metric: str, source: str | None = None
    ) -> list[tuple[int, float, int]]:
        """A metric's ``(step, value, timestamp)`` points of one trial; a reused run's
        history is its source run's (pass ``source`` when already known)."""
        if source is None:
            source = self.client.get_run(run_id).data.tags.get(schema.TAG_REUSED, run_id)
        return [
            (p.step, p.value, p.timestamp) for p in self.client.get_metric_history(source, metric)
        ]

    def histories(
        self, run_ids: Iterable[str], metric: str
    ) -> dict[str, list[tuple[int, float, int]]]:
        """:meth:`history` of many runs (their own ids: no reuse is followed) for one metric,
        in one query per 900 runs on a database store; a server is asked run by run."""
        ids = list(dict.fromkeys(run_ids))
        if not self.direct:
            return {
                r: [
                    (p.step, p.value, p.timestamp)
                    for p in self.client.get_metric_history(r, metric)
                ]
                for r in ids
            }
        out: dict[str, list[tuple[int, float, int]]] = {r: [] for r in ids}
        # MLflow's get_metric_history order: timestamp, step, value.
        sql = sqlalchemy.text(
            "SELECT run_uuid, step, value, timestamp, is_nan FROM metrics WHERE key = :key "
            "AND run_uuid IN :ids ORDER BY run_uuid, timestamp, step, value"
        ).bindparams(sqlalchemy.bindparam("ids", expanding=True))
        with self._db().connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                for rid, step, value, ts, nan in conn.execute(
                    sql, {"key": metric, "ids": ids[i : i + _CHUNK]}
                ):
                    out[rid].append((step, float("nan") if nan else value, ts))
        return out

    # -- artifacts ------------------------------------------------------------------------
    def has_artifact(self, run_id: str, path: str) -> bool:
        folder = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in self.client.list_artifacts(run_id, folder))

    def read_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()

    def read_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The files directly under ``folder`` of a run's artifacts, as bytes."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(run_id, folder, tmp))
            return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def download(self, run_id: str, folder: str, dest: str | Path) -> Path:
        """A run's artifact folder copied under ``dest``; its local path."""
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, folder, str(dest)))
