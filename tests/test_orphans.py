"""No orphans: 10 s after the driver of a local Ray session is killed (SIGKILL) or stopped
by a signal, no process of its session is left. The processes are found in the driver's
own process tree, captured while it runs, never in the machine's process table."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.test_signals import _start, _wait_for

#: The spec: a driver's Ray session is gone this long after the driver.
WITHIN_S = 10.0


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline())[:80])
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_ray_process_outlives_the_driver(sig: int, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _start(tmp_path, uri, steps=200, step_s=0.2, seeds=4)
    try:
        _wait_for(uri, proc, "trial")
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree)
        assert any("Agent" in " ".join(p.cmdline()) for p in tree)  # the ones Ray leaves
        proc.send_signal(sig)
        proc.communicate(timeout=300)  # the driver is gone (a signal: after its cancel)
        deadline = time.monotonic() + WITHIN_S
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(tree), _alive(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
