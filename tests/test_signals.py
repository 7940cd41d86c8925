"""SIGTERM, SIGHUP and Ctrl-C at many points of a sweep: a cancel, exit 128 + the signal,
and the store tells the truth afterwards: no run RUNNING, every trial whose result reached
the driver FINISHED with its metrics, none FINISHED that did not end. A second signal forces
the exit, still after marking. Real Ray, real MLflow sqlite, the real ``orch`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from orchestrator.store import schema
from tests.test_failures import user_conf

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "tests.plugins.failing_tasks"


def _start(tmp: Path, uri: str, steps: int, step_s: float, seeds: int) -> subprocess.Popen:
    conf = user_conf(
        tmp, "slow", "sig", {"steps": steps, "step_s": step_s}, {"seeds": seeds, "metric": "final"}
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "sig",
            "--config-dir",
            str(conf),
            "--tasks",
            PLUGINS,
            "--tracking-uri",
            uri,
        ],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(
    uri: str, proc: subprocess.Popen, what: str, n: int = 1, timeout: float = 300
) -> None:
    """Until the sweep's parent run exists (``parent``), ``n`` trial runs do (``trial``) or
    ``n`` trials have finished (``finished``): points of the sweep, not of the clock."""
    path = Path(uri[len("sqlite:///") :])
    query = {
        "parent": f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'",
        "trial": f"tags.`{schema.TAG_KIND}` = '{schema.KIND_TRIAL}'",
        "finished": f"tags.`{schema.TAG_OUTCOME}` = 'finished'",
    }[what]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():  # a new store appears whole (store/create.py)
            ml = MlflowClient(uri)
            exp = ml.get_experiment_by_name("sig")
            if exp is not None and len(ml.search_runs([exp.experiment_id], query)) >= n:
                return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {what} run in time")


def assert_store_truthful(uri: str) -> dict[str, int]:
    """The invariant, on every run in the store; returns the count of trial outcomes."""
    ml = MlflowClient(uri)
    ids = [e.experiment_id for e in ml.search_experiments(view_type=ViewType.ALL)]
    counts: dict[str, int] = {}
    for run in ml.search_runs(ids, max_results=5000):
        tags, status = run.data.tags, run.info.status
        assert status != "RUNNING", f"{run.info.run_name} left RUNNING: {tags}"
        assert run.info.end_time, run.info.run_name
        if tags.get(schema.TAG_KIND) == schema.KIND_SWEEP:
            continue
        outcome = tags.get(schema.TAG_OUTCOME)
        counts[outcome] = counts.get(outcome, 0) + 1
        expected = "FAILED" if outcome == schema.RETRIED else schema.STATUS[outcome]
        assert status == expected, (run.info.run_name, status, outcome)
        if outcome == "finished":  # its result: the final metric and the whole curve
            assert run.data.metrics["final"] == float(run.data.params["steps"]) + float(
                run.data.params["seed"]
            )
            trained = tags.get(schema.TAG_REUSED, run.info.run_id)  # a reuse points at it
            steps = ml.get_metric_history(trained, "score")
            assert sorted(p.step for p in steps) == list(range(int(run.data.params["steps"])))
        else:
            assert "final" not in run.data.metrics
    return counts


# (what to wait for, how many, then seconds more): before the store is written, as the
# first trial starts, mid-trial, and once half of the trials have finished.
POINTS = {
    "before the parent run": ("start", 0, 0.5),
    "parent run": ("parent", 1, 0.0),
    "first trial": ("trial", 1, 0.0),
    "mid-trial": ("trial", 1, 0.5),
    "half done": ("finished", 0, 0.0),
}


def _run_and_signal(
    tmp: Path, point: str, signals: list[int], steps: int, step_s: float, seeds: int
) -> tuple[int, str, dict[str, int]]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = _start(tmp, uri, steps, step_s, seeds)
    what, n, more = POINTS[point]
    if what != "start":
        _wait_for(uri, proc, what, n or seeds // 2)
    time.sleep(more)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=300)
    counts = assert_store_truthful(uri) if Path(uri[len("sqlite:///") :]).exists() else {}
    return proc.returncode, err, counts


@pytest.mark.parametrize("point", list(POINTS))
def test_sigterm_at_any_point_is_a_cancel_and_the_store_tells_the_truth(
    point: str, tmp_path: Path
) -> None:
    code, err, counts = _run_and_signal(tmp_path, point, [signal.SIGTERM], 4, 0.3, 8)
    if point == "before the parent run":
        # Still starting (Python importing): the handler may not be there yet, and SIGTERM's
        # default action ends the process (the shell's 143 too); nothing was written.
        assert code in (143, -signal.SIGTERM), err
        assert not counts
        return
    assert code == 143, err
    assert "Traceback" not in err, err
    assert "sweep cancelled" in err
    assert set(counts) <= {"finished", "killed"}, counts
    if point == "half done":
        assert counts["finished"] >= 4


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_ctrl_c(sig: int, tmp_path: Path) -> None:
    code, err, counts = _run_and_signal(tmp_path, "mid-trial", [sig], 4, 0.3, 8)
    assert code == 128 + sig, err
    assert "sweep cancelled" in err and "Traceback" not in err


@pytest.mark.parametrize("point", ["first trial", "mid-trial", "half done"])
def test_signal_while_trials_end_rapidly(point: str, tmp_path: Path) -> None:
    """Trials of one 20 ms step: the signal lands while trial ends are being written."""
    code, err, counts = _run_and_signal(tmp_path, point, [signal.SIGTERM], 1, 0.02, 60)
    assert code == 143, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("point", ["first trial", "half done"])
def test_second_signal_forces_the_exit_after_marking(point: str, tmp_path: Path) -> None:
    code, err, counts = _run_and_signal(
        tmp_path, point, [signal.SIGTERM, signal.SIGTERM], 1, 0.02, 60
    )
    assert code == 143, err
    assert "Traceback" not in err, err
