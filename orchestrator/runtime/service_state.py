"""Where ``orch up``'s service is, without importing Ray: a sweep must find it (and set Ray's
token variables, which Ray reads at import) before anything imports Ray."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceState:
    """What ``orch up`` wrote: where the head listens and which processes are the service's."""

    address: str
    daemon_pid: int
    slots: int
    temp_dir: str
    #: The cluster's own Ray token (0600, next to the state): callers need it, as on the
    #: cold path they need ``~/.ray/auth_token``.
    token_path: str
    #: The daemon's child processes (Ray's GCS, raylet, ...), for ``orch down`` to check.
    head_pids: list[int]


def state_path() -> Path:
    """``$XDG_RUNTIME_DIR/orch/up.json`` (per user, cleared at logout), else
    ``~/.cache/orch/up.json``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    return base / "orch" / "up.json"


#: ``sun_path`` holds 108 bytes on Linux: a longer runtime dir gets no standby driver.
MAX_SOCKET_PATH = 100


def standby_socket() -> Path | None:
    """Where the service's standby driver (``orchestrator/cli/standby.py``) listens: beside
    the state, in the user's 0700 directory; None where the path would be too long."""
    path = state_path().with_name("standby.sock")
    return path if len(str(path)) <= MAX_SOCKET_PATH else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process reusing the pid
        return False
    return True


def connect_env(state: ServiceState) -> bool:
    """Make this process's ``ray.init`` present the service's token; whether it will. Ray
    reads these variables when it is imported: a process that imported Ray before cannot
    connect to the service (it then runs a cluster of its own, the cold path)."""
    wanted = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_path}
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return True
    if "ray" in sys.modules:
        # Too late for this process; and setting them anyway would hand the service's token
        # to the cold cluster's own processes while this one presents the default token.
        return False
    os.environ.update(wanted)
    return True


def find_service() -> ServiceState | None:
    """The running service's state, or None (no state file, or its daemon is gone)."""
    try:
        state = ServiceState(**json.loads(state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if pid_alive(state.daemon_pid) else None
