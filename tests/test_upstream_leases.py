"""Leases on upstream runs: a run other trials need first (pre-training, ``orch.upstream_key``)
is claimed in the store before it trains, like a trial. Two sweeps that need the same
upstream at once train it once; a live claim on it is waited for and its artifacts used; a
stale one is taken over. Real Ray, a real sqlite MLflow store, real sweep subprocesses; the
task pair (``pre``, ``tune``) is ``tests/plugins/upstream_tasks.py`` (no torch)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.store import schema
from orchestrator.store.create import open_store
from tasks import registry
from tests.sweep_process import finish, heartbeat, own_ray_sweep
from tests.test_failures import user_conf

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = "tests.plugins.upstream_tasks"
STUDY = "uplease"
SEEDS = 3

pytestmark = pytest.mark.slow


def _conf(tmp: Path) -> Path:
    # The upstream takes a few seconds, the fine-tune trials less than one.
    return user_conf(
        tmp,
        "tune",
        STUDY,
        {"steps": 2, "step_s": 0.2, "pre": {"steps": 4, "step_s": 1.0}},
        {"seeds": SEEDS, "metric": "final"},
    )


def _sweep(conf: Path, uri: str, cwd: Path, *overrides: str) -> subprocess.Popen:
    return own_ray_sweep(STUDY, conf, PLUGINS, uri, cwd, *overrides)


def _upstream_key(conf: Path) -> str:
    registry.load_plugins((PLUGINS,))
    plan = plan_sweep(composer(str(conf)), STUDY, [])
    (key,) = {t.upstream.key for t in plan.trials if t.upstream is not None}
    return key


def _upstream_runs(uri: str) -> list:
    ml = MlflowClient(uri)
    exp = ml.get_experiment_by_name(STUDY)
    return ml.search_runs([exp.experiment_id], f"tags.`{schema.TAG_KIND}` = 'upstream'")


def _every_trial_from(uri: str, n_sweeps: int, base: float, upstream_key: str) -> None:
    """Each sweep reports every trial finished, its value computed from the upstream whose
    artifact holds ``base``; every trial run names that upstream."""
    client, ml = Client(uri), MlflowClient(uri)
    sweeps = client.sweeps()
    assert len(sweeps) == n_sweeps and set(sweeps.status) == {"FINISHED"}, sweeps
    for sweep in sweeps.itertuples():
        df = client.trials(sweep.sweep_id)
        assert len(df) == SEEDS and (df.outcome == "finished").all(), df
        assert sorted(df.seed) == list(range(SEEDS))
        assert all(row.final == base + row.seed for row in df.itertuples()), df
        for row in df.itertuples():
            trained = row.reused_from if isinstance(row.reused_from, str) else row.run_id
            tags = ml.get_run(trained).data.tags
            assert tags[schema.TAG_UPSTREAM] == upstream_key


def _claim(uri: str, key: str, beat_age_s: float) -> str:
    """A claim on the upstream by a sweep that is not running here: a RUNNING upstream run
    with its key and a heartbeat ``beat_age_s`` old."""
    open_store(uri)
    ml = MlflowClient(uri)
    run = ml.create_run(
        ml.create_experiment(STUDY),
        run_name="pretrain-elsewhere",
        tags={
            schema.TAG_KIND: schema.KIND_UPSTREAM,
            schema.TAG_KEY: key,
            schema.TAG_SWEEP: "other",
            schema.TAG_HEARTBEAT: f"{time.time() - beat_age_s:.0f}",
        },
    )
    return run.info.run_id


def test_two_sweeps_needing_one_upstream_train_it_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    conf = _conf(tmp_path)
    procs = [_sweep(conf, uri, tmp_path) for _ in range(2)]
    errs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("Traceback" not in e for e in errs), errs
    key = _upstream_key(conf)
    # Exactly one upstream run is left (a claim withdrawn at the same moment is deleted),
    # and it trained.
    (pre,) = _upstream_runs(uri)
    assert pre.data.tags[schema.TAG_KEY] == key
    assert pre.info.status == "FINISHED" and pre.data.tags[schema.TAG_OUTCOME] == "finished"
    assert len(MlflowClient(uri).get_metric_history(pre.info.run_id, "score")) == 4
    _every_trial_from(uri, 2, 10.0, key)
    # Each fine-tune trial trained once too (the trial leases, as before).
    trained: dict[str, int] = {}
    for sweep in Client(uri).sweeps().itertuples():
        for row in Client(uri).trials(sweep.sweep_id).itertuples():
            if not isinstance(row.reused_from, str):
                trained[row.trial_key] = trained.get(row.trial_key, 0) + 1
    assert sorted(trained.values()) == [1] * SEEDS, trained


def test_live_upstream_claim_is_waited_for_and_its_artifacts_used(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = _conf(tmp_path)
    key = _upstream_key(conf)
    other = _claim(uri, key, beat_age_s=0)
    ml = MlflowClient(uri)
    with heartbeat(uri, other):  # the other sweep's driver, alive
        proc = _sweep(conf, uri, tmp_path, "sweep.lease_timeout_s=8")
        # Wait until the sweep counts the upstream in its total (it is at the upstream
        # step: the claim is being looked at), then a little longer than its first look.
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            parents = ml.search_runs(
                [ml.get_experiment_by_name(STUDY).experiment_id],
                f"tags.`{schema.TAG_KIND}` = 'sweep'",
            )
            if parents and parents[0].data.metrics.get("trials/total") == SEEDS + 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the sweep never reached its upstream")
        time.sleep(3)
        # Not trained here: the only upstream run is the other sweep's claim, and no
        # fine-tune trial started without it.
        assert [r.info.run_id for r in _upstream_runs(uri)] == [other]
        trials = ml.search_runs(
            [ml.get_experiment_by_name(STUDY).experiment_id], f"tags.`{schema.TAG_KIND}` = 'trial'"
        )
        assert trials == []
    # The other sweep's upstream ends with its artifact (a value this sweep could not make).
    ml.log_text(other, "77.0", f"{schema.OUTPUTS_FOLDER}/value.txt")
    ml.log_batch(other, tags=[RunTag(schema.TAG_OUTCOME, "finished")])
    ml.set_terminated(other, "FINISHED")
    errs = finish([proc])
    assert proc.returncode == 0, errs
    assert [r.info.run_id for r in _upstream_runs(uri)] == [other]
    _every_trial_from(uri, 1, 77.0, key)


def test_stale_upstream_claim_is_taken_over(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = _conf(tmp_path)
    key = _upstream_key(conf)
    other = _claim(uri, key, beat_age_s=60)
    proc = _sweep(conf, uri, tmp_path, "sweep.lease_timeout_s=20")
    errs = finish([proc])
    assert proc.returncode == 0, errs
    stale = MlflowClient(uri).get_run(other)
    assert stale.info.status == "KILLED"
    assert stale.data.tags[schema.TAG_OUTCOME] == "interrupted"
    assert "lease expired" in stale.data.tags[schema.TAG_ERROR]
    (mine,) = [r for r in _upstream_runs(uri) if r.info.run_id != other]
    assert mine.data.tags[schema.TAG_OUTCOME] == "finished"
    _every_trial_from(uri, 1, 10.0, key)
