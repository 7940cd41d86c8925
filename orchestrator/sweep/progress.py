"""Live progress of a sweep: done / running / failed, the best metric and an ETA.

On a terminal a rich progress bar; elsewhere (CI logs, ``orch submit``'s job log) one
plain line per ended trial, since a bar's redraws are noise in a log file. The counts can
also be published (the parent run's ``trials/*`` metrics) every ``publish_s`` seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Outcomes counted as failed on the bar.
FAILED = ("failed", "killed")
#: Seconds between two publications of the counts: often enough to watch, and a store
#: write per few seconds rather than per trial.
PUBLISH_S = 5.0


class SweepProgress:
    """A rich progress bar on a terminal; one line per ended trial elsewhere (logs, CI)."""

    def __init__(
        self,
        console: Console,
        total: int,
        metric: str,
        mode: str,
        publish: Callable[[dict[str, float]], None] | None = None,
        publish_s: float = PUBLISH_S,
    ) -> None:
        self.console, self.total, self.metric, self.mode = console, total, metric, mode
        self.done = self.running = self.failed = 0
        self.outcomes: Counter[str] = Counter()
        self.best = math.nan
        self._publish, self._publish_s = publish, publish_s
        self._published: dict[str, float] = {}
        self._published_at = -math.inf
        self._bar: Progress | None = None
        self._task = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("sweep", total=total, status="")

    def __enter__(self) -> SweepProgress:
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
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=self.total)

    def reused(self, value: float | None) -> None:
        """A trial already done in the store: counted, not run."""
        self.done += 1
        self.outcomes["finished"] += 1
        self._best(value)
        self._refresh()

    def ended(self, label: str, outcome: str, value: float | None) -> None:
        self.running -= 1
        self.done += 1
        self.outcomes[outcome] += 1
        if outcome in FAILED:
            self.failed += 1
        if outcome == "finished":
            self._best(value)
        if self._bar is None:
            shown = "" if value is None else f" {self.metric}={value:.4g}"
            self.console.print(
                f"[{self.done}/{self.total}] {label}: {outcome}{shown} "
                f"(running {self.running}, failed {self.failed})",
                highlight=False,
                markup=False,
            )
        self._refresh()

    def counts(self) -> dict[str, float]:
        """The parent run's live metrics: ``trials/<outcome>``, ``trials/running``, ..."""
        return {
            "trials/total": float(self.total),
            "trials/done": float(self.done),
            "trials/running": float(self.running),
            **{
                f"trials/{o}": float(self.outcomes[o])
                for o in ("finished", "failed", "diverged", "pruned", "killed")
            },
        }

    def tick(self) -> None:
        """Publish the counts if they changed and ``publish_s`` has passed (the driver's
        dispatch loop calls this every poll)."""
        if self._publish is None or time.monotonic() - self._published_at < self._publish_s:
            return
        counts = self.counts()
        if counts != self._published:
            self._publish(counts)
            self._published = counts
        self._published_at = time.monotonic()

    def _best(self, value: float | None) -> None:
        if (
            value is not None
            and math.isfinite(value)
            and (
                math.isnan(self.best)
                or (value > self.best if self.mode == "max" else value < self.best)
            )
        ):
            self.best = value

    def _refresh(self) -> None:
        if self._bar is None or self._task is None:
            return
        best = "-" if math.isnan(self.best) else f"{self.best:.4g}"
        self._bar.update(
            self._task,
            completed=self.done,
            status=f"running {self.running}  failed {self.failed}  best {self.metric} {best}",
        )
