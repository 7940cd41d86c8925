"""An ``orch sweep`` in a subprocess (its own driver and local Ray), for tests that
interrupt, cancel or kill it; shared by the cancel and data-parallel tests."""

from __future__ import annotations

import subprocess
import sys
import time
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
