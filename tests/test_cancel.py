"""Ctrl-C and ``orch cancel``: running trials end KILLED, the parent too, no worker is left."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from orchestrator import Client
from orchestrator.cli import main
from tests.sweep_process import start_sweep, wait_running

LONG = [
    "optimizers",
    "optimizer=adam",
    "model=cnn_d",
    "data=digits",
    "seed=range(4)",
    "train.epochs=500",
]


def _trial_workers(root: int) -> list[psutil.Process]:
    """The sweep's processes running trials (Ray names them after the actor class): only
    the sweep process's own tree is looked at, never the rest of the machine."""
    out = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "TrialWorker" in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    # is_running() also checks the creation time: a recycled pid is not taken for ours.
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
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
    workers = _trial_workers(proc.pid)
    assert workers, "a trial worker should be running"
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        assert main(["cancel", sweep_id, "--tracking-uri", tracking_uri]) == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err
    _assert_killed(tracking_uri, sweep_id)
    deadline = time.monotonic() + 15
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(workers)
