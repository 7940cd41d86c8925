"""Leases: a trial is claimed in the store (its RUNNING run, with a heartbeat) before it
trains. Two identical sweeps started together train each trial once and both report every
trial; a live claim is waited for and its result reused; a stale one is taken over. On
sqlite and on an MLflow server on PostgreSQL. Real Ray, real MLflow, real subprocesses."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.store import schema
from orchestrator.store.create import open_store
from tasks import registry
from tests.sweep_process import finish, heartbeat, own_ray_sweep
from tests.test_failures import user_conf
from tests.test_server_mode import fresh_database, mlflow_server  # noqa: F401 - fixtures
from tests.test_signals import assert_store_truthful

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "tests.plugins.failing_tasks"
SEEDS = 4


def _conf(tmp: Path) -> Path:
    return user_conf(
        tmp, "slow", "lease", {"steps": 4, "step_s": 0.3}, {"seeds": SEEDS, "metric": "final"}
    )


def _sweep(conf: Path, uri: str, cwd: Path, *overrides: str) -> subprocess.Popen:
    return own_ray_sweep("lease", conf, PLUGINS, uri, cwd, *overrides)


def _trained_once(uri: str) -> None:
    """Every trial of both sweeps: reported finished; trained in exactly one run."""
    client, ml = Client(uri), MlflowClient(uri)
    sweeps = client.sweeps()
    assert len(sweeps) == 2 and set(sweeps.status) == {"FINISHED"}
    trained: dict[str, list[str]] = {}
    for sweep in sweeps.itertuples():
        df = client.trials(sweep.sweep_id)
        assert len(df) == SEEDS and (df.outcome == "finished").all(), df
        assert sorted(df.seed) == list(range(SEEDS))
        for row in df.itertuples():
            if not isinstance(row.reused_from, str):
                trained.setdefault(row.trial_key, []).append(row.run_id)
            else:  # points at a run that trained the same trial
                source = ml.get_run(row.reused_from)
                assert source.data.tags[schema.TAG_KEY] == row.trial_key
                assert source.data.tags[schema.TAG_OUTCOME] == "finished"
                assert row.final == source.data.metrics["final"]
    assert len(trained) == SEEDS and all(len(v) == 1 for v in trained.values()), trained


def test_two_sweeps_started_together_on_a_new_store_train_each_trial_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    conf = _conf(tmp_path)
    errs = finish([_sweep(conf, uri, tmp_path) for _ in range(2)])
    assert all("Traceback" not in e for e in errs), errs
    _trained_once(uri)
    assert_store_truthful(uri)


def test_two_sweeps_into_one_server_train_each_trial_once(
    mlflow_server,  # noqa: F811
    tmp_path: Path,
) -> None:
    uri, _ = mlflow_server
    conf = _conf(tmp_path)
    procs = [_sweep(conf, uri, tmp_path) for _ in range(2)]
    errs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errs
    _trained_once(uri)


def _claim(uri: str, conf: Path, seed: int, beat_age_s: float) -> tuple[str, str]:
    """A claim on the trial of ``seed`` by a sweep that is not running here: a RUNNING
    trial run with its key, its heartbeat ``beat_age_s`` old. Returns (run id, key)."""
    registry.load_plugins((PLUGINS,))
    plan = plan_sweep(composer(str(conf)), "lease", [])
    key = next(t.key for t in plan.trials if t.seed == seed)
    open_store(uri)
    ml = MlflowClient(uri)
    exp = ml.create_experiment("lease")
    run = ml.create_run(
        exp,
        run_name="elsewhere",
        tags={
            schema.TAG_KIND: schema.KIND_TRIAL,
            schema.TAG_KEY: key,
            schema.TAG_SWEEP: "other",
            schema.TAG_HEARTBEAT: f"{time.time() - beat_age_s:.0f}",
        },
    )
    return run.info.run_id, key


def test_live_claim_is_waited_for_and_its_result_reused(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = _conf(tmp_path)
    other, key = _claim(uri, conf, seed=0, beat_age_s=0)
    ml = MlflowClient(uri)
    with heartbeat(uri, other):  # the other sweep's driver, alive
        proc = _sweep(conf, uri, tmp_path, "sweep.lease_timeout_s=8")
        # The sweep trains the other seeds and waits for seed 0.
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            runs = ml.search_runs(
                [ml.get_experiment_by_name("lease").experiment_id],
                f"tags.`{schema.TAG_OUTCOME}` = 'finished'",
            )
            if len(runs) == SEEDS - 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the other trials did not finish")
        time.sleep(3)  # longer than a trial: seed 0 is not being trained here
        mine = ml.search_runs(
            [ml.get_experiment_by_name("lease").experiment_id], f"tags.`{schema.TAG_KEY}` = '{key}'"
        )
        assert [r.info.run_id for r in mine] == [other]
    ml.log_batch(
        other,
        metrics=[Metric("final", 4.0, int(time.time() * 1000), 3)],
        tags=[RunTag(schema.TAG_OUTCOME, "finished")],
    )
    ml.set_terminated(other, "FINISHED")
    errs = finish([proc])
    assert proc.returncode == 0, errs
    df = Client(uri).trials(Client(uri).sweeps().sweep_id.iloc[0])
    row = df[df.trial_key == key].iloc[0]
    assert row.reused_from == other and row.outcome == "finished" and row.final == 4.0
    assert (df.outcome == "finished").all() and len(df) == SEEDS


def test_stale_claim_is_taken_over(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = _conf(tmp_path)
    other, key = _claim(uri, conf, seed=0, beat_age_s=60)
    proc = _sweep(conf, uri, tmp_path, "sweep.lease_timeout_s=20")
    errs = finish([proc])
    assert proc.returncode == 0, errs
    stale = MlflowClient(uri).get_run(other)
    assert stale.info.status == "KILLED"
    assert stale.data.tags[schema.TAG_OUTCOME] == "interrupted"
    assert "lease expired" in stale.data.tags[schema.TAG_ERROR]
    df = Client(uri).trials(Client(uri).sweeps().sweep_id.iloc[0])
    assert (df.outcome == "finished").all() and len(df) == SEEDS
    assert df.reused_from.isna().all()  # trained here
    assert_store_truthful(uri)
