"""``orch submit`` end to end, without Docker: a real Ray head, a real MLflow server.

The cluster is ``ray start --head --block`` in a subprocess with its own ports and temp
dir (token auth on, its own token), the tracking store an ``mlflow server`` on a fresh
PostgreSQL database with served artifacts. The sweep runs as a Ray Job on that head; the
test then reads it back through the server with :class:`orchestrator.Client`, checks the
job commands, and scrapes the head's metrics port for the driver's ``ray_orch_*`` series
(the names the Grafana dashboards query).

Only the processes this test started are stopped (``ray stop`` would stop every Ray of
the user, including other sessions on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Client
from orchestrator.runtime.metrics import EXPORTED, QUEUE_WAIT, TRIALS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 300  # a slow shared machine: Ray, MLflow and 6 one-epoch trials


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[0]} exited with {proc.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout}s: {last}")


def stop_process(proc: subprocess.Popen, marker: str | None = None) -> None:
    """SIGTERM ``proc`` (and its session), SIGKILL after a grace period, then anything left
    whose command line names ``marker`` (this test's own Ray temp dir)."""
    import psutil

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)  # ray start --block drains, then stops its processes
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if marker:
        me = os.getpid()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != me and any(marker in a for a in (p.info["cmdline"] or [])):
                try:
                    p.kill()
                except psutil.Error:
                    pass


@pytest.fixture
def postgres_db(require_postgres: None) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); yields its SQLAlchemy URI."""
    import psycopg2

    name = f"orch_submit_{secrets.token_hex(4)}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"  # the driver installed
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def mlflow_server(postgres_db: str, tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on the database, serving artifacts from a temp dir."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with start_mlflow_server(tmp_path, postgres_db, artifacts) as url:
        yield url


@contextlib.contextmanager
def start_mlflow_server(
    tmp_path: Path, backend: str, artifacts: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``mlflow server`` (one worker) on ``backend``, serving artifacts from ``artifacts``,
    until it answers an API request; its URL. Stopped by its pid after."""
    port = free_port()
    log = open(tmp_path / "mlflow.log", "wb")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
        # The first API request of a fresh server is slow (lazy imports, store setup); the
        # job's driver checks the store with a short timeout, so warm it up here.
        wait_http(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", 180, proc
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def start_head(
    tmp_path: Path,
    env: dict[str, str],
    temp_dir: Path,
    gcs: int,
    dash: int,
    metrics: int,
    agent: int,
) -> Iterator[None]:
    """``ray start --head --block`` on these ports and temp dir, in ``env``, until its
    dashboard and the node's agent (which runs the jobs) answer; stopped by its pid after."""
    log = open(tmp_path / "ray_head.log", "wb")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/gcs_healthz", 180, proc)
        # The node's agent runs the jobs: the compose health check waits for it too.
        wait_http(f"http://127.0.0.1:{agent}/api/local_raylet_healthz", 180, proc)
        yield
    finally:
        stop_process(proc, marker=str(temp_dir))
        log.close()
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[dict]:
    """A Ray head of its own: ports, temp dir, token; stopped by its pid, not ``ray stop``."""
    # Under /tmp: Ray's socket paths must stay short (tmp_path can be too long for AF_UNIX).
    temp_dir = Path("/tmp") / f"orch-submit-{secrets.token_hex(4)}"
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    gcs, dash, metrics, agent = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job runs `python`
        "RAY_USAGE_STATS_ENABLED": "0",
        # Token auth as in docker/compose.yaml; a token file of its own, so the user's
        # ~/.ray/auth_token (shared with other sessions) plays no part.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Report metrics every second, so the driver's last counts reach the agent
        # before the job's driver exits.
        "RAY_metrics_report_interval_ms": "1000",
        "COLUMNS": "250",
    }
    env.pop("RAY_ADDRESS", None)
    with start_head(tmp_path, env, temp_dir, gcs, dash, metrics, agent):
        yield {"address": f"http://127.0.0.1:{dash}", "metrics": metrics, "env": env}


def orch(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``orch`` as a user runs it next to a local cluster: the token found as Ray's own
    client finds it (here ``RAY_AUTH_TOKEN_PATH``), without ``RAY_AUTH_MODE`` set."""
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    return subprocess.run(
        [str(BIN / "orch"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def series_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_submit_runs_sweep_as_ray_job(ray_head: dict, mlflow_server: str) -> None:
    env, address = ray_head["env"], ray_head["address"]

    # A local sqlite store cannot be reached from the cluster: refused before submitting.
    bad = orch(
        env, "submit", "optimizers", "--address", address, "--tracking-uri", "sqlite:///mlflow.db"
    )
    assert bad.returncode == 2, bad.stderr
    assert "--tracking-uri" in bad.stderr and "http://HOST:PORT" in bad.stderr

    sub = orch(
        env,
        "submit",
        "optimizers",
        "optimizer=sgd,adam",
        "train.epochs=1",
        "--quick",
        "--address",
        address,
        "--tracking-uri",
        mlflow_server,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert job_id.startswith("orch-optimizers-"), sub.stdout

    deadline, status, listing = time.monotonic() + JOB_TIMEOUT_S, "", ""
    while time.monotonic() < deadline:
        jobs = orch(env, "jobs", "--address", address)
        assert jobs.returncode == 0, jobs.stderr
        listing = jobs.stdout
        row = next((line for line in listing.splitlines() if job_id in line), "")
        status = next(
            (s for s in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING") if s in row), ""
        )
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    logs = orch(env, "logs", job_id, "--address", address)
    assert status == "SUCCEEDED", f"job {status or 'not listed'}:\n{listing}\n{logs.stdout[-4000:]}"
    assert logs.returncode == 0
    assert "6 finished, 0 failed" in logs.stdout, logs.stdout[-4000:]

    # The trials are in the server's store, read from here as from any laptop.
    client = Client(mlflow_server)
    sweeps = client.sweeps()
    assert len(sweeps) == 1 and sweeps.study[0] == "optimizers"
    assert sweeps.status[0] == "FINISHED" and sweeps.finished[0] == 6
    trials = client.trials(sweeps.sweep_id[0])
    assert len(trials) == 6
    assert set(trials.outcome) == {"finished"}
    assert sorted(set(trials["optimizer"])) == ["adam", "sgd"]

    # The job is over: stopping it is refused (exit 1); an unknown job id is bad input.
    cancel = orch(env, "cancel", job_id, "--address", address)
    assert cancel.returncode == 1 and "not running" in cancel.stderr
    unknown = orch(env, "logs", "no-such-job", "--address", address)
    assert unknown.returncode == 2, unknown.stderr

    # The driver's service metrics reached the head's metrics port under the exported names.
    finished = waits = 0.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = scrape(ray_head["metrics"])
        finished = series_sum(text, EXPORTED[TRIALS][0], study="optimizers", outcome="finished")
        waits = series_sum(text, EXPORTED[QUEUE_WAIT][2], study="optimizers", kind="trial")
        if finished >= 1 and waits >= 1:
            break
        time.sleep(3)
    assert 1 <= finished <= 6, text[-3000:]
    assert 1 <= waits <= 6
    # ray_orch_trials_running is not checked here: Ray drops the gauges of a process that
    # has exited (its TTL), and the job's driver is gone by now.


# -- the checks orch submit makes before anything reaches a cluster (no Ray needed) --------


def test_submit_refuses_stores_the_cluster_cannot_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli.jobs import cluster_tracking_uri, job_api_address
    from orchestrator.errors import SpecError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    for uri in ("sqlite:///mlflow.db", "./mlruns", "file:///tmp/mlruns", None):
        with pytest.raises(SpecError, match=r"--tracking-uri: .*http://HOST:PORT"):
            cluster_tracking_uri(uri, "http://10.0.0.5:8265")
    with pytest.raises(SpecError, match="loopback"):
        cluster_tracking_uri("http://127.0.0.1:5000", "http://10.0.0.5:8265")
    assert (
        cluster_tracking_uri("http://127.0.0.1:5000", "http://127.0.0.1:8265")
        == "http://127.0.0.1:5000"
    )
    assert (
        cluster_tracking_uri("http://mlflow:5000", "http://10.0.0.5:8265") == "http://mlflow:5000"
    )
    for bad in ("10.0.0.5:6379", "ray://10.0.0.5:10001", None):
        with pytest.raises(SpecError, match="--address"):
            job_api_address(bad)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265/")
    assert job_api_address(None) == "http://head:8265"


def test_submit_entrypoint_and_runtime_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from orchestrator.cli.jobs import entrypoint, runtime_env
    from orchestrator.errors import SpecError

    cmd = entrypoint(
        "optimizers",
        ["seed=range(3)", "optimizer=sgd,adam"],
        "http://mlflow:5000",
        quick=True,
        config_dir="studies",
        tasks=["my.tasks"],
    )
    assert shlex.split(cmd) == [
        "python",
        "-m",
        "orchestrator.cli",
        "sweep",
        "optimizers",
        "seed=range(3)",
        "optimizer=sgd,adam",
        "--quick",
        "--config-dir",
        "studies",
        "--tasks",
        "my.tasks",
        "--address",
        "auto",
        "--tracking-uri",
        "http://mlflow:5000",
    ]
    # The image has the project: nothing is uploaded unless a local directory is needed.
    assert runtime_env(None, None) == ({}, None)
    (tmp_path / "studies" / "study").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    env, remote = runtime_env("studies", None)
    assert env["working_dir"] == str(tmp_path) and ".venv/" in env["excludes"]
    assert remote == "studies"
    with pytest.raises(SpecError, match="--config-dir: .* outside the working directory"):
        runtime_env(str(tmp_path / "studies"), str(tmp_path / "studies" / "study"))
    with pytest.raises(SpecError, match="--working-dir"):
        runtime_env(None, str(tmp_path / "missing"))


def test_sweep_metrics_queue_wait_and_running() -> None:
    """Queue wait counts from the sweep's start, or from a retry; running goes up and down."""
    from orchestrator.runtime.metrics import SweepMetrics

    now = [100.0]
    m = SweepMetrics("optimizers", "s-1", clock=lambda: now[0])
    now[0] = 103.0
    assert m.started(0) == pytest.approx(3.0)
    now[0] = 110.0
    assert m.started(1) == pytest.approx(10.0) and m.running == 2
    m.ended(0, "retried")  # its worker died: back in the queue at 110
    assert m.running == 1
    now[0] = 115.0
    assert m.started(0) == pytest.approx(5.0)
    m.ended(0, "finished")
    m.ended(1, "failed")
    assert m.running == 0


def test_submit_finds_a_local_clusters_token_as_ray_does(tmp_path: Path) -> None:
    """RAY_AUTH_MODE unset: a token (here at RAY_AUTH_TOKEN_PATH) is sent to a cluster on
    this machine, never to a remote one; an explicit mode is respected."""
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    code = (
        "import sys; from orchestrator.cli.jobs import use_local_token; "
        "print(use_local_token(sys.argv[1]))"
    )
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }

    def ask(address: str, **env: str) -> str:
        r = subprocess.run(
            [sys.executable, "-c", code, address],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env={**base, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env},
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert ask("http://127.0.0.1:8265", RAY_AUTH_TOKEN_PATH=str(token)) == "True"
    assert ask("http://10.1.2.3:8265", RAY_AUTH_TOKEN_PATH=str(token)) == "False"
    assert ask("http://127.0.0.1:8265") == "False"  # no token anywhere (HOME is empty)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    assert ask("http://localhost:8265") == "True"  # ~/.ray/auth_token, as `ray start` writes
    assert ask("http://127.0.0.1:8265", RAY_AUTH_MODE="disabled") == "False"
