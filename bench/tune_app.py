"""Ray Tune runner: the same trials as a grid search, tracked with Tune's MLflow callback.

Usage: ``python bench/tune_app.py TRIALS_JSON RECORDS_JSON TRACKING_URI STORAGE_DIR``.

Set up as a Tune user would for this workload: a function trainable that reports every
epoch, ``TuneConfig(max_concurrent_trials=2, reuse_actors=True)``, one CPU per trial (torch
on one thread, like an orch slot), ``MLflowLoggerCallback`` writing from the driver to the
same kind of sqlite store orch uses. Ray starts in-process bound to loopback with the
dashboard off, exactly as ``orch`` starts it, so Ray's own start-up cost is the same.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: its folder bench/ (which holds tasks.py) must not shadow the project's
    # `tasks` package, here or in Ray workers (they inherit the driver's sys.path).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import ROOT, load_trials, record, write_records


def trainable(config: dict[str, Any]) -> None:
    """Run one trial in a Tune worker, reporting each epoch and the Summary at the end."""
    import torch
    from ray import tune

    import bench.tasks  # noqa: F401 - registers the benchmark tasks in the worker
    from bench.common import run_trial
    from tasks.events import Metrics, Summary

    case = config["case"]  # one grid_search value: the trial's index, task and config
    torch.set_num_threads(1)
    for event in run_trial(case["task"], case["trial"]):
        if isinstance(event, Metrics):
            tune.report({**event.values, "epoch": event.step})
        elif isinstance(event, Summary):
            tune.report({**event.values, "index": case["index"]})


def main(argv: list[str]) -> int:
    trials_path, records_path, tracking_uri, storage = argv
    import os

    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    trials = load_trials(trials_path)
    # Workers import bench.tasks: Tune's workers get the repo on their path like orch's do.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "case": tune.grid_search(
                [{"index": t["index"], "task": t["task"], "trial": t["config"]} for t in trials]
            )
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(
            name="bench",
            storage_path=str(Path(storage).resolve()),
            verbose=0,
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=tracking_uri, experiment_name="bench", save_artifact=False
                )
            ],
        ),
    )
    results = tuner.fit()
    records = [
        record(int(r.metrics["index"]), r.metrics)
        for r in results
        if r.metrics and "index" in r.metrics
    ]
    write_records(records_path, records)
    ray.shutdown()
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
