"""``orch ls`` and ``orch show`` on an sqlite store read its tables without MLflow, and say
exactly what they said through MLflow's client.

The store is written by the real ``Tracker``; each command's output through
``orchestrator.store.tables`` is compared with the same command through ``Client`` (the path a
server, or a store MLflow must open, still takes), and a store ``orch ls`` creates with what
MLflow itself creates.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import sqlite3
from argparse import Namespace
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.store import schema
from orchestrator.store.tables import SweepLine, open_sqlite, started_minute
from orchestrator.store.writer import Tracker
from orchestrator.verdicts import Verdict, verdicts_to_json

cli = importlib.import_module("orchestrator.cli.main")  # the package exports main()
SWEEPS = ["optimizers-20260101-000000-aaaa", "optimizers-20260101-000000-abcd", "hpo-20260102-1"]


def _write(uri: str) -> None:
    """Three sweeps in two experiments: retried and resumed attempts, a NaN and a missing
    best, another metric, a running sweep, one sweep without verdicts; a deleted run."""
    tracker = Tracker(uri)
    for n, sweep in enumerate(SWEEPS):
        study = sweep.split("-")[0]
        exp = tracker.experiment_id(study)
        metric = "val/loss" if study == "hpo" else "val/acc"
        parent = tracker.start_run(
            exp,
            sweep,
            {
                schema.TAG_KIND: schema.KIND_SWEEP,
                schema.TAG_SWEEP: sweep,
                schema.TAG_STUDY: study,
                schema.TAG_N_TRIALS: 4,
                schema.TAG_METRIC: metric,
                schema.TAG_AXES: json.dumps(["optimizer", "seed"]),
            },
            {},
        )
        for i in range(4):
            for attempt in (1, 2) if i == 1 else (1,):
                tags = {
                    schema.TAG_PARENT: parent,
                    schema.TAG_KIND: schema.KIND_TRIAL,
                    schema.TAG_SWEEP: sweep,
                    schema.TAG_KEY: f"{sweep}-{i}",
                    schema.TAG_INDEX: i,
                    schema.TAG_ATTEMPT: attempt,
                    schema.TAG_ARM: json.dumps({"optimizer": ["sgd", "adam"][i % 2]}),
                }
                if i == 3:
                    tags[schema.TAG_RESUMED_STEP] = 2
                    tags[schema.TAG_ERROR] = "worker died " * 8
                rid = tracker.start_run(exp, f"t{i}", tags, {"seed": i, "train.lr": 0.1})
                if i != 2:  # a trial without the metric
                    value = math.nan if i == 0 and n == 1 else 0.5 + i / 10
                    tracker.log_metrics(rid, {metric: value}, 0)
                outcome = schema.RETRIED if attempt == 1 and i == 1 else "finished"
                tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: outcome})
        metrics = {"trials/finished": 4, "trials/failed": 0}
        if n == 0:
            metrics[f"best/{metric}"] = math.nan
        elif n == 1:
            metrics[f"best/{metric}"] = 0.8
        tracker.log_metrics(parent, metrics, 0)
        if n != 2:
            verdict = Verdict(
                "OPT-1", "s", "notes", "paired t", "confirmed", 0.05, 0.01, 0.09, 0.01, 4, 4,
                "paired t", "",
            )  # fmt: skip
            tracker.log_text(parent, verdicts_to_json([verdict]), schema.VERDICTS_ARTIFACT)
        if n != 2:
            tracker.end_run(parent, "FINISHED")
    assert not tracker.close()
    deleted = Tracker(uri)
    gone = deleted.start_run(
        deleted.experiment_id("optimizers"),
        "gone",
        {schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: "optimizers-gone"},
        {},
    )
    deleted.client.delete_run(gone)
    assert not deleted.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('listing') / 'mlflow.db'}"
    _write(uri)
    return uri


def _console() -> Console:
    return Console(file=io.StringIO(), width=100, soft_wrap=True)


def _text(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def _same(a: SweepLine, b: SweepLine) -> bool:
    def norm(x: SweepLine) -> tuple:
        best = None if x.best is None or math.isnan(x.best) else x.best
        return (*[getattr(x, k) for k in SweepLine.__dataclass_fields__ if k != "best"], best)

    return norm(a) == norm(b)


def test_ls_lines_are_the_clients(store: str) -> None:
    tables = open_sqlite(store)
    assert tables is not None
    lines = tables.sweeps()
    tables.close()
    client = cli.client_sweeps(store)
    assert [s.sweep_id for s in lines] == SWEEPS  # oldest first; the deleted run left out
    assert len(lines) == len(client) and all(_same(a, b) for a, b in zip(lines, client))


def test_ls_start_is_printed_as_pandas_printed_it() -> None:
    import pandas as pd

    for ms in (0, 1_796_023_811_245, 1_796_023_859_999, 1_796_023_860_000):
        assert started_minute(ms) == str(pd.to_datetime(ms, unit="ms"))[:16]
    assert started_minute(None) == str(pd.to_datetime(None, unit="ms"))[:16]


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("sweep_id", [*SWEEPS, "optimizers-20260101-000000-ab", "hpo", "nope"])
def test_show_says_what_the_client_said(store: str, sweep_id: str, wide: bool) -> None:
    args = Namespace(sweep_id=sweep_id, tracking_uri=store, wide=wide)
    results = []
    for command in (cli.cmd_show, cli.show_with_client):
        out, err = _console(), _console()
        try:
            rc: int | str = command(args, out, err)
        except KeyError as e:  # main() prints it, exit 2
            rc = f"KeyError: {e.args[0]}"
        results.append((rc, _text(out), _text(err)))
    assert results[0] == results[1]
    if sweep_id == SWEEPS[1]:
        assert "OPT-1" in results[0][1] and "resumed from its checkpoint" in results[0][1]


def test_a_prefix_matching_several_sweeps_is_refused(store: str) -> None:
    tables = open_sqlite(store)
    assert tables is not None
    with pytest.raises(KeyError, match="matches 2 sweeps"):
        tables.sweep_run("optimizers-2026")
    with pytest.raises(KeyError, match="no sweep"):
        tables.sweep_run("Optimizers")  # case-sensitive, as MLflow's LIKE
    tables.close()


def test_a_new_store_is_the_one_mlflow_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    ours, theirs = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    tables = open_sqlite(f"sqlite:///{ours}")
    assert tables is not None and tables.sweeps() == []
    tables.close()
    theirs.parent.mkdir()
    MlflowClient(f"sqlite:///{theirs}").search_experiments()

    def content(path: Path) -> tuple:
        con = sqlite3.connect(path)
        try:
            return (
                con.execute(
                    "SELECT experiment_id, name, artifact_location, lifecycle_stage, workspace, "
                    "creation_time = last_update_time FROM experiments"
                ).fetchall(),
                con.execute("SELECT version_num FROM alembic_version").fetchall(),
                [
                    # MLflow's batch migrations write a table's constraints in an order that
                    # varies between runs (a set's): the same schema, clauses in any order.
                    (kind, name, sorted((sql or "").split(", \n\t")))
                    for kind, name, sql in con.execute(
                        "SELECT type, name, sql FROM sqlite_master ORDER BY name"
                    )
                ],
            )
        finally:
            con.close()

    assert content(ours) == content(theirs)
    assert content(ours)[0][0][2] == f"{tmp_path}/mlruns/0"
    assert sorted(p.name for p in ours.parent.iterdir()) == ["mlflow.db"]
    # And MLflow opens it as its own.
    assert MlflowClient(f"sqlite:///{ours}").get_experiment("0").name == "Default"


def test_mlflow_opens_the_store_where_tables_would_not_reproduce_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", str(tmp_path / "root"))
    assert open_sqlite(f"sqlite:///{tmp_path / 'mlflow.db'}") is None
    monkeypatch.delenv("_MLFLOW_SERVER_ARTIFACT_ROOT")
    assert open_sqlite("http://127.0.0.1:5000") is None
    assert not (tmp_path / "mlflow.db").exists()
