"""Tables that fit 80 columns: the key column whole, the least important columns dropped
or cut, every column whole with --wide."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.cli import tables
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


@pytest.mark.parametrize(
    ("width", "wide", "title", "markup"),
    [(60, False, "verdicts", 2), (80, False, None, None), (40, True, None, 2), (30, False, "t", 2)],
)
def test_long_tables_print_what_rich_prints(
    monkeypatch: pytest.MonkeyPatch, width: int, wide: bool, title: str | None, markup: int | None
) -> None:
    """Past ``DIRECT_ROWS`` a table is laid out without rich's engine: the same text."""
    rows = [
        [
            f"optimizers-{i}",
            "FINISHED",
            "[red]failed[/]" if i % 3 else "[green]ok[/]",
            "x" * (i % 40) + ("é" if i % 7 == 0 else "") + ("[1, 2]" if i % 5 == 0 else ""),
        ]
        for i in range(60)
    ]

    def render(direct_rows: int) -> str:
        monkeypatch.setattr(tables, "DIRECT_ROWS", direct_rows)
        console = Console(file=io.StringIO(), width=width)
        headers = ["id", "status", "outcome", "long"]
        table = fitted_table(console, headers, rows, [0, 1, 2, 3], wide, title, markup)
        print_table(console, table, wide)
        return console.file.getvalue()  # type: ignore[attr-defined]

    assert render(len(rows) - 1) == render(len(rows))
