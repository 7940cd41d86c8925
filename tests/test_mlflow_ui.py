"""Where a sweep is in MLflow's UI: the URLs the sweep prints, the experiment's kind, the
parent's description and live counts, and a real headless Chromium on ``mlflow ui``
finding the parent run, its summary and its child runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep import mlflow_ui

ROOT = Path(__file__).resolve().parent.parent


def test_where_to_look_for_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = mlflow_ui.where_to_look("sqlite:///mlflow.db", "3", "abc")
    assert lines[0] == (
        f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db --port 5000"
    )
    assert lines[1] == "parent run: http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert lines[2] == (
        "report:     http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/report/report.html"
    )


def test_where_to_look_for_a_server() -> None:
    lines = mlflow_ui.where_to_look("https://mlflow.example.org/", "7", "r1")
    assert lines == [
        "parent run: https://mlflow.example.org/#/experiments/7/runs/r1",
        "report:     https://mlflow.example.org/#/experiments/7/runs/r1/artifacts/"
        "report/report.html",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real sweep of a tiny task (2 arms x 2 seeds) into a sqlite store in a tmp dir."""
    work = tmp_path_factory.mktemp("ui")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "--task",
            "quadratic",
            "--tasks",
            "tests.plugins.quadratic",
            "x=0.1,0.5",
            "seed=range(2)",
            "steps=2",
            "sweep.metric=final",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"parent run: http://127\.0\.0\.1:5000/#/experiments/(\w+)/runs/(\w+)", r.stderr)
    assert m, r.stderr
    return {
        "work": work,
        "env": env,
        "stderr": r.stderr,
        "db": work / "mlflow.db",
        "experiment_id": m.group(1),
        "run_id": m.group(2),
    }


@pytest.mark.slow
def test_sweep_tells_where_to_look(swept: dict) -> None:
    err, db = swept["stderr"], swept["db"]
    assert f"mlflow ui --backend-store-uri sqlite:///{db} --port 5000" in err
    assert re.search(r"report file: .*/report/report\.html", err)
    # Not a terminal: one plain line per ended trial, no progress bar.
    assert len(re.findall(r"^\[\d/4\] x=0\.\d seed=\d: finished", err, re.M)) == 4
    client = MlflowClient(f"sqlite:///{db}")
    experiment_id, run_id = swept["experiment_id"], swept["run_id"]
    assert (
        client.get_experiment(experiment_id).tags[mlflow_ui.EXPERIMENT_KIND_TAG]
        == mlflow_ui.MODEL_TRAINING
    )
    parent = client.get_run(run_id)
    note = parent.data.tags[mlflow_ui.NOTE_TAG]
    assert f"sweep `{parent.data.tags['orch.sweep_id']}`: 4 trials: 4 finished." in note
    assert "Best `final` = -0.04 (x=0.5 seed=" in note
    assert parent.data.metrics["trials/finished"] == 4
    assert parent.data.metrics["trials/running"] == 0
    # Published while it ran (the first at once), then the final count.
    assert len(client.get_metric_history(run_id, "trials/done")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("command", [["ls"], ["show", "quadratic"]])
def test_ls_and_show_fit_80_columns(swept: dict, command: list[str]) -> None:
    sweep_id = (
        MlflowClient(f"sqlite:///{swept['db']}").get_run(swept["run_id"]).data.tags["orch.sweep_id"]
    )
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *command],
        cwd=swept["work"],
        env={**swept["env"], "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert sweep_id in r.stdout  # whole, to paste into orch show
    assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
    wide = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *command, "--wide"],
        cwd=swept["work"],
        env={**swept["env"], "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wide.returncode == 0, wide.stderr
    if command == ["ls"]:
        assert "study" not in r.stdout.splitlines()[0] and "study" in wide.stdout


@pytest.mark.slow
def test_sweep_in_mlflow_ui_in_a_real_browser(swept: dict, tmp_path: Path) -> None:
    from tests.browser import CHROMIUM, Browser

    db, experiment_id, run_id = swept["db"], swept["experiment_id"], swept["run_id"]
    client = MlflowClient(f"sqlite:///{db}")
    sweep_id = client.get_run(run_id).data.tags["orch.sweep_id"]
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make browser-check-deps installs it)")
    port = _free_port()
    log = open(tmp_path / "mlflow_ui.log", "wb")
    ui = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=swept["work"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", ui)
        browser = Browser(tmp_path / "chromium-profile")
        base = f"http://127.0.0.1:{port}"
        # The parent run's page: its description is the sweep's summary.
        browser.open(mlflow_ui.run_url(base, experiment_id, run_id))
        browser.wait_text(sweep_id, "4 trials: 4 finished", "Best final")
        browser.screenshot(tmp_path / "parent.png")
        # The runs table: the experiment opens as training runs; the parent's row expands
        # to its child runs.
        browser.open(f"{base}/#/experiments/{experiment_id}/runs")
        browser.wait_text("Training runs", sweep_id)
        browser.eval(
            "document.querySelector('button[data-component-id$=\"runnamecellrenderer"
            ".tsx_46\"]').click()"
        )
        children = [
            run.info.run_name
            for run in client.search_runs(
                [experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
            )
        ]
        assert len(children) == 4
        browser.wait_text(*children)
        browser.screenshot(tmp_path / "runs.png")
    finally:
        if browser is not None:
            browser.close()
        os.killpg(ui.pid, 15)
        ui.wait(timeout=60)
        log.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout}s")
