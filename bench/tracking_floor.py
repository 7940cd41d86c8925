"""Tracking floor: what full tracking costs per trial on the driver, with no training at all.

Usage: ``python -m bench.tracking_floor --trials 100 1000 --out bench/results/tracking_floor.json``
(``--uri`` for a server or PostgreSQL store instead of a fresh sqlite file per case).

Two measurements, each on a fresh store:

- ``calls``: MLflow's own cost, one ``MlflowClient`` call at a time, for the writes orch makes
  per trial (``create_run`` with tags, ``log_batch`` of params, the ``config.yaml`` artifact,
  ``log_batch`` of the per-epoch metrics with the outcome tag, ``set_terminated``) and the
  reads (``search_runs`` of the sweep, ``get_metric_history``): median ms per call.
- ``tracker``: orch's driver path (``orchestrator.store.writer.Tracker``) for N trials the
  way the recorder drives it: ``start_run`` (tags, params, config), per-epoch
  ``log_metrics`` + ``maybe_flush``, final metrics, ``end_run`` with the outcome tag;
  ``close`` at the end. Per trial = the whole loop's wall time (``close`` included) / N, so
  work moved to a background thread is still counted once it has to be waited for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

EPOCHS = 10
CONFIG = {
    "task": "classify",
    "model": {"name": "mlp", "width": 64, "depth": 2},
    "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0},
    "data": {"name": "digits", "batch_size": 64},
    "epochs": EPOCHS,
    "seed": 0,
}


def _tags(i: int) -> dict[str, Any]:
    from orchestrator.store import schema

    return {
        schema.TAG_PARENT: "p",
        schema.TAG_KIND: "trial",
        schema.TAG_SWEEP: "floor",
        schema.TAG_STUDY: "floor",
        schema.TAG_KEY: f"k{i}",
        schema.TAG_INDEX: i,
        schema.TAG_ARM: json.dumps({"optimizer": "adam"}),
        schema.TAG_ATTEMPT: 1,
        schema.TAG_NODE: "localhost",
        schema.TAG_NODE_ID: "n",
        schema.TAG_PID: 1,
    }


def calls(uri: str, n: int, wal: bool = False) -> dict[str, float]:
    """Median ms of each MLflow call orch makes per trial, over ``n`` trials (``wal``: with
    the sqlite settings the Tracker applies, ``writer.fast_sqlite``)."""
    import yaml
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from orchestrator.store import writer

    client = MlflowClient(uri)
    exp = client.create_experiment(
        f"calls-{time.time_ns()}", artifact_location=writer.artifact_root(uri, "calls")
    )
    if wal:
        writer.fast_sqlite(client)
    params = [Param(k, writer.param_value(v)) for k, v in writer.flatten(CONFIG).items()]
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "create_run",
            "log_batch_params",
            "config_artifact",
            "log_batch_metrics_tag",
            "set_terminated",
        )
    }
    ids = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(CONFIG))
        for i in range(n):
            t = time.perf_counter()
            run = client.create_run(exp, tags={k: str(v) for k, v in _tags(i).items()})
            t1 = time.perf_counter()
            rid = run.info.run_id
            client.log_batch(rid, params=params)
            t2 = time.perf_counter()
            client.log_artifact(rid, str(cfg))
            t3 = time.perf_counter()
            ts = int(time.time() * 1000)
            metrics = [
                Metric(k, 0.5, ts, e) for e in range(EPOCHS) for k in ("train/loss", "val/acc")
            ]
            client.log_batch(rid, metrics=metrics, tags=[RunTag("orch.outcome", "finished")])
            t4 = time.perf_counter()
            client.set_terminated(rid, "FINISHED")
            t5 = time.perf_counter()
            for k, a, b in (
                ("create_run", t, t1),
                ("log_batch_params", t1, t2),
                ("config_artifact", t2, t3),
                ("log_batch_metrics_tag", t3, t4),
                ("set_terminated", t4, t5),
            ):
                times[k].append(1000 * (b - a))
            ids.append(rid)
    t = time.perf_counter()
    runs = client.search_runs([exp], "tags.`orch.sweep_id` = 'floor'", max_results=50000)
    search_ms = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    for rid in ids[:50]:
        client.get_metric_history(rid, "val/acc")
    hist_ms = 1000 * (time.perf_counter() - t) / min(50, len(ids))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["per_trial_sum"] = sum(out.values())
    out[f"search_runs_{len(runs)}"] = search_ms
    out["get_metric_history"] = hist_ms
    return out


def tracker_loop(uri: str, n: int) -> dict[str, float]:
    """orch's ``Tracker`` path for ``n`` trivial trials: ms per trial and the split."""
    from orchestrator.store import schema, writer

    tracker = writer.Tracker(uri)
    exp = tracker.experiment_id(f"floor-{time.time_ns()}")
    params = {"task": CONFIG["task"], **writer.flatten(CONFIG)}
    t0 = time.perf_counter()
    for i in range(n):
        rid = tracker.start_run(exp, f"trial-{i}", _tags(i), params, CONFIG)
        for e in range(EPOCHS):
            tracker.log_metrics(rid, {"train/loss": 1.0 / (e + 1), "val/acc": e / EPOCHS}, e)
            tracker.maybe_flush()
        tracker.log_metrics(rid, {"test/acc": 0.9}, EPOCHS - 1)
        tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
    t1 = time.perf_counter()
    unwritten = tracker.close()
    t2 = time.perf_counter()
    assert not unwritten, unwritten
    return {"per_trial_ms": 1000 * (t2 - t0) / n, "loop_s": t1 - t0, "close_s": t2 - t1}


#: The A/B variants, one store each: MLflow's calls on default sqlite (what orch did before),
#: the same with WAL + synchronous=NORMAL, and the batches written to MLflow's tables.
VARIANTS = ("mlflow_calls", "mlflow_calls_wal", "one_transaction")


def ab(tmp: Path, n: int, block: int) -> dict[str, Any]:
    """The three variants interleaved in blocks of ``block`` trials until each has run ``n``:
    load that drifts during the run hits all three alike. ms per trial, median over blocks."""
    from orchestrator.store import schema, writer

    trackers = {}
    for v in VARIANTS:
        t = writer.Tracker(f"sqlite:///{tmp / v}.db")
        # create_experiment, not Tracker.experiment_id: that would switch the store to WAL.
        exp = t.client.create_experiment(v, artifact_location=writer.artifact_root(t.uri, v))
        if v != "mlflow_calls":
            writer.fast_sqlite(t.client)
        if v != "one_transaction":
            t._engine = None  # what a server gets: log_batch and set_terminated
        trackers[v] = (t, exp)
    params = {"task": CONFIG["task"], **writer.flatten(CONFIG)}
    blocks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for b in range(n // block):
        for v in VARIANTS:
            tracker, exp = trackers[v]
            t0 = time.perf_counter()
            for j in range(block):
                i = b * block + j
                rid = tracker.start_run(exp, f"trial-{i}", _tags(i), params, CONFIG)
                for e in range(EPOCHS):
                    tracker.log_metrics(
                        rid, {"train/loss": 1.0 / (e + 1), "val/acc": e / EPOCHS}, e
                    )
                    tracker.maybe_flush()
                tracker.log_metrics(rid, {"test/acc": 0.9}, EPOCHS - 1)
                tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
            tracker.flush()
            blocks[v].append(1000 * (time.perf_counter() - t0) / block)
    for tracker, _ in trackers.values():
        assert not tracker.close()
    out: dict[str, Any] = {v: statistics.median(ms) for v, ms in blocks.items()}
    out["ratio_to_mlflow_calls"] = {v: out[v] / out["mlflow_calls"] for v in VARIANTS}
    out["blocks_ms"] = blocks
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--calls", type=int, default=200, help="trials for the per-call breakdown")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--uri", default=None, help="default: a fresh sqlite file per case")
    ap.add_argument(
        "--ab",
        type=int,
        default=0,
        help="trials per variant for the interleaved A/B of the write paths",
    )
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    def store(tmp: str, name: str) -> str:
        return args.uri or f"sqlite:///{Path(tmp) / name}.db"

    result: dict[str, Any] = {
        "label": args.label,
        "load": os.getloadavg()[0],
        "uri": args.uri or "sqlite (fresh file)",
        "tracker": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.calls:
            result["calls_ms"] = calls(store(tmp, "calls"), args.calls)
            result["calls_wal_ms"] = calls(store(tmp, "calls_wal"), args.calls, wal=True)
            print(json.dumps([result["calls_ms"], result["calls_wal_ms"]], indent=1), flush=True)
        if args.ab:
            result["ab"] = ab(Path(tmp), args.ab, args.block)
            print(
                json.dumps({k: v for k, v in result["ab"].items() if k != "blocks_ms"}), flush=True
            )
        for n in args.trials:
            runs = [tracker_loop(store(tmp, f"t{n}-{r}"), n) for r in range(args.repeats)]
            result["tracker"][str(n)] = {
                "per_trial_ms": statistics.median(r["per_trial_ms"] for r in runs),
                "runs": runs,
            }
            print(n, json.dumps(result["tracker"][str(n)]), flush=True)
    result["load_end"] = os.getloadavg()[0]
    if args.out:
        out = Path(args.out)
        runs_so_far = json.loads(out.read_text()) if out.exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([*runs_so_far, result], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
