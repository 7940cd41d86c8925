"""The Hydra launcher plugin (``hydra/launcher=orch``) with a real Hydra app, Ray and sqlite.

``tests/plugins/hydra_app/train.py`` is a plain ``@hydra.main`` app that logs to MLflow and
fails on x=2. It runs as a subprocess in ``tmp_path`` (its own driver and local Ray, shut
down when it exits); every file it writes lands there. Hydra's own ``LauncherTestSuite``
and ``BatchedSweeperTestSuite`` run in-process against the launcher on the shared Ray
session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    LauncherTestSuite,
)
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from orchestrator.store import schema

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "plugins" / "hydra_app" / "train.py"

pytestmark = pytest.mark.slow


def _multirun(
    tmp_path: Path, launcher: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python train.py -m LAUNCHER x=1,2,3`` in ``tmp_path``; no process of it may remain."""
    args = [
        sys.executable,
        str(APP),
        "-m",
        *launcher,
        "x=1,2,3",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    # A session of its own: whatever it started (Ray's GCS, raylet, workers) can be found.
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        # Ray's processes end within moments of the driver's exit; a minute is generous.
        _, left = psutil.wait_procs(_session_processes(proc.pid), timeout=60)
        for p in left:
            p.kill()
    assert not left, f"processes left behind: {[p.info for p in left]}"
    return subprocess.CompletedProcess(args, proc.returncode, out)


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if os.getsid(p.pid) == sid and p.pid != os.getpid():
                found.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _children(client: MlflowClient, experiment_id: str, parent: str) -> list:
    return client.search_runs([experiment_id], f"tags.`{schema.TAG_PARENT}` = '{parent}'")


def test_hydra_app_unchanged_on_orch(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    orch = ["hydra/launcher=orch", f"hydra.launcher.tracking_uri={uri}"]
    first = _multirun(tmp_path, orch)
    # What Hydra's basic launcher gives for the same multirun (its in-job MLflow runs go to
    # a store of their own).
    (tmp_path / "basic").mkdir()
    basic = _multirun(
        tmp_path / "basic", [], {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'basic.db'}"}
    )
    assert basic.returncode == 1 and "x=2 is the input this app fails on" in basic.stdout
    assert first.returncode == basic.returncode, first.stdout
    assert "ValueError: x=2 is the input this app fails on" in first.stdout

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("train")  # the app's job name
    parents = client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_KIND}` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    assert parents[0].data.metrics["trials/finished"] == 2
    assert parents[0].data.metrics["trials/failed"] == 1
    children = {r.data.params["x"]: r for r in _children(client, exp.experiment_id, parent)}
    assert sorted(children) == ["1", "2", "3"]

    for x, run in children.items():
        rid = run.info.run_id
        assert run.data.params["lr"] == "0.01"  # logged by the job itself
        assert run.data.tags["app"] == "hydra_app"
        history = [(m.step, m.value) for m in client.get_metric_history(rid, "loss")]
        assert history == [(s, int(x) * 2.0 / (s + 1)) for s in range(3)]
        note = Path(client.download_artifacts(rid, "notes/x.txt", str(tmp_path / rid)))
        assert note.read_text() == f"x={x}"
        assert (tmp_path / "multirun" / str(int(x) - 1) / ".hydra" / "config.yaml").exists()

    failed = children["2"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags[schema.TAG_OUTCOME] == "failed"
    assert failed.data.tags[schema.TAG_ERROR] == "ValueError: x=2 is the input this app fails on"
    trace = Path(
        client.download_artifacts(
            failed.info.run_id, "error/traceback.txt", str(tmp_path / "trace")
        )
    )
    assert "raise ValueError" in trace.read_text()
    assert "return_value" not in failed.data.metrics
    for x in ("1", "3"):
        run = children[x]
        assert run.info.status == "FINISHED" and run.data.tags[schema.TAG_OUTCOME] == "finished"
        assert run.data.metrics["return_value"] == int(x) * 2.0
    assert (tmp_path / "multirun" / "multirun.yaml").exists()

    # The same command again: the finished jobs are not trained again (their runs are
    # referenced, as orch sweeps do); the failed one runs again.
    trained_before = {r.info.run_id for r in client.search_runs([exp.experiment_id])}
    second = _multirun(tmp_path, orch)
    assert second.returncode == first.returncode, second.stdout
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`{schema.TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(parents) == 2
    rerun = {
        r.data.params["x"]: r for r in _children(client, exp.experiment_id, parents[0].info.run_id)
    }
    assert rerun["1"].data.tags[schema.TAG_REUSED] == children["1"].info.run_id
    assert rerun["3"].data.tags[schema.TAG_REUSED] == children["3"].info.run_id
    assert rerun["3"].data.metrics["return_value"] == 6.0
    assert schema.TAG_REUSED not in rerun["2"].data.tags
    assert rerun["2"].data.tags[schema.TAG_OUTCOME] == "failed"
    trained = [
        r
        for r in client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_KIND}` = 'trial'")
        if schema.TAG_REUSED not in r.data.tags
    ]
    finished = [r for r in trained if r.data.tags[schema.TAG_OUTCOME] == "finished"]
    assert {r.info.run_id for r in finished} <= trained_before and len(finished) == 2
    assert len(trained) == 4  # 3 of the first multirun + x=2 again

    for name in ("outputs", "multirun", "mlruns", "mlflow.db"):
        assert not (APP.parent / name).exists()


@pytest.fixture
def store_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_session) -> None:
    """Hydra's suites run in-process: a fresh store per test, and the cwd in tmp_path (MLflow
    puts a sqlite store's artifacts in ./mlruns)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("hydra_restore_singletons", "store_in_tmp")
def test_rerun_returns_the_stored_values(hydra_sweep_runner, tmp_path: Path) -> None:
    """A re-run gives Hydra the finished jobs' stored return values without running them."""

    def task(cfg: DictConfig) -> dict:
        return {"foo": cfg.foo, "bar": cfg.bar, "note": "not a metric"}

    def sweep() -> list:
        with hydra_sweep_runner(
            calling_file=None,
            calling_module="hydra.test_utils.a_module",
            task_function=task,
            config_path="configs",
            config_name="compose.yaml",
            overrides=["hydra/launcher=orch", "bar=100,200"],
            temp_dir=tmp_path / "runs",
        ) as run:
            return [r.return_value for batch in run.returns for r in batch]

    expected = [
        {"foo": 10, "bar": 100, "note": "not a metric"},
        {"foo": 10, "bar": 200, "note": "not a metric"},
    ]
    assert sweep() == expected
    assert sweep() == expected
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("a_module").experiment_id],
        f"tags.`{schema.TAG_KIND}` = 'trial'",
    )
    reused = [r for r in runs if schema.TAG_REUSED in r.data.tags]
    assert len(runs) == 4 and len(reused) == 2
    assert {r.data.metrics["bar"] for r in reused} == {100.0, 200.0}


@pytest.mark.usefixtures("store_in_tmp")
@pytest.mark.parametrize("launcher_name, overrides", [("orch", [])])
class TestOrchLauncher(LauncherTestSuite):
    pass


@pytest.mark.usefixtures("store_in_tmp")
@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("orch", ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])],
)
class TestOrchLauncherBatched(BatchedSweeperTestSuite):
    pass
