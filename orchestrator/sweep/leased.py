"""A grid's trials claimed in the store before they run (``orchestrator/store/lease.py``).

:class:`LeasedSource` wraps the grid's source: a trial is handed to a free slot only once
its claim (its RUNNING run) is made; a trial another sweep holds waits here, and when that
run ends with a result the trial is reported as reused from it (``orch.reused_from``), as a
trial already done in the store is. If the other run ends without one (failed, killed,
withdrawn) or its lease expires, the trial is claimed again, after a random back-off so that
two sweeps that withdrew together do not collide again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from mlflow.entities import LifecycleStage, Run

from orchestrator.core.specs import Trial
from orchestrator.runtime.dispatch import TrialSource
from orchestrator.store import schema
from orchestrator.sweep.recorder import Recorder
from tasks.events import Metrics, Summary

#: Seconds between two looks at the runs waited for.
POLL_S = 1.0


class LeasedSource:
    """``inner``'s trials, each claimed before it is handed out; see the module."""

    def __init__(
        self, inner: TrialSource, rec: Recorder, reuse: Callable[[Trial, Run], None]
    ) -> None:
        assert rec.leases is not None
        self.inner, self.rec, self.leases, self.reuse = inner, rec, rec.leases, reuse
        self.learns_from_results = inner.learns_from_results
        #: trial key -> (trial, the run it waits for)
        self.waiting: dict[str, tuple[Trial, str]] = {}
        #: trials to claim again, each not before a time (monotonic)
        self.again: list[tuple[float, Trial]] = []
        self._polled = 0.0

    def next_trial(self) -> Trial | None:
        self._poll()
        now = time.monotonic()
        due = [t for at, t in self.again if at <= now]
        self.again = [(at, t) for at, t in self.again if at > now]
        for i, again in enumerate(due):
            if self._claim(again):
                self.again.extend((now, t) for t in due[i + 1 :])
                return again
        while (trial := self.inner.next_trial()) is not None:
            if self._claim(trial):
                return trial
        return None

    def _claim(self, trial: Trial) -> bool:
        claim = self.rec.claim(trial)
        if claim.run_id is not None:
            return True
        assert claim.holder is not None
        self.waiting[trial.key] = (trial, claim.holder.info.run_id)
        return False

    def _poll(self) -> None:
        """Look at the runs waited for: reuse a result, or claim again."""
        if not self.waiting or time.monotonic() - self._polled < POLL_S:
            return
        self._polled = time.monotonic()
        for key, (trial, run_id) in list(self.waiting.items()):
            run = self.leases.tracker.client.get_run(run_id)
            active = run.info.lifecycle_stage == LifecycleStage.ACTIVE
            if active and run.info.status == "RUNNING":
                age = self.leases.age_s(run)
                if age <= self.leases.timeout_s:
                    continue
                self.leases.take_over(run, age)
            del self.waiting[key]
            if (
                active
                and run.info.status != "RUNNING"
                and run.data.tags.get(schema.TAG_OUTCOME) in schema.DONE_OUTCOMES
            ):
                self.reuse(trial, run)
            else:
                self.again.append((time.monotonic() + random.uniform(0.1, 1.5), trial))

    def exhausted(self) -> bool:
        return self.inner.exhausted() and not self.waiting and not self.again

    def retry(self, trial: Trial) -> bool:
        return self.inner.retry(trial)

    def report(self, trial: Trial, event: Metrics) -> bool:
        return self.inner.report(trial, event)

    def finish(self, trial: Trial, outcome: str, summary: Summary | None) -> None:
        self.inner.finish(trial, outcome, summary)

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        return self.inner.trial_tags(trial)

    def started(self, trial: Trial, run_id: str) -> None:
        self.inner.started(trial, run_id)

    def final_values(self, trial: Trial, summary: Summary | None) -> dict[str, float]:
        return self.inner.final_values(trial, summary)
