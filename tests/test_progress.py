"""The sweep's progress: a bar with an ETA on a terminal, plain lines in a log, and the
counts published at most once per interval (none of it timed)."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.sweep.progress import SweepProgress


def _drive(progress: SweepProgress) -> None:
    with progress:
        for label, outcome, value in (
            ("lr=0.1 seed=0", "finished", 0.9),
            ("lr=1 seed=0", "failed", None),
        ):
            progress.started()
            progress.tick()
            progress.ended(label, outcome, value)
            progress.tick()


def test_plain_lines_off_a_terminal() -> None:
    buf = io.StringIO()
    _drive(SweepProgress(Console(file=buf, width=80), 2, "val/acc", "max"))
    assert buf.getvalue().splitlines() == [
        "[1/2] lr=0.1 seed=0: finished val/acc=0.9 (running 0, failed 0)",
        "[2/2] lr=1 seed=0: failed (running 0, failed 1)",
    ]


def test_a_bar_with_an_eta_on_a_terminal() -> None:
    buf = io.StringIO()
    _drive(SweepProgress(Console(file=buf, width=120, force_terminal=True), 2, "val/acc", "max"))
    out = buf.getvalue()
    assert "2/2" in out and "eta" in out and "failed 1" in out and "best val/acc 0.9" in out
    assert "[1/2]" not in out  # no plain lines under the bar


def test_counts_published_once_per_interval_when_they_change() -> None:
    sent: list[dict[str, float]] = []
    _drive(
        SweepProgress(Console(file=io.StringIO()), 2, "val/acc", "max", sent.append, publish_s=3600)
    )
    assert len(sent) == 1  # the first tick; the interval never passed again
    assert sent[0]["trials/running"] == 1 and sent[0]["trials/total"] == 2
    every: list[dict[str, float]] = []
    _drive(
        SweepProgress(Console(file=io.StringIO()), 2, "val/acc", "max", every.append, publish_s=0)
    )
    assert len(every) == 4  # each tick saw a change
    assert every[-1]["trials/finished"] == 1 and every[-1]["trials/failed"] == 1
