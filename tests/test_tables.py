"""Tables that fit 80 columns: the key column whole, the least important columns dropped
or cut, every column whole with --wide."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.cli.tables import fitted_table, print_table

HEADERS = ["sweep_id", "status", "finished", "failed", "best", "started", "study"]
ROWS = [
    [
        "optimizers-20261130-045428-6a99",
        "FINISHED",
        "8/8",
        "0",
        "0.9306",
        "2026-11-30 04:54",
        "optimizers",
    ],
    [
        "lr_schedules-20261130-051151-3339",
        "RUNNING",
        "3/40",
        "1",
        "",
        "2026-11-30 05:11",
        "lr_schedules",
    ],
]


def _render(wide: bool, width: int = 80) -> list[str]:
    console = Console(file=io.StringIO(), width=width)
    print_table(console, fitted_table(console, HEADERS, ROWS, [0, 1, 2, 4, 3, 5, 6], wide), wide)
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def test_narrow_keeps_ids_whole_and_fits() -> None:
    lines = _render(wide=False)
    assert max(len(line) for line in lines) <= 80
    assert all(any(r[0] in line for line in lines) for r in ROWS)
    assert "study" not in lines[0]  # the least important column went first


def test_wide_keeps_every_column_whole() -> None:
    lines = _render(wide=True)
    assert lines[0].split() == HEADERS
    assert "lr_schedules" in lines[-1].split()


def test_a_column_that_does_not_fit_whole_is_cut() -> None:
    console = Console(file=io.StringIO(), width=40)
    table = fitted_table(console, ["id", "method"], [["a" * 20, "t (too few values)"]], [0, 1])
    console.print(table)
    (row,) = console.file.getvalue().splitlines()[2:]  # type: ignore[attr-defined]
    assert row.startswith("a" * 20) and row.endswith("…") and len(row) <= 40
