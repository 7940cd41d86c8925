"""Start-up of the commands that run nothing (issue 18: each under 1 s on a quiet machine).

``python -m bench.startup_commands [--repeats 5] [--out bench/results]``

Each command runs ``--repeats`` times as a fresh ``orch`` subprocess, timed from outside;
the table gives the median wall time and the median peak RSS (the child's ``ru_maxrss``).
``ls`` and ``show`` read a store written here with the real ``Tracker`` (a 16-trial sweep with
its ``verdicts.json``); ``ls (new store)`` is given a path that does not exist yet, each run a
new one. ``studies`` runs with no listing kept (a new ``XDG_CACHE_HOME`` each run: every
study composed) and with the listing kept by an earlier run. Writes ``startup_commands.md``
and ``startup_commands.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT

ORCH = str(Path(sys.executable).with_name("orch"))
SWEEP = "optimizers-20260101-000000-abcd"
TARGET_S = 1.0


def write_store(path: str) -> None:
    """A finished 16-trial sweep (4 optimizers x 4 seeds) with two verdicts, as a sweep leaves
    it: parent and child runs, tags, params, metrics and ``verdicts.json``."""
    from orchestrator.store import schema
    from orchestrator.store.writer import Tracker
    from orchestrator.verdicts import Verdict, verdicts_to_json

    tracker = Tracker(f"sqlite:///{path}")
    exp = tracker.experiment_id("optimizers")
    parent = tracker.start_run(
        exp,
        SWEEP,
        {
            schema.TAG_KIND: schema.KIND_SWEEP,
            schema.TAG_SWEEP: SWEEP,
            schema.TAG_STUDY: "optimizers",
            schema.TAG_N_TRIALS: 16,
            schema.TAG_METRIC: "val/acc",
            schema.TAG_MODE: "max",
            schema.TAG_AXES: json.dumps(["optimizer", "seed"]),
        },
        {},
    )
    for i in range(16):
        opt, seed = ["sgd", "adam", "rmsprop", "adamw"][i // 4], i % 4
        rid = tracker.start_run(
            exp,
            f"t{i}",
            {
                schema.TAG_PARENT: parent,
                schema.TAG_KIND: schema.KIND_TRIAL,
                schema.TAG_SWEEP: SWEEP,
                schema.TAG_KEY: f"k{i}",
                schema.TAG_INDEX: i,
                schema.TAG_ARM: json.dumps({"optimizer": opt}),
            },
            {"optimizer": opt, "seed": seed, "train.epochs": 10},
        )
        for step in range(10):
            tracker.log_metrics(rid, {"val/acc": 0.5 + i / 40 + step / 100}, step)
        tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
    tracker.log_metrics(
        parent, {"trials/finished": 16, "trials/failed": 0, "best/val/acc": 0.97}, 0
    )
    verdict = Verdict(
        "OPT-1", "adam beats sgd", "notes", "paired t", "confirmed", 0.05, 0.01, 0.09, 0.01,
        4, 4, "paired t", "",
    )  # fmt: skip
    tracker.log_text(parent, verdicts_to_json([verdict]), schema.VERDICTS_ARTIFACT)
    tracker.end_run(parent, "FINISHED")
    assert not tracker.close()


def run_once(argv: list[str], cwd: Path, cache: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``orch ARGV``; it must exit 0. ``cache`` is its
    ``XDG_CACHE_HOME`` (kept study listings, the new-store template)."""
    env = {**os.environ, "COLUMNS": "120", "XDG_CACHE_HOME": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [ORCH, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"orch {' '.join(argv)} exited {proc.returncode}: {err}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
        work = Path(tmp)
        store = work / "mlflow.db"
        # In a child: the timed commands are forked from this process, whose memory would
        # count in their peak RSS had it imported MLflow.
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from bench.startup_commands import write_store as w; w({str(store)!r})",
            ],
            cwd=ROOT,
            env={**os.environ, "XDG_CACHE_HOME": str(work / "cache")},
            check=True,
        )
        uri = f"sqlite:///{store}"

        def new_store(n: int) -> list[str]:
            return ["ls", "--tracking-uri", f"sqlite:///{work}/new{n}.db"]

        cases: list[tuple[str, Any]] = [
            ("orch --help", ["--help"]),
            ("orch studies (nothing kept: composes)", ["studies"]),
            ("orch studies (listing kept)", ["studies"]),
            (
                "orch sweep optimizers --quick --dry-run",
                ["sweep", "optimizers", "--quick", "--dry-run"],
            ),
            ("orch sweep hpo --dry-run", ["sweep", "hpo", "--dry-run"]),
            ("orch ls (new store)", new_store),
            ("orch ls (16-trial sweep)", ["ls", "--tracking-uri", uri]),
            ("orch show SWEEP", ["show", SWEEP, "--tracking-uri", uri]),
        ]
        cache = work / "cache"  # the store's writer built the new-store template there
        # Untimed: the new-store template is built once per cache (MLflow's migrations), and
        # a listing kept.
        run_once(new_store(-1), work, cache)
        run_once(["studies"], work, cache)
        results = []
        for name, argv_of in cases:
            walls, rss = [], []
            for n in range(args.repeats):
                # Each first-time listing gets a cache of its own, so it composes.
                fresh = work / f"cache-{n}" if "nothing kept" in name else cache
                w, r = run_once(argv_of(n) if callable(argv_of) else argv_of, work, fresh)
                walls.append(w)
                rss.append(r)
            results.append(
                {
                    "command": name,
                    "median_s": statistics.median(walls),
                    "walls_s": walls,
                    "median_rss_mib": statistics.median(rss),
                }
            )
            print(f"{name:<42} {statistics.median(walls):6.2f} s {statistics.median(rss):6.0f} MiB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"repeats": args.repeats, "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    (out / "startup_commands.json").write_text(
        json.dumps({**meta, "results": results}, indent=2) + "\n"
    )
    lines = [
        "# Start-up of the commands that run nothing\n",
        f"`python -m bench.startup_commands --repeats {args.repeats}`: {os.cpu_count()} CPUs, "
        f"load average {meta['load']:.2f} at the end; medians over {args.repeats} subprocesses; "
        f"target {TARGET_S:g} s each.\n",
        "| command | wall (median) | peak RSS | target |",
        "|---|---|---|---|",
    ]
    for r in results:
        met = "met" if r["median_s"] < TARGET_S else "missed"
        lines.append(
            f"| `{r['command']}` | {r['median_s']:.2f} s | {r['median_rss_mib']:.0f} MiB | {met} |"
        )
    (out / "startup_commands.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
