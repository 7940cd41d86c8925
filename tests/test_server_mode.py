"""Server mode: a real ``mlflow server`` on PostgreSQL with served artifacts, two
``orch sweep`` processes writing into it at once, each on its own local Ray cluster.
Nothing may be lost or duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import Client

ROOT = Path(__file__).resolve().parent.parent
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PG = "postgresql://postgres@127.0.0.1:5432"
STEPS = {"a": 5, "b": 6}  # the two sweeps differ, so neither reuses the other's trials
SEEDS = 3


@pytest.fixture
def fresh_database(require_postgres) -> Iterator[str]:
    """A new PostgreSQL database for the server's backend store, dropped afterwards."""
    import psycopg2

    name = f"orch_server_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(f"{PG}/test")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        # MLflow maps a bare postgresql:// to psycopg 3; this venv has psycopg2.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(fresh_database: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` on the fresh database; yields its URI and artifacts directory."""
    port, artifacts = _free_port(), tmp_path / "served-artifacts"
    log = open(tmp_path / "server.log", "ab")
    proc = subprocess.Popen(
        [
            MLFLOW,
            "server",
            "--backend-store-uri",
            fresh_database,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri, artifacts
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def _conf(tmp: Path) -> Path:
    """A study ``served`` running the ``slow`` plugin task (3 seeds)."""
    conf = tmp / "conf"
    (conf / "task").mkdir(parents=True)
    (conf / "study").mkdir()
    (conf / "task" / "slow.yaml").write_text(
        "# @package _global_\n"
        + yaml.safe_dump({"task": {"name": "slow"}, "seed": 0, "steps": 5, "step_s": 0.2})
    )
    (conf / "study" / "served.yaml").write_text(
        "# @package _global_\n"
        + yaml.safe_dump(
            {
                "defaults": [{"override /task": "slow"}],
                "study": {"name": "served", "description": "two sweeps into one server"},
                "sweep": {"seeds": SEEDS, "metric": "final"},
            },
            sort_keys=False,
        )
    )
    return conf


def test_two_sweeps_into_one_server_lose_and_duplicate_nothing(
    mlflow_server, tmp_path: Path
) -> None:
    uri, served = mlflow_server
    conf = _conf(tmp_path)
    procs: dict[str, subprocess.Popen] = {}
    ray_dirs = []
    try:
        for name, steps in STEPS.items():
            # Each driver starts its own local Ray, with its own (short: socket paths are
            # limited to 107 bytes) temp dir, so the two never share a cluster.
            ray_tmp = tempfile.mkdtemp(prefix="orchray", dir="/tmp")
            ray_dirs.append(ray_tmp)
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "sweep",
                    "served",
                    f"steps={steps}",
                    "--config-dir",
                    str(conf),
                    "--tasks",
                    "tests.plugins.failing_tasks",
                    "--tracking-uri",
                    uri,
                ],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        outputs = {name: p.communicate(timeout=500) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for d in ray_dirs:
            shutil.rmtree(d, ignore_errors=True)
    for name, p in procs.items():
        assert p.returncode == 0, outputs[name][1]
        assert "not written" not in outputs[name][1]

    client, ml = Client(uri), MlflowClient(uri)
    sweeps = client.sweeps()
    assert len(sweeps) == 2 and set(sweeps.status) == {"FINISHED"}
    assert list(sweeps.n_trials) == [SEEDS, SEEDS] and list(sweeps.finished) == [SEEDS, SEEDS]
    all_keys: list[str] = []
    for sweep in sweeps.itertuples():
        df = client.trials(sweep.sweep_id)
        assert len(df) == SEEDS and (df.outcome == "finished").all()
        assert sorted(df.seed) == list(range(SEEDS))
        children = ml.search_runs(
            [sweep.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep.run_id}'"
        )
        assert len(children) == SEEDS  # no run created twice (a retried create_run)
        steps = int(children[0].data.params["steps"])
        for run in children:
            history = ml.get_metric_history(run.info.run_id, "score")
            assert sorted(p.step for p in history) == list(range(steps))  # complete, no dups
            assert run.data.metrics["final"] == steps + int(run.data.params["seed"])
            # Artifacts went through the server (mlflow-artifacts:/), into its destination.
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            local = ml.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
            assert yaml.safe_load(Path(local).read_text())["steps"] == steps
        all_keys += [r.data.tags["orch.trial_key"] for r in children]
    assert len(all_keys) == len(set(all_keys)) == 2 * SEEDS
    assert len(list(served.rglob("config.yaml"))) == 2 * SEEDS + 2  # children + parents
