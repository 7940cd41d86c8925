"""After a search: fANOVA importances, the best trial, Optuna's plots, the summary."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config.space import SearchPlan
from orchestrator.search.study import ATTR_RUN, outcome_of
from orchestrator.store import schema
from orchestrator.store.reader import StoreReader


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
            params = [
                p.key
                for p in space.params
                if p.key != key and inside and all(p.key in t.params for t in inside)
            ]
            if params:
                out[f"{key}={choice}"] = params
    return out


def branch_trials(study: optuna.Study, branch: str) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if branch == "all":
        return complete
    key, _, choice = branch.partition("=")
    return [t for t in complete if str(t.params.get(key)) == choice]


def importances(
    study: optuna.Study, search: SearchPlan, min_trials: int = 4, seed: int = 0
) -> tuple[dict[str, dict[str, float]], list[str]]:
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
        trials = branch_trials(study, branch)
        if len(trials) < min_trials or not params:
            notes.append(
                f"importances {branch}: {len(trials)} complete trial(s), {min_trials} needed"
            )
            continue
        view = _sub_study(study, trials)
        try:
            imp = get_param_importances(
                view, evaluator=FanovaImportanceEvaluator(seed=seed), params=params, target=target
            )
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


def best_trial(study: optuna.Study, where: Mapping[str, Any] | None = None) -> FrozenTrial | None:
    """The best complete trial (of the first objective), optionally within a branch."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(str(t.params.get(k)) == str(v) for k, v in (where or {}).items())
    ]
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
        key = f"outcome/{outcome_of(t)}"
        s.counts[key] = s.counts.get(key, 0) + 1
    best = best_trial(study)
    if best is not None:
        s.best = {
            "number": best.number,
            "values": list(best.values),
            "params": best.params,
            "metrics": list(search.metrics),
            ATTR_RUN: best.user_attrs.get(ATTR_RUN),
        }
        if len(search.metrics) > 1:
            s.best["pareto"] = [
                {"number": t.number, "values": list(t.values), "params": t.params}
                for t in study.best_trials
            ]
    if search.spec.importance:
        s.importances, notes = importances(study, search)
        s.notes += notes
    (out / "importances.json").write_text(json.dumps(s.importances, indent=2))
    if search.spec.plots:
        s.figures, notes = _plots(study, search, s.importances, out)
        s.notes += notes
    return s


def _plots(
    study: optuna.Study, search: SearchPlan, imps: dict[str, dict[str, float]], out: Path
) -> tuple[dict[str, str], list[str]]:
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
        sub = _sub_study(study, branch_trials(study, branch))
        plots.append(
            (
                name,
                functools.partial(
                    vm.plot_param_importances,
                    sub,
                    evaluator=FanovaImportanceEvaluator(seed=0),
                    params=list(imp),
                    **kw,
                ),
            )
        )
    if multi:
        plots.append(
            ("pareto", lambda: vm.plot_pareto_front(study, target_names=list(search.metrics)))
        )
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


def load_search_summary(
    reader: StoreReader, sweep_id: str, dest: str | Path
) -> SearchSummary | None:
    """A finished search's summary with its PNGs downloaded under ``dest`` (for reports).

    Returns:
        The summary with ``figures`` as absolute paths, or None when the sweep is not a
        search or its analysis was not logged.
    """
    parent = reader.sweep_run(sweep_id)
    try:
        local = reader.download(parent.info.run_id, schema.SEARCH_FOLDER, dest)
    except Exception:  # noqa: BLE001 - no search/ folder: not a search sweep
        return None
    path = local / "summary.json"
    if not path.exists():
        return None
    s = SearchSummary(**json.loads(path.read_text()))
    s.figures = {k: str(local / v) for k, v in s.figures.items()}
    return s
