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

    def holder(self, key: str, exclude: str | None = None) -> Run | None:
        """Who has ``key`` besides ``exclude``, from one query of its runs: the oldest live
        claim (stale ones are ended ``interrupted`` on the way), else a run that ended with
        a result this sweep may reuse (another sweep trained it since this one looked)."""
        runs = self.tracker.client.search_runs(
            [self.experiment_id],
            f"tags.`{schema.TAG_KEY}` = '{key}'",
            order_by=["attributes.start_time ASC"],
        )
        done = None
        for run in runs:
            if run.info.run_id == exclude:
                continue
            if run.info.status == "RUNNING":
                age = self.age_s(run)
                if age <= self.timeout_s:
                    return run
                self.take_over(run, age)
            elif done is None and _reusable(run):
                done = run
        return done

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

    def claim(self, key: str, create: Callable[[], str]) -> Claim:
        """Claim ``key`` with the run ``create()`` makes, unless someone holds it or it was
        done since the sweep looked at the store (another sweep trained it meanwhile: a
        sweep that waited on an upstream claim meets trials the other sweep finished)."""
        held = self.holder(key)
        if held is not None:
            return Claim(holder=held)
        run_id = create()
        # A run that ended done between the look above and our create is seen here.
        other = self.holder(key, exclude=run_id)
        if other is not None:
            self.withdraw(run_id)
            return Claim(holder=other)
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


def _reusable(run: Run) -> bool:
    """An ended run with a result (not itself a reuse of another)."""
    tags = run.data.tags
    return tags.get(schema.TAG_OUTCOME) in schema.DONE_OUTCOMES and schema.TAG_REUSED not in tags
