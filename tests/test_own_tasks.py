"""Own tasks from the command line: ``--tasks`` as ``python -m`` finds modules (or a file
path), a bad module is one line and exit 2, and ``orch sweep --task NAME`` sweeps a
registered task with no study file. Dry runs in a subprocess whose cwd is a tmp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def orch(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(cwd / "cache"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "tests" / "plugins" / "quadratic.py", tmp_path / "mytasks.py")
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    return tmp_path


@pytest.mark.parametrize("tasks", ["mytasks", "./mytasks.py"])
def test_task_sweep_without_a_study(work: Path, tasks: str) -> None:
    r = orch(
        work,
        "sweep",
        "--task",
        "quadratic",
        "--tasks",
        tasks,
        "x=0.1,0.5",
        "seed=range(3)",
        "sweep.metric=score",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    assert "study quadratic: 6 trials (x=2  seed=3)" in r.stderr
    assert len(r.stdout.splitlines()) == 6
    assert not (work / "mlflow.db").exists()


@pytest.mark.parametrize(
    "tasks,needle",
    [
        ("broken", "--tasks: 'broken': no module named 'no_such_module_here'"),
        ("missing_mod", "no module named 'missing_mod' (not in"),
        ("./nofile.py", "no such file"),
    ],
)
def test_bad_task_module_is_one_line_exit_2(work: Path, tasks: str, needle: str) -> None:
    r = orch(work, "sweep", "--task", "quadratic", "--tasks", tasks, "--dry-run")
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_task_with_a_builtin_option(work: Path) -> None:
    r = orch(
        work, "sweep", "--task", "classify", "optimizer=sgd,adam", "train.epochs=1", "--dry-run"
    )
    assert r.returncode == 0, r.stderr
    assert "study classify: 2 trials (optimizer=2  seed=1)" in r.stderr
