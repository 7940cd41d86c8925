"""End to end on a real Ray session and a real sqlite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
SWEEP = [
    "optimizers",
    "optimizer=sgd_momentum,adam",
    "model=mlp_d",
    "data=digits",
    "seed=range(2)",
    f"train.epochs={EPOCHS}",
]


def _children(client: MlflowClient, parent_id: str, experiment_id: str):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_sweep_run_tree_client_and_dedup(ray_session, tracking_uri: str) -> None:
    assert main(["sweep", *SWEEP, "--tracking-uri", tracking_uri]) == 0

    client = Client(tracking_uri)
    sweeps = client.sweeps()
    assert len(sweeps) == 1
    sweep = sweeps.iloc[0]
    assert sweep.status == "FINISHED" and sweep.n_trials == 4 and sweep.finished == 4

    ml = MlflowClient(tracking_uri)
    parent = ml.get_run(sweep.run_id)
    assert parent.data.tags["orch.kind"] == "sweep"
    assert parent.data.tags["orch.study"] == "optimizers"
    assert "config.yaml" in {a.path for a in ml.list_artifacts(parent.info.run_id)}
    children = _children(ml, sweep.run_id, sweep.experiment_id)
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["orch.sweep_id"] == sweep.sweep_id
        assert len(run.data.tags["orch.trial_key"]) == 20
        assert run.data.params["optimizer.name"] in ("sgd", "adam")
        assert run.data.params["train.epochs"] == str(EPOCHS)
        assert "config.yaml" in {a.path for a in ml.list_artifacts(run.info.run_id)}
        assert len(ml.get_metric_history(run.info.run_id, "val/acc")) == EPOCHS
        assert 0.0 <= run.data.metrics["test/acc"] <= 1.0
    assert len({r.data.tags["orch.trial_key"] for r in children}) == 4

    df = client.trials(sweep.sweep_id)
    assert len(df) == 4
    assert set(df.optimizer) == {"sgd_momentum", "adam"}
    assert sorted(df.seed) == [0, 0, 1, 1]
    assert (df.outcome == "finished").all()
    assert df["test/acc"].notna().all()
    assert df["optimizer.lr"].map(type).eq(float).all()  # params come back typed
    hist = client.history(df.run_id[0], "train/loss")
    assert list(hist.step) == list(range(EPOCHS))
    best = client.best(sweep.sweep_id[:12] if False else sweep.sweep_id)
    assert best["test/acc"] == df["test/acc"].max()

    # Re-running the same sweep into the same store trains nothing again.
    assert main(["sweep", *SWEEP, "--tracking-uri", tracking_uri]) == 0
    second = client.sweeps().iloc[-1]
    df2 = client.trials(second.sweep_id)
    assert len(df2) == 4
    assert set(df2.reused_from) == set(df.run_id)
    assert sorted(df2["test/acc"]) == sorted(df["test/acc"])
    assert list(client.history(df2.run_id[0], "val/acc").step) == list(range(EPOCHS))


def test_failing_trial_is_recorded_and_sweep_goes_on(ray_session, tracking_uri: str) -> None:
    """A user's study from --config-dir with a user task from --tasks; seed 1 raises."""
    code = main(
        [
            "sweep",
            "mine",
            "--config-dir",
            str(ROOT / "tests/data/user_conf"),
            "--tasks",
            "tests.plugins.failing_tasks",
            "--tracking-uri",
            tracking_uri,
        ]
    )
    assert code == 0  # the sweep completed; failures are reported, not fatal
    client = Client(tracking_uri)
    df = client.trials(client.sweeps().sweep_id.iloc[0])
    assert len(df) == 4
    failed = df[df.seed == 1]
    assert set(failed.outcome) == {"failed"} and set(failed.status) == {"FAILED"}
    assert failed.error.str.contains("RuntimeError: boom at step 1").all()
    ok = df[df.seed == 0]
    assert set(ok.outcome) == {"finished"}
    assert sorted(ok.final) == [2.0, 3.0]
    art = MlflowClient(tracking_uri).list_artifacts(failed.run_id.iloc[0], "error")
    assert [a.path for a in art] == ["error/traceback.txt"]


def test_dry_run_lists_trials_without_writing(ray_session, tmp_path: Path, capsys) -> None:
    db = tmp_path / "mlflow.db"
    assert (
        main(["sweep", "optimizers", "--quick", "--dry-run", "--tracking-uri", f"sqlite:///{db}"])
        == 0
    )
    assert "seed=2" in capsys.readouterr().out
    assert not db.exists()


@pytest.mark.parametrize("study", ["optimizers"])
def test_studies_lists_builtin_with_claims(study: str, capsys) -> None:
    assert main(["studies"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith(study))
    assert "OPT-1" in line and "OPT-8" in line
