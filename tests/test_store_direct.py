"""The database store's direct reads give what MLflow's own queries give.

``StoreReader`` reads a sweep's runs and metric histories from MLflow's tables on sqlite and
PostgreSQL (``reader.direct``); a server goes through ``search_runs``. Both paths are run here
on the same store, written by the real ``Tracker``, and must agree run for run.
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.report.build import _Histories
from orchestrator.store import schema
from orchestrator.store.reader import StoreReader
from orchestrator.store.writer import Tracker

SWEEP = "direct-sweep"


def _write(uri: str) -> tuple[str, dict[str, str]]:
    """A sweep of 6 trials (one retried, one with a NaN, one reusing another's run) and a
    second sweep in the same experiment; the experiment id and run id by trial key."""
    tracker = Tracker(uri)
    exp = tracker.experiment_id("direct")
    parent = tracker.start_run(
        exp, SWEEP, {schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: SWEEP}, {}
    )
    ids: dict[str, str] = {}
    for sweep in (SWEEP, "other-sweep"):
        for i in range(6):
            attempts = 2 if (sweep, i) == (SWEEP, 1) else 1
            for attempt in range(1, attempts + 1):
                tags = {
                    schema.TAG_PARENT: parent,
                    schema.TAG_KIND: schema.KIND_TRIAL,
                    schema.TAG_SWEEP: sweep,
                    schema.TAG_KEY: f"{sweep}-k{i}",
                    schema.TAG_INDEX: i,
                    schema.TAG_ATTEMPT: attempt,
                    schema.TAG_ARM: f'{{"lr": {i}}}',
                }
                if (sweep, i) == (SWEEP, 5):
                    tags[schema.TAG_REUSED] = ids[f"{SWEEP}-k0"]
                rid = tracker.start_run(exp, f"t{i}", tags, {"lr": i, "model.width": 8}, {"lr": i})
                for step in range(4):
                    tracker.log_metrics(
                        rid,
                        {"val/acc": i + step / 10, "train/loss": math.nan if i == 3 else 1.0},
                        step,
                    )
                tracker.flush()  # histories written over several batches, as in a sweep
                outcome = "finished" if attempt == attempts else schema.RETRIED
                tracker.end_run(
                    rid,
                    "FINISHED" if outcome == "finished" else "FAILED",
                    {schema.TAG_OUTCOME: outcome},
                )
                ids[f"{sweep}-k{i}"] = rid
    assert not tracker.close()
    return exp, ids


def _same_runs(a: list, b: list) -> None:
    assert [r.info.run_id for r in a] == [r.info.run_id for r in b]
    for x, y in zip(a, b):
        assert (
            x.info.status,
            x.info.start_time,
            x.info.end_time,
            x.info.experiment_id,
            x.info.artifact_uri,
            x.info.run_name,
        ) == (
            y.info.status,
            y.info.start_time,
            y.info.end_time,
            y.info.experiment_id,
            y.info.artifact_uri,
            y.info.run_name,
        )
        assert x.data.tags == y.data.tags
        assert x.data.params == y.data.params
        assert x.data.metrics.keys() == y.data.metrics.keys()
        for k, v in x.data.metrics.items():
            assert v == y.data.metrics[k] or (math.isnan(v) and math.isnan(y.data.metrics[k]))


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp, ids = _write(uri)
    return uri, exp, ids


def _mlflow_path(uri: str) -> StoreReader:
    reader = StoreReader(uri)
    reader.direct = False  # what a server gets: MLflow's search_runs
    return reader


def test_direct_reads_match_mlflow_search(store) -> None:
    uri, exp, ids = store
    direct, mlflow = StoreReader(uri), _mlflow_path(uri)
    assert direct.direct
    runs = direct.sweep_runs(exp, SWEEP)
    assert len(runs) == 7  # six trials, one of them twice
    _same_runs(runs, mlflow.sweep_runs(exp, SWEEP))
    keys = {f"{SWEEP}-k{i}" for i in range(6)} | {"absent"}
    a, b = direct.done_runs(exp, keys), mlflow.done_runs(exp, keys)
    assert a.keys() == b.keys() == keys - {"absent", f"{SWEEP}-k5"}  # a reuse is not "done"
    _same_runs(list(a.values()), [b[k] for k in a])
    pd_a, pd_b = direct.trials(SWEEP), mlflow.trials(SWEEP)
    assert len(pd_a) == 6
    assert pd_a.equals(pd_b)


def test_bulk_histories_match_metric_history(store) -> None:
    uri, _, ids = store
    reader = StoreReader(uri)
    runs = list(ids.values())
    for metric in ("val/acc", "train/loss", "absent"):
        bulk = reader.histories(runs, metric)
        for rid in runs:
            one = reader.history(rid, metric, source=rid)
            assert [(s, ts) for s, _, ts in bulk[rid]] == [(s, ts) for s, _, ts in one]
            assert all(
                x == y or (math.isnan(x) and math.isnan(y))
                for (_, x, _), (_, y, _) in zip(bulk[rid], one)
            )
    # The report's reader follows a reuse to its source run's history, one query per metric.
    trials = reader.trials(SWEEP)
    history = _Histories(reader, trials)
    reused = trials[trials["reused_from"].notna()].iloc[0]
    assert history(reused.run_id, "val/acc").equals(history(reused.reused_from, "val/acc"))
    assert history(reused.run_id, "val/acc")["step"].tolist() == [0, 1, 2, 3]


def test_sqlite_store_is_wal_and_config_written_in_place(store) -> None:
    uri, exp, ids = store
    path = uri[len("sqlite:///") :]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = StoreReader(uri)
    rid = ids[f"{SWEEP}-k2"]
    assert yaml.safe_load(reader.read_text(rid, schema.CONFIG_ARTIFACT)) == {"lr": 2}


def _same_trial(tracker: Tracker, exp: str, name: str) -> str:
    """One trial's writes, with fixed timestamps: NaN and inf values, a late point with a
    lower step (must not become the latest), a tag set twice, params, an end."""
    rid = tracker.start_run(
        exp, name, {schema.TAG_KIND: schema.KIND_TRIAL, "t": "1"}, {"lr": 0.1, "model": "mlp"}
    )
    for step in range(3):
        tracker.log_metrics(
            rid,
            {"val/acc": step / 10, "loss": [1.0, math.nan, math.inf][step]},
            step,
            timestamp_ms=1000 + step,
        )
        tracker.flush()
    tracker.log_metrics(rid, {"val/acc": 0.9}, 1, timestamp_ms=5000)
    tracker.set_tags(rid, {"t": "2"})
    tracker.end_run(rid, "FAILED", {schema.TAG_OUTCOME: "diverged", "t": "3"})
    return rid


@pytest.fixture
def postgres_uri(require_postgres: None) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    import psycopg2

    name = f"orch_direct_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def test_direct_writes_leave_what_mlflow_writes(tmp_path: Path) -> None:
    _compare_write_paths(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_direct_writes_and_reads_on_postgresql(
    postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root on a database is ./mlruns
    _compare_write_paths(postgres_uri)
    exp, _ = _write(postgres_uri)
    direct, mlflow = StoreReader(postgres_uri), _mlflow_path(postgres_uri)
    assert direct.direct
    _same_runs(direct.sweep_runs(exp, SWEEP), mlflow.sweep_runs(exp, SWEEP))
    assert direct.trials(SWEEP).equals(mlflow.trials(SWEEP))


def _compare_write_paths(uri: str) -> None:
    direct, through_mlflow = Tracker(uri), Tracker(uri)
    exp = direct.experiment_id("writes")
    assert direct._sql() is not None
    through_mlflow._engine = None  # what a server gets: log_batch and set_terminated
    a, b = _same_trial(direct, exp, "direct"), _same_trial(through_mlflow, exp, "mlflow")
    assert not direct.close() and not through_mlflow.close()
    client = direct.client
    ra, rb = client.get_run(a), client.get_run(b)
    assert ra.info.status == rb.info.status == "FAILED"
    assert ra.info.end_time is not None and rb.info.end_time is not None

    def tags(run: Any) -> dict[str, str]:
        return {
            k: v for k, v in run.data.tags.items() if k not in (schema.TAG_TOKEN, "mlflow.runName")
        }

    assert tags(ra) == tags(rb) and tags(ra)["t"] == "3"
    assert ra.data.params == rb.data.params
    assert ra.data.metrics.keys() == rb.data.metrics.keys()
    for k in ra.data.metrics:
        x, y = ra.data.metrics[k], rb.data.metrics[k]
        assert x == y or (math.isnan(x) and math.isnan(y)), k
    for key in ("val/acc", "loss"):
        ha, hb = client.get_metric_history(a, key), client.get_metric_history(b, key)
        assert [(m.step, m.timestamp, str(m.value)) for m in ha] == [
            (m.step, m.timestamp, str(m.value)) for m in hb
        ]


def test_an_end_waits_with_its_metrics_while_the_store_is_locked(tmp_path: Path) -> None:
    """A write that fails (sqlite held by another process's write transaction) keeps the
    run's metrics, outcome tag and end together; they arrive in one later flush."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("locked")
    rid = tracker.start_run(exp, "t", {}, {"lr": 1})
    tracker.log_metrics(rid, {"val/acc": 0.5}, 0)
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # a writer elsewhere: this driver's writes must wait
    engine = tracker._sql()
    engine.dispose()
    import sqlalchemy

    sqlalchemy.event.listen(
        engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout = 0")
    )
    tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
    run = tracker.client.get_run(rid)
    assert run.info.status == "RUNNING" and schema.TAG_OUTCOME not in run.data.tags
    holder.rollback()
    holder.close()
    assert tracker.close(wait_s=30) == []
    run = tracker.client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.TAG_OUTCOME] == "finished" and run.data.metrics["val/acc"] == 0.5
