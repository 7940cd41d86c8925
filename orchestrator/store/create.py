"""Opening an sqlite store: checked before anything touches it, created atomically.

MLflow opens whatever file an ``sqlite:///`` URI names and migrates it in place: a file that
is not a store gives a SQLAlchemy traceback after seconds, and two commands that open a new
store together both run the migrations on it (one crashes in alembic and leaves a
half-migrated store). So, before MLflow sees the file:

* an existing file is checked read-only, in well under a second, and a problem is one line
  (:class:`~orchestrator.errors.TrackingUnavailable`, exit 1) with the file left as it was:
  not an SQLite database, corrupt, locked by another program, read-only, not an MLflow
  store, or a schema revision this MLflow does not know (newer) or not at its head (older,
  or a migration that stopped half-way);
* a missing (or empty) file is made from a pre-migrated empty template, built once per
  MLflow schema revision under ``~/.cache/orch`` and copied in with an atomic link, so the
  first command to arrive creates the store whole and every other one finds it whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from orchestrator.errors import TrackingUnavailable

_MAGIC = b"SQLite format 3\x00"
#: The longest a check waits for another writer's lock, and spends on a quick_check.
LOCK_WAIT_S = 1.0
CHECK_BUDGET_S = 1.0
#: A store found half-migrated while its files are still changing is being migrated by
#: another program (``mlflow ui``, a plain ``MlflowClient`` on a new path): waited for, this
#: long at most. One whose files are quiet is reported at once.
MIGRATION_WAIT_S = 60.0
MIGRATION_QUIET_S = 1.5


def sqlite_path(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_store(uri: str) -> None:
    """Fail with one line if the store cannot be used; never writes anything.

    Raises:
        TrackingUnavailable: The problem, naming the file.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.exists() or path.stat().st_size == 0:
        _check_creatable(path)
        return
    key = path.resolve()
    if key in _CHECKED:
        return
    deadline = time.monotonic() + MIGRATION_WAIT_S
    while True:
        try:
            _check_existing(path)
            _CHECKED.add(key)
            return
        except TrackingUnavailable:
            # Half-migrated (no or an older revision) while its files still change: another
            # program is migrating it right now; anything else, or a quiet file, is final.
            if time.monotonic() > deadline or not _changing(path):
                raise
            time.sleep(0.5)


#: Stores this process has found good. Checked once only: reading the file again would open
#: and close a descriptor of it, and POSIX then drops every lock this process holds on it,
#: those of its open sqlite connections included (another process could then checkpoint or
#: write under them: a malformed store, seen with two sweeps on one new store).
_CHECKED: set[Path] = set()


def _changing(path: Path) -> bool:
    """Whether the store's file or its journal was written in the last few seconds."""
    stamps = [
        p.stat().st_mtime
        for p in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal"))
        if p.exists()
    ]
    return bool(stamps) and time.time() - max(stamps) < MIGRATION_QUIET_S


def open_store(uri: str) -> None:
    """:func:`check_store`, then create a missing or empty sqlite store from the template."""
    check_store(uri)
    path = sqlite_path(uri)
    if path is None or (path.exists() and path.stat().st_size > 0):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        template = _template()
        if template is None:
            _build(tmp)
        else:
            shutil.copyfile(template, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the path exists: the first command's store wins
        except FileExistsError:
            if path.stat().st_size == 0:
                # An empty file (``touch``) is replaced under a lock, so that two commands
                # never replace a store one of them has already written to.
                with _lock(path):
                    if path.stat().st_size == 0:
                        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_creatable(path: Path) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not _writable(parent):
        raise TrackingUnavailable(
            f"tracking store {str(path)!r} cannot be created: {str(parent)!r} is read-only"
        )


def _writable(path: Path) -> bool:
    """Writable by us, and not marked read-only: root may write anywhere, but a file or
    folder without any write permission bit was made read-only on purpose."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _check_existing(path: Path) -> None:
    name = repr(str(path))
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError as e:
        raise TrackingUnavailable(f"tracking store {name} cannot be read: {e.strerror}") from None
    if head != _MAGIC:
        raise TrackingUnavailable(
            f"tracking store {name} is not an MLflow store (not an SQLite database)"
        )
    if not _writable(path) or not _writable(path.parent):
        # sqlite also writes a journal beside the file: the folder must be writable too.
        raise TrackingUnavailable(
            f"tracking store {name} is read-only (MLflow writes to the "
            f"file and a journal beside it)"
        )
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
    except sqlite3.Error as e:
        raise TrackingUnavailable(f"tracking store {name} cannot be opened: {e}") from None
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return  # an empty database: MLflow creates its tables
        if "alembic_version" not in tables or "experiments" not in tables:
            raise TrackingUnavailable(
                f"tracking store {name} is an SQLite database but not an "
                f"MLflow store (no MLflow tables)"
            )
        revs = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
        _check_intact(con, name)
        # A writer's lock (another program in a transaction) would make every MLflow write
        # wait and fail: ask for it ourselves, without writing anything (a read-only
        # connection would be granted it without looking).
        probe = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=LOCK_WAIT_S, isolation_level=None
        )
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise TrackingUnavailable(
                f"tracking store {name} is locked by another program (waited {LOCK_WAIT_S:g} s)"
            ) from None
        raise TrackingUnavailable(f"tracking store {name} is corrupt: {e}") from None
    except sqlite3.DatabaseError as e:
        raise TrackingUnavailable(f"tracking store {name} is corrupt: {e}") from None
    finally:
        con.close()
    _check_revision(name, revs)


def _check_intact(con: sqlite3.Connection, name: str) -> None:
    """sqlite's quick_check, cut off after ``CHECK_BUDGET_S`` on a big store (a damaged
    header or schema, the usual corruption, shows at once)."""
    deadline = time.monotonic() + CHECK_BUDGET_S
    con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.OperationalError as e:
        if "interrupt" in str(e):
            return
        raise
    finally:
        con.set_progress_handler(None, 0)
    if problems != ["ok"]:
        raise TrackingUnavailable(f"tracking store {name} is corrupt: {problems[0]}")


def _check_revision(name: str, revs: list[str]) -> None:
    known, head = _revisions()
    if len(revs) != 1:
        raise TrackingUnavailable(
            f"tracking store {name} has {len(revs)} schema revisions "
            f"(a migration stopped half-way?); restore a backup"
        )
    if revs[0] not in known:
        raise TrackingUnavailable(
            f"tracking store {name} has schema revision {revs[0]}, newer "
            f"than this MLflow ({_mlflow_version()}) knows; upgrade mlflow"
        )
    if revs[0] != head:
        raise TrackingUnavailable(
            f"tracking store {name} has the older schema revision "
            f"{revs[0]} (or a migration stopped half-way); back it up, "
            f"then run: mlflow db upgrade sqlite:///{name[1:-1]}"
        )


@cache
def _revisions() -> tuple[frozenset[str], str]:
    """Every schema revision this MLflow knows, and its head, read from its migration
    scripts (MLflow's own helper imports alembic: seconds, against a 3 s budget)."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.submodule_search_locations
    versions = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations" / "versions"
    known, down = set(), set()
    for script in versions.glob("*.py"):
        text = script.read_text()
        rev = re.search(r"^revision(?:\s*:[^=]+)?\s*=\s*[\"'](\w+)[\"']", text, re.M)
        prev = re.search(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(.+)$", text, re.M)
        if rev:
            known.add(rev.group(1))
            down.update(re.findall(r"[\"'](\w+)[\"']", prev.group(1) if prev else ""))
    heads = known - down
    if len(heads) != 1:
        raise TrackingUnavailable(f"MLflow's migration scripts have {len(heads)} heads")
    return frozenset(known), heads.pop()


def _mlflow_version() -> str:
    from importlib.metadata import version  # importing mlflow itself takes seconds

    return version("mlflow")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orch"


def _template() -> Path | None:
    """An empty store at this MLflow's schema head, built once (migrations take seconds) in
    ``~/.cache/orch``; None where that folder cannot be written."""
    _, head = _revisions()
    cached = _cache_dir() / f"mlflow-{_mlflow_version()}-{head}.db"
    if cached.exists():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    tmp = cached.with_name(f".build-{uuid.uuid4().hex}.db")
    try:
        _build(tmp)
        os.replace(tmp, cached)  # concurrent builders write the same content: last one wins
    except OSError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return cached


def _build(path: Path) -> None:
    """MLflow's own table creation and migrations; the Default experiment is left to MLflow
    when it opens the copy (its artifact location depends on where the store is)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
