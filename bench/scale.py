"""Scale: sweeps of trivial trials from 1 to 10,000, and reading a 10,000-trial sweep back.

Usage::

    python -m bench.scale sweep --trials 1 100 1000 10000 --out bench/results/scale.json
    python -m bench.scale read --runs 10000 --out bench/results/scale.json
    python -m bench.scale report --runs 100 --out bench/results/scale.json

``sweep``: one ``orch sweep bench_trivial seed=range(N)`` per N (a subprocess, fresh sqlite
store, 2 slots), timed from outside; the driver's peak RSS is sampled every 0.2 s (the
``orch`` process itself, not Ray's or the workers'). Per-trial overhead = (wall(N) -
wall(1)) / (N - 1). Then ``orch show SWEEP`` (a subprocess: interpreter, imports, query,
table) and ``Client.trials`` in this process are timed on that store.

``read``: the read side alone, without waiting for N trials to run: a sweep of N finished
trial runs (7 tags, 3 params, 2 metrics with 10-step histories each, as the recorder writes
them) is inserted through MLflow's own SQLAlchemy models in one transaction, then ``orch show``
and ``Client.trials`` are timed, and ``Client.trials`` again through MLflow's ``search_runs``
(what a server gets, and what every store got before the direct reads).

``report``: the end-of-sweep report (``report_sweep``: trials, verdicts, every finished
trial's ``val/acc`` and ``train/loss`` curves, figures, HTML) of such a sweep, timed; run it
with the old checkout on ``PYTHONPATH`` for the before figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.harness import BENCH_CONF, ROOT, _orch_command


def _peak_rss_mb(proc: subprocess.Popen, stop: threading.Event, out: list[float]) -> None:
    import psutil

    p = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            out.append(p.memory_info().rss / 2**20)
        except psutil.Error:
            return
        stop.wait(0.2)


def _timed_orch(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall s, the orch process's peak RSS MB and its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    t = time.perf_counter()
    proc = subprocess.Popen(
        [*_orch_command(), *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    rss: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_peak_rss_mb, args=(proc, stop, rss), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"orch {' '.join(args[:3])} exited {proc.returncode}: {stderr[-2000:]}")
    return wall, max(rss, default=0.0), stdout


def _reads(uri: str, sweep_id: str, cwd: Path, repeats: int = 3) -> dict[str, Any]:
    """``orch show`` (subprocess) and ``Client.trials`` (direct and through search_runs)."""
    from orchestrator.client import Client
    from orchestrator.store.reader import StoreReader

    show = [_timed_orch(["show", sweep_id, "--tracking-uri", uri], cwd)[0] for _ in range(repeats)]
    direct, search = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(Client(uri).trials(sweep_id))
        direct.append(time.perf_counter() - t)
    reader = StoreReader(uri)
    reader.direct = False  # MLflow's search_runs: what a server gets, and the old path
    t = time.perf_counter()
    assert len(reader.trials(sweep_id)) == n
    search.append(time.perf_counter() - t)
    return {
        "rows": n,
        "orch_show_s": statistics.median(show),
        "orch_show_runs": show,
        "client_trials_s": statistics.median(direct),
        "client_trials_runs": direct,
        "client_trials_search_runs_s": search[0],
    }


def sweep(trials: list[int], workdir: Path) -> list[dict[str, Any]]:
    out = []
    for n in trials:
        run = workdir / f"sweep-{n}"
        run.mkdir()
        uri = f"sqlite:///{run / 'mlflow.db'}"
        wall, rss, _ = _timed_orch(
            [
                "sweep",
                "bench_trivial",
                f"seed=range({n})",
                "--tracking-uri",
                uri,
                "--config-dir",
                str(BENCH_CONF),
                "--tasks",
                "bench.tasks",
            ],
            run,
        )
        from orchestrator.store.reader import StoreReader

        sweep_id = StoreReader(uri).sweeps()[-1].data.tags["orch.sweep_id"]
        row: dict[str, Any] = {
            "trials": n,
            "wall_s": wall,
            "driver_peak_rss_mb": rss,
            "load": os.getloadavg()[0],
        }
        if n >= 100:
            row.update(_reads(uri, sweep_id, run))
        print(json.dumps(row), flush=True)
        out.append(row)
    one = next((r["wall_s"] for r in out if r["trials"] == 1), None)
    for r in out:
        if one is not None and r["trials"] > 1:
            r["per_trial_overhead_ms"] = 1000 * (r["wall_s"] - one) / (r["trials"] - 1)
    return out


def fill(uri: str, n: int, epochs: int = 10) -> str:
    """A parent run and ``n`` finished trial runs as the recorder leaves them; the sweep id."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from sqlalchemy.orm import Session

    from orchestrator.store import schema
    from orchestrator.store.writer import Tracker

    sweep_id = f"scale-{n}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("scale")
    parent = tracker.start_run(
        exp,
        sweep_id,
        {
            schema.TAG_KIND: schema.KIND_SWEEP,
            schema.TAG_SWEEP: sweep_id,
            schema.TAG_METRIC: "val/acc",
            schema.TAG_AXES: json.dumps(["lr", "seed"]),
        },
        {},
        {"study": {"name": "scale", "claims": []}},
    )
    tracker.log_text(parent, "[]", schema.VERDICTS_ARTIFACT)  # as every sweep's report does
    tracker.end_run(parent, "FINISHED")
    tracker.close()
    now = int(time.time() * 1000)
    rows: dict[Any, list[dict[str, Any]]] = {
        m: [] for m in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)
    }
    for i in range(n):
        rid = uuid.uuid4().hex
        rows[SqlRun].append(
            dict(
                run_uuid=rid,
                name=f"{i:05d}",
                source_type="LOCAL",
                source_name="",
                entry_point_name="",
                user_id="bench",
                status="FINISHED",
                start_time=now + i,
                end_time=now + i + 1,
                source_version="",
                lifecycle_stage="active",
                artifact_uri="",
                experiment_id=int(exp),
            )
        )
        for k, v in {
            schema.TAG_PARENT: parent,
            schema.TAG_KIND: schema.KIND_TRIAL,
            schema.TAG_SWEEP: sweep_id,
            schema.TAG_KEY: f"k{i}",
            schema.TAG_INDEX: str(i),
            schema.TAG_OUTCOME: "finished",
            schema.TAG_ARM: json.dumps({"lr": i % 10}),
        }.items():
            rows[SqlTag].append(dict(key=k, value=v, run_uuid=rid))
        for k, v in {"task": "work", "lr": str(i % 10), "seed": str(i)}.items():
            rows[SqlParam].append(dict(key=k, value=v, run_uuid=rid))
        for m in ("val/acc", "train/loss"):
            for step in range(epochs):
                rows[SqlMetric].append(
                    dict(
                        key=m,
                        value=step / epochs,
                        timestamp=now + step,
                        step=step,
                        is_nan=False,
                        run_uuid=rid,
                    )
                )
            rows[SqlLatestMetric].append(
                dict(
                    key=m,
                    value=(epochs - 1) / epochs,
                    timestamp=now + epochs - 1,
                    step=epochs - 1,
                    is_nan=False,
                    run_uuid=rid,
                )
            )
    engine = sqlalchemy.create_engine(uri)
    with Session(engine) as s, s.begin():
        for model, batch in rows.items():
            s.execute(sqlalchemy.insert(model), batch)
    engine.dispose()
    return sweep_id


def read(runs: list[int], workdir: Path) -> list[dict[str, Any]]:
    out = []
    for n in runs:
        uri = f"sqlite:///{workdir / f'read-{n}.db'}"
        t = time.perf_counter()
        sweep_id = fill(uri, n)
        row = {
            "runs": n,
            "fill_s": time.perf_counter() - t,
            "load": os.getloadavg()[0],
            **_reads(uri, sweep_id, workdir),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _history_reads(uri: str, sweep_id: str) -> dict[str, float]:
    """The report's curve reads alone (``val/acc`` and ``train/loss`` of every finished
    trial): one ``get_metric_history`` per trial and metric (before), and the bulk read."""
    from orchestrator.store.reader import StoreReader

    reader = StoreReader(uri)
    finished = reader.trials(sweep_id)["run_id"].tolist()
    metrics = ("val/acc", "train/loss")
    t = time.perf_counter()
    for m in metrics:
        for r in finished:
            reader.history(r, m, source=r)
    per_run = time.perf_counter() - t
    if not hasattr(reader, "histories"):  # the old checkout: per-run reads only
        return {"histories_per_run_s": per_run}
    t = time.perf_counter()
    for m in metrics:
        reader.histories(finished, m)
    return {"histories_per_run_s": per_run, "histories_bulk_s": time.perf_counter() - t}


def report(runs: list[int], workdir: Path, repeats: int = 3) -> list[dict[str, Any]]:
    from orchestrator.report.build import report_sweep

    out = []
    for n in runs:
        uri = f"sqlite:///{workdir / f'report-{n}.db'}"
        sweep_id = fill(uri, n)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            report_sweep(uri, sweep_id)
            times.append(time.perf_counter() - t)
        row = {
            "runs": n,
            "report_s": statistics.median(times),
            "report_runs": times,
            "load": os.getloadavg()[0],
            **_history_reads(uri, sweep_id),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("sweep", "read", "report"))
    ap.add_argument("--trials", type=int, nargs="+", default=[1, 100, 1000, 10000])
    ap.add_argument("--runs", type=int, nargs="+", default=[10000])
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = {
            "sweep": lambda: sweep(args.trials, Path(tmp)),
            "read": lambda: read(args.runs, Path(tmp)),
            "report": lambda: report(args.runs, Path(tmp)),
        }[args.mode]
        rows = run()
    result = {
        "mode": args.mode,
        "label": args.label,
        "rows": rows,
        "cpus": os.cpu_count(),
        "load_end": os.getloadavg()[0],
    }
    if args.out:
        out = Path(args.out)
        prior = json.loads(out.read_text()) if out.exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([*prior, result], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
