"""Nothing lost: a worker killed mid-trial, a trial raising or going NaN, a trial over its
memory limit, the tracking server unreachable or lost mid-sweep, the local cluster's
secure defaults. Real Ray, real MLflow (sqlite, or a real ``mlflow server`` subprocess).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main
from orchestrator.store.create import open_store

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "tests.plugins.failing_tasks"
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


# -- helpers ----------------------------------------------------------------------------------
def user_conf(
    tmp: Path,
    task: str,
    study: str,
    fields: dict[str, Any],
    sweep: dict[str, Any],
    resources: dict[str, Any] | None = None,
) -> Path:
    """A ``--config-dir`` holding ``task/TASK.yaml`` and ``study/STUDY.yaml`` for a plugin task."""
    conf = tmp / "conf"
    (conf / "task").mkdir(parents=True, exist_ok=True)
    (conf / "study").mkdir(exist_ok=True)
    (conf / "task" / f"{task}.yaml").write_text(
        "# @package _global_\n" + yaml.safe_dump({"task": {"name": task}, "seed": 0, **fields})
    )
    study_cfg: dict[str, Any] = {
        "defaults": [{"override /task": task}],
        "study": {"name": study, "description": f"{task} test"},
        "sweep": sweep,
    }
    if resources:
        study_cfg["resources"] = resources
    (conf / "study" / f"{study}.yaml").write_text(
        "# @package _global_\n" + yaml.safe_dump(study_cfg, sort_keys=False)
    )
    return conf


def trial_runs(uri: str, study: str) -> list:
    """Every trial run (attempts included) of the study's experiment."""
    # Opened as orch opens it: a plain MlflowClient would create a new sqlite store by
    # migrating it in place, while the sweep finds it half-migrated (exit 1).
    open_store(uri)
    ml = MlflowClient(uri)
    exp = ml.get_experiment_by_name(study)
    if exp is None:
        return []
    return list(ml.search_runs([exp.experiment_id], "tags.`orch.kind` = 'trial'", max_results=1000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_trial_worker(pid: int) -> bool:
    """Only a Ray TrialWorker process may be killed by these tests."""
    try:
        return "TrialWorker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


# -- 1. a worker killed mid-trial ------------------------------------------------------------
def test_worker_killed_mid_trial_is_retried(ray_session, tracking_uri: str, tmp_path: Path) -> None:
    """SIGKILL the process running a trial: that attempt ends FAILED (outcome retried), the
    trial runs again on a fresh worker and finishes; Client.trials shows one row per trial.
    The finished attempt also carries the worker's system metrics."""
    conf = user_conf(
        tmp_path,
        "slow",
        "slowpoke",
        {"steps": 8, "step_s": 0.5},
        {"seeds": 2, "metric": "final", "retries": 1},
    )
    codes: list[int] = []
    sweep = threading.Thread(
        target=lambda: codes.append(
            main(
                [
                    "sweep",
                    "slowpoke",
                    "--config-dir",
                    str(conf),
                    "--tasks",
                    PLUGINS,
                    "--tracking-uri",
                    tracking_uri,
                ]
            )
        )
    )
    sweep.start()

    victim: dict[str, Any] = {}
    deadline = time.monotonic() + 180
    while not victim and time.monotonic() < deadline and sweep.is_alive():
        try:
            for run in trial_runs(tracking_uri, "slowpoke"):
                # Mid-trial: it is running and has reported at least one step.
                if (
                    run.info.status == "RUNNING"
                    and "score" in run.data.metrics
                    and is_trial_worker(int(run.data.tags["orch.pid"]))
                ):
                    victim = {
                        "pid": int(run.data.tags["orch.pid"]),
                        "key": run.data.tags["orch.trial_key"],
                        "run": run.info.run_id,
                    }
                    break
        except Exception:  # noqa: BLE001 - the store is being created by the sweep
            pass
        time.sleep(0.2)
    assert victim, "no trial was seen running"
    os.kill(victim["pid"], signal.SIGKILL)
    sweep.join(timeout=300)
    assert not sweep.is_alive() and codes == [0]

    attempts = [
        r
        for r in trial_runs(tracking_uri, "slowpoke")
        if r.data.tags["orch.trial_key"] == victim["key"]
    ]
    by_attempt = {int(r.data.tags["orch.attempt"]): r for r in attempts}
    assert sorted(by_attempt) == [1, 2]
    first, second = by_attempt[1], by_attempt[2]
    assert first.info.run_id == victim["run"]
    assert first.data.tags["orch.outcome"] == "retried" and first.info.status == "FAILED"
    assert "ActorDiedError" in first.data.tags["orch.error"]
    assert second.data.tags["orch.outcome"] == "finished" and second.info.status == "FINISHED"
    assert int(second.data.tags["orch.pid"]) != victim["pid"]  # a fresh worker process
    assert second.data.metrics["final"] == 8 + int(second.data.params["seed"])

    client = Client(tracking_uri)
    df = client.trials(client.sweeps().sweep_id.iloc[0])
    assert len(df) == 2 and (df.outcome == "finished").all()
    assert df.set_index("trial_key").loc[victim["key"], "attempt"] == 2

    # System metrics sampled in the worker (every 2 s) over a 4 s trial, logged by the driver.
    ml = MlflowClient(tracking_uri)
    rss = ml.get_metric_history(second.info.run_id, "system/process_rss_megabytes")
    cpu = ml.get_metric_history(second.info.run_id, "system/cpu_utilization_percentage")
    assert len(rss) >= 2 and len(cpu) >= 2
    assert all(50 < p.value < 5000 for p in rss)  # a Python+torch worker, in MB
    assert [p.step for p in rss] == list(range(len(rss)))
    assert second.info.start_time - 1000 <= rss[0].timestamp <= second.info.end_time
    assert "system/system_memory_usage_megabytes" in second.data.metrics


# -- 2. a trial raising, a trial going NaN ----------------------------------------------------
def test_raise_and_nan_are_recorded_and_sweep_goes_on(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    conf = user_conf(
        tmp_path,
        "nan",
        "nans",
        {"nan_seeds": [1], "raise_seeds": [2]},
        {"seeds": 3, "metric": "loss", "mode": "min"},
    )
    assert (
        main(
            [
                "sweep",
                "nans",
                "--config-dir",
                str(conf),
                "--tasks",
                PLUGINS,
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 0
    )
    runs = {int(r.data.params["seed"]): r for r in trial_runs(tracking_uri, "nans")}
    assert sorted(runs) == [0, 1, 2]
    ok, nan, raised = runs[0], runs[1], runs[2]
    assert ok.data.tags["orch.outcome"] == "finished" and ok.info.status == "FINISHED"

    # A "finished" trial whose final metric is NaN is diverged (FAILED), with the reason.
    assert nan.data.tags["orch.outcome"] == "diverged" and nan.info.status == "FAILED"
    assert nan.data.tags["orch.error"] == "loss is nan at the end of the trial"

    ml = MlflowClient(tracking_uri)
    assert raised.data.tags["orch.outcome"] == "failed" and raised.info.status == "FAILED"
    assert raised.data.tags["orch.error"] == "ValueError: raised at step 1 (seed 2)"
    assert [a.path for a in ml.list_artifacts(raised.info.run_id, "error")] == [
        "error/traceback.txt"
    ]
    tb = Path(ml.download_artifacts(raised.info.run_id, "error/traceback.txt", str(tmp_path)))
    text = tb.read_text()
    assert text.startswith("Traceback") and "failing_tasks.py" in text
    assert "ValueError: raised at step 1 (seed 2)" in text

    parent = Client(tracking_uri).sweeps().iloc[0]
    assert parent.status == "FINISHED" and parent.finished == 1 and parent.failed == 1
    assert parent.best == 0.5  # the NaN trial is not the best, though min(nan, ...) is nan


# -- 3. a trial over resources.memory_mb ------------------------------------------------------
def test_memory_limit_stops_the_trial_and_replaces_its_worker(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    """The hog grows to 3000 MB in 50 MB steps; the limit is 1200 MB. The watchdog ends the
    trial as failed (out of memory) and the slot's next trial runs in a fresh process."""
    conf = user_conf(
        tmp_path,
        "hog",
        "hogs",
        {"total_mb": 3000},
        {"axes": {"total_mb": "3000,100"}, "metric": "held_mb", "max_concurrent": 1},
        resources={"memory_mb": 1200},
    )
    assert (
        main(
            [
                "sweep",
                "hogs",
                "--config-dir",
                str(conf),
                "--tasks",
                PLUGINS,
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 0
    )
    runs = {int(r.data.params["total_mb"]): r for r in trial_runs(tracking_uri, "hogs")}
    hog, small = runs[3000], runs[100]
    assert hog.data.tags["orch.outcome"] == "failed" and hog.info.status == "FAILED"
    error = hog.data.tags["orch.error"]
    assert error.startswith("MemoryLimitExceeded: out of memory: rss ")
    assert "MB > limit 1200 MB (resources.memory_mb)" in error
    rss = int(error.split("rss ")[1].split(" MB")[0])
    assert 1200 < rss < 3000  # stopped on the way, not after the whole 3000 MB
    assert small.data.tags["orch.outcome"] == "finished"
    assert small.data.tags["orch.pid"] != hog.data.tags["orch.pid"]
    deadline = time.monotonic() + 30  # the hog's process was killed, its memory freed
    while psutil.pid_exists(int(hog.data.tags["orch.pid"])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not is_trial_worker(int(hog.data.tags["orch.pid"]))


def test_ray_out_of_memory_is_named_not_a_silent_death() -> None:
    """Ray's memory monitor surfaces as ``OutOfMemoryError``; a plain SIGKILL, whose message
    merely lists the OOM killer among possible causes, is not taken for one."""
    from ray.exceptions import ActorDiedError, OutOfMemoryError

    from orchestrator.runtime.memory import is_out_of_memory

    assert is_out_of_memory(
        OutOfMemoryError(
            "Task was killed due to the node running low on memory.\nMemory on the node ..."
        )
    )
    assert not is_out_of_memory(ActorDiedError())
    assert not is_out_of_memory(
        RuntimeError("(1) The process is killed by SIGKILL by OOM killer due to high memory usage.")
    )


# -- 4. the tracking server unreachable, or lost mid-sweep -----------------------------------
def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "sweep", *args]


def test_tracking_server_unreachable_at_start_fails_fast_before_ray(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    probe = (
        "import sys, ray\nfrom orchestrator.cli import main\n"
        f"code = main(['sweep', 'mine', '--config-dir', {str(ROOT / 'tests/data/user_conf')!r},"
        f" '--tasks', {PLUGINS!r}, '--tracking-uri', {uri!r}])\n"
        "print('ray initialized:', ray.is_initialized())\nsys.exit(code)\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert f"tracking store '{uri}' is unreachable" in proc.stderr
    assert "ray initialized: False" in proc.stdout  # Ray was never started
    assert took < 60, f"took {took:.0f} s: MLflow's own retries were not cut short"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


class MlflowServer:
    """A real ``mlflow server`` subprocess (sqlite backend, served artifacts) that a test can
    kill and start again on the same port."""

    def __init__(self, tmp: Path, port: int | None = None, backend: str | None = None) -> None:
        self.tmp, self.port = tmp, port or free_port()
        self.backend = backend or f"sqlite:///{tmp / 'server.db'}"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        self.proc = subprocess.Popen(
            [
                MLFLOW,
                "server",
                "--backend-store-uri",
                self.backend,
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.tmp / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "server.log", "ab"),
            start_new_session=True,
        )  # its own process group: kill() ends its workers too
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


def _wait_metric(uri: str, study: str, key: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(key in r.data.metrics for r in trial_runs(uri, study)):
                return
        except Exception:  # noqa: BLE001 - the experiment is not created yet
            pass
        time.sleep(0.3)
    pytest.fail(f"no {key} metric logged in time")


def test_tracking_server_lost_mid_sweep_then_back(tmp_path: Path) -> None:
    """The server is killed while trials run and restarted on the same port 6 s later: the
    sweep completes (exit 0) and every step's metric is in the store, those logged while it
    was down included."""
    server = MlflowServer(tmp_path).start()
    conf = user_conf(
        tmp_path, "slow", "outage", {"steps": 24, "step_s": 0.5}, {"seeds": 2, "metric": "final"}
    )
    sweep = subprocess.Popen(
        _sweep_cmd(
            "outage", "--config-dir", str(conf), "--tasks", PLUGINS, "--tracking-uri", server.uri
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        _wait_metric(server.uri, "outage", "score")
        server.kill()
        down_at = time.time()
        time.sleep(6)
        server.start()
        up_at = time.time()  # /health answers again
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        server.kill()
    server.start()
    try:
        assert sweep.returncode == 0, err
        assert "not written" not in err
        ml = MlflowClient(server.uri)
        runs = [r for r in trial_runs(server.uri, "outage")]
        assert len({r.data.tags["orch.trial_key"] for r in runs}) == 2
        done = [r for r in runs if r.data.tags.get("orch.outcome") == "finished"]
        assert len(done) == 2
        logged_while_down = 0
        for run in done:
            history = ml.get_metric_history(run.info.run_id, "score")
            assert sorted(p.step for p in history) == list(range(24))  # none lost, none twice
            logged_while_down += sum(down_at * 1000 <= p.timestamp <= up_at * 1000 for p in history)
        assert logged_while_down >= 2  # the outage really fell inside the trials
    finally:
        server.kill()


def test_tracking_server_gone_for_good_is_reported_exit_1(tmp_path: Path) -> None:
    """The server dies mid-sweep and never comes back: the trials still run, and the user
    is told what could not be written (stderr) with exit code 1."""
    server = MlflowServer(tmp_path).start()
    conf = user_conf(
        tmp_path, "slow", "gone", {"steps": 10, "step_s": 0.4}, {"seeds": 1, "metric": "final"}
    )
    sweep = subprocess.Popen(
        _sweep_cmd(
            "gone", "--config-dir", str(conf), "--tasks", PLUGINS, "--tracking-uri", server.uri
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ORCH_TRACKING_OUTAGE_S": "5"},
    )
    try:
        _wait_metric(server.uri, "gone", "score")
        server.kill()
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        server.kill()
    assert sweep.returncode == 1, err
    assert "not written to the tracking store" in err
    assert f"write(s) to {server.uri} failed after retries" in err


# -- 7. secure defaults of the local cluster --------------------------------------------------
def test_local_cluster_secure_defaults(tmp_path: Path) -> None:
    """``init_ray`` starts no dashboard web UI and Ray's token authentication is on. (Ray
    2.60 listens on all interfaces whatever ``_node_ip_address`` says; see init_ray.)"""
    probe = (
        "import ray\n"
        "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
        "from orchestrator.runtime.cluster import init_ray\n"
        "init_ray(None, num_cpus=1)\n"
        "node = ray._private.worker._global_node\n"
        "print('webui=' + repr(node.address_info.get('webui_url')))\n"
        "print('token=' + str(get_authentication_mode() == AuthenticationMode.TOKEN))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "webui=''" in proc.stdout or "webui=None" in proc.stdout
    assert "token=True" in proc.stdout
