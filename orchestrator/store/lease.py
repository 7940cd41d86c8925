"""Leases: a trial is claimed in the store before it trains, so two sweeps never train it twice.

The claim is the trial's own RUNNING child run (``TAG_KEY``) carrying a heartbeat
(``TAG_HEARTBEAT``, epoch seconds) that its driver renews every :func:`heartbeat_s`. Any
sweep of the experiment that meets a live claim on a key waits for that run's result.

MLflow offers no compare-and-set, so the claim is *create, then look*: a driver creates its
run, then lists the live claims on the key. Seeing only its own, it owns the trial; seeing
another, it withdraws (its run ends ``interrupted`` and is deleted) and tries again later.
Of two claims, the later created is always seen by its own driver's look (the store is
linearizable: sqlite, or a server's database), so two drivers never both own a key; when
both see each other both withdraw, and a random back-off lets one of them win next time.

A claim whose heartbeat is older than ``timeout_s`` belongs to a driver that died (or is cut
off from the store that long): it is ended ``interrupted`` and the key may be claimed again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.entities import Run, RunTag

from orchestrator.store import schema
from orchestrator.store.writer import Tracker, fast_http


def heartbeat_s(timeout_s: float) -> float:
    """How often a claim's heartbeat is renewed: several beats fit in a timeout."""
    return min(10.0, timeout_s / 4)


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`Leases.claim`: our run (we train), or the run we wait for."""

    run_id: str | None = None
    holder: Run | None = None


class Leases:
    """Claims on trial keys within one experiment."""

    def __init__(self, tracker: Tracker, experiment_id: str, timeout_s: float) -> None:
        self.tracker, self.experiment_id, self.timeout_s = tracker, experiment_id, timeout_s

    def age_s(self, run: Run) -> float:
        """Seconds since the claim's last heartbeat (its start if it never beat)."""
        beat = run.data.tags.get(schema.TAG_HEARTBEAT)
        last = float(beat) if beat else run.info.start_time / 1000
        return time.time() - last

    def live(self, key: str, exclude: str | None = None) -> list[Run]:
        """The live claims on ``key`` other than ``exclude``, oldest first; stale ones are
        ended ``interrupted`` on the way."""
        runs = self.tracker.client.search_runs(
            [self.experiment_id],
            f"tags.`{schema.TAG_KEY}` = '{key}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time ASC"],
        )
        out = []
        for run in runs:
            if run.info.run_id == exclude:
                continue
            age = self.age_s(run)
            if age > self.timeout_s:
                self.take_over(run, age)
            else:
                out.append(run)
        return out

    def take_over(self, run: Run, age: float) -> None:
        self.tracker.end_run(
            run.info.run_id,
            "KILLED",
            {
                schema.TAG_OUTCOME: "interrupted",
                schema.TAG_ERROR: f"lease expired: no heartbeat for {age:.0f} s "
                f"(sweep.lease_timeout_s={self.timeout_s:g}); trained again",
            },
        )

    def done(self, key: str) -> Run | None:
        """A run of ``key`` that ended with a result another sweep may reuse, if any."""
        for run in self.tracker.client.search_runs(
            [self.experiment_id], f"tags.`{schema.TAG_KEY}` = '{key}'"
        ):
            tags = run.data.tags
            if (
                run.info.status != "RUNNING"
                and tags.get(schema.TAG_OUTCOME) in schema.DONE_OUTCOMES
                and schema.TAG_REUSED not in tags
            ):
                return run
        return None

    def claim(self, key: str, create: Callable[[], str]) -> Claim:
        """Claim ``key`` with the run ``create()`` makes, unless someone holds it or it was
        done since the sweep looked at the store (another sweep trained it meanwhile: a
        sweep that waited on an upstream claim meets trials the other sweep finished)."""
        held = self.live(key) or [r for r in [self.done(key)] if r is not None]
        if held:
            return Claim(holder=held[0])
        run_id = create()
        # A run that ended done between the look above and our create is seen here.
        others = self.live(key, exclude=run_id) or [r for r in [self.done(key)] if r is not None]
        if others:
            self.withdraw(run_id)
            return Claim(holder=others[0])
        return Claim(run_id=run_id)

    def withdraw(self, run_id: str) -> None:
        """Give up a claim made at the same time as another's: no trace but a deleted run."""
        self.tracker.end_run(
            run_id,
            "KILLED",
            {
                schema.TAG_OUTCOME: "interrupted",
                schema.TAG_ERROR: "withdrawn: another sweep claimed the trial at the same time",
            },
        )
        self.tracker.client.delete_run(run_id)

    def beat(self, run_ids: list[str]) -> None:
        """Renew the heartbeat of our claims: one quick try each, no retries (a beat lost to
        an outage is harmless while shorter than the timeout; retrying would hold the sweep)."""
        tags = [RunTag(schema.TAG_HEARTBEAT, f"{time.time():.0f}")]
        for run_id in run_ids:
            try:
                with (
                    fast_http() if schema.is_server(self.tracker.uri) else contextlib.nullcontext()
                ):
                    self.tracker.client.log_batch(run_id, tags=tags)
            except Exception:  # noqa: BLE001 - see above
                return
