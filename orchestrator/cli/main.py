"""``orch``: the command line.

Each command imports the layers it needs when it runs (the imports inside the ``cmd_*``
functions): ``orch --help``, ``orch studies`` and ``orch ls`` must not pay for Ray, torch
or the report's plotting.

Exit codes: 0 the command did its work (a sweep completed, even with failed trials,
which are reported); 2 bad input (nothing started, nothing written); 1 the command could
not run (tracking store unreachable or unusable, cluster unavailable); 130 the sweep was
cancelled (Ctrl-C, ``orch cancel``), 143 / 129 stopped by SIGTERM / SIGHUP.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from orchestrator.cli import jobs, record, service, standby
from orchestrator.cli.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK
from orchestrator.cli.tables import fitted_table, print_table
from orchestrator.errors import SpecError, TrackingUnavailable
from orchestrator.runtime.signals import SIGNALS
from orchestrator.store import schema

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.config.listing import StudyLine
    from orchestrator.core.specs import ClusterSpec
    from orchestrator.store.tables import SweepLine


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orch", description="Run studies (Hydra) as sweeps on Ray, tracked in MLflow."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--tracking-uri",
            help="MLflow store (default: $MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)",
        )

    def configs(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config-dir", help="your own studies/options, searched before conf/")
        sp.add_argument(
            "--tasks",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE (a dotted name, found from the current "
            "directory as python -m does, or a .py file) to register your own "
            "tasks (repeatable)",
        )

    sp = sub.add_parser("studies", help="list the studies, one line each")
    configs(sp)

    sp = sub.add_parser(
        "sweep",
        help="run a study: orch sweep NAME [key=value | key=a,b ...]; "
        "or a task with no study: orch sweep --task NAME key=a,b",
    )
    sp.add_argument("study", nargs="?", help="the study (omit with --task)")
    sp.add_argument(
        "--task",
        help="sweep this registered task with no study file (the "
        "study is named after it; set sweep.metric=... for its metric)",
    )
    sp.add_argument(
        "overrides", nargs="*", help="Hydra overrides; sweeps (a,b / range() / glob()) become axes"
    )
    sp.add_argument("--quick", action="store_true", help="the study's quick variant")
    sp.add_argument("--address", help="an existing Ray cluster (default: start one locally)")
    sp.add_argument("--dry-run", action="store_true", help="validate and list trials; run nothing")
    configs(sp)
    store(sp)

    sp = sub.add_parser("resume", help="continue a sweep whose driver died or was cancelled")
    sp.add_argument("sweep_id")
    sp.add_argument("overrides", nargs="*", help="a search's new budget: search.n_trials=N")
    sp.add_argument("--address", help="an existing Ray cluster (default: start one locally)")
    store(sp)

    def wide(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--wide",
            action="store_true",
            help="every column, however wide "
            "(by default the least important are dropped to fit the terminal)",
        )

    sp = sub.add_parser("ls", help="sweeps in the store")
    wide(sp)
    store(sp)

    sp = sub.add_parser("show", help="a sweep's trials as a table, then its verdicts")
    sp.add_argument("sweep_id")
    wide(sp)
    store(sp)

    sp = sub.add_parser(
        "report", help="rebuild a sweep's verdicts and HTML report on its parent run"
    )
    sp.add_argument("sweep_id")
    sp.add_argument("--out", help="also keep the report files in this folder")
    store(sp)

    sp = sub.add_parser(
        "cancel",
        help="ask a running sweep to stop (its trials end KILLED); "
        "with --address, stop the Ray job JOB_ID (orch submit)",
    )
    sp.add_argument("sweep_id", metavar="SWEEP_ID|JOB_ID")
    sp.add_argument(
        "--address", help="the cluster's Ray dashboard, http://HEAD:8265: the id is a Ray job id"
    )
    store(sp)

    jobs.add_parsers(sub, configs, store)  # submit, jobs, logs
    record.add_parsers(sub, configs, store)  # claims, record
    service.add_parsers(sub)  # up, down
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a nargs="*" positional at the first flag, so in
    # `orch sweep NAME --quick a=1 b=2` the overrides after --quick come back unparsed.
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    code = standby.run_in_standby(args, list(argv) if argv is not None else sys.argv[1:])
    if code is not None:  # orch up's warm driver ran it
        return code
    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    # MLflow's per-download progress bars would interleave with ours (reports, upstreams).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        code = _COMMANDS[args.command](args, out, err)
    except KeyboardInterrupt:  # a signal before the sweep wrote anything
        err.print("interrupted", highlight=False)
        code = _signal_exit_code()
    except SpecError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except TrackingUnavailable as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return EXIT_ERROR
    except KeyError as e:
        err.print(f"[red]error:[/] {e.args[0]}", highlight=False)
        return EXIT_BAD_INPUT
    if SIGNALS.forced:
        # A second signal: exit now, without waiting for Ray's shutdown at exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _signal_exit_code() -> int:
    """128 + the signal that stopped the sweep (the shell's convention); 130 for Ctrl-C
    without a sweep's handler, and for ``orch cancel``."""
    return SIGNALS.exit_code(EXIT_CANCELLED)


def _composer(args: argparse.Namespace):
    from orchestrator.config.compose import composer
    from tasks import registry

    # A file path travels to the workers (and the parent run's tags) as an absolute path.
    args.tasks = [registry.resolve_module(m) for m in args.tasks]
    try:
        registry.load_plugins(tuple(args.tasks))
    except registry.PluginError as e:
        raise SpecError(str(e)) from None
    if getattr(args, "task", None):
        from orchestrator.cli.adhoc import task_study

        if args.study is not None:  # `--task T a=1,2`: argparse took the first override
            args.overrides = [args.study, *args.overrides]
        args.study = args.task
        args.config_dir = task_study(args.task, args.config_dir)
    elif hasattr(args, "study") and args.study is None:
        raise SpecError("sweep: a study is required (orch sweep NAME), or --task NAME")
    return composer(args.config_dir)


def cmd_studies(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.config import listing

    keep = listing.cacheable(args.tasks)
    lines = listing.cached(args.config_dir) if keep else None
    if lines is not None:  # nothing it was composed from has changed: no Hydra at all
        for line in lines:
            _study_line(out, line)
        return EXIT_OK
    c = _composer(args)
    search_dirs = c.search_dirs()
    stamp = listing.fingerprint(args.config_dir, search_dirs) if keep else ""
    lines = []
    for name in c.studies():
        cfg = c.compose(name, [])
        search_claims = (cfg.get("search") or {}).get("claims") or []
        ids = ", ".join(
            dict.fromkeys(cl["id"].split("/")[0] for cl in [*cfg.study.claims, *search_claims])
        )
        lines.append(listing.StudyLine(name, cfg.study.description, ids))
        _study_line(out, lines[-1])
    if keep:
        listing.keep(args.config_dir, stamp, search_dirs, lines)
    return EXIT_OK


def _study_line(out: Console, line: StudyLine) -> None:
    out.print(
        f"{line.name:<14} {line.description}  [dim]claims: {line.claims or '-'}[/]",
        highlight=False,
    )


def cmd_sweep(args: argparse.Namespace, out: Console, err: Console) -> int:
    _check_store(args)
    from orchestrator.config.plan import plan_sweep

    SIGNALS.whole_process = True

    c = _composer(args)
    plan = plan_sweep(c, args.study, list(args.overrides), quick=args.quick)
    _check_address(args.address, plan.spec.cluster)
    if plan.search is not None:
        from orchestrator.config.space import budget

        s = plan.search.spec
        err.print(
            f"study {plan.spec.study.name}: {s.sampler} search, {budget(plan.search)} "
            f"trials, pruner {s.pruner.name}, objective "
            f"{', '.join(plan.search.metrics)}",
            highlight=False,
        )
        if args.dry_run:
            for p in plan.search.space.params:
                when = (
                    " if " + " and ".join(f"{k} in {list(v)}" for k, v in p.condition)
                    if p.condition
                    else ""
                )
                out.print(f"{p.key}: {p.source}{when}", highlight=False)
            return EXIT_OK
    axes = "  ".join(f"{k}={len(v)}" for k, v in plan.axes.items())
    if plan.search is None:
        err.print(
            f"study {plan.spec.study.name}: {len(plan.trials)} trials ({axes})", highlight=False
        )
    if args.dry_run:
        for t in plan.trials:
            out.print(f"{t.index:4d} {t.key} {t.arm} seed={t.seed}", highlight=False)
        return EXIT_OK
    _find_warm(args.address)
    from orchestrator.sweep import run_sweep  # Ray and MLflow: only when a sweep runs

    result = run_sweep(plan, args.tracking_uri, args.address, tuple(args.tasks), err)
    return _report_result(result, plan.spec.sweep.metric, out, err)


def _check_address(address: str | None, cluster: ClusterSpec) -> None:
    """``--address`` joins an existing cluster, whose size Ray will not change: asking for
    both is bad input (Ray would refuse it only after connecting)."""

    if address and (cluster.num_cpus is not None or cluster.num_gpus is not None):
        raise SpecError(
            "--address and cluster.num_cpus/cluster.num_gpus are mutually "
            "exclusive: the size applies only to a local cluster; allowed: one "
            "or the other"
        )


def _check_store(args: argparse.Namespace) -> None:
    """A ``--tracking-uri`` naming a file that is not a usable store is reported before the
    study is composed or anything heavy is imported (run_sweep checks whatever it opens)."""
    if args.tracking_uri and not getattr(args, "dry_run", False):
        from orchestrator.store.create import check_store

        check_store(args.tracking_uri)


def _find_warm(address: str | None) -> None:
    """With no ``--address``, point Ray at ``orch up``'s token if it runs: Ray reads it when
    imported, so this comes before any import of Ray (``init_ray`` then connects)."""
    from orchestrator.runtime.service_state import connect_env, find_service

    warm = None if address else find_service()
    if warm is not None:
        connect_env(warm)


def cmd_resume(args: argparse.Namespace, out: Console, err: Console) -> int:
    _check_store(args)
    _find_warm(args.address)
    from orchestrator.sweep import resume_sweep  # Ray and MLflow: only when a sweep runs
    from tasks.registry import PluginError

    SIGNALS.whole_process = True

    try:
        result = resume_sweep(
            args.sweep_id, args.tracking_uri, args.address, err, list(args.overrides)
        )
    except PluginError as e:  # the sweep's --tasks module is gone or broken: bad input
        raise SpecError(str(e)) from None
    return _report_result(result, result.metric, out, err)


def _report_result(result, metric: str, out: Console, err: Console) -> int:
    _trial_table(
        out,
        [(r.trial.arm, r.trial.seed, r.outcome, r.metrics, r.error) for r in result.results],
        metric,
    )
    err.print(
        f"sweep {result.sweep_id}: {result.count('finished')} finished, "
        f"{result.count('failed')} failed, {result.count('diverged')} diverged, "
        + (f"{result.count('pruned')} pruned, " if result.count("pruned") else "")
        + f"{result.count('killed')} killed (parent run {result.parent_run_id})",
        highlight=False,
    )
    for line in result.unwritten:
        err.print(f"[yellow]not written to the tracking store:[/] {line}", highlight=False)
    if not result.unwritten:
        _where_to_look(result, err)
    if result.cancelled:
        err.print("sweep cancelled", highlight=False)
        return _signal_exit_code()
    if result.unwritten:  # the sweep ran, but its record in the store is incomplete
        err.print(
            f"[red]error:[/] {len(result.unwritten)} write(s) to {result.tracking_uri} "
            f"failed after retries; the lines above say what is missing",
            highlight=False,
        )
        return EXIT_ERROR
    return EXIT_OK


def _where_to_look(result, err: Console) -> None:
    """The parent run and its report in MLflow's UI (and how to start it for a local store)."""
    from orchestrator.client import Client
    from orchestrator.sweep.mlflow_ui import where_to_look

    artifact_uri = None  # the report's file, for a store on this machine
    if not schema.is_server(result.tracking_uri):
        artifact_uri = (
            Client(result.tracking_uri).mlflow.get_run(result.parent_run_id).info.artifact_uri
        )
    for line in where_to_look(
        result.tracking_uri, result.experiment_id, result.parent_run_id, artifact_uri
    ):
        err.print(line, highlight=False, soft_wrap=True, markup=False)


def _trial_table(
    out: Console, rows: list[tuple[dict, int, str, dict, str]], metric: str, wide: bool = False
) -> None:
    axis_names = list(dict.fromkeys(k for arm, *_ in rows for k in arm))
    cells = []
    for arm, seed, outcome, metrics, error in rows:
        value = metrics.get(metric)
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        cells.append(
            [
                *(str(arm.get(a, "")) for a in axis_names),
                str(seed),
                outcome,
                shown,
                error if wide else error[:40],
            ]
        )
    n = len(axis_names)
    # The arm and its result first; then the axes in order; the error text last.
    headers = [*axis_names, "seed", "outcome", metric, "error"]
    if not any(c[-1] for c in cells):
        headers, cells = headers[:-1], [c[:-1] for c in cells]
    priority = [n + 1, n + 2, *range(n), n]
    print_table(out, fitted_table(out, headers, cells, priority, wide), wide)


def cmd_ls(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.store.tables import open_sqlite

    tables = open_sqlite(schema.resolve_tracking_uri(args.tracking_uri))
    if tables is not None:  # an sqlite store: its tables, without MLflow or pandas
        try:
            sweeps = tables.sweeps()
        finally:
            tables.close()
    else:
        sweeps = client_sweeps(args.tracking_uri)
    headers = ["sweep_id", "status", "finished", "failed", "best", "metric", "started", "study"]
    rows: list[list[Any]] = []  # a tag missing from a parent run stays None, as before
    for s in sweeps:
        best = (
            ""
            if s.best is None or (isinstance(s.best, float) and math.isnan(s.best))
            else f"{s.best:.4f}"
        )
        rows.append(
            [
                s.sweep_id,
                s.status,
                f"{s.finished}/{s.n_trials}",
                str(s.failed),
                best,
                str(s.metric or ""),
                s.started,
                s.study,
            ]
        )
    if len({r[5] for r in rows}) == 1:  # one metric: named in the header, not per row
        headers = [*headers[:4], f"best {rows[0][5]}", *headers[6:]]
        rows = [[*r[:5], *r[6:]] for r in rows]
        priority = [0, 1, 2, 4, 3, 5, 6]
    else:
        priority = [0, 1, 2, 4, 3, 5, 6, 7]
    # The full id (to paste into orch show) always; the study is its prefix anyway.
    table = fitted_table(out, headers, rows, priority, args.wide)
    print_table(out, table, args.wide)
    return EXIT_OK


def client_sweeps(tracking_uri: str | None) -> list[SweepLine]:
    """``Client.sweeps`` (a server, or a store MLflow must open) as ``orch ls`` lines."""
    from orchestrator.client import Client
    from orchestrator.store.tables import SweepLine

    return [
        SweepLine(
            r.sweep_id,
            r.study,
            r.status,
            str(r.start_time)[:16],
            r.n_trials,
            r.finished,
            r.failed,
            r.metric,
            r.best,
        )
        for r in Client(tracking_uri).sweeps().itertuples()
    ]


def cmd_show(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.store.tables import local_artifact_dir, open_sqlite
    from orchestrator.verdicts import verdicts_from_json

    uri = schema.resolve_tracking_uri(args.tracking_uri)
    tables = open_sqlite(uri)
    if tables is None or not _plain_id(args.sweep_id):  # MLflow's search parses the id
        if tables is not None:
            tables.close()
        return show_with_client(args, out, err)
    try:
        parent = tables.sweep_run(args.sweep_id)
        df = tables.trials(parent)
    finally:
        tables.close()
    _print_trials(out, parent.tags, parent.status, parent.run_id, df, args.wide)
    try:
        folder = local_artifact_dir(parent.artifact_uri)
        if folder is None:  # a remote artifact store: MLflow reads it
            from orchestrator.client import Client

            verdicts = Client(uri).verdicts(args.sweep_id)
        elif (folder / schema.VERDICTS_ARTIFACT).is_file():
            verdicts = verdicts_from_json((folder / schema.VERDICTS_ARTIFACT).read_text())
        else:  # none stored: recomputed, as Client.verdicts does
            from orchestrator.report import compute_verdicts

            verdicts = compute_verdicts(uri, args.sweep_id)
    except Exception as e:  # noqa: BLE001 - the trials are shown; verdicts are extra
        err.print(f"[yellow]warning:[/] no verdicts: {type(e).__name__}: {e}", highlight=False)
        return EXIT_OK
    _verdict_table(out, verdicts, args.wide)
    return EXIT_OK


def _plain_id(sweep_id: str) -> bool:
    """An id MLflow's filter parser takes as it is (orch's ids are study-date-time-hex)."""
    return bool(re.fullmatch(r"[\w.:-]+", sweep_id))


def show_with_client(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``orch show`` through MLflow's client: a server, or a store MLflow must open."""
    from orchestrator.client import Client

    client = Client(args.tracking_uri)
    parent = client.sweep_run(args.sweep_id)
    df = client.trials(args.sweep_id)
    _print_trials(out, parent.data.tags, parent.info.status, parent.info.run_id, df, args.wide)
    try:
        verdicts = client.verdicts(args.sweep_id)
    except Exception as e:  # noqa: BLE001 - the trials are shown; verdicts are extra
        err.print(f"[yellow]warning:[/] no verdicts: {type(e).__name__}: {e}", highlight=False)
        return EXIT_OK
    _verdict_table(out, verdicts, args.wide)
    return EXIT_OK


def _print_trials(
    out: Console, tags: dict[str, str], status: str, run_id: str, df: pd.DataFrame, wide: bool
) -> None:
    """The sweep's header lines, its trial table and the resumed trials' notes."""
    import json

    metric = tags.get("orch.metric", "val/acc")
    out.print(f"sweep {tags['orch.sweep_id']} ({status})\nparent run {run_id}", highlight=False)
    axes = [a for a in json.loads(tags.get("orch.axes", "[]")) if a != "seed"]
    rows = [
        (
            {a: r.get(a) for a in axes},
            r.get("seed"),
            r["outcome"],
            {metric: r.get(metric)},
            r.get("error") or "",
        )
        for r in df.to_dict("records")
    ]
    _trial_table(out, rows, metric, wide)
    _resumed_note(out, df)


def _resumed_note(out: Console, df: pd.DataFrame) -> None:
    """A line under the table per trial whose last attempt continued from a checkpoint."""
    if df.empty or "resumed_from_step" not in df:
        return
    for r in df[df.resumed_from_step.notna()].to_dict("records"):
        out.print(
            f"trial {r['trial_index']} (seed {r.get('seed')}) resumed from its checkpoint "
            f"at step {int(r['resumed_from_step'])} (attempt {r['attempt']})",
            highlight=False,
        )


def _verdict_table(out: Console, verdicts: list, wide: bool = False) -> None:  # list[Verdict]
    from rich.markup import escape

    from orchestrator.verdicts import verdict_rows

    if not verdicts:
        return
    colour = {
        "confirmed": "green",
        "refuted": "red",
        "inconclusive": "yellow",
        "dependent": "magenta",
    }
    rows = []
    for v, row in zip(verdicts, verdict_rows(verdicts)):
        cells = [escape(c) for c in row]  # ids and intervals hold brackets: not markup
        # Keyed on the value: the cell shows dependent's label ("dataset-dependent").
        cells[2] = f"[{colour.get(v.verdict, 'white')}]{escape(row[2])}[/]"
        rows.append(cells)
    headers = ["claim", "test", "verdict", "effect", "CI", "n a/b", "method"]
    table = fitted_table(
        out, headers, rows, [0, 2, 3, 4, 5, 6, 1], wide, title="verdicts", markup_column=2
    )
    print_table(out, table, wide)


def cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.report import report_sweep

    verdicts, paths = report_sweep(args.tracking_uri, args.sweep_id, args.out)
    _verdict_table(out, verdicts)
    err.print("logged on the parent run: " + ", ".join(paths), highlight=False)
    if args.out:
        err.print(f"local copy: {args.out}/report.html", highlight=False)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.client import Client

    if args.address:  # a Ray job submitted with orch submit
        return jobs.cmd_stop(args, out, err)
    client = Client(args.tracking_uri)
    parent = client.sweep_run(args.sweep_id)
    if parent.info.status != "RUNNING":
        err.print(f"sweep {args.sweep_id} is not running ({parent.info.status})", highlight=False)
        return EXIT_ERROR
    client.mlflow.set_tag(parent.info.run_id, schema.TAG_CANCEL, "1")
    out.print(f"cancel requested for {parent.data.tags['orch.sweep_id']}", highlight=False)
    return EXIT_OK


_COMMANDS = {
    "studies": cmd_studies,
    "sweep": cmd_sweep,
    "resume": cmd_resume,
    "ls": cmd_ls,
    "show": cmd_show,
    "cancel": cmd_cancel,
    "report": cmd_report,
}
_COMMANDS.update(jobs.COMMANDS)  # submit, jobs, logs
_COMMANDS.update(record.COMMANDS)  # claims, record
_COMMANDS.update(service.COMMANDS)  # up, down
