"""Hyperparameter search with Optuna, dispatched like a grid on the same Ray slots.

A study with ``search:`` (:class:`~orchestrator.specs.SearchSpec`) is planned by
:func:`orchestrator.space.plan_search` and run by :func:`orchestrator.sweep.run_sweep` with
an :class:`OptunaSource` instead of a grid queue:

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

from __future__ import annotations

import json
import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator import tracking as tr
from orchestrator.errors import SpecError
from orchestrator.space import Param, SearchPlan, SearchSpace
from orchestrator.specs import SearchClaimSpec, SearchSpec, Trial
from orchestrator.sweep import TrialResult, _Recorder
from orchestrator.worker import Failure, NodeInfo
from tasks.events import Metrics, Summary

if TYPE_CHECKING:
    from orchestrator.plan import SweepPlan
    from orchestrator.progress import SweepProgress
    from orchestrator.verdicts import Verdict

TAG_OPTUNA_TRIAL = "orch.optuna_trial"
TAG_OPTUNA_STUDY = "orch.optuna_study"
ATTR_RUN = "mlflow_run_id"
ATTR_OUTCOME = "orch_outcome"
ATTR_ERROR = "orch_error"
ATTR_RERUN = "orch_rerun_of"
#: Outcomes that use up the budget; killed and interrupted trials are run again.
SETTLED = ("finished", "pruned", "failed", "diverged")
ARTIFACTS = "search"  # the parent run's artifact folder for plots and importances
#: A search stops asking after this many suggestions in a row that the task rejects.
_MAX_INVALID_IN_A_ROW = 20

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- storage, sampler, pruner ---------------------------------------------------------------
def resolve_storage(spec: SearchSpec, tracking_uri: str) -> str:
    """The Optuna RDB storage URL of a search.

    Args:
        spec: The search; its ``storage`` wins when given.
        tracking_uri: The MLflow store; an sqlite or local file store gets ``optuna.db``
            beside it.

    Returns:
        An SQLAlchemy URL Optuna's ``RDBStorage`` accepts.

    Raises:
        SpecError: The tracking store is a server and no storage was given.
    """
    if spec.storage:
        return spec.storage
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        return f"sqlite:///{path.with_name('optuna.db')}"
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        # A local file store (a folder such as ./mlruns): the study file sits beside it.
        folder = Path(parsed.path if parsed.scheme else tracking_uri)
        return f"sqlite:///{folder.parent / 'optuna.db'}"
    raise SpecError(f"search.storage: the tracking store {tracking_uri!r} is a server, so the "
                    f"Optuna study needs its own storage; allowed: an RDB URL such as "
                    f"search.storage=postgresql://USER@HOST/optuna (or sqlite:///PATH)")


def _shown(url: str) -> str:
    """A storage URL without its password (it goes into a tag)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":..."


def make_sampler(spec: SearchSpec, space: SearchSpace, seed_offset: int = 0
                 ) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names.

    Args:
        spec: The search.
        space: The parsed space (the grid sampler enumerates it).
        seed_offset: Added to the seed; a resumed search passes its number of trials so
            that a seeded sampler does not repeat its earlier random suggestions.
    """
    seed = None if spec.seed is None else spec.seed + seed_offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            # constant_liar: trials still running count as (pessimistic) results, so that
            # asynchronous asks spread out instead of piling onto the same region.
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                              constant_liar=True)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed,
                                                n_startup_trials=max(1, spec.n_startup_trials),
                                                warn_independent_sampling=False)
        if spec.sampler == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=seed)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner the spec names, with its native options."""
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                      reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1 if p.min_resource == "auto" else p.min_resource,
            max_resource=p.max_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def budget(search: SearchPlan) -> int:
    """Settled trials the search runs: ``n_trials``, capped at the grid's size for grid."""
    n = search.spec.n_trials
    if search.spec.sampler == "grid":
        n = min(n, math.prod(len(v) for v in search.space.grid().values()))
    return n


def _outcome(t: FrozenTrial) -> str:
    """A trial's outcome as this service names it (a trial without the attr by its state)."""
    if ATTR_OUTCOME in t.user_attrs:
        return str(t.user_attrs[ATTR_OUTCOME])
    return {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed"}.get(t.state, t.state.name.lower())


def open_study(search: SearchPlan, storage: str, study_name: str, resume: bool
               ) -> tuple[optuna.Study, int]:
    """Create (or, resuming, load) the sweep's Optuna study.

    Resuming, trials left RUNNING by a dead driver are marked ``FAIL`` (outcome
    ``interrupted``), and those and the ``killed`` ones are enqueued again with their
    parameters, once each.

    Returns:
        The study and its number of settled trials.
    """
    rdb = optuna.storages.RDBStorage(storage)
    if not resume:
        study = optuna.create_study(storage=rdb, study_name=study_name,
                                    sampler=make_sampler(search.spec, search.space),
                                    pruner=make_pruner(search.spec),
                                    directions=list(search.directions))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(search.metrics))
        return study, 0
    try:
        study = optuna.load_study(study_name=study_name, storage=rdb)
    except KeyError:
        raise SpecError(f"sweep {study_name!r}: no Optuna study of that name in "
                        f"{_shown(storage)}") from None
    trials = study.get_trials(deepcopy=False)
    study = optuna.load_study(study_name=study_name, storage=rdb,
                              sampler=make_sampler(search.spec, search.space, len(trials)),
                              pruner=make_pruner(search.spec))
    rerun = {t.user_attrs.get(ATTR_RERUN) for t in trials}
    for t in trials:
        outcome = _outcome(t)
        if t.state == TrialState.RUNNING:
            outcome = "interrupted"
            rdb.set_trial_user_attr(t._trial_id, ATTR_OUTCOME, outcome)
            rdb.set_trial_user_attr(t._trial_id, ATTR_ERROR, "the driver stopped while it ran")
            study.tell(t.number, state=TrialState.FAIL)
        if outcome in ("interrupted", "killed") and t.number not in rerun and t.params:
            study.enqueue_trial(dict(t.params), user_attrs={ATTR_RERUN: t.number})
    settled = sum(_outcome(t) in SETTLED for t in study.get_trials(deepcopy=False)
                  if t.state.is_finished())
    return study, settled


# -- the trial source -----------------------------------------------------------------------
class OptunaSource:
    """A :class:`~orchestrator.dispatch.TrialSource` backed by an Optuna study.

    Args:
        search: The planned search.
        study: The Optuna study (created or loaded by :func:`open_study`).
        n_trials: Settled trials the search runs in all.
        settled: Settled trials it already has (resuming).
    """

    #: Told each result before the next ask: TPE's constant liar would otherwise count a
    #: finished, not yet told trial as a bad running one.
    learns_from_results = True

    def __init__(self, search: SearchPlan, study: optuna.Study, n_trials: int,
                 settled: int = 0) -> None:
        self.search, self.study, self.n_trials, self.settled = search, study, n_trials, settled
        self.invalid: list[str] = []   # suggestions the task rejected (counted as failed)
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
                    raise SpecError(f"search.space: the task rejected {in_a_row} suggestions "
                                    f"in a row; the last: {e}") from None
                continue
            self._live[ot.number] = ot
            return trial
        return None

    def exhausted(self) -> bool:
        return self._left() <= 0 and not self._retry

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
            out.update({m: float(summary.values[m]) for m in self.search.metrics
                        if m in summary.values})
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
                missing = [m for m, v in zip(self.search.metrics, objective) if not math.isfinite(v)]
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


class SearchRecorder(_Recorder):
    """The sweep's recorder, plus the Optuna links and the objectives' final values."""

    source: OptunaSource | None = None

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        return {**super().trial_tags(trial), TAG_OPTUNA_TRIAL: trial.index,
                TAG_OPTUNA_STUDY: self.sweep_id}

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        super().trial_started(trial, attempt, node)
        if self.source is not None:
            self.source.started(trial, self.run_ids[trial.index])

    def trial_ended(self, trial: Trial, outcome: str, summary: Summary | None,
                    failure: Failure | None) -> None:
        final = self.source.final_values(trial, summary) if self.source is not None else {}
        super().trial_ended(trial, outcome, summary, failure)
        if summary is not None and self.results and self.results[-1].trial is trial:
            # A per-step objective (val/acc) is already in the run as its last step's value;
            # the result gets it too (the table, best/<metric>), without logging it twice.
            self.results[-1].metrics = {**final, **self.results[-1].metrics}


def previous_results(tracker: tr.Tracker, experiment_id: str, sweep_id: str, task: str
                     ) -> list[TrialResult]:
    """The settled trials of a search sweep, from its child runs (for a resumed sweep)."""
    out: dict[int, TrialResult] = {}
    for run in tracker.client.search_runs(
            [experiment_id], f"tags.`{tr.TAG_SWEEP}` = '{sweep_id}' and "
                             f"tags.`{tr.TAG_KIND}` = 'trial'", max_results=50000):
        tags = run.data.tags
        if tags.get(tr.TAG_OUTCOME) not in SETTLED or TAG_OPTUNA_TRIAL not in tags:
            continue
        number = int(tags[TAG_OPTUNA_TRIAL])
        arm = json.loads(tags.get(tr.TAG_ARM, "{}"))
        trial = Trial(number, task, {}, arm, int(run.data.params.get("seed", "0")),
                      tags.get(tr.TAG_KEY, ""))
        out[number] = TrialResult(trial, run.info.run_id, tags[tr.TAG_OUTCOME],
                                  dict(run.data.metrics), tags.get(tr.TAG_ERROR, ""))
    return [out[k] for k in sorted(out)]


# -- one search, as run_sweep drives it -----------------------------------------------------
class SearchRun:
    """Glue between :func:`orchestrator.sweep.run_sweep` and an Optuna study.

    Args:
        plan: The sweep plan (``plan.search`` set).
        tracker: The MLflow writer.
        storage: The Optuna storage URL (:func:`resolve_storage`).
        sweep_id: The sweep id, which is also the Optuna study name.
        resume: Whether the sweep is being resumed.
    """

    def __init__(self, plan: "SweepPlan", tracker: tr.Tracker, storage: str, sweep_id: str,
                 resume: bool) -> None:
        self.plan, self.search = plan, plan.search
        self.tracker, self.storage, self.sweep_id = tracker, storage, sweep_id
        self.study, settled = open_study(self.search, storage, sweep_id, resume)
        self.n_trials = budget(self.search)
        self.source = OptunaSource(self.search, self.study, self.n_trials, settled)
        self.resume = resume

    def recorder(self, experiment_id: str, parent: str, progress: "SweepProgress"
                 ) -> SearchRecorder:
        """The listener for this search, with the trials it already settled counted."""
        rec = SearchRecorder(self.tracker, self.plan, experiment_id, parent, self.sweep_id,
                             progress)
        rec.source = self.source
        self.tracker.set_tags(parent, {
            TAG_OPTUNA_STUDY: self.sweep_id, "orch.optuna_storage": _shown(self.storage),
            "orch.search.sampler": self.search.spec.sampler,
            "orch.search.pruner": self.search.spec.pruner.name,
            "orch.search.metrics": json.dumps(list(self.search.metrics)),
            "orch.search.directions": json.dumps(list(self.search.directions)),
            "orch.n_trials": self.n_trials})
        if self.resume:
            for r in previous_results(self.tracker, experiment_id, self.sweep_id,
                                      self.search.builder.task.name):
                rec.results.append(r)
                progress.reused(r.metrics.get(self.plan.spec.sweep.metric))
        return rec

    def analyse(self, parent: str, console: Any = None) -> "SearchSummary":
        """Importances, best trial, plots and verdicts, logged on the parent run."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            summary = analyse(self.study, self.search, Path(tmp))
            verdicts = search_verdicts(self.search.spec.claims, self.study, self.search,
                                       summary.importances)
            summary.verdicts = [asdict(v) if hasattr(v, "__dataclass_fields__") else dict(v)
                                for v in verdicts]
            (Path(tmp) / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
            self.tracker.client.log_artifacts(parent, tmp, ARTIFACTS)
            if verdicts:
                self.tracker.log_text(parent, _verdicts_json(verdicts), "verdicts.json")
        metrics: dict[str, float] = {}
        for branch, imp in summary.importances.items():
            prefix = "importance/" if branch == "all" else f"importance/{branch.replace('=', '/')}/"
            metrics.update({f"{prefix}{k}": v for k, v in imp.items()})
        self.tracker.log_metrics(parent, metrics, step=0)
        tags: dict[str, Any] = {f"orch.verdict.{v['id']}": v["verdict"] for v in summary.verdicts}
        if summary.best:
            tags["orch.search.best"] = json.dumps(summary.best)[:5000]
        self.tracker.set_tags(parent, tags)
        self.tracker.flush()
        if self.source.invalid and console is not None:
            console.print(f"{len(self.source.invalid)} suggestion(s) rejected by the task; "
                          f"first: {self.source.invalid[0]}", highlight=False)
        return summary


def _verdicts_json(verdicts: Sequence[Any]) -> str:
    try:
        from orchestrator.verdicts import verdicts_to_json

        return verdicts_to_json(verdicts)
    except ImportError:  # pragma: no cover - the evaluator ships with the service
        return json.dumps([dict(v) for v in verdicts], indent=2)


# -- after the search -----------------------------------------------------------------------
@dataclass
class SearchSummary:
    """What a finished search found, for the parent run and the HTML report.

    Attributes:
        figures: Plot name -> PNG path (``history``, ``importances``, ``parallel``,
            ``slice``, ``pareto``, ``importances-<branch>``), relative to the folder the
            summary was written to or loaded from.
        importances: Branch (``all``, or ``optimizer=adam`` for one choice of a conditional
            space) -> parameter -> normalized fANOVA importance, most important first.
        best: The best trial: ``number``, ``values``, ``params``, ``mlflow_run_id``
            (multi-objective: the first of the Pareto front, and ``pareto`` lists them all).
        counts: Optuna trial states and this service's outcomes, counted.
        notes: Why something is missing (too few complete trials for fANOVA, ...).
        verdicts: The ``search.claims`` verdicts as dicts (``Verdict`` fields).
    """

    figures: dict[str, str] = field(default_factory=dict)
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _branches(search: SearchPlan, complete: list[FrozenTrial]) -> dict[str, list[str]]:
    """Branch name -> parameters to rank in it: ``all`` (those every complete trial has),
    and one branch per choice of each parameter that other parameters are conditioned on."""
    space = search.space
    everywhere = [p.key for p in space.params if all(p.key in t.params for t in complete)]
    out = {"all": everywhere}
    readers = {k for p in space.params for k, _ in p.condition}
    for key in (p.key for p in space.params if p.key in readers):
        for choice in space.get(key).distribution.choices:  # type: ignore[attr-defined]
            inside = [t for t in complete if t.params.get(key) == choice]
            params = [p.key for p in space.params if p.key != key and inside
                      and all(p.key in t.params for t in inside)]
            if params:
                out[f"{key}={choice}"] = params
    return out


def _branch_trials(study: optuna.Study, branch: str) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if branch == "all":
        return complete
    key, _, choice = branch.partition("=")
    return [t for t in complete if str(t.params.get(key)) == choice]


def importances(study: optuna.Study, search: SearchPlan, min_trials: int = 4,
                seed: int = 0) -> tuple[dict[str, dict[str, float]], list[str]]:
    """fANOVA importances of the first objective, per branch of the space.

    A conditional parameter exists only in some trials; fANOVA needs every ranked parameter
    in every trial it fits, so each choice of a parameter that others depend on gets its
    own ranking (``optimizer=adam``) besides the ranking of the unconditional ones (``all``).

    Returns:
        Branch -> parameter -> importance (normalized to sum 1, most important first), and
        notes on branches left out.
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    target = (lambda t: t.values[0]) if len(search.metrics) > 1 else None
    for branch, params in _branches(search, complete).items():
        trials = _branch_trials(study, branch)
        if len(trials) < min_trials or not params:
            notes.append(f"importances {branch}: {len(trials)} complete trial(s), "
                         f"{min_trials} needed")
            continue
        view = _sub_study(study, trials)
        try:
            imp = get_param_importances(view, evaluator=FanovaImportanceEvaluator(seed=seed),
                                        params=params, target=target)
        except (RuntimeError, ValueError) as e:
            notes.append(f"importances {branch}: {e}")
            continue
        out[branch] = {k: float(v) for k, v in imp.items()}
    return out, notes


def _sub_study(study: optuna.Study, trials: list[FrozenTrial]) -> optuna.Study:
    """An in-memory copy of ``study`` holding only ``trials`` (one branch), for Optuna's
    importance and plot functions, which read a whole study."""
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(trials)
    return sub


def best_trial(study: optuna.Study, where: Mapping[str, Any] | None = None
               ) -> FrozenTrial | None:
    """The best complete trial (of the first objective), optionally within a branch."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if all(str(t.params.get(k)) == str(v) for k, v in (where or {}).items())]
    if not complete:
        return None
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: sign * t.values[0])


def analyse(study: optuna.Study, search: SearchPlan, out: Path) -> SearchSummary:
    """Importances, best trial and Optuna's plots of a search, written under ``out``.

    Args:
        study: The finished study.
        search: Its plan (the space's branches, the objectives' names).
        out: A folder; PNGs and ``importances.json`` are written there.

    Returns:
        The :class:`SearchSummary` (figure paths relative to ``out``).
    """
    out.mkdir(parents=True, exist_ok=True)
    s = SearchSummary()
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        s.counts[t.state.name.lower()] = s.counts.get(t.state.name.lower(), 0) + 1
        key = f"outcome/{_outcome(t)}"
        s.counts[key] = s.counts.get(key, 0) + 1
    best = best_trial(study)
    if best is not None:
        s.best = {"number": best.number, "values": list(best.values), "params": best.params,
                  "metrics": list(search.metrics), ATTR_RUN: best.user_attrs.get(ATTR_RUN)}
        if len(search.metrics) > 1:
            s.best["pareto"] = [{"number": t.number, "values": list(t.values),
                                 "params": t.params} for t in study.best_trials]
    if search.spec.importance:
        s.importances, notes = importances(study, search)
        s.notes += notes
    (out / "importances.json").write_text(json.dumps(s.importances, indent=2))
    if search.spec.plots:
        s.figures, notes = _plots(study, search, s.importances, out)
        s.notes += notes
    return s


def _plots(study: optuna.Study, search: SearchPlan, imps: dict[str, dict[str, float]],
           out: Path) -> tuple[dict[str, str], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as vm

    multi = len(search.metrics) > 1
    kw: dict[str, Any] = {"target_name": search.metrics[0]}
    if multi:
        kw["target"] = lambda t: t.values[0]
    figures: dict[str, str] = {}
    notes: list[str] = []
    plots: list[tuple[str, Callable[[], Any]]] = [
        ("history", lambda: vm.plot_optimization_history(study, **kw)),
        ("parallel", lambda: vm.plot_parallel_coordinate(study, **kw)),
        ("slice", lambda: vm.plot_slice(study, **kw)),
    ]
    for branch, imp in imps.items():
        name = "importances" if branch == "all" else f"importances-{branch}"
        sub = _sub_study(study, _branch_trials(study, branch))
        plots.append((name, lambda sub=sub, imp=imp: vm.plot_param_importances(
            sub, evaluator=FanovaImportanceEvaluator(seed=0), params=list(imp), **kw)))
    if multi:
        plots.append(("pareto", lambda: vm.plot_pareto_front(
            study, target_names=list(search.metrics))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
        for name, make in plots:
            try:
                ax = make()
            except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn is a note
                notes.append(f"plot {name}: {type(e).__name__}: {e}")
                continue
            axes = ax.ravel() if hasattr(ax, "ravel") else [ax]
            fig = axes[0].figure
            fig.set_size_inches(max(6.4, fig.get_size_inches()[0]), 4.8)
            fig.tight_layout()
            path = f"{name.replace('=', '_')}.png"
            fig.savefig(out / path, dpi=90)
            plt.close(fig)
            figures[name] = path
    return figures, notes


def load_search_summary(tracking_uri: str | None, sweep_id: str, dest: str | Path
                        ) -> SearchSummary | None:
    """A finished search's summary with its PNGs downloaded under ``dest`` (for reports).

    Args:
        tracking_uri: The MLflow store (None: the usual resolution).
        sweep_id: The sweep (id or unique prefix).
        dest: A folder to download the ``search/`` artifacts into.

    Returns:
        The summary with ``figures`` as absolute paths, or None when the sweep is not a
        search or its analysis was not logged.
    """
    from orchestrator.client import Client

    client = Client(tracking_uri)
    parent = client.sweep_run(sweep_id)
    try:
        local = Path(client.mlflow.download_artifacts(parent.info.run_id, ARTIFACTS, str(dest)))
    except Exception:  # noqa: BLE001 - no search/ folder: not a search sweep
        return None
    path = local / "summary.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    s = SearchSummary(**raw)
    s.figures = {k: str(local / v) for k, v in s.figures.items()}
    return s


# -- HP claims ------------------------------------------------------------------------------
def _verdict(claim: SearchClaimSpec, verdict: str, detail: str, effect: float | None = None,
             n: int = 0, metric: str | None = None) -> "Verdict | dict[str, Any]":
    fields = dict(id=claim.id, statement=claim.statement, source=claim.source, test=claim.test,
                  verdict=verdict, effect=effect, ci_low=None, ci_high=None, min_effect=0.0,
                  n_a=n, n_b=0, method="fANOVA ranking" if claim.test == "importance"
                  else "best trial vs ranges", detail=detail, metric=metric,
                  axis=", ".join(claim.first or claim.ranges))
    try:
        from orchestrator.verdicts import Verdict
    except ImportError:  # pragma: no cover - the evaluator ships with the service
        return fields
    return Verdict(**fields)


def search_verdicts(claims: Sequence[SearchClaimSpec], study: optuna.Study,
                    search: SearchPlan, imps: Mapping[str, Mapping[str, float]]
                    ) -> list["Verdict | dict[str, Any]"]:
    """Verdicts of a search's claims (tests ``importance`` and ``inside``).

    ``importance`` (HP-1) reads the fANOVA ranking of the claim's branch (``where``, e.g.
    ``{optimizer: adam}``; default the unconditional parameters). *Confirmed*: the top
    parameter is one of ``first`` and the ``last`` parameters' mean rank is below that of
    the parameters in neither list (when there are any). *Refuted*: the top parameter is
    not in ``first``, or the ``last`` ones rank above the others on average.
    *Inconclusive*: fewer than ``min_trials`` complete trials in the branch, or no ranking.

    ``inside`` (HP-2) reads the best complete trial (of the branch). *Confirmed*: every
    parameter of ``ranges`` lies inside its range and, where the range's edge is also the
    search space's edge (and not a floor at 0), at least ``margin`` of the range's width
    (in log10 for log parameters) from it. *Refuted*: a value outside its range or pinned
    against such an edge (the optimum may lie beyond). *Inconclusive*: too few complete
    trials, or the best trial lacks a parameter.

    Returns:
        :class:`orchestrator.verdicts.Verdict` objects (or their fields as dicts when the
        evaluator module is absent), in the claims' order.
    """
    from orchestrator.verdicts import CONFIRMED, INCONCLUSIVE, REFUTED

    out = []
    for claim in claims:
        where = dict(claim.where)
        branch = "all" if not where else "=".join(map(str, next(iter(where.items()))))
        n = len(_branch_trials(study, branch)) if len(where) <= 1 else len(
            [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if all(str(t.params.get(k)) == str(v) for k, v in where.items())])
        if n < claim.min_trials:
            out.append(_verdict(claim, INCONCLUSIVE, f"{n} complete trial(s) in "
                                f"{branch}, {claim.min_trials} needed.", n=n))
            continue
        if claim.test == "importance":
            imp = imps.get(branch)
            if not imp:
                out.append(_verdict(claim, INCONCLUSIVE, f"no fANOVA ranking for {branch}.", n=n))
                continue
            out.append(_importance_verdict(claim, dict(imp), n, branch, CONFIRMED, REFUTED))
        else:
            best = best_trial(study, where)
            out.append(_inside_verdict(claim, best, search, n, CONFIRMED, REFUTED, INCONCLUSIVE))
    return out


def _importance_verdict(claim: SearchClaimSpec, imp: dict[str, float], n: int, branch: str,
                        confirmed: str, refuted: str) -> "Verdict | dict[str, Any]":
    ranking = sorted(imp, key=lambda k: -imp[k])
    rank = {k: i + 1 for i, k in enumerate(ranking)}
    last = [k for k in claim.last if k in rank]
    middle = [k for k in ranking if k not in claim.first and k not in claim.last]
    top = ranking[0]
    shown = ", ".join(f"{k} {imp[k]:.2f}" for k in ranking)
    mean_last = sum(rank[k] for k in last) / len(last) if last else None
    mean_mid = sum(rank[k] for k in middle) / len(middle) if middle else None
    effect = imp[top] - max((imp[k] for k in ranking if k != top), default=0.0)
    problems = []
    if top not in claim.first:
        problems.append(f"the top parameter is {top}, not one of {', '.join(claim.first)}")
    if mean_last is not None and mean_mid is not None and mean_last < mean_mid:
        problems.append(f"the last group ranks above the middle on average "
                        f"({mean_last:.1f} vs {mean_mid:.1f})")
    order = (f"; mean rank last {mean_last:.1f} vs middle {mean_mid:.1f}"
             if mean_last is not None and mean_mid is not None else "")
    detail = (f"fANOVA importances ({branch}, {n} complete trials): {shown}{order}; "
              + (f"refuted ({'; '.join(problems)})." if problems else
                 f"confirmed ({top} first, the last group below the others)."))
    return _verdict(claim, refuted if problems else confirmed, detail, effect, n)


def _inside_verdict(claim: SearchClaimSpec, best: FrozenTrial | None, search: SearchPlan,
                    n: int, confirmed: str, refuted: str, inconclusive: str
                    ) -> "Verdict | dict[str, Any]":
    if best is None:
        return _verdict(claim, inconclusive, "no complete trial.", n=n)
    parts, problems = [], []
    for key, (lo, hi) in claim.ranges.items():
        if key not in best.params:
            return _verdict(claim, inconclusive, f"the best trial ({best.number}) has no "
                            f"{key} (a conditional parameter of another branch?).", n=n)
        v = float(best.params[key])
        p: Param | None = next((q for q in search.space.params if q.key == key), None)
        log = p is not None and p.log and lo > 0
        f = math.log10 if log else (lambda x: x)
        width = f(hi) - f(lo)
        parts.append(f"{key}={v:.4g} in [{lo:g}, {hi:g}]")
        if not lo <= v <= hi:
            problems.append(f"{key}={v:.4g} is outside [{lo:g}, {hi:g}]")
            continue
        space_lo, space_hi = (p.bounds if p is not None else (None, None))
        for edge, space_edge, dist in ((lo, space_lo, f(v) - f(lo)), (hi, space_hi, f(hi) - f(v))):
            at_space_edge = space_edge is not None and math.isclose(float(space_edge), edge,
                                                                    rel_tol=1e-9, abs_tol=1e-15)
            if at_space_edge and edge != 0 and dist < claim.margin * width:
                problems.append(f"{key}={v:.4g} is pinned against the space's edge {edge:g} "
                                f"(within {claim.margin:.0%} of the range)")
    detail = (f"best trial {best.number} ({search.metrics[0]}={best.values[0]:.4g}): "
              + "; ".join(parts) + "; "
              + (f"refuted ({'; '.join(problems)})." if problems else "confirmed."))
    return _verdict(claim, refuted if problems else confirmed, detail, None, n,
                    search.metrics[0])


def summary_verdicts(summary: SearchSummary | None) -> list["Verdict"]:
    """The verdicts a search logged (:attr:`SearchSummary.verdicts`) as ``Verdict`` objects,
    for the sweep's report and ``verdicts.json`` beside the study's own claims."""
    if summary is None or not summary.verdicts:
        return []
    from orchestrator.verdicts import verdicts_from_json

    return verdicts_from_json(json.dumps(summary.verdicts))
