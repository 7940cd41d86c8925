"""The Ray cluster a sweep runs on: an existing one, or a local one started in-process."""

from __future__ import annotations

import ray

from orchestrator.runtime import reaper
from orchestrator.runtime.service_state import connect_env, find_service


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address``, or start a local Ray cluster in-process.

    A local cluster starts without the dashboard's web UI and job API
    (``include_dashboard=False``), and with Ray's token authentication (on by default
    since Ray 2.5x unless ``RAY_AUTH_MODE=disabled``): its ports refuse callers without
    the token in ``~/.ray/auth_token``. Ray 2.60 does not bind to loopback, whatever
    ``_node_ip_address`` says: it resolves 127.0.0.1 to the node's routable address and its
    gRPC servers listen on all interfaces, so the token is what keeps others out
    (``tests/test_failures.py::test_local_cluster_secure_defaults`` checks both).

    A local cluster also gets a watcher that ends its processes when the driver goes,
    however it goes (``orchestrator/runtime/reaper.py``).
    With no ``address`` and no size asked, the cluster of ``orch up`` is used when it runs
    (``orchestrator.runtime.service``): started the same way, kept between sweeps.
    """
    global _preconnected
    if ray.is_initialized():
        if not (_preconnected and (address or num_cpus is not None or num_gpus is not None)):
            return
        ray.shutdown()  # the standby's connection to the service; this asks for another
        _preconnected = False
    if not address and num_cpus is None and num_gpus is None:
        warm = find_service()
        if warm is not None and connect_env(warm):
            address = warm.address
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
        reaper.start(_head_pids())


#: Connected by :func:`preconnect`, before knowing what would run (the standby driver).
_preconnected = False


def preconnect() -> None:
    """Connect to ``orch up``'s cluster ahead of the command that will use it; a later
    :func:`init_ray` asking for another cluster (an address, a size) replaces it."""
    global _preconnected
    warm = find_service()
    if warm is None or not connect_env(warm):
        raise RuntimeError("no orch up service to connect to (or Ray lacks its token)")
    init_ray(warm.address)
    _preconnected = True


def _head_pids() -> list[int]:
    """The local session's head processes (GCS, raylet, log monitor), from Ray's own record
    of what it started (private: if it moves, no reaper, and the README's caveat holds)."""
    node = getattr(ray._private.worker, "_global_node", None)
    infos = getattr(node, "all_processes", None) or {}
    return [
        info.process.pid
        for group in infos.values()
        for info in group
        if getattr(info, "process", None) is not None
    ]
