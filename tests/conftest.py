"""Shared fixtures: one real Ray session per test run, a fresh MLflow store per test.

Ray's first start costs seconds, so every test shares one local session (2 CPUs, bound
to loopback). The repo root goes on PYTHONPATH before Ray starts so that worker
processes can import the test plugins in ``tests/plugins``.

Tests write only inside their temp dirs: the run fails at the end if the checkout changed
(``git status`` before and after). A test that uses Ray or a store is marked ``slow``;
``make test-fast`` runs the others.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


#: Fixtures that mean a test runs Ray or writes a store: not a unit test.
SLOW_FIXTURES = {"ray_session", "tracking_uri", "require_postgres"}


def _checkout_state() -> str | None:
    """``git status`` of the checkout (untracked files included), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def pytest_configure(config: pytest.Config) -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # New sqlite stores are copied from a template cached here (orchestrator/store/create.py):
    # in the temp folder, kept between runs, never in the user's ~/.cache.
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(tempfile.gettempdir(), "orch-test-cache"))
    # A user's `orch up` (its state under $XDG_RUNTIME_DIR) must not serve the tests' sweeps.
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="orch-test-run-")
    config.stash[_STATE] = _checkout_state()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_STATE, None)
    after = _checkout_state()
    if before is not None and after is not None and after != before:
        changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            "the tests changed the checkout (they must write only in their temp "
            "dirs): " + "; ".join(changed[:10])
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATE = pytest.StashKey[str | None]()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def require_postgres() -> None:
    """Skip where no PostgreSQL is reachable (a laptop); in CI (CI=true) fail instead."""
    if not postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
