"""Where ``orch sweep`` spends its time: cProfile of the driver on a bench study, by phase.

``python -m bench.profile_orch [--study bench_grid16] [--out bench/results] [overrides ...]``

Runs ``python -m cProfile -o orch.prof -m orchestrator.cli sweep STUDY ...`` into a fresh
sqlite store (the same command the harness times) and reads the profile back by the driver's
phases: imports, planning, Ray start, waiting for the actors, the tracking store's creation,
the per-trial MLflow calls, the wait for trials, shutdown. Phases nest (imports happen inside
other phases too), so they do not add up to the total. Writes ``profile.md`` and
``profile.json`` (and keeps ``orch.prof`` for ``snakeviz``/``pstats``) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.harness import BENCH_CONF, _env

#: (phase, file suffix, function name): the functions whose cumulative time is a phase.
PHASES: list[tuple[str, str, str]] = [
    ("whole sweep command (cmd_sweep)", "orchestrator/cli/main.py", "cmd_sweep"),
    ("imports (all, nested)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("compose + plan + validate", "orchestrator/config/plan.py", "plan_sweep"),
    ("Ray start (ray.init)", "orchestrator/runtime/cluster.py", "init_ray"),
    ("  of which: Ray processes up (Node.__init__)", "ray/_private/node.py", "__init__"),
    ("actors boot (Dispatcher.start + first ray.get)", "orchestrator/runtime/dispatch.py", "start"),
    ("ray.get (mostly: waiting for the actors to boot)", "ray/_private/worker.py", "get"),
    (
        "tracking store open (Tracker.__init__: MlflowClient, store)",
        "orchestrator/store/writer.py",
        "__init__",
    ),
    (
        "  of which: sqlite schema creation (alembic migrations)",
        "mlflow/store/db/utils.py",
        "_initialize_tables",
    ),
    ("tracking store check (Tracker.check)", "orchestrator/store/writer.py", "check"),
    ("experiment lookup/creation", "orchestrator/store/writer.py", "experiment_id"),
    ("parent run", "orchestrator/sweep/run.py", "_start_parent"),
    ("dedup lookup (StoreReader.done_runs)", "orchestrator/store/reader.py", "done_runs"),
    ("dispatch loop (Dispatcher.run)", "orchestrator/runtime/dispatch.py", "run"),
    ("ray.wait (driver idle: trials running)", "ray/_private/worker.py", "wait"),
    ("child run start (Tracker.start_run)", "orchestrator/store/writer.py", "start_run"),
    ("child run end (Tracker.end_run)", "orchestrator/store/writer.py", "end_run"),
    ("metric flushes (Tracker.flush)", "orchestrator/store/writer.py", "flush"),
    ("tags (Tracker.set_tags)", "orchestrator/store/writer.py", "set_tags"),
    ("cancel checks (get_run)", "orchestrator/store/writer.py", "cancel_requested"),
    ("git rev-parse", "orchestrator/store/writer.py", "git_commit"),
    ("actors killed (Dispatcher.shutdown)", "orchestrator/runtime/dispatch.py", "shutdown"),
    ("Ray shutdown (ray.shutdown)", "ray/_private/worker.py", "shutdown"),
    ("parent run end", "orchestrator/sweep/run.py", "_finish_parent"),
    ("end-of-sweep report", "orchestrator/report/build.py", "report_at_end"),
]


def phases(prof: Path) -> tuple[float, list[dict[str, Any]]]:
    """Total profiled seconds and each phase's calls and cumulative seconds."""
    stats = pstats.Stats(str(prof))
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    out = []
    for label, suffix, name in PHASES:
        calls, cum = 0, 0.0
        for (file, _line, func), (_cc, nc, _tt, ct, _callers) in table.items():
            if func == name and file.endswith(suffix):
                calls, cum = calls + nc, cum + ct
        out.append(
            {
                "phase": label,
                "calls": calls,
                "seconds": cum,
                "ms_per_call": 1000 * cum / calls if calls else None,
            }
        )
    return stats.total_tt, out  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_orch", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--study", default="bench_grid16")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="analyse this existing profile instead of running the sweep",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source is not None:
        write(args.source, args.out, args.study, args.overrides, None)
        return 0
    prof = args.out / "orch.prof"
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(prof),
            "-m",
            "orchestrator.cli",
            "sweep",
            args.study,
            *args.overrides,
            "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--config-dir",
            str(BENCH_CONF),
            "--tasks",
            "bench.tasks",
        ]
        import subprocess

        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            cwd=ROOT,
            env=_env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
    write(prof, args.out, args.study, args.overrides, wall)
    return 0


def write(prof: Path, out: Path, study: str, overrides: list[str], wall: float | None) -> None:
    """``profile.md`` and ``profile.json`` in ``out`` from the profile ``prof``; printed too."""
    total, rows = phases(prof)
    walltext = f"Wall {wall:.1f} s (whole command), p" if wall is not None else "P"
    lines = [
        f"# orch driver profile: {study} {' '.join(overrides)}",
        "",
        f"{walltext}rofiled {total:.1f} s (driver process). Phases nest; seconds are cumulative.",
        "",
        "| phase | calls | seconds | ms/call |",
        "|---|---|---|---|",
    ]
    for r in rows:
        per = "" if r["ms_per_call"] is None else f"{r['ms_per_call']:.1f}"
        lines.append(f"| {r['phase']} | {r['calls']} | {r['seconds']:.2f} | {per} |")
    text = "\n".join(lines) + "\n"
    (out / "profile.md").write_text(text)
    (out / "profile.json").write_text(
        json.dumps(
            {
                "study": study,
                "overrides": overrides,
                "wall_s": wall,
                "profiled_s": total,
                "phases": rows,
            },
            indent=1,
        )
    )
    print(text)


if __name__ == "__main__":
    sys.exit(main())
