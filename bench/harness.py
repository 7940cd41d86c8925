"""The benchmark harness: scenarios x runners x repeats -> one table (markdown + JSON).

``python -m bench [--scenario NAME ...] [--runners NAME ...] [--repeats N] [--out DIR]``

Every runner is a subprocess timed from the outside (whole-command wall time: interpreter
start, imports, Ray, the tracking store, the trials), on the same trials:

- ``orch``: the real CLI, ``orch sweep STUDY ... --config-dir bench/conf --tasks bench.tasks``
  into a fresh sqlite store; trial spans are read back from the store. The cold path: it
  never finds an ``orch up`` service (its runtime dir is an empty one of its own).
- ``orch_warm``: the same command with the bench's own ``orch up`` service running (started
  once before the first case, in a private runtime dir, and stopped at the end; its start is
  reported as a figure, not charged to any run): the warm path of repeated sweeps.
- ``plain``: ``bench/plain_loop.py``, the trials in a loop in one process, no tracking.
- ``ray_tune``: ``bench/tune_app.py``, Tuner with 2 concurrent trials, actor reuse, MLflow
  logger callback into a fresh sqlite store.
- ``hydra_multirun``: ``bench/hydra_app.py -m``, Hydra's basic (sequential) launcher, one
  ``mlflow.start_run`` per job into a fresh sqlite store.

The harness plans each case once with orch's own planner (``orchestrator.config.plan``), so the
plain loop and Tune get exactly the resolved configs orch runs, and Hydra gets the same
overrides. Medians are taken over repeats; runs of different runners are interleaved
(repeat loop outside, runner loop inside) so that load drifting over time hits all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ROOT

BENCH_CONF = ROOT / "bench" / "conf"
RUNNERS = ("orch", "orch_warm", "plain", "ray_tune", "hydra_multirun")
#: The scenarios of the cold path only (the warm one is measured where the issue's targets are).
RUNNERS_COLD = ("orch", "plain", "ray_tune", "hydra_multirun")
#: A run that takes longer than this is recorded as failed (a hung Ray start, say).
RUN_TIMEOUT_S = 1200


@dataclass(frozen=True)
class Case:
    """One configuration of a scenario: a bench study, its overrides, who runs it, how often."""

    scenario: str
    name: str
    study: str
    overrides: tuple[str, ...] = ()
    runners: tuple[str, ...] = RUNNERS
    repeats: int = 1


@dataclass
class RunOutcome:
    """One run of one runner on one case."""

    runner: str
    wall_s: float
    records: list[dict[str, Any]] = field(default_factory=list)  # {index, start, end} per trial
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    launched: float = math.nan  # Unix time the command was started (trial spans are Unix times)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class Row:
    """A table row: the median of one metric of one runner on one case."""

    scenario: str
    case: str
    runner: str
    metric: str
    median: float | None
    values: list[float]
    unit: str = ""
    vs_orch: float | None = None


# --- scenarios ---------------------------------------------------------------------------------


def scenarios(repeats: int | None) -> dict[str, list[Case]]:
    """The issue's scenarios. Default repeats keep ``make bench`` under 15 minutes on 2 CPUs;
    ``repeats`` (``--repeats``) replaces them all."""

    def r(default: int) -> int:
        return repeats if repeats is not None else default

    trivial = "bench_trivial"
    return {
        "grid16": [
            Case("grid16", "16 trials", "bench_grid16", repeats=r(3)),
            # The 1-trial run gives each runner's fixed start-up on this workload, hence the
            # crossover point where orch's 2 slots pay for its start-up.
            Case(
                "grid16",
                "1 trial",
                "bench_grid16",
                ("optimizer=sgd", "seed=0"),
                runners=("orch", "orch_warm", "plain"),
                repeats=r(2),
            ),
        ],
        "efficiency": [
            Case(
                "efficiency",
                "16 x ~0.3 s",
                "bench_grid16",
                ("train.epochs=10",),
                runners=("orch", "orch_warm"),
                repeats=r(1),
            ),
            Case(
                "efficiency",
                "16 x ~3 s",
                "bench_grid16",
                ("train.epochs=100",),
                runners=("orch", "orch_warm"),
                repeats=r(1),
            ),
        ],
        "overhead": [
            Case("overhead", "1 trial", trivial, ("seed=range(1)",), RUNNERS_COLD, r(2)),
            Case("overhead", "100 trials", trivial, ("seed=range(100)",), RUNNERS_COLD, r(1)),
            # Tune and Hydra at 1000 trials would take ~5 and ~3 minutes each on 2 CPUs;
            # their 100-trial per-trial cost is in the table.
            Case(
                "overhead",
                "1000 trials",
                trivial,
                ("seed=range(1000)",),
                runners=("orch", "plain"),
                repeats=r(1),
            ),
        ],
        "tracking": [
            Case(
                "tracking",
                "1 trial x 10 epochs",
                "bench_grid16",
                ("optimizer=adam", "seed=0"),
                runners=("orch", "hydra_multirun"),
                repeats=r(5),
            ),
        ],
        "uneven": [
            Case(
                "uneven",
                "10 trials, 1x..10x",
                "bench_uneven",
                runners=RUNNERS_COLD,
                repeats=r(1),
            ),
        ],
    }


#: The smallest case, for the smoke test: two trivial trials.
TINY = Case("tiny", "2 trials", "bench_trivial", ("seed=range(2)",), ("orch", "plain"), 1)


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A case planned by orch's planner: what the plain loop, Tune and Hydra are given."""

    trials: list[dict[str, Any]]  # [{index, task, config}]
    hydra_overrides: list[str]  # the same grid in Hydra's sweep grammar


def plan_case(case: Case) -> Planned:
    import bench.tasks  # noqa: F401 - registers the benchmark tasks
    from orchestrator.config.compose import composer
    from orchestrator.config.overrides import parse_overrides
    from orchestrator.config.plan import plan_sweep

    plan = plan_sweep(composer(str(BENCH_CONF)), case.study, list(case.overrides))
    trials = [{"index": t.index, "task": t.task, "config": t.config} for t in plan.trials]
    # Hydra multirun expands axes itself: give it the plan's axes as sweep overrides (after
    # the case's plain ones), so it composes the same trials in the same order.
    plain = [
        o.input_line for o in parse_overrides(list(case.overrides)) if not o.is_sweep_override()
    ]
    axes = [
        f"{k}={','.join(_hydra_value(v) for v in values)}"
        for k, values in plan.axes.items()
        if not any(p.startswith(f"{k}=") for p in plain)
    ]
    return Planned(trials, [*plain, *axes])


def _hydra_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


# --- runners -----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers (orch's actors, Tune's trainables) import bench.tasks from the checkout.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # Both Ray runners alike: no usage-stats report at start-up (this machine is offline).
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@dataclass(frozen=True)
class Timed:
    """A command's wall time, when it was launched (Unix time), and an error or ''."""

    wall: float
    launched: float
    error: str


def _timed(
    cmd: list[str], workdir: Path, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S
) -> Timed:
    """Run ``cmd`` with its output to files in ``workdir``."""
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        launched = time.time()
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=env or _env(),
                stdout=out,
                stderr=err,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Timed(time.perf_counter() - t0, launched, f"timed out after {timeout:.0f} s")
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (workdir / "stderr.txt").read_text(errors="replace").strip().splitlines()[-3:]
        return Timed(wall, launched, f"exit {proc.returncode}: {' | '.join(tail)}")
    return Timed(wall, launched, "")


def _python() -> str:
    return sys.executable


def _orch_command() -> list[str]:
    """The installed ``orch`` script beside this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).parent / "orch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator.cli"]


def _write_trials(planned: Planned, workdir: Path) -> Path:
    path = workdir / "trials.json"
    path.write_text(json.dumps({"trials": planned.trials}))
    return path


def _read_records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def _orch_env(runtime_dir: Path) -> dict[str, str]:
    """orch's environment with ``runtime_dir`` as where it looks for an ``orch up`` service."""
    return {**_env(), "XDG_RUNTIME_DIR": str(runtime_dir)}


class WarmService:
    """The bench's own ``orch up`` (a private runtime dir: a user's service is never used or
    stopped), for the ``orch_warm`` runner; ``up_s`` is how long ``orch up`` took."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-warm-")
        self.runtime_dir = Path(self._dir.name)
        os.chmod(self.runtime_dir, 0o700)
        self.up_s = math.nan

    def __enter__(self) -> WarmService:
        t = _timed([*_orch_command(), "up"], self.runtime_dir, _orch_env(self.runtime_dir))
        if t.error:
            self.__exit__()
            raise RuntimeError(f"orch up failed: {t.error}")
        self.up_s = t.wall
        return self

    def __exit__(self, *exc: object) -> None:
        _timed([*_orch_command(), "down"], self.runtime_dir, _orch_env(self.runtime_dir))
        self._dir.cleanup()


#: The running bench service, while ``run`` holds one (the warm runner needs it).
_WARM: list[WarmService] = []


def run_orch(case: Case, planned: Planned, workdir: Path, warm: bool = False) -> RunOutcome:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [
        *_orch_command(),
        "sweep",
        case.study,
        *case.overrides,
        "--tracking-uri",
        uri,
        "--config-dir",
        str(BENCH_CONF),
        "--tasks",
        "bench.tasks",
    ]
    # Cold: an empty runtime dir of its own, so no service (the bench's or a user's) is found.
    t = _timed(cmd, workdir, _orch_env(_WARM[0].runtime_dir if warm else workdir))
    records: list[dict[str, Any]] = []
    if not t.error:
        from orchestrator.client import Client

        client = Client(uri)
        sweep_id = client.sweeps().sweep_id.iloc[0]
        df = client.trials(sweep_id)
        for row in df.to_dict("records"):
            records.append(
                {
                    "index": int(row["trial_index"]),
                    "start": row.get("time/start"),
                    "end": row.get("time/end"),
                }
            )
    return RunOutcome(
        "orch_warm" if warm else "orch", t.wall, records, t.error, launched=t.launched
    )


def run_orch_warm(case: Case, planned: Planned, workdir: Path) -> RunOutcome:
    return run_orch(case, planned, workdir, warm=True)


def run_plain(case: Case, planned: Planned, workdir: Path) -> RunOutcome:
    trials = _write_trials(planned, workdir)
    out = workdir / "records.json"
    t = _timed([_python(), str(ROOT / "bench" / "plain_loop.py"), str(trials), str(out)], workdir)
    return RunOutcome("plain", t.wall, _read_records(out), t.error, launched=t.launched)


def run_ray_tune(case: Case, planned: Planned, workdir: Path) -> RunOutcome:
    trials = _write_trials(planned, workdir)
    out = workdir / "records.json"
    t = _timed(
        [
            _python(),
            str(ROOT / "bench" / "tune_app.py"),
            str(trials),
            str(out),
            f"sqlite:///{workdir / 'mlflow.db'}",
            str(workdir / "ray_results"),
        ],
        workdir,
    )
    return RunOutcome("ray_tune", t.wall, _read_records(out), t.error, launched=t.launched)


def run_hydra(case: Case, planned: Planned, workdir: Path) -> RunOutcome:
    out = workdir / "records.jsonl"
    env = {**_env(), "BENCH_RECORDS": str(out)}
    cmd = [
        _python(),
        str(ROOT / "bench" / "hydra_app.py"),
        "-m",
        f"hydra.searchpath=[file://{BENCH_CONF}]",
        f"study={case.study}",
        *planned.hydra_overrides,
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        f"hydra.sweep.dir={workdir / 'multirun'}",
    ]
    t = _timed(cmd, workdir, env)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return RunOutcome("hydra_multirun", t.wall, records, t.error, launched=t.launched)


def run_tracking_probe(case: Case, planned: Planned, workdir: Path) -> RunOutcome:
    """The tracking scenario's one subprocess: all its repeats alternate inside it."""
    trials = _write_trials(planned, workdir)
    out = workdir / "probe.json"
    t = _timed(
        [
            _python(),
            str(ROOT / "bench" / "tracking_probe.py"),
            str(trials),
            str(out),
            str(workdir),
            str(case.repeats),
        ],
        workdir,
    )
    extra = json.loads(out.read_text()) if out.exists() else {}
    return RunOutcome("probe", t.wall, [], t.error, extra)


RUNNER_FNS: dict[str, Callable[[Case, Planned, Path], RunOutcome]] = {
    "orch": run_orch,
    "orch_warm": run_orch_warm,
    "plain": run_plain,
    "ray_tune": run_ray_tune,
    "hydra_multirun": run_hydra,
}


def available(runner: str) -> str:
    """'' if ``runner`` can run here, else why not (a peer's package is missing)."""
    need = {"ray_tune": ("ray.tune", "ray[tune]"), "hydra_multirun": ("hydra", "hydra-core")}
    if runner in need:
        module, package = need[runner]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"{package} is not installed (pip install -e '.[bench]')"
    return ""


# --- metrics -----------------------------------------------------------------------------------


def slots(runner: str, n_trials: int) -> int:
    """Trials a runner runs at once here: orch one per CPU (resources.cpus=1), Tune its
    max_concurrent_trials=2, the plain loop and Hydra's basic launcher one."""
    cpus = os.cpu_count() or 1
    ours = min(cpus, n_trials)
    return {"orch": ours, "orch_warm": ours, "ray_tune": min(2, cpus, n_trials)}.get(runner, 1)


def _durations(records: list[dict[str, Any]]) -> list[float]:
    return [
        r["end"] - r["start"]
        for r in records
        if r.get("start") is not None and r.get("end") is not None
    ]


def span(records: list[dict[str, Any]]) -> float:
    """First trial start to last trial end, from the trials' own clocks."""
    ok = [r for r in records if r.get("start") is not None and r.get("end") is not None]
    return max(r["end"] for r in ok) - min(r["start"] for r in ok) if ok else math.nan


def busy_fraction(records: list[dict[str, Any]], n_slots: int) -> float:
    """Sum of trial durations / (slots x span): 1.0 means no slot ever waited."""
    s = span(records)
    return sum(_durations(records)) / (n_slots * s) if s and s > 0 else math.nan


def order_bound(records: list[dict[str, Any]], n_slots: int) -> float:
    """The busy fraction a dispatcher with zero gaps would reach with the same trials taken in
    the same order (greedy: each trial to the first free slot). What the runner lost below
    this is dispatch latency; what this loses below 1.0 is the order (no longest-first)."""
    ok = sorted(
        (r for r in records if r.get("start") is not None and r.get("end") is not None),
        key=lambda r: (r["start"], r["index"]),
    )
    if not ok:
        return math.nan
    free = [0.0] * n_slots
    for r in ok:
        i = free.index(min(free))
        free[i] += r["end"] - r["start"]
    return sum(_durations(ok)) / (n_slots * max(free))


def phases(o: RunOutcome) -> tuple[float, float, float]:
    """A run's wall split in three: start-up (launch to the first trial's start), the trials
    (first start to last end) and the tail (last end to exit: report, store, shutdown)."""
    s = span(o.records)
    ok = [r for r in o.records if r.get("start") is not None and r.get("end") is not None]
    if not ok or not math.isfinite(o.launched):
        return math.nan, s, math.nan
    first, last = min(r["start"] for r in ok), max(r["end"] for r in ok)
    return first - o.launched, s, o.launched + o.wall_s - last


def _median(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


# --- running -----------------------------------------------------------------------------------


def run_case(
    case: Case,
    planned: Planned,
    runners: Sequence[str],
    log: Callable[[str], None],
    keep: Path | None = None,
) -> dict[str, list[RunOutcome]]:
    """All repeats of a case; runner order rotates each repeat."""
    todo = [r for r in case.runners if r in runners]
    outcomes: dict[str, list[RunOutcome]] = {r: [] for r in todo}
    if case.scenario == "tracking":
        # One probe process holds all repeats (interleaved inside), so it is run once.
        with _workdir(keep, case, "probe", 0) as wd:
            out = run_tracking_probe(case, planned, wd)
        log(f"  tracking probe: {out.wall_s:.1f} s {out.error}")
        return {r: [out] for r in todo}
    for rep in range(case.repeats):
        order = todo[rep % len(todo) :] + todo[: rep % len(todo)] if todo else []
        for runner in order:
            with _workdir(keep, case, runner, rep) as wd:
                out = RUNNER_FNS[runner](case, planned, wd)
            log(
                f"  {case.scenario}/{case.name} {runner} #{rep + 1}: {out.wall_s:.1f} s"
                + (f"  FAILED {out.error}" if out.error else "")
            )
            outcomes[runner].append(out)
    return outcomes


class _workdir:
    """A fresh directory per run (fresh tracking store), removed after unless ``--keep``."""

    def __init__(self, keep: Path | None, case: Case, runner: str, rep: int) -> None:
        # Letters, digits, '_', '.', '-' only: the path goes into Hydra overrides, whose
        # grammar reads commas and spaces as sweeps.
        self.keep = keep
        self.label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{case.scenario}-{case.name}-{runner}-{rep}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.keep is not None:
            path = self.keep / self.label
            path.mkdir(parents=True, exist_ok=True)
            return path
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def case_rows(case: Case, outcomes: dict[str, list[RunOutcome]], n: int) -> list[Row]:
    """The table rows of one case of ``n`` trials (which metrics depends on the scenario)."""
    rows: list[Row] = []

    def add(runner: str, metric: str, values: list[float], unit: str = "") -> None:
        rows.append(
            Row(
                case.scenario,
                case.name,
                runner,
                metric,
                _median(values),
                [round(v, 4) for v in values],
                unit,
            )
        )

    for runner, outs in outcomes.items():
        good = [o for o in outs if o.ok]
        if case.scenario == "tracking":
            if not good:
                add(runner, "overhead", [], "%")
                continue
            x = good[0].extra
            key = "orch" if runner == "orch" else "fluent"
            base, _tracked = _median(x["untracked"]), _median(x[key])
            add(runner, "untracked", x["untracked"], "s")
            add(runner, "tracked", x[key], "s")
            add(runner, "overhead", [100 * (t - base) / base for t in x[key]] if base else [], "%")
            add(runner, "overhead_ms", [1000 * (t - base) for t in x[key]] if base else [], "ms")
            if runner == "orch":
                add(runner, "store_create", [x["store_create_s"]], "s")
            continue
        add(runner, "wall", [o.wall_s for o in good], "s")
        if any(o.records for o in good):
            split = [phases(o) for o in good]
            add(runner, "startup", [x[0] for x in split], "s")
            add(runner, "trials", [x[1] for x in split], "s")
            add(runner, "tail", [x[2] for x in split], "s")
        if case.scenario == "efficiency":
            k = slots(runner, n)
            add(runner, "efficiency", [sum(_durations(o.records)) / k / o.wall_s for o in good])
            add(runner, "dispatch_efficiency", [busy_fraction(o.records, k) for o in good])
            add(runner, "trial", [_median(_durations(o.records)) or math.nan for o in good], "s")
        elif case.scenario == "uneven":
            k = slots(runner, n)
            add(runner, "busy_fraction", [busy_fraction(o.records, k) for o in good])
            add(runner, "order_bound", [order_bound(o.records, k) for o in good])
        elif case.scenario == "grid16":
            add(runner, "trial", [_median(_durations(o.records)) or math.nan for o in good], "s")
        if len(good) < len(outs):
            rows.append(
                Row(case.scenario, case.name, runner, "failed_runs", len(outs) - len(good), [], "")
            )
    _ratios(rows)
    return rows


def _ratios(rows: list[Row]) -> None:
    """``vs_orch``: this runner's median over orch's, same scenario, case and metric."""
    orch = {(r.scenario, r.case, r.metric): r.median for r in rows if r.runner == "orch"}
    for r in rows:
        base = orch.get((r.scenario, r.case, r.metric))
        if r.median is not None and base:
            r.vs_orch = r.median / base


def _split(
    get: dict[tuple[str, str, str, str], float | None], case: tuple[str, str], who: str
) -> str:
    """``who``'s median wall of ``case`` as start-up + trials + tail, for a target's reason."""
    p = [get.get((*case, who, m)) for m in ("startup", "trials", "tail", "wall")]
    if p[3] is None:
        return f"{who}: no run"
    if None in p[:3]:
        return f"{who}: {p[3]:.1f} s"
    return f"{who}: start-up {p[0]:.1f} + trials {p[1]:.1f} + tail {p[2]:.1f} = {p[3]:.1f} s"


def targets(get: dict[tuple[str, str, str, str], float | None]) -> list[dict[str, Any]]:
    """Issue 18's targets, each met or missed, with where the time went (medians of the
    runs' start-up, trials and tail) so a miss says why."""
    out: list[dict[str, Any]] = []
    g16 = ("grid16", "16 trials")

    def faster(mine: str, other: str, want: float, goal: str) -> None:
        a, b = get.get((*g16, mine, "wall")), get.get((*g16, other, "wall"))
        if a and b:
            out.append(
                {
                    "check": f"grid16: {mine} vs {other}",
                    "value": b / a,
                    "unit": f"x ({other} s / {mine} s)",
                    "goal": goal,
                    "pass": b / a >= want,
                    "why": f"{_split(get, g16, mine)}; {_split(get, g16, other)}",
                }
            )

    faster("orch_warm", "plain", 1.0, ">= 1 (warm no slower than the plain loop)")
    faster("orch", "hydra_multirun", 1.0, ">= 1 (cold no slower than Hydra multirun + MLflow)")
    faster("orch_warm", "ray_tune", 3.0, ">= 3 (3x faster than Tune, reuse_actors + MLflow)")
    faster("orch", "ray_tune", 3.0, ">= 3 (the same, cold)")
    eff = ("efficiency", "16 x ~3 s")
    e = get.get((*eff, "orch_warm", "efficiency"))
    if e is not None:
        out.append(
            {
                "check": "efficiency, 16 x ~3 s trials, warm",
                "value": e,
                "unit": "trial time / (slots x wall)",
                "goal": ">= 0.9",
                "pass": e >= 0.9,
                "why": f"{_split(get, eff, 'orch_warm')}; dispatch efficiency "
                f"{get.get((*eff, 'orch_warm', 'dispatch_efficiency')) or math.nan:.3f}",
            }
        )
    su = get.get((*g16, "orch_warm", "startup"))
    if su is not None:
        cold = get.get((*g16, "orch", "startup"))
        out.append(
            {
                "check": "start-up to the first trial, warm (grid16)",
                "value": su,
                "unit": "s",
                "goal": "<= 2 s",
                "pass": su <= 2.0,
                "why": "launch to the first trial's start; cold: "
                + (f"{cold:.1f} s" if cold is not None else "no run"),
            }
        )
    return out


def derived(rows: list[Row]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The issue's targets (checks) and figures computed across cases (overhead, crossover)."""
    get = {(r.scenario, r.case, r.runner, r.metric): r.median for r in rows}
    checks: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    orch16 = get.get(("grid16", "16 trials", "orch", "wall"))
    checks = targets(get)
    # Per-trial overhead: (wall(n) - wall(1 trial)) / (n - 1), from medians.
    for runner in RUNNERS:
        w1 = get.get(("overhead", "1 trial", runner, "wall"))
        per: dict[int, float] = {}
        for n in (100, 1000):
            wn = get.get(("overhead", f"{n} trials", runner, "wall"))
            if w1 is not None and wn is not None:
                per[n] = 1000 * (wn - w1) / (n - 1)
                figures.append(
                    {
                        "figure": f"overhead per trial, {n} trials",
                        "runner": runner,
                        "value": per[n],
                        "unit": "ms",
                    }
                )
        if w1 is not None:
            figures.append(
                {"figure": "start-up (1 trivial trial)", "runner": runner, "value": w1, "unit": "s"}
            )
        if 100 in per and 1000 in per and per[100] > 0:
            figures.append(
                {
                    "figure": "per-trial overhead growth 100 -> 1000",
                    "runner": runner,
                    "value": per[1000] / per[100],
                    "unit": "x",
                }
            )
    # Crossover with the plain loop: wall(n) ~ start + n x marginal, from the 1- and 16-trial
    # grid16 runs of each; orch wins from n* = 1 + (start_o - start_p) / (marg_p - marg_o).
    o1, o16 = get.get(("grid16", "1 trial", "orch", "wall")), orch16
    p1, p16 = (
        get.get(("grid16", "1 trial", "plain", "wall")),
        get.get(("grid16", "16 trials", "plain", "wall")),
    )
    if None not in (o1, o16, p1, p16):
        mo, mp = (o16 - o1) / 15, (p16 - p1) / 15
        figures.append(
            {"figure": "grid16 marginal per trial", "runner": "orch", "value": mo, "unit": "s"}
        )
        figures.append(
            {"figure": "grid16 marginal per trial", "runner": "plain", "value": mp, "unit": "s"}
        )
        if mo < 0 or mp <= 0:
            # A 1-trial run slower than the 16-trial one: start-up noise swamps the trials
            # (a loaded machine); no crossover can be read from these runs.
            crossover, unit = math.nan, "n/a: 1-trial runs slower than 16-trial (noise)"
        elif o1 <= p1:
            crossover, unit = 1.0, "trials of this length"
        else:
            crossover = 1 + (o1 - p1) / (mp - mo) if mp > mo else math.inf
            unit = (
                "trials of this length"
                if mp > mo
                else "never: orch's marginal per trial is higher than plain's"
            )
        figures.append(
            {
                "figure": "crossover: orch faster than plain from",
                "runner": "orch",
                "value": crossover,
                "unit": unit,
            }
        )
    return checks, figures


# --- output ------------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else str(v)
    if unit == "%":
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# orch benchmark, {result['date']}",
        "",
        f"Machine: {result['machine']['summary']}. Command: `{result['command']}`.",
        "",
        "| scenario | case | runner | metric | median | unit | runs | vs orch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ratio = "" if r["vs_orch"] is None or r["runner"] == "orch" else f"{r['vs_orch']:.2f}x"
        lines.append(
            f"| {r['scenario']} | {r['case']} | {r['runner']} | {r['metric']} | "
            f"{_fmt(r['median'], r['unit'])} | {r['unit']} | {len(r['values'])} | {ratio} |"
        )
    if result["checks"]:
        lines += [
            "",
            "| target | measured | unit | goal | met | where the time went (medians) |",
            "|---|---|---|---|---|---|",
        ]
        for c in result["checks"]:
            lines.append(
                f"| {c['check']} | {_fmt(c['value'])} | {c['unit']} | {c['goal']} | "
                f"{'yes' if c['pass'] else 'MISSED'} | {c['why']} |"
            )
    if result["figures"]:
        lines += ["", "| figure | runner | value | unit |", "|---|---|---|---|"]
        for f in result["figures"]:
            lines.append(f"| {f['figure']} | {f['runner']} | {_fmt(f['value'])} | {f['unit']} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in result["skipped"].items())]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "-"

    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{pkg: v(pkg) for pkg in ("ray", "mlflow", "hydra-core", "torch")},
    }
    info["summary"] = (
        f"{info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"ray {info['ray']}, mlflow {info['mlflow']}, hydra {info['hydra-core']}, "
        f"torch {info['torch']}"
    )
    return info


def _clean(x: Any) -> Any:
    """JSON has no NaN/inf: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def run(
    cases: list[Case],
    runners: Sequence[str],
    out: Path,
    command: str,
    log: Callable[[str], None] = print,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run ``cases`` with ``runners``; write ``bench.md`` and ``bench.json`` to ``out``."""
    skipped = {r: why for r in runners if (why := available(r))}
    usable = [r for r in runners if r not in skipped]
    rows: list[Row] = []
    t0 = time.perf_counter()
    warm = "orch_warm" in usable and any("orch_warm" in c.runners for c in cases)
    with contextlib.ExitStack() as stack:
        if warm:
            log("orch up (the warm runner's service)")
            _WARM.append(stack.enter_context(WarmService()))
            stack.callback(_WARM.clear)
        for case in cases:
            log(f"{case.scenario} / {case.name} ({case.repeats} repeats)")
            planned = plan_case(case)
            rows += case_rows(case, run_case(case, planned, usable, log, keep), len(planned.trials))
        up_s = _WARM[0].up_s if _WARM else None
    checks, figures = derived(rows)
    if up_s is not None:
        figures.append(
            {
                "figure": "orch up (once, not charged to runs)",
                "runner": "orch_warm",
                "value": up_s,
                "unit": "s",
            }
        )
    result = _clean(
        {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "command": command,
            "elapsed_s": time.perf_counter() - t0,
            "cases": [asdict(c) for c in cases],
            "skipped": skipped,
            "rows": [asdict(r) for r in rows],
            "checks": checks,
            "figures": figures,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    all_cases = scenarios(None)
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenario",
        nargs="+",
        action="extend",
        choices=[*all_cases, "tiny"],
        help="run only these (default: all but tiny, the smoke test's)",
    )
    p.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    p.add_argument("--repeats", type=int, help="repeats of every case (default: per case)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where bench.md and bench.json go (default: bench/results)",
    )
    p.add_argument("--keep", type=Path, help="keep each run's directory (logs, stores) here")
    args = p.parse_args(argv)
    chosen = scenarios(args.repeats)
    cases = [
        c
        for name in (args.scenario or list(chosen))
        for c in ([replace_repeats(TINY, args.repeats)] if name == "tiny" else chosen[name])
    ]
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    result = run(cases, args.runners, args.out, command, keep=args.keep)
    print(markdown(result))
    print(
        f"written: {args.out / 'bench.md'}, {args.out / 'bench.json'} ({result['elapsed_s']:.0f} s)"
    )
    return 0


def replace_repeats(case: Case, repeats: int | None) -> Case:
    from dataclasses import replace

    return case if repeats is None else replace(case, repeats=repeats)
