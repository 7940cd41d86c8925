"""An ``orch sweep`` in a subprocess (its own driver and local Ray), for tests that
interrupt, cancel or kill it, or run two at once; shared by the cancel, data-parallel and
lease tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Client

ROOT = Path(__file__).resolve().parent.parent


def start_sweep(tracking_uri: str, args: list[str]) -> subprocess.Popen:
    """``orch sweep ARGS --tracking-uri URI`` as a subprocess with piped output."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", *args, "--tracking-uri", tracking_uri],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def own_ray_sweep(
    study: str, conf: Path, plugins: str, uri: str, cwd: Path, *overrides: str
) -> subprocess.Popen:
    """``orch sweep STUDY`` of a user's ``conf`` and task ``plugins`` with a local Ray of its
    own, in its own (short: socket paths are limited to 107 bytes) temp dir, removed by
    :func:`finish`: several of them run side by side."""
    ray_tmp = tempfile.mkdtemp(prefix="orchray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    argv = [study, *overrides, "--config-dir", str(conf), "--tasks", plugins]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", *argv, "--tracking-uri", uri],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.ray_tmp = ray_tmp  # type: ignore[attr-defined]
    return proc


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for :func:`own_ray_sweep` processes; their stderr. Kills what is left."""
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            shutil.rmtree(p.ray_tmp, ignore_errors=True)  # type: ignore[attr-defined]
    return errs


@contextlib.contextmanager
def heartbeat(uri: str, run_id: str, every_s: float = 1.0) -> Iterator[None]:
    """Another sweep's driver, alive: ``run_id``'s lease heartbeat renewed until the block
    ends."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import schema

    ml, stop = MlflowClient(uri), threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            ml.set_tag(run_id, schema.TAG_HEARTBEAT, f"{time.time():.0f}")

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()


def wait_running(tracking_uri: str, proc: subprocess.Popen, timeout: float) -> str:
    """The sweep id once one of its trials has logged a metric."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            client = Client(tracking_uri)
            sweeps = client.sweeps()
            if len(sweeps):
                df = client.trials(sweeps.sweep_id.iloc[0])
                if len(df) and "train/loss" in df and df["train/loss"].notna().any():
                    return sweeps.sweep_id.iloc[0]
        except Exception:  # noqa: BLE001 - the store may not exist yet
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail("no trial started in time")
