"""``orch up`` / ``orch down``: sweeps run on the warm pool and reuse its processes; down
leaves nothing of it running; without it, sweeps start their own cluster (issue 18).

The service's state lives in a temp ``XDG_RUNTIME_DIR`` and ``HOME``, never the user's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def orch(env: dict[str, str], cwd: Path, *argv: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    (tmp_path / "xdg").mkdir(mode=0o700)
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        "COLUMNS": "200",
    }
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)
    yield env
    orch(env, tmp_path, "down")  # whatever the test did


def sweep_argv(uri: str, *overrides: str) -> list[str]:
    """``orch`` arguments of a sweep of the bench's trivial trials."""
    return [
        "sweep",
        "bench_trivial",
        "--config-dir",
        str(ROOT / "bench" / "conf"),
        "--tasks",
        "bench.tasks",
        *overrides,
        "--tracking-uri",
        uri,
    ]


def sweep(env: dict[str, str], cwd: Path, uri: str, seeds: str) -> set[int]:
    """Run a sweep of new trials; the process ids its trials ran in (``orch.pid``)."""
    out = orch(env, cwd, *sweep_argv(uri, f"seed={seeds}"))
    sweep_id = re.search(r"sweep (\S+): \d+ finished", out).group(1)
    _, runs = _parent(uri, sweep_id)
    pids = {int(r.data.tags["orch.pid"]) for r in runs if "orch.pid" in r.data.tags}
    assert pids, out
    return pids


def test_sweeps_reuse_the_warm_pool_and_down_stops_it(env: dict[str, str], tmp_path: Path) -> None:
    orch(env, tmp_path, "up", "--slots", "2", "--num-cpus", "2")
    state = json.loads((tmp_path / "xdg" / "orch" / "up.json").read_text())
    assert (tmp_path / "xdg" / "orch" / "ray_token").stat().st_mode & 0o077 == 0
    status = orch(env, tmp_path, "up", "--status")
    pool = {int(p) for p in re.search(r"worker pids: ([\d, ]+)", status).group(1).split(",")}
    assert len(pool) == 2 and "2 idle" in status

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = sweep(env, tmp_path, uri, "0,1")
    assert first <= pool
    second = sweep(env, tmp_path, uri, "2,3")
    assert second <= pool  # the same warm processes, not new ones
    assert "2 idle" in orch(env, tmp_path, "up", "--status")  # given back

    # A process that imported Ray before it could take the service's token (orch record,
    # a notebook) runs a cluster of its own: its processes must not be handed that token.
    late = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ray; from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))",
            *sweep_argv(uri, "seed=5"),
        ],
        cwd=tmp_path,
        env={**env, "ORCH_NO_STANDBY": "1"},  # this process itself, not the service's driver
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert late.returncode == 0, late.stderr[-2000:]
    assert "2 idle" in orch(env, tmp_path, "up", "--status")  # the pool was not used

    daemon = psutil.Process(state["daemon_pid"])
    tree = [daemon, *daemon.children(recursive=True)]
    assert {p.pid for p in tree} >= pool
    orch(env, tmp_path, "down")
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not (tmp_path / "xdg" / "orch" / "up.json").exists()
    assert not Path(state["temp_dir"]).exists()

    # Nothing up: the sweep starts its own cluster, as before.
    cold = sweep(env, tmp_path, uri, "4")
    assert cold and not cold & pool


def _standby_ready(tmp_path: Path, timeout_s: float = 600) -> None:
    sock = tmp_path / "xdg" / "orch" / "standby.sock"
    deadline = time.monotonic() + timeout_s
    while not sock.exists():
        assert time.monotonic() < deadline, "the standby driver never got ready"
        time.sleep(0.5)


def _parent(uri: str, sweep_id: str) -> Any:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`orch.sweep_id` = '{sweep_id}'", max_results=1000)
    return [r for r in runs if r.data.tags.get("orch.kind") == "sweep"][0], runs


def test_a_sweep_is_driven_by_the_standby_and_a_killed_client_cancels_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    """With orch up, orch sweep is a thin client: the service's standby driver runs it (and
    is replaced for the next one); a client killed mid-sweep leaves nothing RUNNING."""
    orch(env, tmp_path, "up", "--slots", "2", "--num-cpus", "2")
    daemon = json.loads((tmp_path / "xdg" / "orch" / "up.json").read_text())["daemon_pid"]
    _standby_ready(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = orch(env, tmp_path, *sweep_argv(uri, "seed=0,1"))
    sweep_id = re.search(r"sweep (\S+): 2 finished", out).group(1)
    parent, _ = _parent(uri, sweep_id)
    driver = int(parent.data.tags["orch.driver_pid"])
    assert not psutil.pid_exists(driver) or psutil.Process(driver).ppid() == daemon

    _standby_ready(tmp_path)  # the daemon keeps the next one ready
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            *sweep_argv(uri, "seed=range(10,14)", "seconds=30"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    running: list[Any] = []
    while not running:  # a trial is training: the sweep is under way in the standby
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the store may not exist yet
            c = MlflowClient(uri)
            ids = [e.experiment_id for e in c.search_experiments()]
            running = [
                r
                for r in c.search_runs(ids, "attributes.status = 'RUNNING'", max_results=100)
                if r.data.tags.get("orch.kind") == "trial" and r.data.tags.get("orch.pid")
            ]
    client.kill()  # SIGKILL: no chance to forward anything
    client.wait()
    sweep_id = running[0].data.tags["orch.sweep_id"]
    deadline = time.monotonic() + 600
    while True:  # the standby saw its client go: a hang-up, the sweep cancelled
        parent, runs = _parent(uri, sweep_id)
        if parent.info.status != "RUNNING":
            break
        assert time.monotonic() < deadline, "the sweep of a killed client is still RUNNING"
        time.sleep(1)
    assert parent.info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
