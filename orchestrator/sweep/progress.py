"""Live progress of a sweep on the terminal: done / running / failed and the best metric."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class SweepProgress:
    """A rich progress bar on a terminal; one line per ended trial elsewhere (logs, CI)."""

    def __init__(self, console: Console, total: int, metric: str, mode: str) -> None:
        self.console, self.total, self.metric, self.mode = console, total, metric, mode
        self.done = self.running = self.failed = 0
        self.best = math.nan
        self._bar: Progress | None = None
        self._task = None
        if console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), console=console)
            self._task = self._bar.add_task("sweep", total=total, status="")

    def __enter__(self) -> "SweepProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def add_total(self, n: int) -> None:
        """Runs added on the way (upstream runs such as pre-training)."""
        self.total += n
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def reused(self, value: float | None) -> None:
        """A trial already done in the store: counted, not run."""
        self.done += 1
        self._best(value)
        self._refresh()

    def ended(self, label: str, outcome: str, value: float | None) -> None:
        self.running -= 1
        self.done += 1
        if outcome in ("failed", "killed"):
            self.failed += 1
        if outcome == "finished":
            self._best(value)
        if self._bar is None:
            shown = "" if value is None else f" {self.metric}={value:.4g}"
            self.console.print(f"[{self.done}/{self.total}] {label}: {outcome}{shown}")
        self._refresh()

    def _best(self, value: float | None) -> None:
        if value is not None and math.isfinite(value) and (
                math.isnan(self.best) or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = value

    def _refresh(self) -> None:
        if self._bar is None:
            return
        best = "-" if math.isnan(self.best) else f"{self.best:.4g}"
        self._bar.update(self._task, completed=self.done,
                         status=f"running {self.running}  failed {self.failed}  "
                                f"best {self.metric} {best}")
