"""No orphans: the processes of a local Ray session end with the driver that started it.

Ray's head processes (GCS, raylet, log monitor) share the driver's fate, but the raylet's
agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive it: measured with Ray
2.60, both were still alive 40 s after the driver was killed with SIGKILL. So a local
``ray.init`` also starts this watcher: a small process of its own session (terminal
signals do not reach it), a child of the driver, that every 0.5 s records the session's
processes, the head processes and everything under them. Once the driver is gone (killed,
or exited) or its head processes are (``ray.shutdown``), it ends what is left of them, with
SIGTERM and 3 s later SIGKILL, and exits. Only processes it recorded are touched, each
checked by its start time, never a recycled pid.

``python -m orchestrator.runtime.reaper DRIVER_PID HEAD_PID...``
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def start(head_pids: list[int]) -> None:
    """Start the watcher for this driver and its local Ray session's head processes."""
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.runtime.reaper",
            str(os.getpid()),
            *map(str, head_pids),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for root in roots:
        if not _alive(root):
            continue
        out.append(root)
        try:
            out.extend(root.children(recursive=True))
        except psutil.Error:
            continue
    return out


def watch(driver_pid: int, head_pids: list[int]) -> None:
    try:
        driver = psutil.Process(driver_pid)
        heads = [psutil.Process(p) for p in head_pids]
    except psutil.Error:
        return
    seen: dict[int, psutil.Process] = {}  # is_running() checks the start time: pids recycle
    while _alive(driver) and any(_alive(h) for h in heads):
        for p in _tree(heads):
            seen.setdefault(p.pid, p)
        time.sleep(POLL_S)
    left = [p for p in seen.values() if _alive(p)]
    for p in _tree(left):  # and what they started since the last look
        seen.setdefault(p.pid, p)
    left = [p for p in seen.values() if _alive(p) and p.pid != os.getpid()]
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(left, timeout=GRACE_S)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(int(sys.argv[1]), [int(a) for a in sys.argv[2:]])
