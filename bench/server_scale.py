"""Beyond one machine: 1, 2, 4, 8 concurrent drivers writing into one MLflow server on PostgreSQL.

Usage: ``python -m bench.server_scale --drivers 1 2 4 8 --seconds 60 --workers 4
--out bench/results/server_scale.json`` (PostgreSQL at 127.0.0.1:5432, user postgres, trust).

Each case gets a fresh database and a fresh ``mlflow server`` (``--workers``, served artifacts,
loopback only). Each driver is a process running orch's ``Tracker`` the way the recorder does
for trivial trials (child run with tags, params and ``config.yaml``; 10 epochs x 2 metrics
flushed in batches; final metric; ``end_run`` with the outcome tag), back to back, for a fixed
time: the request loop is bounded by ``--seconds`` and ``--max-trials``. No Ray: a trivial
trial's dispatch is the driver's own business, what is measured is what the server accepts.

Per case: trials/s and metric points/s accepted by the server (summed over drivers, counted
from what each driver had written when its time was up, then checked against the database),
per-trial latency (median, p95), and what failed: requests that raised, writes left in
``Tracker.unwritten``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

PG = "postgresql://postgres@127.0.0.1:5432"
EPOCHS = 10
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def driver(uri: str, seconds: float, max_trials: int, out: str, name: str) -> None:
    """One driver: trivial trials back to back until ``seconds`` or ``max_trials``."""
    from orchestrator.store import schema, writer

    tracker = writer.Tracker(uri, outage_s=30)
    exp = tracker.experiment_id("server-scale")
    config = {"task": "work", "seconds": 0.0, "epochs": EPOCHS, "seed": 0}
    latencies, errors, points = [], [], 0
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    for i in range(max_trials):
        if time.monotonic() >= deadline:
            break
        t = time.perf_counter()
        try:
            rid = tracker.start_run(
                exp,
                f"{name}-{i}",
                {
                    schema.TAG_KIND: "trial",
                    schema.TAG_SWEEP: name,
                    schema.TAG_INDEX: i,
                    schema.TAG_KEY: f"{name}-{i}",
                },
                config,
                config,
            )
            for e in range(EPOCHS):
                tracker.log_metrics(rid, {"train/loss": 1 / (e + 1), "val/acc": e / EPOCHS}, e)
                tracker.maybe_flush()
            tracker.log_metrics(rid, {"time/trial_s": 0.0}, EPOCHS - 1)
            tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
        except Exception as e:  # noqa: BLE001 - counted: what fails first is the result
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            continue
        latencies.append(time.perf_counter() - t)
        points += 2 * EPOCHS + 1
    loop_s = time.monotonic() - start
    unwritten = tracker.close(wait_s=30)
    Path(out).write_text(
        json.dumps(
            {
                "trials": len(latencies),
                "points": points,
                "loop_s": loop_s,
                "errors": errors,
                "unwritten": unwritten,
                "latencies": latencies,
            }
        )
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database() -> tuple[str, str]:
    import psycopg2

    name = f"orch_scale_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(f"{PG}/test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def _drop(name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG}/test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _count(db_uri: str) -> dict[str, int]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri)
    with engine.connect() as c:
        out = {
            "runs_finished": c.execute(
                sqlalchemy.text("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
            ).scalar_one(),
            "metric_points": c.execute(
                sqlalchemy.text("SELECT count(*) FROM metrics")
            ).scalar_one(),
        }
    engine.dispose()
    return out


def case(drivers: int, seconds: float, max_trials: int, workers: int, tmp: Path) -> dict[str, Any]:
    name, db_uri = _database()
    port = _free_port()
    with open(tmp / f"server-{drivers}.log", "ab") as log:
        server = subprocess.Popen(
            [
                MLFLOW,
                "server",
                "--backend-store-uri",
                db_uri,
                "--serve-artifacts",
                "--artifacts-destination",
                str(tmp / f"artifacts-{drivers}"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                raise RuntimeError((tmp / f"server-{drivers}.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
        from orchestrator.store.writer import Tracker

        Tracker(uri).experiment_id("server-scale")  # created once, not raced by the drivers
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        outs = [tmp / f"d{drivers}-{i}.json" for i in range(drivers)]
        t = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.server_scale",
                    "--driver",
                    uri,
                    str(seconds),
                    str(max_trials),
                    str(o),
                    f"d{i}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, o in enumerate(outs)
        ]
        for p in procs:
            p.wait(timeout=seconds + 600)
        wall = time.perf_counter() - t
        results = [json.loads(o.read_text()) for o in outs if o.exists()]
        lat = sorted(x for r in results for x in r["latencies"])
        loop = max((r["loop_s"] for r in results), default=seconds)
        trials = sum(r["trials"] for r in results)
        points = sum(r["points"] for r in results)
        errors = [e for r in results for e in r["errors"]]
        row = {
            "drivers": drivers,
            "server_workers": workers,
            "seconds": seconds,
            "trials": trials,
            "trials_per_s": trials / loop,
            "metric_points_per_s": points / loop,
            "trial_latency_median_s": statistics.median(lat) if lat else None,
            "trial_latency_p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else None,
            "errors": len(errors),
            "first_errors": errors[:3],
            "unwritten": sum(len(r["unwritten"]) for r in results),
            "drivers_crashed": drivers - len(results),
            "wall_s": wall,
            "in_database": _count(db_uri),
            "load": os.getloadavg()[0],
        }
        return row
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        _drop(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--driver":
        driver(argv[1], float(argv[2]), int(argv[3]), argv[4], argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drivers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-trials", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=4, help="mlflow server --workers")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.drivers:
            rows.append(case(d, args.seconds, args.max_trials, args.workers, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        out = Path(args.out)
        prior = json.loads(out.read_text()) if out.exists() else []
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                [*prior, {"label": args.label, "cpus": os.cpu_count(), "rows": rows}], indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
