"""Hyperparameter search with Optuna, dispatched like a grid on the same Ray slots.

A study with ``search:`` (:class:`~orchestrator.core.specs.SearchSpec`) is planned by
:func:`orchestrator.config.space.plan_search` and run by
:func:`orchestrator.sweep.run_sweep` with an :class:`OptunaSource` instead of a grid queue:

* **Ask on demand.** The moment a slot frees, the source asks the study for one trial
  (``study.ask``), suggests the space's parameters (define-by-run, conditions included),
  composes the trial's config through the plan's cached Hydra compose and validates it.
  There is no batch barrier; at most one trial per slot is in flight, and TPE's constant
  liar keeps two free slots from getting the same suggestion.
* **Prune.** Every per-step :class:`~tasks.events.Metrics` event of ``report_metric`` goes
  to ``trial.report``; when ``trial.should_prune()`` says so, :meth:`OptunaSource.report`
  returns True and the dispatcher stops the trial within one step. It ends with outcome
  ``pruned`` (MLflow ``KILLED``, its partial curve kept) and Optuna state ``PRUNED``.
* **Tell.** ``finished``: ``COMPLETE`` with the objective values (the task's summary, or
  the metric's last per-step value when the summary lacks it, as ``val/acc``);
  ``failed`` and ``diverged``: ``FAIL`` (a diverged run has no meaningful value, and a
  made-up "bad" one would distort TPE's density of bad trials and fANOVA's forest);
  ``killed`` (cancel): ``FAIL``, re-run on resume. Each Optuna trial records user attrs
  ``mlflow_run_id`` and ``orch_outcome``; each child run the tag ``orch.optuna_trial``.
* **Budget.** ``n_trials`` counts settled trials: finished, pruned, failed and diverged.
  Trials killed by a cancel or left RUNNING by a dead driver do not count: ``orch resume``
  marks them ``FAIL`` (``orch_outcome`` killed/interrupted) and enqueues their parameters
  again (``enqueue_trial``, user attr ``orch_rerun_of``), once. Finished and pruned trials
  are never re-run. The resumed study is the same one (``load_study``), so the sampler
  keeps its history; its seed is offset by the number of trials so far, so that a seeded
  random start does not replay the suggestions it already made.
* **More trials.** ``orch resume SWEEP_ID search.n_trials=80`` continues a finished (or
  dead) search up to 80 settled trials; the new budget is recorded on the parent run.
* **Storage.** The Optuna study is named after the sweep id and lives in an RDB storage
  written by the driver only: ``search.storage``, or ``optuna.db`` beside an sqlite MLflow
  store (``sqlite:///dir/mlflow.db`` -> ``sqlite:///dir/optuna.db``). A tracking server
  needs an explicit storage (PostgreSQL).
* **After the search** (:func:`analyse`): fANOVA importances (per branch of a conditional
  space), the best trial, Optuna's matplotlib plots, and the verdicts of ``search.claims``
  (:func:`search_verdicts`), all logged on the parent run under ``search/``;
  :func:`load_search_summary` reads them back for reports.
"""

from orchestrator.search.analysis import (
    SearchSummary,
    analyse,
    best_trial,
    importances,
    load_search_summary,
)
from orchestrator.search.claims import search_verdicts, summary_verdicts
from orchestrator.search.run import SearchRun
from orchestrator.search.source import OptunaSource
from orchestrator.search.study import (
    ATTR_OUTCOME,
    ATTR_RERUN,
    ATTR_RUN,
    RecordedRun,
    make_pruner,
    make_sampler,
    open_study,
    resolve_storage,
)

__all__ = [
    "ATTR_OUTCOME",
    "ATTR_RERUN",
    "ATTR_RUN",
    "OptunaSource",
    "RecordedRun",
    "SearchRun",
    "SearchSummary",
    "analyse",
    "best_trial",
    "importances",
    "load_search_summary",
    "make_pruner",
    "make_sampler",
    "open_study",
    "resolve_storage",
    "search_verdicts",
    "summary_verdicts",
]
