"""Asynchronous Optuna search (orch) vs Hydra's Optuna sweeper, same budget, uneven trials.

Usage::

    python bench/search_vs_hydra.py [--trials 24 --slots 2 --steps 5 --step-s 0.1 --slow 4]

Both sides run TPE (seed 0, the same random start) over ``x in [0, 1]`` for ``--trials``
trials on ``--slots`` slots, with the task of ``tests/plugins/quadratic.py``: a trial sleeps
``steps * step_s * (1 + slow * x)`` seconds, so trials differ in length by up to
``1 + slow`` times. orch asks Optuna for a trial the moment a slot frees; Hydra's sweeper
asks for ``n_jobs`` trials, launches the batch and waits for all of them (a barrier), once
with the basic launcher (jobs run one after another in the driver process) and once with the
joblib launcher (``n_jobs`` processes per batch).

Printed and appended to ``bench/results/search_vs_hydra.jsonl``: per side, the wall time of
the whole command, the span from the first trial's start to the last trial's end, the busy
time (the sum of the trials' known sleep times, identical definition on both sides) and the
slot utilization ``busy / (slots x span)``; then orch's span and utilization ratios against
each Hydra variant.

hydra-optuna-sweeper 1.3.0 pins ``optuna<3`` while this project needs Optuna >= 4, so the
Hydra side runs in its own virtual environment, created on first use under
``~/.cache/orch-bench/venv-hydra-optuna`` (``pip install hydra-optuna-sweeper
hydra-joblib-launcher``);
``--hydra-python`` names another interpreter that has both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "search_vs_hydra.jsonl"
HYDRA_VENV = Path.home() / ".cache" / "orch-bench" / "venv-hydra-optuna"  # outside the repo

_APP = """
import json, os, time
import hydra
from omegaconf import DictConfig

@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    start = time.time()
    time.sleep(cfg.steps * cfg.step_s * (1 + cfg.slow * cfg.x))
    score = -(cfg.x - 0.7) ** 2
    with open(os.environ["BENCH_RECORDS"], "a") as f:
        f.write(json.dumps({"x": cfg.x, "start": start, "end": time.time()}) + "\\n")
    return score

if __name__ == "__main__":
    main()
"""

_CONFIG = """
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: tpe
  - override hydra/launcher: {launcher}
  - _self_
hydra:
  sweeper:
    sampler:
      seed: 0
      n_startup_trials: {startup}
    direction: maximize
    study_name: bench
    storage: null
    n_trials: {trials}
    n_jobs: {slots}
    params:
      x: interval(0, 1)
  sweep:
    dir: {sweep_dir}
x: 0.5
steps: {steps}
step_s: {step_s}
slow: {slow}
"""


def hydra_python(explicit: str | None) -> str:
    """An interpreter with hydra-optuna-sweeper and hydra-joblib-launcher (made if missing)."""
    if explicit:
        return str(Path(explicit).absolute())  # not resolve(): a venv's python is a symlink
    py = HYDRA_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HYDRA_VENV)], check=True)
        # hydra-core 1.3 pinned: pip may otherwise take a 1.4 pre-release, whose sweeper
        # config no longer instantiates the sampler.
        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "hydra-optuna-sweeper==1.3.0",
                "hydra-joblib-launcher",
                "hydra-core==1.3.2",
                "omegaconf==2.3.0",
            ],
            check=True,
        )
    return str(py)


def duration(x: float, a: argparse.Namespace) -> float:
    return a.steps * a.step_s * (1 + a.slow * x)


def _stats(
    name: str, wall: float, spans: list[tuple[float, float]], xs: list[float], a: argparse.Namespace
) -> dict[str, Any]:
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = sum(duration(x, a) for x in xs)
    return {
        "runner": name,
        "trials": len(xs),
        "wall_s": round(wall, 2),
        "span_s": round(span, 2),
        "busy_s": round(busy, 2),
        "utilization": round(busy / (a.slots * span), 3),
        "best_x": min(xs, key=lambda x: abs(x - 0.7)),
    }


def run_orch(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'orch' / 'mlflow.db'}"
    (tmp / "orch").mkdir()
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        "quad",
        "--config-dir",
        str(ROOT / "tests/data/search_conf"),
        "--tasks",
        "tests.plugins.quadratic",
        "--tracking-uri",
        uri,
        f"cluster.num_cpus={a.slots}",
        f"search.n_trials={a.trials}",
        f"search.n_startup_trials={a.startup}",
        "search.pruner.name=none",
        f"steps={a.steps}",
        f"step_s={a.step_s}",
        f"slow={a.slow}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`orch.kind` = 'trial'", max_results=10000)
    spans = [(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs]
    xs = [float(r.data.params["x"]) for r in runs]
    return _stats("orch (ask on demand)", wall, spans, xs, a)


def run_hydra(a: argparse.Namespace, tmp: Path, launcher: str, python: str) -> dict[str, Any]:
    app = tmp / f"hydra_{launcher}"
    app.mkdir()
    (app / "app.py").write_text(textwrap.dedent(_APP))
    (app / "config.yaml").write_text(
        _CONFIG.format(
            launcher=launcher,
            startup=a.startup,
            trials=a.trials,
            slots=a.slots,
            sweep_dir=app / "multirun",
            steps=a.steps,
            step_s=a.step_s,
            slow=a.slow,
        )
    )
    records = app / "records.jsonl"
    env = {**os.environ, "BENCH_RECORDS": str(records)}
    extra = [f"hydra.launcher.n_jobs={a.slots}"] if launcher == "joblib" else []
    t0 = time.perf_counter()
    subprocess.run(
        [python, "app.py", "-m", *extra],
        cwd=app,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    return _stats(
        f"hydra optuna sweeper ({launcher} launcher)",
        wall,
        [(r["start"], r["end"]) for r in rows],
        [r["x"] for r in rows],
        a,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--startup", type=int, default=6, help="TPE's random start, both sides")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--step-s", type=float, default=0.1)
    p.add_argument("--slow", type=float, default=4.0, help="x=1 trials are 1+slow times longer")
    p.add_argument("--hydra-python", help="interpreter with hydra-optuna-sweeper installed")
    a = p.parse_args(argv)
    python = hydra_python(a.hydra_python)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [
            run_orch(a, tmp),
            run_hydra(a, tmp, "basic", python),
            run_hydra(a, tmp, "joblib", python),
        ]
    ours = rows[0]
    for r in rows:
        print(
            f"{r['runner']:<42} wall {r['wall_s']:7.2f}s  span {r['span_s']:7.2f}s  "
            f"busy {r['busy_s']:7.2f}s  utilization {r['utilization']:.0%}"
        )
    ratios = {
        r["runner"]: {
            "span_ratio": round(r["span_s"] / ours["span_s"], 2),
            "utilization_ratio": round(ours["utilization"] / r["utilization"], 2),
        }
        for r in rows[1:]
    }
    for name, q in ratios.items():
        print(
            f"vs {name}: orch's span is {q['span_ratio']:.2f}x shorter, its utilization "
            f"{q['utilization_ratio']:.2f}x higher"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "args": vars(a),
                    "results": rows,
                    "ratios": ratios,
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
