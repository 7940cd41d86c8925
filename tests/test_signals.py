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
    conf = user_conf(tmp, "slow", "sig", {"steps": steps, "step_s": step_s},
                     {"seeds": seeds, "metric": "final"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", "sig",
                             "--config-dir", str(conf), "--tasks", PLUGINS,
                             "--tracking-uri", uri], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(uri: str, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Until the sweep's parent run exists (``parent``) or a trial run does (``trial``)."""
    path = Path(uri[len("sqlite:///"):])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                ml = MlflowClient(uri)
                exp = ml.get_experiment_by_name("sig")
                kind = schema.KIND_SWEEP if what == "parent" else schema.KIND_TRIAL
                if exp is not None and ml.search_runs([exp.experiment_id],
                                                      f"tags.`{schema.TAG_KIND}` = '{kind}'"):
                    return
            except Exception:  # noqa: BLE001 - the store is being created
                pass
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
                run.data.params["seed"])
            steps = ml.get_metric_history(run.info.run_id, "score")
            assert sorted(p.step for p in steps) == list(range(int(run.data.params["steps"])))
        else:
            assert "final" not in run.data.metrics
    return counts


# (what to wait for, then seconds more): before the store is written, as the first trial
# starts, mid-sweep, and later on.
POINTS = {"before the parent run": ("start", 0.5), "parent run": ("parent", 0.0),
          "first trial": ("trial", 0.0), "mid-sweep": ("trial", 1.5),
          "late": ("trial", 4.0)}


def _run_and_signal(tmp: Path, point: str, signals: list[int], steps: int, step_s: float,
                    seeds: int) -> tuple[int, str, dict[str, int]]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = _start(tmp, uri, steps, step_s, seeds)
    what, more = POINTS[point]
    if what != "start":
        _wait_for(uri, proc, what)
    time.sleep(more)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=300)
    counts = assert_store_truthful(uri) if Path(uri[len("sqlite:///"):]).exists() else {}
    return proc.returncode, err, counts


@pytest.mark.parametrize("point", list(POINTS))
def test_sigterm_at_any_point_is_a_cancel_and_the_store_tells_the_truth(
        point: str, tmp_path: Path) -> None:
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


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_ctrl_c(sig: int, tmp_path: Path) -> None:
    code, err, counts = _run_and_signal(tmp_path, "mid-sweep", [sig], 4, 0.3, 8)
    assert code == 128 + sig, err
    assert "sweep cancelled" in err and "Traceback" not in err


@pytest.mark.parametrize("point", ["first trial", "mid-sweep", "late"])
def test_signal_while_trials_end_rapidly(point: str, tmp_path: Path) -> None:
    """Trials of one 20 ms step: the signal lands while trial ends are being written."""
    code, err, counts = _run_and_signal(tmp_path, point, [signal.SIGTERM], 1, 0.02, 60)
    assert code == 143, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("point", ["first trial", "mid-sweep"])
def test_second_signal_forces_the_exit_after_marking(point: str, tmp_path: Path) -> None:
    code, err, counts = _run_and_signal(tmp_path, point, [signal.SIGTERM, signal.SIGTERM],
                                        1, 0.02, 60)
    assert code == 143, err
    assert "Traceback" not in err, err
