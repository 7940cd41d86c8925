"""Long trials survive preemption: checkpoints in the store, resume after a lost worker or a
killed driver. Real Ray, real MLflow (sqlite in a temp dir), the real classify task (paced
by ``tests/plugins/paced_classify.py`` so that a test can act mid-trial).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main
from orchestrator.store import schema, writer
from orchestrator.store.reader import StoreReader
from orchestrator.sweep.checkpoints import TrialCheckpoints
from tasks.events import Checkpoint
from tests.sweep_process import start_sweep
from tests.test_failures import MlflowServer, is_trial_worker, user_conf

PLUGINS = "tests.plugins.paced_classify"
EPOCHS = 40
#: One deterministic 40-epoch digits-MLP trial, a checkpoint after every epoch.
SWEEP = [
    "optimizers",
    "optimizer=adam",
    "model=mlp_d",
    "data=digits",
    "seed=0",
    f"train.epochs={EPOCHS}",
    "train.checkpoint_every=1",
    "train.checkpoint_min_interval_s=0",
    "task.name=classify_paced",
    "--tasks",
    PLUGINS,
]
FINAL = ("test/acc", "test/loss", "train/eval_loss", "val/acc", "val/loss")


# -- the store side -------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "server"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The sqlite default, or a real ``mlflow server`` with served artifacts."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    server = MlflowServer(tmp_path).start()
    try:
        yield server.uri
    finally:
        server.kill()


@pytest.mark.slow
def test_store_keeps_the_latest_behind_a_pointer_and_copies_history(store_uri: str) -> None:
    tracking_uri = store_uri
    tracker = writer.Tracker(tracking_uri)
    exp = tracker.experiment_id("ckpt")
    tags = {schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_SWEEP: "s1", schema.TAG_KEY: "k"}
    first = tracker.start_run(exp, "first", tags, {})
    store = TrialCheckpoints(tracker, keep=2)
    ml = MlflowClient(tracking_uri)
    for step in range(4):
        tracker.log_metrics(first, {"val/acc": step / 10}, step)
        assert store.save("k", first, Checkpoint(step, f"state {step}".encode()))
        # The metrics up to the checkpoint's step were written before it was recorded.
        assert [m.step for m in ml.get_metric_history(first, "val/acc")] == list(range(step + 1))
    tracker.log_metrics(first, {"system/cpu_utilization_percentage": 50.0}, 7)
    assert not store.save("k", first, Checkpoint(4, b""))  # a rank > 0's: nothing to store
    assert ml.get_run(first).data.tags[schema.TAG_CHECKPOINT_STEP] == "3"
    assert sorted(a.path for a in ml.list_artifacts(first, schema.CHECKPOINTS_FOLDER)) == [
        schema.checkpoint_path(2),
        schema.checkpoint_path(3),
    ]
    # The driver died after a newer artifact, before its pointer: that one is not used.
    tracker.log_files(first, {schema.checkpoint_name(5): b"partial"}, schema.CHECKPOINTS_FOLDER)
    tracker.end_run(first, "KILLED")

    # A new driver (orch resume) finds the pointer's checkpoint in the store.
    again = TrialCheckpoints(writer.Tracker(tracking_uri), keep=2)
    again.find_interrupted(StoreReader(tracking_uri), exp, "s1", {"k", "other"})
    assert again.resume_state("other") is None
    found = again.resume_state("k")
    assert found is not None and found.run_id == first
    assert found.checkpoint == Checkpoint(3, b"state 3") and found.checkpoint.state == b"state 3"

    # The resumed run gets the history up to step 2 once, with the original timestamps;
    # not the worker's system metrics.
    second = again.tracker.start_run(exp, "second", tags, {})
    again.copy_history(first, second, 2)
    copied = ml.get_metric_history(second, "val/acc")
    original = ml.get_metric_history(first, "val/acc")
    assert [(m.step, m.value, m.timestamp) for m in copied] == [
        (m.step, m.value, m.timestamp) for m in original if m.step <= 2
    ]
    assert "system/cpu_utilization_percentage" not in ml.get_run(second).data.metrics

    # A checkpoint the task refused: the next attempt starts over, and a later resume does
    # not look past that attempt for an older checkpoint.
    again.unusable("k", "CheckpointError: corrupt")
    assert again.resume_state("k") is None
    assert again.restart_reason("k") == "CheckpointError: corrupt"
    again.tracker.set_tags(second, {schema.TAG_RESTARTED: "CheckpointError: corrupt"})
    later = TrialCheckpoints(writer.Tracker(tracking_uri), keep=2)
    later.find_interrupted(StoreReader(tracking_uri), exp, "s1", {"k"})
    assert later.resume_state("k") is None


# -- end to end -----------------------------------------------------------------------------
def _trial_run(uri: str, experiment: str = "optimizers") -> list[Any]:
    """The experiment's trial runs (every attempt), oldest first."""
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        return []
    return MlflowClient(uri).search_runs(
        [exp.experiment_id],
        f"tags.`{schema.TAG_KIND}` = 'trial'",
        order_by=["attributes.start_time ASC"],
    )


def _reference(tmp_path: Path) -> dict[str, float]:
    """The same trial run uninterrupted, in a store of its own."""
    uri = f"sqlite:///{tmp_path / 'reference.db'}"
    assert main(["sweep", *SWEEP, "--tracking-uri", uri]) == 0
    (run,) = _trial_run(uri)
    return run.data.metrics


def _assert_history_once(uri: str, run_id: str) -> None:
    ml = MlflowClient(uri)
    for name in ("val/acc", "train/loss"):
        steps = [m.step for m in ml.get_metric_history(run_id, name)]
        assert sorted(steps) == list(range(EPOCHS)), name  # every epoch, each once


def _assert_same_result(run: Any, reference: dict[str, float]) -> None:
    for name in FINAL:
        assert run.data.metrics[name] == pytest.approx(reference[name], rel=1e-5, abs=1e-6), name


def _wait_for_checkpoint(
    uri: str, alive: Any, experiment: str = "optimizers", timeout: float = 300
) -> Any:
    """The running trial's run once it points at a checkpoint after step 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            for run in _trial_run(uri, experiment):
                if (
                    run.info.status == "RUNNING"
                    and int(run.data.tags.get(schema.TAG_CHECKPOINT_STEP, 0)) > 0
                ):
                    return run
        except Exception:  # noqa: BLE001 - the store is being created by the sweep
            pass
        time.sleep(0.2)
    pytest.fail("no checkpoint of a running trial was seen")


def test_driver_killed_then_resumed_continues_from_the_checkpoint(
    ray_session, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    proc = start_sweep(tracking_uri, SWEEP)
    try:
        victim = _wait_for_checkpoint(tracking_uri, lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    sweep_id = victim.data.tags[schema.TAG_SWEEP]
    (interrupted,) = _trial_run(tracking_uri)
    k = int(interrupted.data.tags[schema.TAG_CHECKPOINT_STEP])
    assert 0 < k < EPOCHS - 1

    assert main(["resume", sweep_id, "--tracking-uri", tracking_uri]) == 0
    first, resumed = _trial_run(tracking_uri)
    assert first.info.run_id == interrupted.info.run_id
    assert first.data.tags[schema.TAG_OUTCOME] == "interrupted"
    assert resumed.data.tags[schema.TAG_OUTCOME] == "finished"
    assert resumed.data.tags[schema.TAG_RESUMED_STEP] == str(k)
    assert resumed.data.tags[schema.TAG_RESUMED_RUN] == first.info.run_id
    _assert_history_once(tracking_uri, resumed.info.run_id)
    _assert_same_result(resumed, _reference(tmp_path))
    df = Client(tracking_uri).trials(sweep_id)
    assert len(df) == 1 and df.resumed_from_step.iloc[0] == k
    capsys.readouterr()
    assert main(["show", sweep_id, "--tracking-uri", tracking_uri]) == 0
    assert f"resumed from its checkpoint at step {k} (attempt" in capsys.readouterr().out


def test_worker_killed_then_retried_attempt_resumes(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    codes: list[int] = []
    sweep = threading.Thread(
        target=lambda: codes.append(main(["sweep", *SWEEP, "--tracking-uri", tracking_uri]))
    )
    sweep.start()
    victim = _wait_for_checkpoint(tracking_uri, sweep.is_alive)
    pid = int(victim.data.tags[schema.TAG_PID])
    assert is_trial_worker(pid)  # only this sweep's own worker is killed
    os.kill(pid, signal.SIGKILL)
    sweep.join(timeout=600)
    assert not sweep.is_alive() and codes == [0]

    first, second = _trial_run(tracking_uri)
    assert first.info.run_id == victim.info.run_id
    assert first.data.tags[schema.TAG_OUTCOME] == schema.RETRIED
    k = int(second.data.tags[schema.TAG_RESUMED_STEP])
    assert 0 < k <= int(first.data.tags[schema.TAG_CHECKPOINT_STEP])
    assert second.data.tags[schema.TAG_RESUMED_RUN] == first.info.run_id
    assert second.data.tags[schema.TAG_OUTCOME] == "finished"
    _assert_history_once(tracking_uri, second.info.run_id)
    _assert_same_result(second, _reference(tmp_path))


def test_unusable_checkpoint_restarts_the_trial_once_from_scratch(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    """The retried attempt's task refuses the checkpoint: that attempt fails with the
    task's message and a third runs from scratch, once, saying so; the sweep finishes."""
    conf = user_conf(
        tmp_path,
        "stepper",
        "steppers",
        {"steps": 20, "step_s": 0.3, "refuse_resume": True},
        {"seeds": 1, "metric": "final"},
    )
    codes: list[int] = []
    sweep = threading.Thread(
        target=lambda: codes.append(
            main(
                [
                    "sweep",
                    "steppers",
                    "--config-dir",
                    str(conf),
                    "--tasks",
                    "tests.plugins.resumable",
                    "--tracking-uri",
                    tracking_uri,
                ]
            )
        )
    )
    sweep.start()
    victim = _wait_for_checkpoint(tracking_uri, sweep.is_alive, experiment="steppers")
    pid = int(victim.data.tags[schema.TAG_PID])
    assert is_trial_worker(pid)
    os.kill(pid, signal.SIGKILL)
    sweep.join(timeout=600)
    assert not sweep.is_alive() and codes == [0]

    died, refused, fresh = _trial_run(tracking_uri, experiment="steppers")
    assert died.data.tags[schema.TAG_OUTCOME] == schema.RETRIED
    assert refused.data.tags[schema.TAG_OUTCOME] == schema.RETRIED
    assert refused.info.status == "FAILED"
    assert int(refused.data.tags[schema.TAG_RESUMED_STEP]) > 0
    message = "CheckpointError: refused: this task's checkpoints are not resumable"
    assert refused.data.tags[schema.TAG_ERROR] == message
    assert fresh.data.tags[schema.TAG_OUTCOME] == "finished"
    assert fresh.data.tags[schema.TAG_RESTARTED] == message
    assert schema.TAG_RESUMED_STEP not in fresh.data.tags
    steps = [
        m.step for m in MlflowClient(tracking_uri).get_metric_history(fresh.info.run_id, "score")
    ]
    assert steps == list(range(20))


def test_two_rank_trial_resumes_every_rank_from_rank_0s_checkpoint(
    ray_session, tracking_uri: str, tmp_path: Path
) -> None:
    """A rank > 0 dies: the retried gang resumes, every rank from rank 0's stored state (a
    rank starting over would train other epochs than rank 0, and the result would differ)."""
    from tests.test_ddp import _workers

    epochs = 12
    args = [
        "bn_sync",
        "resources.workers=2",
        "model.norm=syncbn",
        "train.batch_size=8",
        "sweep.seeds=1",
        "data.per_class=60",
        f"train.epochs={epochs}",
        "train.checkpoint_every=1",
        "train.checkpoint_min_interval_s=0",
        "task.name=classify_paced",
        "--tasks",
        PLUGINS,
    ]
    proc = start_sweep(tracking_uri, args)
    try:
        victim = _wait_for_checkpoint(
            tracking_uri, lambda: proc.poll() is None, experiment="bn_sync"
        )
        (rank1,) = _workers(proc, "GroupWorker.run_rank")  # rank 0 runs ``run``
        rank1.kill()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err

    first, second = _trial_run(tracking_uri, experiment="bn_sync")
    assert first.info.run_id == victim.info.run_id
    assert first.data.tags[schema.TAG_OUTCOME] == schema.RETRIED
    assert second.data.tags[schema.TAG_OUTCOME] == "finished"
    k = int(second.data.tags[schema.TAG_RESUMED_STEP])
    assert k > 0
    ml = MlflowClient(tracking_uri)
    assert sorted(m.step for m in ml.get_metric_history(second.info.run_id, "val/acc")) == list(
        range(epochs)
    )

    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    assert main(["sweep", *args, "--tracking-uri", reference]) == 0
    (whole,) = _trial_run(reference, experiment="bn_sync")
    _assert_same_result(second, whole.data.metrics)
