"""Data-parallel trials (``resources.workers: k``): gangs of Ray actors, one process group.

* BN-6: k=2 ranks at batch b train exactly like one worker at batch 2b (gradients are
  averaged over the global batch): same loss trajectory without BN, and with SyncBN against
  plain BN on the whole batch; local BN (per-rank statistics) does not match.
* Rank 0 alone reports: one child run per trial, one value per step of each metric.
* BN-8: cancelling a running 2-worker trial (Ctrl-C, ``orch cancel``) ends it KILLED and
  leaves no worker process; a rank that dies mid-trial makes the trial retry and finish.

All on real Ray (the session fixture for in-process sweeps, a subprocess ``orch sweep``
with its own local Ray where signals and process tables are involved).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main
from tests.sweep_process import start_sweep, wait_running

EPOCHS = 3
# 50 examples per class: 500 training examples, so a global batch of 32 leaves a last batch
# of 20 (split 10/10 over two ranks): the equivalence covers a partial batch too.
COMMON = ["seed=0", f"train.epochs={EPOCHS}", "data.per_class=50", "optimizer.lr=0.05"]
WORKER_CLASSES = ("TrialWorker", "GroupWorker")


def _sweep_ids(tracking_uri: str) -> set[str]:
    try:
        return set(Client(tracking_uri).sweeps().sweep_id)
    except Exception:  # noqa: BLE001 - no store yet
        return set()


def _sweep(tracking_uri: str, *overrides: str) -> str:
    """Run the bn_sync study in-process (the session's Ray); the new sweep's id."""
    before = _sweep_ids(tracking_uri)
    assert main(["sweep", "bn_sync", *COMMON, *overrides, "--tracking-uri", tracking_uri]) == 0
    (sweep_id,) = _sweep_ids(tracking_uri) - before
    return sweep_id


def _curves(tracking_uri: str, sweep_id: str) -> dict[str, dict[str, np.ndarray]]:
    """norm -> metric -> per-epoch values, for the sweep's trials (one per norm)."""
    client = Client(tracking_uri)
    df = client.trials(sweep_id)
    assert set(df.outcome) == {"finished"}, df[["model.norm", "outcome", "error"]]
    out: dict[str, dict[str, np.ndarray]] = {}
    for _, row in df.iterrows():
        out[row["model.norm"]] = {
            m: client.history(row.run_id, m).sort_values("step").value.to_numpy()
            for m in ("train/loss", "val/loss", "val/acc")
        }
    return out


def test_two_workers_match_one_worker_at_twice_the_batch(ray_session, tracking_uri: str) -> None:
    single = _sweep(
        tracking_uri, "resources.workers=1", "train.batch_size=32", "model.norm=none,bn"
    )
    double = _sweep(
        tracking_uri, "resources.workers=2", "train.batch_size=16", "model.norm=none,bn,syncbn"
    )
    one, two = _curves(tracking_uri, single), _curves(tracking_uri, double)

    # No BN: data parallelism is a larger batch with averaged gradients (BN-6).
    for m in ("train/loss", "val/loss"):
        assert len(two["none"][m]) == EPOCHS
        np.testing.assert_allclose(two["none"][m], one["none"][m], rtol=1e-4, atol=1e-5)
    # SyncBN over 2 x 16 is BatchNorm over the global batch of 32.
    for m in ("train/loss", "val/loss"):
        np.testing.assert_allclose(two["syncbn"][m], one["bn"][m], rtol=1e-4, atol=1e-5)
    # Sensitivity: local BN normalises each rank's 16 alone, which is a different model.
    assert not np.allclose(two["bn"]["train/loss"], one["bn"]["train/loss"], rtol=1e-4)

    # Rank 0 alone reports: one child run per trial, one value per step, all global.
    ml = MlflowClient(tracking_uri)
    parent = Client(tracking_uri).sweep_run(double)
    children = ml.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    for run in children:
        history = ml.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(p.step for p in history) == list(range(EPOCHS))
        # Per epoch, plus the trial's mean step time at the last step (the Summary).
        step_ms = ml.get_metric_history(run.info.run_id, "time/step_ms")
        assert sorted({p.step for p in step_ms}) == list(range(EPOCHS))
        assert all(p.value > 0 for p in step_ms)
        assert run.data.tags["orch.outcome"] == "finished"
        assert run.data.params["resources.workers"] == "2"
    # The world size is part of the trial's identity: the k=1 runs were not reused for k=2.
    assert not Client(tracking_uri).trials(double).reused_from.notna().any()


# -- processes: cancel and dead ranks (a subprocess sweep with its own local Ray) ---------

LONG = [
    "bn_sync",
    "resources.workers=2",
    "model.norm=syncbn",
    "train.batch_size=8",
    "sweep.seeds=1",
    "train.epochs=500",
]


def _workers(sweep: subprocess.Popen, method: str = "") -> list[psutil.Process]:
    """The sweep's trial actors (Ray titles them ``ray::Class.method``): descendants of
    the ``orch sweep`` process, whose in-process Ray starts the raylet that forks them, so
    other sweeps on the machine never count."""
    out = []
    try:
        procs = psutil.Process(sweep.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c in cmd for c in WORKER_CLASSES) and method in cmd:
            out.append(p)
    return out


@pytest.mark.parametrize("how", ["sigint", "orch cancel"])
def test_cancel_two_worker_trial_leaves_no_worker(how: str, tracking_uri: str) -> None:
    proc = start_sweep(tracking_uri, LONG)
    sweep_id = wait_running(tracking_uri, proc, timeout=240)
    ranks = _workers(proc, "GroupWorker")
    assert len(ranks) == 2, [p.cmdline() for p in ranks]
    workers = _workers(proc)  # recorded now: once the sweep exits they are orphans
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        assert main(["cancel", sweep_id, "--tracking-uri", tracking_uri]) == 0
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    client = Client(tracking_uri)
    assert client.sweep_run(sweep_id).info.status == "KILLED"
    df = client.trials(sweep_id)
    # One trial; bn_sync's per-k sub-grids all collapse onto it (a row per grid it counts in).
    assert df.run_id.nunique() == 1
    assert set(df.status) == {"KILLED"} and set(df.outcome) == {"killed"}
    deadline = time.monotonic() + 20
    while any(p.is_running() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    # is_running() compares creation times too: a reused pid does not count.
    assert not [p.pid for p in workers if p.is_running()]


def test_dead_rank_retries_the_trial(tracking_uri: str) -> None:
    epochs = 6
    proc = start_sweep(tracking_uri, [*LONG[:-1], f"train.epochs={epochs}", "data.per_class=60"])
    sweep_id = wait_running(tracking_uri, proc, timeout=240)
    (rank1,) = _workers(
        proc, "GroupWorker.run_rank"
    )  # rank 0 runs ``run``, the others ``run_rank``
    rank1.kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    ml = MlflowClient(tracking_uri)
    parent = Client(tracking_uri).sweep_run(sweep_id)
    runs = ml.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_outcome = {r.data.tags["orch.outcome"]: r for r in runs}
    assert set(by_outcome) == {"retried", "finished"}, [r.data.tags for r in runs]
    assert (
        "rank" in by_outcome["retried"].data.tags["orch.error"].lower()
        or "died" in by_outcome["retried"].data.tags["orch.error"].lower()
    )
    assert by_outcome["finished"].data.tags["orch.attempt"] == "2"
    assert len(ml.get_metric_history(by_outcome["finished"].info.run_id, "val/acc")) == epochs


def test_two_worker_trial_over_its_memory_limit_fails_and_the_sweep_goes_on(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    """The one trial runner serves gangs too: a k=2 trial over ``resources.memory_mb`` ends
    FAILED with the memory error, the next trial runs on a fresh gang, and the run carries
    the worker's ``system/*`` metrics."""
    from tests.test_failures import PLUGINS, trial_runs, user_conf

    conf = user_conf(
        tmp_path,
        "hog",
        "hogs2",
        {"total_mb": 3000, "every_s": 0.1},
        {"axes": {"total_mb": "3000,100"}, "metric": "held_mb", "retries": 0},
        resources={"memory_mb": 1200, "workers": 2, "cpus": 1},
    )
    assert (
        main(
            [
                "sweep",
                "hogs2",
                "--config-dir",
                str(conf),
                "--tasks",
                PLUGINS,
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 0
    )
    runs = {int(r.data.params["total_mb"]): r for r in trial_runs(tracking_uri, "hogs2")}
    hog, small = runs[3000], runs[100]
    assert hog.data.params["resources.workers"] == "2"
    assert hog.info.status == "FAILED" and hog.data.tags["orch.outcome"] == "failed"
    assert hog.data.tags["orch.error"].startswith("MemoryLimitExceeded: ")
    assert "MB > limit 1200 MB (resources.memory_mb)" in hog.data.tags["orch.error"]
    assert small.data.tags["orch.outcome"] == "finished"
    assert any(k.startswith("system/") for k in hog.data.metrics), hog.data.metrics
