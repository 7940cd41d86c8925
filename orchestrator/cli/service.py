"""``orch up`` / ``orch down``: the warm local service (``orchestrator.runtime.service``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console

from orchestrator.cli.exits import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser(
        "up",
        help="keep a local Ray head, warm workers and a standby driver for repeated "
        "sweeps (orch sweep/resume hand them the sweep when no --address is given)",
    )
    sp.add_argument(
        "--slots",
        type=int,
        default=os.cpu_count() or 1,
        help="warm workers, one CPU each (default: one per CPU)",
    )
    sp.add_argument("--num-cpus", type=int, help="the local cluster's CPUs (default: all)")
    sp.add_argument("--status", action="store_true", help="say what runs; start nothing")
    sub.add_parser("down", help="stop orch up's workers and Ray head")


def cmd_up(args: argparse.Namespace, out: Console, err: Console) -> int:
    # Here: --help and other commands import neither; service imports Ray (after connect_env).
    from orchestrator.runtime.service_state import connect_env, find_service

    running = find_service()
    if running is not None:  # before Ray is imported: it reads the token variables then
        connect_env(running)
    from orchestrator.runtime import service  # imports Ray: after the token variables

    if args.status:
        st = service.status()
        if st is None:
            out.print("orch up: not running", highlight=False)
            return EXIT_ERROR
        busy = ", ".join(f"{w} (driver pid {p})" for w, p in st["busy"].items()) or "-"
        out.print(
            f"orch up: {st['address']} (daemon pid {st['daemon_pid']}), {st['slots']} "
            f"slots: {len(st['idle'])} idle, busy: {busy}; worker pids: "
            f"{', '.join(str(p) for p in st['pids'].values())}",
            highlight=False,
        )
        return EXIT_OK
    if args.slots < 1:
        err.print("[red]error:[/] --slots: at least 1", highlight=False)
        return EXIT_BAD_INPUT
    try:
        state = service.start(args.slots, args.num_cpus)
    except RuntimeError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return EXIT_ERROR
    out.print(
        f"orch up: {state.address}, {state.slots} warm slots (daemon pid "
        f"{state.daemon_pid}); orch down stops it",
        highlight=False,
    )
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator.runtime import service  # Ray: only for this command

    out.print("orch down: stopped" if service.stop() else "orch down: not running", highlight=False)
    return EXIT_OK


COMMANDS = {"up": cmd_up, "down": cmd_down}
