"""Tables that fit the terminal: whole cells, fewer columns.

A sweep id cut to ``quadra…`` cannot be pasted into ``orch show``; so rather than let
rich squeeze every column, columns are placed whole, most important first; one that does
not fit is cut only if at least ``MIN_CUT`` characters are left, else dropped (``--wide``
keeps them all whole). The first column is never shortened.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Characters between two columns: rich's padding of one on each side and the box's divider.
GAP = 3
#: A column narrower than its cells is kept, cut with an ellipsis, if this much room is left.
MIN_CUT = 8


def fitted_table(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    priority: Sequence[int],
    wide: bool = False,
    title: str | None = None,
    markup_column: int | None = None,
) -> Table:
    """A table of the columns of ``headers`` that fit ``console.width``.

    ``priority`` lists column indices, most important first; columns not in it go last.
    The first of them is kept whole whatever the width. ``markup_column``'s cells hold
    rich markup (a colour) that does not count towards their width.
    """
    widths = [
        max([len(h)] + [len(_plain(r[i], i == markup_column)) for r in rows])
        for i, h in enumerate(headers)
    ]
    order = [*priority, *(i for i in range(len(headers)) if i not in priority)]
    width: dict[int, int] = {}  # column -> its width on screen
    used = 0
    for i in order:
        gap = GAP if width else 0
        room = console.width - used - gap
        if wide or not width or widths[i] <= room:
            width[i] = widths[i]
        elif room >= MIN_CUT:  # the last column that fits at all keeps its start
            width[i] = room
        else:
            continue  # a narrower, less important column may still fit
        used += width[i] + gap
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left"
    )
    keep = sorted(width)
    for i in keep:
        table.add_column(
            headers[i], no_wrap=True, overflow="ellipsis", min_width=width[i], max_width=width[i]
        )
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    return table


#: Above this many rows a table is laid out here, not by rich: rich measures and renders
#: every cell through its layout engine (~1 ms a row), 10 s for a 10,000-trial sweep.
DIRECT_ROWS = 500


def print_table(console: Console, table: Table, wide: bool) -> None:
    """``--wide``: every column whole, however wide the lines get."""
    need = sum(c.min_width or 0 for c in table.columns) + GAP * (len(table.columns) - 1)
    if table.row_count > DIRECT_ROWS:
        console.print(_direct(console, table), soft_wrap=True, highlight=False, crop=False)
        return
    if not wide:
        console.print(table)
        return
    saved = console.width  # print(width=...) would be capped at the console's width
    console.width = max(need, saved)
    try:
        console.print(table)
    finally:
        console.width = saved


def _direct(console: Console, table: Table) -> str:
    """What rich prints for a :func:`fitted_table` (fixed-width columns, three spaces apart,
    a rule under the header, cells cut with an ellipsis), as one markup string: each cell is
    laid out alone with string operations, rich only parsing the markup of the result."""
    widths = [c.min_width or 0 for c in table.columns]
    total = sum(widths) + GAP * (len(widths) - 1)

    def cell(value: str, width: int, style: str = "") -> str:
        if "[" in value:  # rich reads a table's cells as markup: so does this
            text = Text.from_markup(value, style=style)
            text.truncate(width, overflow="ellipsis", pad=True)
            return text.markup
        if cell_len(value) > width:
            value = set_cell_size(value, width - 1) + "…"
        value = value + " " * (width - cell_len(value))
        return f"[{style}]{value}[/]" if style else value

    def line(cells: Sequence[str], style: str = "") -> str:
        return (" " * GAP).join(cell(str(v), w, style) for v, w in zip(cells, widths))

    lines = [] if table.title is None else [cell(str(table.title), total, "table.title")]
    lines.append(line([str(c.header) for c in table.columns], "table.header"))
    lines.append("─" * total)
    lines += [line(row) for row in zip(*(c.cells for c in table.columns))]
    return "\n".join(lines)


def _plain(cell: str, markup: bool) -> str:
    if not markup:
        return cell
    from rich.text import Text

    return Text.from_markup(cell).plain
