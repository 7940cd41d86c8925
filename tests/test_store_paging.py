"""The store reader pages: a sweep of 60,000 trial runs is read back whole.

The runs are inserted into MLflow's tables in bulk (one transaction), not trained and not
created one request at a time: 60,000 ``create_run`` calls would take minutes, and what is
under test is the reading side.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest

from orchestrator import Client
from orchestrator.store import schema
from orchestrator.store.reader import PAGE, StoreReader
from orchestrator.store.writer import Tracker

N = 60_000


def _fill(uri: str, sweep_id: str) -> str:
    """A parent run and ``N`` finished trial runs under it; the experiment id."""
    tracker = Tracker(uri)
    exp = tracker.experiment_id("paging")
    parent = tracker.start_run(
        exp,
        sweep_id,
        {
            schema.TAG_KIND: schema.KIND_SWEEP,
            schema.TAG_SWEEP: sweep_id,
            schema.TAG_METRIC: "val/acc",
        },
        {},
    )
    tracker.close()
    now = int(time.time() * 1000)
    runs, tags, params, metrics = [], [], [], []
    for i in range(N):
        rid = uuid.uuid4().hex
        runs.append(
            (
                rid,
                f"t{i}",
                "LOCAL",
                "",
                "",
                "test",
                "FINISHED",
                now + i,
                now + i,
                "",
                "active",
                "",
                int(exp),
            )
        )
        for k, v in {
            schema.TAG_PARENT: parent,
            schema.TAG_KIND: schema.KIND_TRIAL,
            schema.TAG_SWEEP: sweep_id,
            schema.TAG_KEY: f"k{i}",
            schema.TAG_INDEX: str(i),
            schema.TAG_OUTCOME: "finished",
            schema.TAG_ARM: json.dumps({"lr": i % 10}),
        }.items():
            tags.append((k, v, rid))
        params.append(("seed", str(i), rid))
        metrics.append(("val/acc", i / N, now, 0, False, rid))
    # Plain sqlite3 executemany on tuples: SQLAlchemy's per-row parameter handling made
    # the fill most of this test's time.
    with sqlite3.connect(uri[len("sqlite:///") :]) as conn:
        conn.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, "
            "entry_point_name, user_id, status, start_time, end_time, "
            "source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        conn.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags)
        conn.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)
        conn.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, "
            "run_uuid) VALUES (?, ?, ?, ?, ?, ?)",
            metrics,
        )
    return exp


@pytest.mark.slow
def test_sixty_thousand_trials_read_back_through_client_and_resume_path(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _fill(uri, "paging-sweep")
    assert N > PAGE  # more than one page, or the test proves nothing

    df = Client(uri).trials("paging-sweep")
    assert len(df) == N
    assert df.trial_index.tolist() == list(range(N))
    assert df["val/acc"].max() == (N - 1) / N

    # What `orch resume` and a new sweep's dedup read.
    reader = StoreReader(uri)
    assert len(reader.sweep_runs(exp, "paging-sweep")) == N
    done = reader.done_runs(exp, {f"k{i}" for i in range(0, N, 7)} | {"absent"})
    assert len(done) == len(range(0, N, 7))
