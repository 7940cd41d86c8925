"""Sweeps as Ray Jobs: ``orch submit``, ``orch jobs``, ``orch logs``, ``orch cancel --address``.

``orch sweep --address`` keeps the driver on the user's machine: closing the laptop ends
the sweep. ``orch submit`` instead hands the driver itself to the cluster through Ray's
Job API (the dashboard's HTTP port, 8265): the job's entrypoint is the same
``orch sweep STUDY overrides... --address auto --tracking-uri URI`` run on the head node,
so a submitted sweep behaves exactly like a local one, and the user's machine can go away.
The entrypoint is ``python -m orchestrator.cli sweep ...``: the cluster's own Python (the
one on the head's PATH, as for any Ray job), not whichever ``orch`` script is found there.

Two consequences shape the checks below:

* the tracking store must be a server the cluster can reach (an MLflow server URI): a
  sqlite file or ``./mlruns`` on this machine does not exist on the head node;
* the project must be on the cluster. The images in ``docker/`` hold it, so by default
  nothing is uploaded; a ``--config-dir`` of this machine (or an explicit
  ``--working-dir``) is shipped as the job's ``runtime_env`` working directory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.cli.exits import EXIT_ERROR, EXIT_OK
from orchestrator.errors import SpecError
from orchestrator.store import schema

#: Ray's own variable for the Job API address, used when ``--address`` is not given.
ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
TRACKING_SCHEMES = ("http", "https")

#: Never uploaded with a working directory: environments, VCS data, local stores.
WORKING_DIR_EXCLUDES = [
    ".venv/",
    ".git/",
    "mlruns/",
    "mlartifacts/",
    "*.db",
    "__pycache__/",
    ".pytest_cache/",
    "outputs/",
    "multirun/",
]

_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")
#: How long ``submit`` retries while a freshly started head has no job agent yet.
AGENT_WAIT_S = 60.0


class ClusterUnavailable(RuntimeError):
    """The Ray Job API cannot be reached (or refused the request). Exit code 1."""


@dataclass(frozen=True)
class JobRow:
    """One Ray job as ``orch jobs`` lists it."""

    job_id: str
    status: str
    study: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    entrypoint: str
    message: str


def job_api_address(address: str | None) -> str:
    """The dashboard URL of the cluster: ``--address``, then ``$RAY_API_SERVER_ADDRESS``.

    Only ``http(s)://HOST:PORT`` is accepted: a GCS address (``HOST:6379``) or a Ray Client
    address (``ray://``) reach other servers, which do not take jobs.
    """
    value = address or os.environ.get(ADDRESS_ENV)
    if not value:
        raise SpecError(
            f"--address: required; the Ray dashboard URL of the cluster, "
            f"http(s)://HEAD:8265 (or set ${ADDRESS_ENV})"
        )
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SpecError(
            f"--address: {value!r} is not a Ray Job API address; allowed: "
            f"http://HOST:PORT or https://HOST:PORT (the dashboard, port 8265 "
            f"by default), not a GCS address (HOST:6379) or ray://"
        )
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_tracking_uri(tracking_uri: str | None, address: str) -> str:
    """The tracking URI the job's driver will use, checked to be reachable from the cluster.

    Only an MLflow server will do: a sqlite file or ``file:`` store lives on this machine
    and the driver runs on the head node; a bare database URI would leave the artifacts
    on the head node's disk. A loopback server is refused unless the cluster is on this
    machine too, since on the head node 127.0.0.1 is the head itself.
    """

    uri = schema.resolve_tracking_uri(tracking_uri)
    parsed = urlparse(uri)
    if parsed.scheme not in TRACKING_SCHEMES or not parsed.hostname:
        raise SpecError(
            f"--tracking-uri: {uri!r} is a store on this machine, which the cluster cannot "
            f"open (the sweep's driver runs on the Ray head node); allowed: an MLflow "
            f"server URI, http://HOST:PORT or https://HOST:PORT (docker/compose.yaml runs "
            f"one on port 5000), via --tracking-uri or $MLFLOW_TRACKING_URI"
        )
    head = urlparse(address).hostname or ""
    if _is_loopback(parsed.hostname) and not _is_loopback(head):
        raise SpecError(
            f"--tracking-uri: {uri!r} points at this machine's loopback, but the driver runs "
            f"on {head}, where {parsed.hostname} is the head itself; allowed: an address of "
            f"the MLflow server that the head node can reach (e.g. http://mlflow:5000 in "
            f"docker/compose.yaml)"
        )
    return uri


def entrypoint(
    study: str,
    overrides: Sequence[str],
    tracking_uri: str,
    *,
    quick: bool = False,
    config_dir: str | None = None,
    tasks: Sequence[str] = (),
) -> str:
    """The shell command the job runs: ``orch sweep`` (as ``python -m orchestrator.cli``)
    against the cluster it runs on.

    ``--address auto`` because the job's driver must join the job's own cluster rather than
    start a private Ray inside the head container (the study's cluster default).
    """
    argv = ["python", "-m", "orchestrator.cli", "sweep", study, *overrides]
    if quick:
        argv.append("--quick")
    if config_dir:
        argv += ["--config-dir", config_dir]
    for module in tasks:
        argv += ["--tasks", module]
    argv += ["--address", "auto", "--tracking-uri", tracking_uri]
    return shlex.join(argv)


def runtime_env(
    config_dir: str | None, working_dir: str | None
) -> tuple[dict[str, Any], str | None]:
    """The job's runtime_env, and ``config_dir`` as the job sees it.

    Nothing is uploaded unless needed: the cluster image has the project. A local
    ``--config-dir`` is needed, so the working directory (``--working-dir``, else the
    current directory) is shipped and the config dir is passed relative to it.
    """
    if working_dir is None and config_dir is None:
        return {}, None
    root = Path(working_dir or ".").resolve()
    if not root.is_dir():
        raise SpecError(f"--working-dir: {working_dir!r} is not a directory")
    env: dict[str, Any] = {"working_dir": str(root), "excludes": list(WORKING_DIR_EXCLUDES)}
    if config_dir is None:
        return env, None
    cfg = Path(config_dir).resolve()
    if not cfg.is_dir():
        raise SpecError(f"--config-dir: {config_dir!r} is not a directory")
    if not cfg.is_relative_to(root):
        raise SpecError(
            f"--config-dir: {config_dir!r} is outside the working directory "
            f"{str(root)!r} that is shipped to the cluster; allowed: a directory "
            f"under it (or pass --working-dir containing it)"
        )
    return env, str(cfg.relative_to(root)) or "."


def _client(address: str) -> Any:
    """A JobSubmissionClient; connection and auth failures become ClusterUnavailable.

    A cluster started with token auth (``RAY_AUTH_MODE=token``, as docker/compose.yaml
    does) needs its token here; Ray's client sends it when ``RAY_AUTH_MODE=token``.
    """
    from ray.job_submission import JobSubmissionClient

    use_local_token(address)
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - ConnectionError, AuthenticationError, HTTP errors
        raise ClusterUnavailable(
            f"Ray Job API at {address} is unavailable: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def use_local_token(address: str) -> bool:
    """Send the token of a cluster on this machine as ``ray.init()`` does for a local one.

    Ray's token (``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``, which a local ``ray start`` writes) is sent only in token mode.
    With ``RAY_AUTH_MODE`` unset and a loopback address, that mode is turned on when a token
    is found (``maybe_enable_token_auth_if_token_available``, what ``ray start`` and
    ``ray.init(address="auto")`` call). A remote cluster still needs ``RAY_AUTH_MODE=token``
    set by the user: this machine's token is not sent to another host unasked. True when
    the token will be sent.
    """
    from ray._private.authentication.authentication_token_setup import (
        AUTH_MODE_ENV_VAR,
        maybe_enable_token_auth_if_token_available,
    )

    mode = os.environ.get(AUTH_MODE_ENV_VAR)
    if mode is not None:
        return mode.lower() == "token"
    if not _is_loopback(urlparse(address).hostname or ""):
        return False
    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _call(address: str, job_id: str, fn: Callable[[], Any]) -> Any:
    """Run a per-job request; an unknown job is a KeyError (exit 2), others exit 1."""
    try:
        return fn()
    except RuntimeError as e:
        text = str(e)
        if "404" in text or "does not exist" in text:
            raise KeyError(f"no job {job_id!r} on {address}") from None
        raise ClusterUnavailable(f"Ray Job API at {address}: {text.splitlines()[0]}") from None


def new_job_id(study: str) -> str:
    """A readable, unique submission id (``orch-STUDY-YYYYmmdd-HHMMSS-xxxx``)."""
    return f"orch-{study}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def submit(
    study: str,
    overrides: Sequence[str],
    *,
    address: str | None,
    tracking_uri: str | None,
    quick: bool = False,
    config_dir: str | None = None,
    tasks: Sequence[str] = (),
    working_dir: str | None = None,
    job_id: str | None = None,
) -> str:
    """Submit ``orch sweep STUDY overrides...`` as a Ray Job; returns the job id.

    The study and overrides are planned here first, so bad input exits 2 on this machine
    instead of as a failed job minutes later.
    """
    # Planning loads the task modules (torch): only `orch submit` pays for it.
    from orchestrator.config.compose import composer
    from orchestrator.config.plan import plan_sweep
    from tasks import registry

    api = job_api_address(address)
    uri = cluster_tracking_uri(tracking_uri, api)
    if job_id is not None and not _JOB_ID.match(job_id):
        raise SpecError(f"--job-id: {job_id!r} may hold only letters, digits and _ . : -")
    env, remote_config_dir = runtime_env(config_dir, working_dir)
    try:
        registry.load_plugins(tuple(tasks))
    except registry.PluginError as e:
        raise SpecError(str(e)) from None
    plan = plan_sweep(composer(config_dir), study, list(overrides), quick=quick)
    command = entrypoint(
        study, overrides, uri, quick=quick, config_dir=remote_config_dir, tasks=tasks
    )
    client = _client(api)
    submission_id = job_id or new_job_id(plan.spec.study.name)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(
                entrypoint=command,
                runtime_env=env or None,
                submission_id=submission_id,
                metadata={
                    "orch.study": plan.spec.study.name,
                    "orch.n_trials": str(len(plan.trials)),
                },
            )
        except RuntimeError as e:
            # Right after a head starts, its dashboard answers before the node's agent
            # that runs jobs has registered; Ray asks to try again later.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise ClusterUnavailable(
                f"Ray Job API at {api} refused the job: {str(e).splitlines()[0]}"
            ) from None


def list_jobs(address: str | None) -> list[JobRow]:
    """The cluster's jobs, oldest first (Ray keeps finished jobs too)."""
    api = job_api_address(address)
    client = _client(api)
    try:
        jobs = client.list_jobs()
    except RuntimeError as e:
        raise ClusterUnavailable(f"Ray Job API at {api}: {str(e).splitlines()[0]}") from None
    rows = [
        JobRow(
            j.submission_id or j.job_id or "",
            str(j.status.value if hasattr(j.status, "value") else j.status),
            (j.metadata or {}).get("orch.study", ""),
            j.start_time / 1000 if j.start_time else None,
            j.end_time / 1000 if j.end_time else None,
            j.entrypoint or "",
            j.message or "",
        )
        for j in jobs
    ]
    return sorted(rows, key=lambda r: r.start_time or 0.0)


def job_status(address: str | None, job_id: str) -> str:
    """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
    api = job_api_address(address)
    client = _client(api)
    status = _call(api, job_id, lambda: client.get_job_status(job_id))
    return str(getattr(status, "value", status))


def job_logs(
    address: str | None, job_id: str, follow: bool = False, write: Callable[[str], Any] = print
) -> None:
    """Write the job's driver log; with ``follow``, stream it until the job ends."""
    api = job_api_address(address)
    client = _client(api)
    if not follow:
        write(_call(api, job_id, lambda: client.get_job_logs(job_id)))
        return
    _call(api, job_id, lambda: client.get_job_info(job_id))  # unknown id: KeyError, not a hang

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def stop(address: str | None, job_id: str) -> bool:
    """Ask Ray to stop the job: its driver is terminated and Ray ends the job's actors.

    The driver gets no chance to close its MLflow runs; ``orch resume SWEEP_ID`` marks them
    interrupted and runs what is left. ``orch cancel SWEEP_ID`` (without ``--address``) is
    the graceful way: the driver sees the tag and ends its trials KILLED. False when the
    job had already ended.
    """
    api = job_api_address(address)
    client = _client(api)
    return bool(_call(api, job_id, lambda: client.stop_job(job_id)))


# -- the CLI's job commands (orchestrator/cli/main.py registers them) ----------------------------


def add_parsers(sub: Any, configs: Callable[[Any], None], store: Callable[[Any], None]) -> None:
    """``orch submit``, ``orch jobs`` and ``orch logs`` on the CLI's subparsers."""
    address_help = f"the cluster's Ray dashboard, http://HEAD:8265 (default: ${ADDRESS_ENV})"
    sp = sub.add_parser(
        "submit",
        help="run a study on a Ray cluster as a Ray Job: "
        "orch submit NAME [overrides] --address http://HEAD:8265",
    )
    sp.add_argument("study")
    sp.add_argument("overrides", nargs="*", help="Hydra overrides, as for orch sweep")
    sp.add_argument("--quick", action="store_true", help="the study's quick variant")
    sp.add_argument("--address", help=address_help)
    sp.add_argument(
        "--working-dir",
        help="upload this directory with the job (default: "
        "nothing, or the current directory when --config-dir is given)",
    )
    sp.add_argument("--job-id", help="the submission id (default: orch-STUDY-TIME-xxxx)")
    configs(sp)
    store(sp)

    sp = sub.add_parser("jobs", help="the Ray jobs of a cluster and their status")
    sp.add_argument("--address", help=address_help)

    sp = sub.add_parser("logs", help="a Ray job's driver log")
    sp.add_argument("job_id")
    sp.add_argument("--address", help=address_help)
    sp.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")


def _unavailable(err: Any, e: ClusterUnavailable) -> int:

    err.print(f"[red]error:[/] {e}", highlight=False)
    return EXIT_ERROR


def cmd_submit(args: Any, out: Any, err: Any) -> int:

    try:
        job_id = submit(
            args.study,
            args.overrides,
            address=args.address,
            tracking_uri=args.tracking_uri,
            quick=args.quick,
            config_dir=args.config_dir,
            tasks=args.tasks,
            working_dir=args.working_dir,
            job_id=args.job_id,
        )
    except ClusterUnavailable as e:
        return _unavailable(err, e)
    out.print(job_id, highlight=False)  # alone on stdout, for scripts
    api = job_api_address(args.address)
    err.print(
        f"submitted; follow it with: orch logs {job_id} --address {api} --follow", highlight=False
    )
    return EXIT_OK


def cmd_jobs(args: Any, out: Any, err: Any) -> int:
    from rich.table import Table

    try:
        rows = list_jobs(args.address)
    except ClusterUnavailable as e:
        return _unavailable(err, e)
    table = Table()
    for col in ("job_id", "status", "study", "start_time", "end_time", "entrypoint"):
        table.add_column(col, overflow="fold")

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""

    for r in rows:
        table.add_row(
            r.job_id, r.status, r.study, when(r.start_time), when(r.end_time), r.entrypoint
        )
    out.print(table)
    return EXIT_OK


def cmd_logs(args: Any, out: Any, err: Any) -> int:
    import sys

    def write(text: str) -> None:  # raw: a log is not markup, and follow needs flushing
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        job_logs(args.address, args.job_id, args.follow, write)
    except ClusterUnavailable as e:
        return _unavailable(err, e)
    return EXIT_OK


def cmd_stop(args: Any, out: Any, err: Any) -> int:
    """``orch cancel JOB_ID --address URL``."""

    try:
        stopped = stop(args.address, args.sweep_id)
    except ClusterUnavailable as e:
        return _unavailable(err, e)
    if not stopped:
        err.print(f"job {args.sweep_id} is not running", highlight=False)
        return EXIT_ERROR
    out.print(f"stop requested for job {args.sweep_id}", highlight=False)
    return EXIT_OK


COMMANDS: dict[str, Callable[[Any, Any, Any], int]] = {
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "logs": cmd_logs,
}
