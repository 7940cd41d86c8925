"""A real two-node Ray cluster on this machine: trials land on both nodes.

Two ``ray start --block`` processes (a head and a second raylet joining it), each with one
CPU and every port set explicitly (two raylets on one host must not share a node-manager,
object-manager, metrics, agent, runtime-env or worker port), in their own temp dir and
process group. ``orch sweep optimizers --quick --address ...`` runs as a subprocess (the
test session's own Ray, if any, is a different cluster), and every child run's
``orch.node_id`` tag must name one of the two nodes, both of them used. The cluster is torn
down by the pids it started (never ``ray stop``, which would stop every Ray on the host).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_ports(ports: Iterator[int]) -> list[str]:
    """The per-raylet ports, each explicit, plus a private worker port range."""
    low = next(ports)
    return [
        f"--node-manager-port={next(ports)}",
        f"--object-manager-port={next(ports)}",
        f"--metrics-export-port={next(ports)}",
        f"--dashboard-agent-listen-port={next(ports)}",
        f"--dashboard-agent-grpc-port={next(ports)}",
        f"--runtime-env-agent-port={next(ports)}",
        # Worker ports: a window above a free port, distinct per node.
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 40}",
    ]


def _descendants(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


def _teardown(procs: list[subprocess.Popen], known: list[psutil.Process]) -> None:
    """SIGTERM the cluster's process groups and every process seen under them, then
    SIGKILL what is left (by pid, never ``ray stop``)."""
    known = [*known, *_descendants(procs)]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    gone, alive = psutil.wait_procs(known, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def _alive_nodes(address: str, env: dict[str, str]) -> list[str]:
    code = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    ports = iter(_free_ports(20))
    port = next(ports)
    address = f"127.0.0.1:{port}"
    temp = Path("/tmp") / f"orch-mn-{os.getpid()}-{port}"  # short: raylet socket paths
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    seen: list[psutil.Process] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={temp}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={next(ports)}",
                    *common,
                    *_node_ports(ports),
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "head.log", "w"),
            )
        )
        _wait_nodes(address, env, 1, procs)
        procs.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    f"--address={address}",
                    '--resources={"second_node": 1}',
                    *common,
                    *_node_ports(ports),
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "worker.log", "w"),
            )
        )
        _wait_nodes(address, env, 2, procs)
        seen = _descendants(procs)
        yield address, env
    finally:
        _teardown(procs, seen)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_nodes(
    address: str, env: dict[str, str], n: int, procs: list[subprocess.Popen], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"ray start exited with {p.returncode}"
        try:
            if len(_alive_nodes(address, env)) >= n:
                return
        except subprocess.SubprocessError:
            pass
        time.sleep(2)
    pytest.fail(f"the cluster did not reach {n} nodes in {timeout:.0f}s")


def test_sweep_spreads_trials_over_two_nodes(two_node_cluster, tmp_path: Path) -> None:
    address, env = two_node_cluster
    nodes = set(_alive_nodes(address, env))
    assert len(nodes) == 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "optimizers",
            "--quick",
            "--address",
            address,
            "--tracking-uri",
            uri,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]

    client = Client(uri)
    (sweep_id,) = client.sweeps().sweep_id
    parent = client.sweep_run(sweep_id)
    runs = MlflowClient(uri).search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(runs) == int(parent.data.tags["orch.n_trials"])
    used = {r.data.tags["orch.node_id"] for r in runs}
    assert used == nodes, (used, nodes)  # both nodes ran trials, and only cluster nodes
    assert {r.data.tags["orch.outcome"] for r in runs} == {"finished"}
