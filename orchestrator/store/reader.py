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

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mlflow
import sqlalchemy
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag, ViewType
from mlflow.tracking import MlflowClient

from orchestrator.store import schema
from orchestrator.store.create import open_store
from orchestrator.store.tables import RunRow, pick_sweep, select_runs, trials_frame

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


def _run(row: RunRow) -> Run:
    """A row of the tables as MLflow's ``Run`` entity."""
    return Run(
        RunInfo(
            row.run_id,
            row.experiment_id,
            row.user_id or "",
            row.status,
            cast(int, row.start_time),  # as stored: MLflow passes the column through too
            row.end_time,
            row.lifecycle_stage,
            row.artifact_uri,
            row.name,
        ),
        RunData(
            [Metric(k, v, ts, step) for k, (v, ts, step) in row.metrics.items()],
            [Param(k, v) for k, v in row.params.items()],
            [RunTag(k, v) for k, v in row.tags.items()],
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

    def _select(self, tags: dict[str, str], experiment_ids: list[str]) -> list[RunRow]:
        """Active runs of the experiments carrying every tag ``key = value``, oldest first:
        four queries however many runs there are, rows fetched whole (``all``)."""
        with self._db().connect() as conn:
            return select_runs(
                lambda sql, binds: conn.execute(sqlalchemy.text(sql), binds).all(),
                tags,
                experiment_ids,
            )

    def _select_runs(self, tags: dict[str, str], experiment_ids: list[str]) -> list[Run]:
        """:meth:`_select` as MLflow ``Run`` entities."""
        return [_run(row) for row in self._select(tags, experiment_ids)]

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
        return pick_sweep(runs, [r.data.tags[schema.TAG_SWEEP] for r in runs], sweep_id, self.uri)

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
                done[key] = _run(run) if isinstance(run, RunRow) else run
        return done

    # -- trials ---------------------------------------------------------------------------
    def trials(self, sweep_id: str) -> pd.DataFrame:
        """One row per trial of a sweep: outcome, axes, params (dotted) and final metrics.

        Attempts that were retried are left out: the row is the trial's last attempt, and
        ``resumed_from_step`` the checkpoint step it continued from (None if it did not). A
        trial that overlapping sub-grids share ran once and has a row per grid (same
        ``run_id``), so each grid's claims see it.
        """
        parent = self.sweep_run(sweep_id)
        sid = parent.data.tags[schema.TAG_SWEEP]
        # On a database store straight from the tables, without building MLflow entities.
        if self.direct:
            rows = self._select(
                {schema.TAG_SWEEP: sid, schema.TAG_KIND: schema.KIND_TRIAL},
                [parent.info.experiment_id],
            )
            return trials_frame(
                [
                    (r.run_id, r.status, r.start_time, r.tags, r.params, r.metric_values())
                    for r in rows
                ]
            )
        return trials_frame(
            [
                (
                    r.info.run_id,
                    r.info.status,
                    r.info.start_time,
                    r.data.tags,
                    r.data.params,
                    r.data.metrics,
                )
                for r in self.sweep_runs(parent.info.experiment_id, sid)
            ]
        )

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
