"""One search as the sweep drives it: the study, its source, its parent-run tags, its resume."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from rich.console import Console

from orchestrator.config.plan import SweepPlan
from orchestrator.config.space import budget
from orchestrator.core.results import TrialResult
from orchestrator.core.specs import Trial
from orchestrator.search.analysis import SearchSummary, analyse
from orchestrator.search.claims import search_verdicts
from orchestrator.search.source import OptunaSource
from orchestrator.search.study import SETTLED, RecordedRun, open_study, shown_url
from orchestrator.store import schema, writer
from orchestrator.store.reader import StoreReader
from orchestrator.verdicts import verdicts_to_json


class SearchRun:
    """Glue between :func:`orchestrator.sweep.run_sweep` and an Optuna study.

    Args:
        plan: The sweep plan (``plan.search`` set).
        tracker: The MLflow writer.
        storage: The Optuna storage URL (:func:`resolve_storage`).
        sweep_id: The sweep id, which is also the Optuna study name.
        resume: Whether the sweep is being resumed.
    """

    def __init__(
        self,
        plan: SweepPlan,
        tracker: writer.Tracker,
        storage: str,
        sweep_id: str,
        resume: bool,
        recorded: list[Run] | None = None,
    ) -> None:
        assert plan.search is not None, "a SearchRun needs a search plan"
        self.plan, self.search = plan, plan.search
        self.tracker, self.storage, self.sweep_id = tracker, storage, sweep_id
        self.recorded = recorded or []
        by_number = {
            int(r.data.tags[schema.TAG_OPTUNA_TRIAL]): RecordedRun(
                r.info.run_id, r.data.tags[schema.TAG_OUTCOME], dict(r.data.metrics)
            )
            for r in self.recorded
        }
        self.study, settled = open_study(self.search, storage, sweep_id, resume, by_number)
        self.n_trials = budget(self.search)
        self.source = OptunaSource(self.search, self.study, self.n_trials, settled)

    def parent_tags(self) -> dict[str, Any]:
        """The sweep's parent-run tags that describe the search."""
        return {
            schema.TAG_OPTUNA_STUDY: self.sweep_id,
            schema.TAG_OPTUNA_STORAGE: shown_url(self.storage),
            schema.TAG_SEARCH + "sampler": self.search.spec.sampler,
            schema.TAG_SEARCH + "pruner": self.search.spec.pruner.name,
            schema.TAG_SEARCH + "metrics": json.dumps(list(self.search.metrics)),
            schema.TAG_SEARCH + "directions": json.dumps(list(self.search.directions)),
            schema.TAG_N_TRIALS: self.n_trials,
        }

    @staticmethod
    def recorded_runs(reader: StoreReader, experiment_id: str, sweep_id: str) -> list[Run]:
        """The settled child runs of a search sweep (resuming), oldest first."""
        return [
            run
            for run in reader.sweep_runs(experiment_id, sweep_id)
            if run.data.tags.get(schema.TAG_OUTCOME) in SETTLED
            and schema.TAG_OPTUNA_TRIAL in run.data.tags
        ]

    def previous_results(self) -> list[TrialResult]:
        """The settled trials of this search sweep, from its recorded child runs."""
        task = self.search.builder.task.name
        out: dict[int, TrialResult] = {}
        for run in self.recorded:
            tags = run.data.tags
            number = int(tags[schema.TAG_OPTUNA_TRIAL])
            arm = json.loads(tags.get(schema.TAG_ARM, "{}"))
            trial = Trial(
                number,
                task,
                {},
                arm,
                int(run.data.params.get("seed", "0")),
                tags.get(schema.TAG_KEY, ""),
            )
            out[number] = TrialResult(
                trial,
                run.info.run_id,
                tags[schema.TAG_OUTCOME],
                dict(run.data.metrics),
                tags.get(schema.TAG_ERROR, ""),
            )
        return [out[k] for k in sorted(out)]

    def analyse(self, parent: str, console: Console | None = None) -> SearchSummary:
        """Importances, best trial, plots and verdicts, logged on the parent run."""
        with tempfile.TemporaryDirectory() as tmp:
            summary = analyse(self.study, self.search, Path(tmp))
            verdicts = search_verdicts(
                self.search.spec.claims, self.study, self.search, summary.importances
            )
            summary.verdicts = [asdict(v) for v in verdicts]
            (Path(tmp) / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
            self.tracker.client.log_artifacts(parent, tmp, schema.SEARCH_FOLDER)
            if verdicts:
                self.tracker.log_text(parent, verdicts_to_json(verdicts), schema.VERDICTS_ARTIFACT)
        metrics: dict[str, float] = {}
        for branch, imp in summary.importances.items():
            prefix = "importance/" if branch == "all" else f"importance/{branch.replace('=', '/')}/"
            metrics.update({f"{prefix}{k}": v for k, v in imp.items()})
        self.tracker.log_metrics(parent, metrics, step=0)
        tags: dict[str, Any] = {schema.verdict_tag(v["id"]): v["verdict"] for v in summary.verdicts}
        if summary.best:
            tags[schema.TAG_SEARCH + "best"] = json.dumps(summary.best)[:5000]
        self.tracker.set_tags(parent, tags)
        self.tracker.flush()
        if self.source.invalid and console is not None:
            console.print(
                f"{len(self.source.invalid)} suggestion(s) rejected by the task; "
                f"first: {self.source.invalid[0]}",
                highlight=False,
            )
        return summary
