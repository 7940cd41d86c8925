"""Tracking scenario: one trial untracked vs tracked, in one process, alternating.

Usage: ``python bench/tracking_probe.py TRIALS_JSON OUT_JSON WORKDIR REPEATS``.

Measures what tracking adds to a trial, without Ray or start-up in the way:

- ``untracked``: the trial's generator drained, nothing logged;
- ``orch``: the driver's path (``orchestrator.store.writer.Tracker``): a child run with the tags,
  params and ``config.yaml`` orch writes, per-epoch metrics buffered and flushed in batches,
  the final metrics and outcome, ``end_run``;
- ``fluent``: what the Hydra app does (``mlflow.start_run``, ``log_params``, one
  ``log_metrics`` call per epoch).

Both stores are fresh sqlite files; creating one (MLflow's schema migrations) is timed
apart as ``store_create_s``, a fixed cost per store, not per trial. Torch runs on one
thread, as in one orch slot.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: its folder bench/ (which holds tasks.py) must not shadow the project's
    # `tasks` package; the repo root goes first instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import load_trials, run_trial


def main(argv: list[str]) -> int:
    trials_path, out_path, workdir, repeats = argv[0], argv[1], Path(argv[2]), int(argv[3])
    import mlflow
    import torch

    import bench.tasks  # noqa: F401 - registers the benchmark tasks
    from orchestrator.store import schema, writer
    from tasks.events import Metrics, Summary

    torch.set_num_threads(1)
    trial = load_trials(trials_path)[0]
    params = {"task": trial["task"], **writer.flatten(trial["config"])}

    def untracked() -> None:
        for _ in run_trial(trial["task"], trial["config"]):
            pass

    untracked()  # warm-up: dataset cache, torch kernels; not timed

    t0 = time.perf_counter()
    tracker = writer.Tracker(f"sqlite:///{workdir / 'orch.db'}")
    tracker.check()
    experiment = tracker.experiment_id("bench_tracking")
    store_create_s = time.perf_counter() - t0
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'fluent.db'}")
    mlflow.set_experiment("bench_tracking")

    def orch_tracked(i: int) -> None:
        # The tags, params and config artifact orch's _Recorder writes for a child run.
        tags = {
            schema.TAG_KIND: "trial",
            schema.TAG_SWEEP: "bench",
            schema.TAG_STUDY: "bench_tracking",
            schema.TAG_KEY: f"k{i}",
            schema.TAG_INDEX: i,
            schema.TAG_ARM: "{}",
            schema.TAG_ATTEMPT: 1,
            schema.TAG_NODE: "localhost",
            "orch.node_id": "n",
        }
        run_id = tracker.start_run(
            experiment, f"trial-{i}", tags, params, {"task": trial["task"], **trial["config"]}
        )
        last = 0
        for event in run_trial(trial["task"], trial["config"]):
            if isinstance(event, Metrics):
                tracker.log_metrics(run_id, event.values, event.step)
                last = event.step
                tracker.maybe_flush()
            elif isinstance(event, Summary):
                tracker.log_metrics(run_id, event.values, last)
        tracker.set_tags(run_id, {schema.TAG_OUTCOME: "finished"})
        tracker.end_run(run_id, "FINISHED")

    def fluent_tracked(i: int) -> None:
        with mlflow.start_run(run_name=f"trial-{i}"):
            mlflow.log_params({k[:250]: json.dumps(v) for k, v in params.items()})
            for event in run_trial(trial["task"], trial["config"]):
                if isinstance(event, Metrics):
                    mlflow.log_metrics(event.values, step=event.step)
                elif isinstance(event, Summary):
                    mlflow.log_metrics(event.values)

    times: dict[str, list[float]] = {"untracked": [], "orch": [], "fluent": []}
    for i in range(repeats):
        # Alternate the three so that load drifting during the probe hits them alike.
        for name, fn in (
            ("untracked", lambda: untracked()),
            ("orch", lambda i=i: orch_tracked(i)),
            ("fluent", lambda i=i: fluent_tracked(i)),
        ):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    result: dict[str, Any] = {**times, "store_create_s": store_create_s}
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
