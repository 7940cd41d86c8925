"""Ctrl-C and ``orch cancel``: running trials end KILLED, the parent too, no worker is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
LONG = ["optimizers", "optimizer=adam", "model=cnn_d", "seed=range(4)", "train.epochs=500"]


def _start(tracking_uri: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", *LONG,
                             "--tracking-uri", tracking_uri], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(tracking_uri: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """The sweep id once a trial has logged a metric."""
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


def _trial_workers() -> list[psutil.Process]:
    """Processes running trials (Ray names them after the actor class); the test's own
    Ray session runs no sweep meanwhile, so any is the cancelled sweep's."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "TrialWorker" in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _assert_killed(tracking_uri: str, sweep_id: str) -> None:
    client = Client(tracking_uri)
    parent = client.sweep_run(sweep_id)
    assert parent.info.status == "KILLED"
    df = client.trials(sweep_id)
    assert len(df) >= 1
    assert set(df.status) == {"KILLED"}
    assert set(df.outcome) == {"killed"}


@pytest.mark.parametrize("how", ["sigint", "orch cancel"])
def test_cancel_kills_trials_and_leaves_no_worker(how: str, tracking_uri: str) -> None:
    proc = _start(tracking_uri)
    sweep_id = _wait_running(tracking_uri, proc)
    assert _trial_workers(), "a trial worker should be running"
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        assert main(["cancel", sweep_id, "--tracking-uri", tracking_uri]) == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err
    _assert_killed(tracking_uri, sweep_id)
    deadline = time.monotonic() + 15
    while _trial_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _trial_workers()
