"""A driver killed mid-sweep (SIGKILL): ``orch resume`` runs exactly the unfinished trials."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator import Client
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
# 6 trials on 2 slots; each long enough that the driver dies with some done, some running.
SWEEP = [
    "optimizers",
    "optimizer=adam",
    "model=mlp_d",
    "data=digits",
    "seed=range(6)",
    "train.epochs=40",
]


def test_driver_killed_then_resumed_runs_exactly_the_rest(ray_session, tracking_uri: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "sweep", *SWEEP, "--tracking-uri", tracking_uri],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(tracking_uri)
    deadline = time.monotonic() + 180
    sweep_id = None
    while time.monotonic() < deadline:
        try:
            sweeps = client.sweeps()
            if len(sweeps):
                sweep_id = sweeps.sweep_id.iloc[0]
                df = client.trials(sweep_id)
                if (df.outcome == "finished").sum() >= 2 and (df.outcome == "running").any():
                    break
        except Exception:  # noqa: BLE001 - the store is being created
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert sweep_id is not None
    before = client.trials(sweep_id)
    finished_before = set(before[before.outcome == "finished"].trial_key)
    assert 2 <= len(finished_before) < 6

    assert main(["resume", sweep_id, "--tracking-uri", tracking_uri]) == 0

    after = client.trials(sweep_id)
    assert len(after) == 6 and (after.outcome == "finished").all()
    assert len(client.sweeps()) == 1  # the same parent, no new sweep
    parent = client.sweep_run(sweep_id)
    assert parent.info.status == "FINISHED"
    runs = MlflowClient(tracking_uri).search_runs(
        [parent.info.experiment_id],
        f"tags.`orch.sweep_id` = '{sweep_id}' and tags.`orch.kind` = 'trial'",
    )
    by_key: dict[str, list] = {}
    for r in runs:
        by_key.setdefault(r.data.tags["orch.trial_key"], []).append(r)
    # Trials finished before the kill were not run again; interrupted ones were, once.
    for key in finished_before:
        assert len(by_key[key]) == 1
    interrupted = [r for r in runs if r.data.tags.get("orch.outcome") == "interrupted"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
    for r in interrupted:
        outcomes = sorted(
            x.data.tags["orch.outcome"] for x in by_key[r.data.tags["orch.trial_key"]]
        )
        assert outcomes == ["finished", "interrupted"]
