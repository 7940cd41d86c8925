"""The warm local service (``orch up`` / ``orch down``): a Ray head and a pool of workers kept
between sweeps, so a short sweep does not pay Ray's start and the workers' torch import.

``orch up`` starts a daemon process (``python -m orchestrator.runtime.service``) in its own
session. The daemon starts a local Ray cluster in-process, exactly as the cold path does
(loopback, no dashboard, Ray's token authentication), then a detached named
:class:`PoolKeeper` and ``slots`` detached :class:`~orchestrator.runtime.worker.TrialWorker`
actors in the ``orch-warm`` namespace, whose ``__init__`` imports torch and the built-in
tasks. It writes its state (address, pids) to :func:`state_path` once the workers are up and
waits for SIGTERM; then it kills the actors and shuts Ray down, which ends the head's processes
(its children). One service per user: the state file is per user, 0600.

A sweep (:func:`find_service`) connects to it when no ``--address`` is given and leases idle
workers from the keeper (:func:`lease`), so two sweeps never share a worker; it gives them
back at the end (:func:`release`), reporting the ones it had to kill (a trial was cancelled
or ran out of memory), which the keeper starts again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from typing import Any

import ray

from orchestrator.runtime.service_state import (
    ServiceState,
    connect_env,
    find_service,
    pid_alive,
    standby_socket,
    state_path,
)
from orchestrator.runtime.worker import TrialWorkerActor

NAMESPACE = "orch-warm"
#: The standby driver's exit status when it could not get ready (EX_TEMPFAIL; no command
#: of orch exits with it).
STANDBY_NOT_STARTED = 75
KEEPER = "orch-warm-keeper"
#: How long ``orch up`` waits for the daemon's Ray and workers (torch imports on 2 busy CPUs).
START_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- the keeper


class PoolKeeper:
    """Which warm workers are idle, and who holds the others (a driver's pid)."""

    def __init__(self, names: list[str], num_threads: int) -> None:
        self.names = names
        self.num_threads = num_threads
        self.leases: dict[str, int] = {}

    def acquire(self, n: int, driver_pid: int) -> list[str]:
        """Up to ``n`` idle workers, now leased to ``driver_pid``. Leases of drivers that
        died without giving their workers back are reclaimed first (same host: local pids)."""
        for name, pid in list(self.leases.items()):
            if not pid_alive(pid):
                del self.leases[name]
        idle = [w for w in self.names if w not in self.leases][:n]
        for name in idle:
            self.leases[name] = driver_pid
        return idle

    def release(self, names: list[str], lost: list[str]) -> None:
        """Give workers back; ``lost`` ones were killed and are started again."""
        for name in names:
            self.leases.pop(name, None)
        for name in lost:
            self.leases.pop(name, None)
            _restart_worker(name, self.num_threads)

    def status(self) -> dict[str, Any]:
        """Slots, leases (worker -> driver pid), idle workers and each worker's process id."""
        infos = ray.get([ray.get_actor(n, namespace=NAMESPACE).info.remote() for n in self.names])
        return {
            "slots": len(self.names),
            "busy": dict(self.leases),
            "idle": [w for w in self.names if w not in self.leases],
            "pids": {n: i.pid for n, i in zip(self.names, infos)},
        }


PoolKeeperActor: Any = ray.remote(num_cpus=0)(PoolKeeper)


#: How long the keeper waits for a killed worker's name to be free again.
RESTART_TIMEOUT_S = 60.0


def _restart_worker(name: str, num_threads: int) -> None:
    """A new worker under a killed one's name. The driver has just killed it, and the name
    is free only once Ray has processed its death: until then the name is taken (ValueError),
    so this retries; a worker that cannot come back leaves the pool smaller, not broken."""
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while True:
        try:
            _new_worker(name, num_threads)
            return
        except ValueError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)


def _new_worker(name: str, num_threads: int) -> Any:
    return TrialWorkerActor.options(
        name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=1
    ).remote(num_threads)


# --------------------------------------------------------------------------- driver side


def lease(
    n: int, cpus: float, gpus: float, memory_mb: int | None, task_modules: tuple[str, ...]
) -> dict[str, Any]:
    """Up to ``n`` idle warm workers (name -> actor) for a sweep on the service's cluster, or
    none (no service here, or the sweep's slots are not the warm ones: not one CPU each)."""
    if cpus != 1 or gpus or memory_mb or find_service() is None:
        return {}
    try:
        keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
    except ValueError:  # connected to another cluster than the service's
        return {}
    names = ray.get(keeper.acquire.remote(n, os.getpid()))
    actors = {name: ray.get_actor(name, namespace=NAMESPACE) for name in names}
    if task_modules:  # the user's own tasks, imported into the warm processes
        ray.get([a.load_tasks.remote(task_modules) for a in actors.values()])
    return actors


def release(names: list[str], lost: list[str]) -> None:
    """Give leased workers back to the keeper; ``lost`` were killed (the keeper restarts them)."""
    if names or lost:
        keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
        ray.get(keeper.release.remote(names, lost))


def status() -> dict[str, Any] | None:
    """The service's address, slots and idle/busy workers; None when it is not up."""
    state = find_service()
    if state is None:
        return None
    if not connect_env(state):
        raise RuntimeError("orch up --status: Ray was imported before the service was found")
    ray.init(address=state.address, log_to_driver=False, configure_logging=False)
    try:
        keeper = ray.get_actor(KEEPER, namespace=NAMESPACE)
        return {
            "address": state.address,
            "daemon_pid": state.daemon_pid,
            **ray.get(keeper.status.remote()),
        }
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- up / down


def start(slots: int, num_cpus: int | None = None) -> ServiceState:
    """Start the service (the daemon) and wait until its workers are up; the state, or the
    running service's if one is up already. RuntimeError if it did not start."""
    running = find_service()
    if running is not None:
        return running
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    token = path.with_name("ray_token")
    token.touch(mode=0o600)
    token.chmod(0o600)
    token.write_text(secrets.token_hex(32))
    log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - the daemon keeps it
    cmd = [sys.executable, "-m", "orchestrator.runtime.service", "--slots", str(slots)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    # Its own session: the daemon outlives `orch up` and a Ctrl-C in that terminal.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = find_service()
        if state is not None:
            return state
        if proc.poll() is not None:
            raise RuntimeError(
                f"orch up: the service exited ({proc.returncode}); see {path.with_suffix('.log')}"
            )
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(
        f"orch up: the service did not start in {START_TIMEOUT_S:.0f}s; "
        f"see {path.with_suffix('.log')}"
    )


def stop(timeout_s: float = 60.0) -> bool:
    """Stop the service: its workers, the head's processes, the daemon. False if none ran."""
    state = find_service()
    if state is None:
        state_path().unlink(missing_ok=True)
        return False
    os.kill(state.daemon_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    pids = [state.daemon_pid, *state.head_pids]
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:  # what did not end with Ray's shutdown: only the service's own pids
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(state.temp_dir, ignore_errors=True)
    state_path().unlink(missing_ok=True)
    return True


def serve(slots: int, num_cpus: int | None) -> None:
    """The daemon: Ray up, the keeper and the warm workers, the state file; until SIGTERM."""
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="orch-up-")  # short: Ray's socket paths must fit
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        namespace=NAMESPACE,
        _temp_dir=temp_dir,
    )
    # After ray.init, whose own SIGTERM handler would end the process without cleaning up.
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    names = [f"orch-warm-worker-{i}" for i in range(slots)]
    workers = [_new_worker(name, 1) for name in names]
    keeper = PoolKeeperActor.options(name=KEEPER, lifetime="detached").remote(names, 1)
    ray.get([w.info.remote() for w in workers])  # torch imported in each
    ray.get(keeper.status.remote())
    children = [c.pid for c in psutil.Process().children(recursive=True)]
    state = ServiceState(
        ray.get_runtime_context().gcs_address,
        os.getpid(),
        slots,
        temp_dir,
        os.environ["RAY_AUTH_TOKEN_PATH"],
        children,
    )
    path = state_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: a reader sees no state or a whole one
    standby = _Standby()
    while not stopping.wait(0.5):
        standby.keep()
    standby.stop()
    for name in [*names, KEEPER]:
        with contextlib.suppress(ValueError):  # already gone
            ray.kill(ray.get_actor(name), no_restart=True)
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


# Not ``-m orchestrator.cli.standby``: the package's __init__ imports that module first, and
# runpy would run a second copy of it as __main__.
_STANDBY_MAIN = (
    "import sys; from orchestrator.cli.standby import main; sys.exit(main(sys.argv[1:]))"
)


class _Standby:
    """The one standby driver (``orchestrator/cli/standby.py``) the daemon keeps ready: a
    new one as soon as the last has taken a command. One that exits early (it could not
    start) is retried after a pause that doubles, so a broken one does not spin."""

    MIN_PAUSE_S, MAX_PAUSE_S = 1.0, 300.0

    def __init__(self) -> None:
        self.path = standby_socket()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pause = self.MIN_PAUSE_S
        self.next_start = 0.0
        self.keep()

    def keep(self) -> None:
        if self.path is None or (self.proc is not None and self.proc.poll() is None):
            return
        now = time.monotonic()
        if self.proc is not None:  # it ended: it served a command, or failed to start
            served = self.proc.returncode != STANDBY_NOT_STARTED
            self.pause = self.MIN_PAUSE_S if served else min(2 * self.pause, self.MAX_PAUSE_S)
            self.next_start = now + (0.0 if served else self.pause)
            self.proc = None
        if now < self.next_start:
            return
        self.proc = subprocess.Popen(  # the daemon's environment: the service's Ray token
            [sys.executable, "-c", _STANDBY_MAIN, "--socket", str(self.path)],
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a sweep it runs is cancelled, as by SIGTERM
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m orchestrator.runtime.service")
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--num-cpus", type=int)
    args = p.parse_args(argv)
    serve(args.slots, args.num_cpus)


if __name__ == "__main__":
    main()
