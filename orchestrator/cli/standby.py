"""The warm service's standby driver: ``orch sweep`` as a thin client of ``orch up``.

A cold ``orch sweep`` spends most of its start-up importing (MLflow, Ray, pandas, scipy, the
report's matplotlib) and connecting to Ray before its first trial. While ``orch up`` runs,
its daemon keeps one *standby* process (:func:`main`, started by the daemon) that has
done all of that already: imported the sweep, report and client layers and connected to the
service's Ray cluster. It listens on a Unix socket in the user's 0700 runtime dir, next to
the service's state.

``orch sweep`` and ``orch resume`` (no ``--address``, not ``--dry-run``, and
``ORCH_NO_STANDBY`` unset) then import nothing heavy: :func:`delegate` hands the standby its
argv, working directory, environment and its own stdin/stdout/stderr (the file descriptors
themselves, ``SCM_RIGHTS``, so the output, colours and progress are exactly the command's
own), forwards SIGINT/SIGTERM/SIGHUP to it, and exits with the standby's exit status. The
standby serves that one command, as the same user on the same host, and exits; the daemon
starts the next one. A client whose standby is missing, not ready yet or taken by another
command runs the command itself, warm workers and all, as before: delegation only ever saves
time.

If the client dies (SIGKILL, a closed terminal), the standby sees its socket close and
cancels the sweep as SIGHUP would: nothing is left running for nobody.

What the standby runs is the code it imported when it started: ``orch down && orch up``
after changing orch itself, as for the warm workers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.runtime.service_state import find_service, standby_socket

#: Commands the standby runs for a client (the ones that start a sweep's driver).
DELEGATED = ("sweep", "resume")
#: Ray read these when the standby imported it: the client's environment must not change
#: them under it (a cluster it starts itself would get another token than it presents).
_KEPT_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LEN = struct.Struct("!Q")
_CODE = struct.Struct("!i")


# --------------------------------------------------------------------------- client side


#: True in the standby itself: the command it serves runs here, never handed on again.
_serving = False


def run_in_standby(args: argparse.Namespace, argv: Sequence[str]) -> int | None:
    """The command's exit status if the warm service's standby ran it; None: run it here
    (not a sweep's driver, an explicit ``--address``, no service, or no standby ready)."""
    if (
        _serving
        or args.command not in DELEGATED
        or getattr(args, "dry_run", False)
        or getattr(args, "address", None)
        or os.environ.get("ORCH_NO_STANDBY")
    ):
        return None
    path = standby_socket() if find_service() is not None else None
    if path is None or not path.exists():
        return None
    return delegate(path, argv)


def delegate(path: Path, argv: Sequence[str]) -> int | None:
    """Run ``orch ARGV`` in the standby listening at ``path``: its exit status, or None when
    no standby took it (none ready, or another command took it first): then run it here."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        payload = json.dumps(
            {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}
        ).encode()
        socket.send_fds(sock, [_LEN.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        pid = _recv_exact(sock, _LEN.size)  # the standby took it: from here it is the driver
    except OSError:
        sock.close()
        return None
    if pid is None:
        sock.close()
        return None
    return _wait(sock, _LEN.unpack(pid)[0])


def _wait(sock: socket.socket, pid: int) -> int:
    """Forward signals to the standby until it sends its exit status."""
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in _FORWARDED:
        signal.signal(s, forward)
    try:  # a signal forwarded meanwhile does not interrupt the wait (PEP 475 retries it)
        code = _recv_exact(sock, _CODE.size)
    except OSError:
        code = None
    sock.close()
    if code is not None:
        return _CODE.unpack(code)[0]
    if received:  # a second signal forced the driver out before it could answer
        return 128 + received[-1]
    sys.stderr.write("orch: the warm service's driver ended without an exit status\n")
    return 1


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# --------------------------------------------------------------------------- standby side


def serve(path: Path) -> int:
    """Get ready, then serve one client; ``STANDBY_NOT_STARTED`` if it could not get ready."""
    # Ray: the standby's imports are what it exists for; the client side stays light.
    from orchestrator.runtime.service import STANDBY_NOT_STARTED

    try:
        listener = _ready(path)
    except Exception as e:  # noqa: BLE001 - whatever it was, the daemon retries; its log says
        sys.stderr.write(f"orch standby: not started: {e!r}\n")
        return STANDBY_NOT_STARTED
    return _serve_one(listener, path)


def _ready(path: Path) -> socket.socket:
    """Import everything a sweep needs, connect to the service's Ray, then listen."""
    # What a sweep's driver would import on its way to the first trial and after the last.
    for module in ("orchestrator.sweep", "orchestrator.report", "orchestrator.client"):
        importlib.import_module(module)
    from orchestrator.runtime.cluster import preconnect

    preconnect()  # the service's cluster (the daemon gave this process its token)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(1)
    os.replace(tmp, path)  # ready: a client sees a listening standby or none
    return listener


def _serve_one(listener: socket.socket, path: Path) -> int:
    # Not at module level: main imports this module (the client side).
    from orchestrator.cli.main import main

    global _serving
    _serving = True
    conn, _ = listener.accept()
    listener.close()
    path.unlink(missing_ok=True)  # taken: the next client runs itself until a new one is up
    head, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
    if len(head) < _LEN.size or len(fds) != 3:
        return 1
    raw = _recv_exact(conn, _LEN.unpack(head)[0])
    if raw is None:
        return 1
    request = json.loads(raw)
    log = os.fdopen(os.dup(2), "w")  # the daemon's log: the client's stderr may be gone
    _become(request, fds)
    conn.sendall(_LEN.pack(os.getpid()))
    answered = threading.Event()
    threading.Thread(target=_watch_client, args=(conn, answered), daemon=True).start()
    try:
        code = main(request["argv"])
    except SystemExit as e:  # argparse's own exit (a usage error) is the command's status
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        log.write(f"orch standby {os.getpid()}: {request['argv']} raised:\n")
        log.write(traceback.format_exc())
        log.flush()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    answered.set()
    try:
        conn.sendall(_CODE.pack(code))
    except OSError:
        pass
    return code


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """Take the client's stdio, directory, environment and import path."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    kept = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env = {k: v for k, v in request["env"].items() if k not in _KEPT_ENV}
    os.environ.clear()
    os.environ.update({**env, **kept})
    # The client's own modules (--tasks plugins) resolve as they would in its process.
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [p for p in extra if p not in sys.path]
    sys.argv = ["orch", *request["argv"]]


def _watch_client(conn: socket.socket, answered: threading.Event) -> None:
    """A client gone (killed, terminal closed) before its answer is a hang-up: the sweep is
    cancelled as SIGHUP cancels it."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    if not answered.is_set():
        os.kill(os.getpid(), signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.cli.standby")
    p.add_argument("--socket", required=True, type=Path)
    args = p.parse_args(argv)
    return serve(args.socket)
