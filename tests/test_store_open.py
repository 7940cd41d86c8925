"""Opening an sqlite store: a file that is not a usable store is one line and exit 1, in
seconds, before Ray starts, with the file unchanged; a new store is created whole however
many commands open it at once. Real MLflow, real sqlite, real subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.errors import TrackingUnavailable
from orchestrator.store.create import check_store, open_store

# Seconds to minutes each (training, subprocesses, simulation): not in `make test-fast`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _orch(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _store(path: Path) -> Path:
    open_store(f"sqlite:///{path}")
    return path


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _text(path: Path) -> None:
    path.write_text("experiment,acc\nsgd,0.91\n" * 50)


def _corrupt(path: Path) -> None:
    _store(path)
    data = bytearray(path.read_bytes())
    data[100:4196] = os.urandom(4096)  # the schema page, past the header
    path.write_bytes(bytes(data))


def _newer(path: Path) -> None:
    _store(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'fffffffffff0'")
    con.commit()
    con.close()


def _older(path: Path) -> None:  # what a migration that stopped half-way leaves
    _newer(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # MLflow 1.x
    con.commit()
    con.close()


def _not_mlflow(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()


def _read_only(path: Path) -> None:
    _store(path)
    path.chmod(0o444)


@pytest.fixture
def locked() -> Iterator[Callable[[Path], None]]:
    """A store another program holds an exclusive lock on. A process of its own: POSIX
    drops a process's locks on a file when it closes any descriptor of it (as reading the
    file's bytes here does)."""
    held: list[subprocess.Popen] = []

    def make(path: Path) -> None:
        _store(path)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                f"con = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
                "con.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\ntime.sleep(600)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        held.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    yield make
    for holder in held:
        holder.kill()
        holder.wait()


CASES = {
    "random bytes": (_random, "not an MLflow store"),
    "a text file": (_text, "not an MLflow store"),
    "corrupt": (_corrupt, "is corrupt"),
    "another program's database": (_not_mlflow, "not an MLflow store"),
    "newer schema": (_newer, "newer than this MLflow"),
    "older or half-migrated schema": (_older, "mlflow db upgrade"),
    "read-only": (_read_only, "read-only"),
    "locked": (None, "locked by another program"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", [["sweep", "optimizers", "--quick"], ["ls"]])
def test_broken_store_is_one_line_exit_1_and_left_unchanged(
    case: str, command: list[str], tmp_path: Path, locked: Callable[[Path], None]
) -> None:
    make, expected = CASES[case]
    path = tmp_path / "mlflow.db"
    (make or locked)(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    uri = f"sqlite:///{path}"

    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=expected):
        check_store(uri)
    assert time.monotonic() - started < 3.0  # the check itself: no MLflow, no Ray

    proc = _orch(*command, "--tracking-uri", uri, cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: tracking store")
        and str(path) in lines[0]
        and expected in lines[0]
    ), err
    assert "Traceback" not in out + err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no journal, no Ray


def test_read_only_folder_for_a_new_store(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(TrackingUnavailable, match="read-only"):
        check_store(f"sqlite:///{folder / 'mlflow.db'}")
    assert not list(folder.iterdir())


def test_commands_started_together_on_a_new_store_all_work(tmp_path: Path) -> None:
    """Four commands on a path that does not exist yet, with no template cached either:
    each builds one, the first link wins, every command sees a whole store at the head."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    procs = [_orch("ls", "--tracking-uri", uri, env=env, cwd=tmp_path) for _ in range(4)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "alembic" not in err.lower()
    check_store(uri)  # whole: at the schema head, intact, not locked
    assert len(list((tmp_path / "cache" / "orch").glob("mlflow-*.db"))) == 1
    assert not [p for p in (tmp_path / "new").iterdir() if p.name != "mlflow.db"]
    # And a store made from the template is an ordinary MLflow store.
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(uri)
    assert ml.get_experiment("0").name == "Default"
    ml.create_experiment("x")
