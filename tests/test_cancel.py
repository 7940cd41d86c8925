"""Ctrl-C and ``orch cancel``: running trials end KILLED, the parent too, no worker is left."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main
from tests.sweep_process import start_sweep, wait_running

LONG = ["optimizers", "optimizer=adam", "model=cnn_d", "seed=range(4)", "train.epochs=500"]



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
    proc = start_sweep(tracking_uri, LONG)
    sweep_id = wait_running(tracking_uri, proc, timeout=120)
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
