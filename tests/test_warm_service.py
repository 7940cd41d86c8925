"""``orch up`` / ``orch down``: sweeps run on the warm pool and reuse its processes; down
leaves nothing of it running; without it, sweeps start their own cluster (issue 18).

The service's state lives in a temp ``XDG_RUNTIME_DIR`` and ``HOME``, never the user's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


def sweep(env: dict[str, str], cwd: Path, uri: str, seeds: str) -> set[int]:
    """Run a sweep of new trials; the process ids its trials ran in (``orch.pid``)."""
    out = orch(
        env,
        cwd,
        "sweep",
        "bench_trivial",
        "--config-dir",
        str(ROOT / "bench" / "conf"),
        "--tasks",
        "bench.tasks",
        f"seed={seeds}",
        "--tracking-uri",
        uri,
    )
    sweep_id = re.search(r"sweep (\S+): \d+ finished", out).group(1)
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`orch.sweep_id` = '{sweep_id}'", max_results=1000)
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
            "sweep",
            "bench_trivial",
            "--config-dir",
            str(ROOT / "bench" / "conf"),
            "--tasks",
            "bench.tasks",
            "seed=5",
            "--tracking-uri",
            uri,
        ],
        cwd=tmp_path,
        env=env,
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
