"""The Optuna side of a search: storage, sampler, pruner, budget, the study itself."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config.space import SearchPlan, SearchSpace
from orchestrator.core.specs import SearchSpec
from orchestrator.errors import SpecError

ATTR_RUN = "mlflow_run_id"
ATTR_OUTCOME = "orch_outcome"
ATTR_ERROR = "orch_error"
ATTR_RERUN = "orch_rerun_of"
#: Outcomes that use up the budget; killed and interrupted trials are run again.
SETTLED = ("finished", "pruned", "failed", "diverged")

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
        path = Path(tracking_uri[len("sqlite:///") :])
        return f"sqlite:///{path.with_name('optuna.db')}"
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        # A local file store (a folder such as ./mlruns): the study file sits beside it.
        folder = Path(parsed.path if parsed.scheme else tracking_uri)
        return f"sqlite:///{folder.parent / 'optuna.db'}"
    raise SpecError(
        f"search.storage: the tracking store {tracking_uri!r} is a server, so the "
        f"Optuna study needs its own storage; allowed: an RDB URL such as "
        f"search.storage=postgresql://USER@HOST/optuna (or sqlite:///PATH)"
    )


def shown_url(url: str) -> str:
    """A storage URL without its password (it goes into a tag)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":..."


def make_sampler(
    spec: SearchSpec, space: SearchSpace, seed_offset: int = 0
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
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=spec.n_startup_trials, constant_liar=True
            )
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed,
                n_startup_trials=max(1, spec.n_startup_trials),
                warn_independent_sampling=False,
            )
        if spec.sampler == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=seed)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner the spec names, with its native options."""
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1 if p.min_resource == "auto" else p.min_resource,
            max_resource=p.max_resource,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def outcome_of(t: FrozenTrial) -> str:
    """A trial's outcome as this service names it (a trial without the attr by its state)."""
    if ATTR_OUTCOME in t.user_attrs:
        return str(t.user_attrs[ATTR_OUTCOME])
    return {
        TrialState.COMPLETE: "finished",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
    }.get(t.state, t.state.name.lower())


@dataclass(frozen=True)
class RecordedRun:
    """A trial's settled MLflow run, as a resumed search reads it from the store."""

    run_id: str
    outcome: str
    metrics: Mapping[str, float]


def open_study(
    search: SearchPlan,
    storage: str,
    study_name: str,
    resume: bool,
    recorded: Mapping[int, RecordedRun] | None = None,
) -> tuple[optuna.Study, int]:
    """Create (or, resuming, load) the sweep's Optuna study.

    Resuming, a trial left RUNNING by a dead driver whose MLflow run is ``recorded`` as
    finished (or pruned) is told that result: the driver writes the run before it tells
    Optuna, and a kill between the two must not train it again. Other RUNNING trials are
    marked ``FAIL`` (outcome ``interrupted``); those and the ``killed`` ones are enqueued
    again with their parameters, once each.

    Returns:
        The study and its number of settled trials.
    """
    rdb = optuna.storages.RDBStorage(storage)
    if not resume:
        study = optuna.create_study(
            storage=rdb,
            study_name=study_name,
            sampler=make_sampler(search.spec, search.space),
            pruner=make_pruner(search.spec),
            directions=[
                StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE
                for d in search.directions
            ],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(search.metrics))
        return study, 0
    try:
        study = optuna.load_study(study_name=study_name, storage=rdb)
    except KeyError:
        raise SpecError(
            f"sweep {study_name!r}: no Optuna study of that name in {shown_url(storage)}"
        ) from None
    trials = study.get_trials(deepcopy=False)
    study = optuna.load_study(
        study_name=study_name,
        storage=rdb,
        sampler=make_sampler(search.spec, search.space, len(trials)),
        pruner=make_pruner(search.spec),
    )
    rerun = {t.user_attrs.get(ATTR_RERUN) for t in trials}
    for t in trials:
        outcome = outcome_of(t)
        done = (recorded or {}).get(t.number)
        if (
            t.state == TrialState.RUNNING
            and done is not None
            and _tell_recorded(study, rdb, t, done, search.metrics)
        ):
            continue
        if t.state == TrialState.RUNNING:
            outcome = "interrupted"
            rdb.set_trial_user_attr(t._trial_id, ATTR_OUTCOME, outcome)
            rdb.set_trial_user_attr(t._trial_id, ATTR_ERROR, "the driver stopped while it ran")
            study.tell(t.number, state=TrialState.FAIL)
        if outcome in ("interrupted", "killed") and t.number not in rerun and t.params:
            study.enqueue_trial(dict(t.params), user_attrs={ATTR_RERUN: t.number})
    settled = sum(
        outcome_of(t) in SETTLED for t in study.get_trials(deepcopy=False) if t.state.is_finished()
    )
    return study, settled


def _tell_recorded(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    t: FrozenTrial,
    run: RecordedRun,
    metrics: tuple[str, ...],
) -> bool:
    """Tell ``t`` the result its MLflow run holds; False when it holds none to tell."""
    if run.outcome == "finished" and all(m in run.metrics for m in metrics):
        values: list[float] | None = [float(run.metrics[m]) for m in metrics]
    elif run.outcome == "pruned":
        values = None
    else:
        return False
    rdb.set_trial_user_attr(t._trial_id, ATTR_OUTCOME, run.outcome)
    rdb.set_trial_user_attr(t._trial_id, ATTR_RUN, run.run_id)
    if values is None:
        study.tell(t.number, state=TrialState.PRUNED)
    else:
        study.tell(t.number, values)
    return True
