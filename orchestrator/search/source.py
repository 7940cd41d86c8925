"""The trial source that asks an Optuna study for a trial the moment a slot frees."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.config.space import SearchPlan
from orchestrator.core.specs import Trial
from orchestrator.errors import SpecError
from orchestrator.search.study import ATTR_ERROR, ATTR_OUTCOME, ATTR_RUN, SETTLED
from orchestrator.store import schema
from tasks.events import Metrics, Summary

#: A search stops asking after this many suggestions in a row that the task rejects.
_MAX_INVALID_IN_A_ROW = 20


# -- the trial source -----------------------------------------------------------------------
class OptunaSource:
    """A :class:`~orchestrator.runtime.dispatch.TrialSource` backed by an Optuna study.

    Args:
        search: The planned search.
        study: The Optuna study (created or loaded by :func:`open_study`).
        n_trials: Settled trials the search runs in all.
        settled: Settled trials it already has (resuming).
    """

    #: Told each result before the next ask: TPE's constant liar would otherwise count a
    #: finished, not yet told trial as a bad running one.
    learns_from_results = True

    def __init__(
        self, search: SearchPlan, study: optuna.Study, n_trials: int, settled: int = 0
    ) -> None:
        self.search, self.study, self.n_trials, self.settled = search, study, n_trials, settled
        self.invalid: list[str] = []  # suggestions the task rejected (counted as failed)
        self._live: dict[int, optuna.Trial] = {}
        self._retry: deque[Trial] = deque()
        self._last: dict[int, dict[str, float]] = {}
        self._prune = search.spec.pruner.name != "none" and len(search.metrics) == 1

    def _left(self) -> int:
        return self.n_trials - self.settled - len(self._live)

    def next_trial(self) -> Trial | None:
        """Ask the study for a trial when the budget allows one more."""
        if self._retry:
            return self._retry.popleft()
        in_a_row = 0
        while self._left() > 0:
            ot = self.study.ask()
            labels = self.search.space.suggest(ot)
            try:
                trial = self.search.trial(labels, ot.number)
            except SpecError as e:
                # The space's corners were checked at plan time; an interior point the task
                # still rejects (a cross-field rule) fails in Optuna and costs a trial.
                ot.set_user_attr(ATTR_OUTCOME, "failed")
                ot.set_user_attr(ATTR_ERROR, str(e)[:2000])
                self.study.tell(ot, state=TrialState.FAIL)
                self.settled += 1
                self.invalid.append(f"trial {ot.number}: {e}")
                in_a_row += 1
                if in_a_row >= _MAX_INVALID_IN_A_ROW:
                    raise SpecError(
                        f"search.space: the task rejected {in_a_row} suggestions "
                        f"in a row; the last: {e}"
                    ) from None
                continue
            self._live[ot.number] = ot
            return trial
        return None

    def exhausted(self) -> bool:
        return self._left() <= 0 and not self._retry

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        """The Optuna trial's number and study, on its MLflow run."""
        return {
            schema.TAG_OPTUNA_TRIAL: trial.index,
            schema.TAG_OPTUNA_STUDY: self.study.study_name,
        }

    def started(self, trial: Trial, run_id: str) -> None:
        """The trial's MLflow run exists: link it from the Optuna trial."""
        ot = self._live.get(trial.index)
        if ot is not None:
            ot.set_user_attr(ATTR_RUN, run_id)

    def report(self, trial: Trial, event: Metrics) -> bool:
        """Feed the pruner; True when the trial should stop."""
        last = self._last.setdefault(trial.index, {})
        for m in self.search.metrics:
            v = event.values.get(m)
            if v is not None and math.isfinite(v):
                last[m] = float(v)
        ot = self._live.get(trial.index)
        value = event.values.get(self.search.report_metric)
        if not self._prune or ot is None or value is None or not math.isfinite(value):
            return False
        ot.report(float(value), event.step)
        return ot.should_prune()

    def final_values(self, trial: Trial, summary: Summary | None) -> dict[str, float]:
        """The objectives' final values: the summary's, else their last per-step value."""
        out = dict(self._last.get(trial.index, {}))
        if summary is not None:
            out.update(
                {m: float(summary.values[m]) for m in self.search.metrics if m in summary.values}
            )
        return out

    def finish(self, trial: Trial, outcome: str, summary: Summary | None) -> None:
        """Tell the study how the trial ended."""
        ot = self._live.pop(trial.index, None)
        if ot is None:
            return
        values = self.final_values(trial, summary)
        self._last.pop(trial.index, None)
        ot.set_user_attr(ATTR_OUTCOME, outcome)
        if outcome == "finished":
            objective = [values.get(m, math.nan) for m in self.search.metrics]
            if all(math.isfinite(v) for v in objective):
                self.study.tell(ot, objective)
            else:
                missing = [
                    m for m, v in zip(self.search.metrics, objective) if not math.isfinite(v)
                ]
                ot.set_user_attr(ATTR_ERROR, f"no finite value of {', '.join(missing)}")
                self.study.tell(ot, state=TrialState.FAIL)
        elif outcome == "pruned":
            self.study.tell(ot, state=TrialState.PRUNED)
        else:  # failed, diverged, killed
            if summary is not None and summary.reason:
                ot.set_user_attr(ATTR_ERROR, summary.reason[:2000])
            self.study.tell(ot, state=TrialState.FAIL)
        if outcome in SETTLED:
            self.settled += 1

    def retry(self, trial: Trial) -> bool:
        """Run the same Optuna trial again after its worker died (it stays RUNNING)."""
        self._retry.append(trial)
        return True
