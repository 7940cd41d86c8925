"""Hydra multirun runner: each job composes its trial, runs it and logs it to MLflow.

Usage (what the harness runs; the basic launcher runs the jobs one after another)::

    python bench/hydra_app.py -m hydra.searchpath=[file://$PWD/bench/conf] \\
        study=bench_grid16 optimizer=sgd,sgd_momentum,adam,rmsprop seed=0,1,2,3 \\
        tracking.uri=sqlite:///mlflow.db hydra.sweep.dir=multirun/bench

This is the script a Hydra user writes: the project's config tree (``conf/``) composed by
``@hydra.main``, sweep axes as Hydra sweep overrides, and MLflow's fluent API
(``mlflow.start_run``) per job, logging params, per-epoch metrics and the final values.
With ``$BENCH_RECORDS`` set, each job appends its trial's record (its own Summary span) to
that JSON-lines file for the harness.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: its folder bench/ (which holds tasks.py) must not shadow the project's
    # `tasks` package; the repo root goes first instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import bench.tasks  # noqa: F401 - registers the benchmark tasks
from bench.common import record, run_trial
from orchestrator.core.specs import SWEEP_KEYS
from orchestrator.store.writer import flatten
from tasks.events import Metrics, Summary


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """One multirun job: the trial of this job's overrides, tracked as one MLflow run."""
    import mlflow
    import torch

    torch.set_num_threads(1)  # one CPU per trial, like one orch slot
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    trial = {k: v for k, v in resolved.items() if k not in SWEEP_KEYS}
    mlflow.set_tracking_uri(cfg.tracking.uri or "sqlite:///mlflow.db")
    mlflow.set_experiment(cfg.study.name)
    summary: dict[str, float] = {}
    with mlflow.start_run():
        mlflow.log_params({k[:250]: json.dumps(v) for k, v in flatten(trial).items()})
        for event in run_trial(cfg.task.name, trial):
            if isinstance(event, Metrics):
                mlflow.log_metrics(event.values, step=event.step)
            elif isinstance(event, Summary):
                summary = event.values
                mlflow.log_metrics(summary)
    out = os.environ.get("BENCH_RECORDS")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record(HydraConfig.get().job.num, summary)) + "\n")


if __name__ == "__main__":
    main()
