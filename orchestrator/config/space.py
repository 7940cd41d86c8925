"""Search spaces in the grammar of Hydra's Optuna sweeper, parsed by Hydra's own parser.

A study's ``search.space`` maps a config key (``optimizer.lr``, ``optimizer.betas.0``) or a
config group (``optimizer``) to a distribution, written as a Hydra override value:

=====================================  ==================================================
``interval(1e-4, 1e-1)``               float, uniform in [low, high]
``tag(log, interval(1e-4, 1e-1))``     float, log-uniform (low > 0)
``int(interval(8, 128))``              integer in [low, high] (``tag(log, ...)`` too)
``range(1, 5)``, ``range(0, 1, 0.25)`` integer or float grid; the end is *excluded*, as in
                                       Hydra's grid sweeps and Python (Hydra's Optuna
                                       sweeper includes it; this service keeps one meaning)
``a,b,c``, ``choice(a, b)``, a list    categorical; for a config group, its option names
``glob(sgd*)``                         a config group's options that match (categorical)
=====================================  ==================================================

``tests/test_space_conformance.py`` compares every form with Hydra's Optuna sweeper: the
same distribution, or a documented difference, or a refusal that says why.

``search.conditions`` makes a parameter conditional: ``{optimizer.momentum: {optimizer:
sgd_momentum}}`` suggests ``optimizer.momentum`` only in trials whose ``optimizer`` is
``sgd_momentum`` (a list of values means any of them; several keys must all hold). A
parameter is suggested after the parameters its condition reads, so TPE and the others
see a well-defined, tree-shaped space (define-by-run).

Everything is checked before anything runs: the grammar, the bounds, that each key exists
in the config composed for every group choice under which it is suggested, and that the
task's spec accepts the corners of the space (``interval(0, 1)`` for a momentum that must
stay below 1 fails here, not in trial 37).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, Override, RangeSweep
from omegaconf import OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.config import grammar
from orchestrator.config.builder import TrialBuilder
from orchestrator.core.specs import SearchSpec, Trial
from orchestrator.errors import SpecError

if TYPE_CHECKING:
    import optuna

WHERE = "search.space."
#: Group-choice combinations checked exhaustively at plan time; beyond it, each alone.
_MAX_COMBOS = 256
_ABSENT = object()
#: Steps of a float range(): beyond 2**53 consecutive floats are no longer one step apart.
_MAX_FLOAT_STEPS = 2**53


@dataclass(frozen=True)
class Param:
    """One dimension of a search space.

    Attributes:
        key: The config key or config group it sets.
        distribution: The Optuna distribution it is suggested from.
        source: The grammar string as the study wrote it.
        group: True for a config group (its values are option names, composed by Hydra).
        condition: ``((other key, allowed values), ...)``; all must hold.
        decode: Choice label -> config value, for choices that are not scalars (lists are
            stored in Optuna as their JSON text).
    """

    key: str
    distribution: BaseDistribution
    source: str
    group: bool = False
    condition: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    decode: tuple[tuple[str, Any], ...] = ()

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the parameter is suggested, given the labels chosen so far."""
        return all(
            k in chosen and any(_same(chosen[k], v) for v in values) for k, values in self.condition
        )

    def value(self, label: Any) -> Any:
        """The config value of a suggested label."""
        for text, value in self.decode:
            if text == label:
                return value
        return label

    @property
    def bounds(self) -> tuple[Any, Any]:
        """(low, high) of a numeric dimension; first and last choice of a categorical one."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return d.choices[0], d.choices[-1]
        return d.low, d.high  # type: ignore[attr-defined]

    @property
    def log(self) -> bool:
        return bool(getattr(self.distribution, "log", False))


@dataclass(frozen=True)
class SearchSpace:
    """The parsed space: its parameters in suggestion order (a condition's keys first)."""

    params: tuple[Param, ...]

    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def get(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(
            f"{key!r} is not a parameter of the space; parameters: {', '.join(self.keys())}"
        )

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active parameter on ``trial``; returns key -> label (as stored)."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = _suggest(trial, p)
        return chosen

    def point(self, labels: Mapping[str, Any]) -> dict[str, Any]:
        """Labels (as Optuna stores them) -> config values."""
        return {p.key: p.value(labels[p.key]) for p in self.params if p.key in labels}

    def grid(self) -> dict[str, list[Any]]:
        """The space as GridSampler's ``search_space``; SpecError if it is not discrete."""
        out: dict[str, list[Any]] = {}
        for p in self.params:
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                out[p.key] = list(d.choices)
            elif d.step is not None:  # type: ignore[attr-defined]
                n = int(round((d.high - d.low) / d.step)) + 1  # type: ignore[attr-defined]
                out[p.key] = [d.low + i * d.step for i in range(n)]  # type: ignore[attr-defined]
            else:
                raise SpecError(
                    f"{WHERE}{p.key}: sampler 'grid' needs a choice or range(), "
                    f"not {p.source!r}; allowed with grid: a,b,c / range(...)"
                )
        return out


def _suggest(trial: optuna.Trial, p: Param) -> Any:
    d = p.distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(p.key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(p.key, d.low, d.high, step=d.step, log=d.log)
    assert isinstance(d, FloatDistribution)
    return trial.suggest_float(p.key, d.low, d.high, step=d.step, log=d.log)


def _same(a: Any, b: Any) -> bool:
    """Equality of a chosen label and a condition value (``2`` matches ``2.0`` and "2")."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(a) == str(b)


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: its spec, space, and the builder that turns points into trials."""

    spec: SearchSpec
    space: SearchSpace
    builder: TrialBuilder
    metrics: tuple[str, ...]
    directions: tuple[str, ...]  # "maximize" / "minimize", Optuna's words
    report_metric: str
    pinned: dict[str, Any] = field(default_factory=dict)

    def trial(self, labels: Mapping[str, Any], number: int) -> Trial:
        """The validated trial for the suggested ``labels``; its index is the trial number.

        Raises:
            SpecError: The task's spec rejects the config (named field).
        """
        return self.builder.build(self.space.point(labels), number, arm=dict(labels), where=WHERE)


# -- parsing --------------------------------------------------------------------------------
_ALLOWED = (
    "allowed: interval(lo, hi), tag(log, interval(lo, hi)), int(interval(lo, hi)), "
    "range(start, stop[, step]), a,b,c / choice(a, b) / a list, glob(...) for a "
    "config group"
)


def parse_param(
    key: str,
    value: Any,
    is_group: bool,
    group_options: list[str] | None = None,
    override: Override | None = None,
) -> Param:
    """One space entry (``key: "tag(log, interval(1e-4, 1e-1))"``) as a :class:`Param`.

    Every form Hydra's Optuna sweeper accepts gives its distribution or a sentence saying
    why not (``tests/test_space_conformance.py`` is the table).

    Args:
        key: The config key or group.
        value: The grammar string, or a list (a choice of its items).
        is_group: Whether ``key`` is a config group.
        group_options: The group's options, to check a choice against and to expand glob().
        override: An already parsed override (a command-line sweep) instead of ``value``.

    Raises:
        SpecError: Naming ``search.space.<key>``, the value, and what is allowed.
    """
    where = f"{WHERE}{key}"
    if override is None:
        if isinstance(value, (list, tuple)):
            if not value:
                raise SpecError(f"{where}: an empty choice; allowed: at least one value")
            return _choice(key, list(value), str(value), is_group, group_options)
        if not isinstance(value, str):
            raise SpecError(
                f"{where}: {value!r} is a single value, not a distribution; "
                f"{_ALLOWED} (to fix a key, set it outside search.space)"
            )
        (override,) = grammar.parse([f"{key}={value}"], field=where)
    source = str(value) if value is not None else _text(override)
    if override.is_delete() or not override.is_sweep_override():
        raise SpecError(
            f"{where}: {source!r} is a single value, not a distribution; "
            f"{_ALLOWED} (to fix a key, set it outside search.space; the Optuna "
            f"sweeper would pass it on as a fixed override)"
        )
    v = override.value()
    tags = set(getattr(v, "tags", set()) or set())
    if tags - {"log"}:
        raise SpecError(
            f"{where}: unknown tag(s) {sorted(tags - {'log'})} in {source!r}; "
            f"allowed: log (the Optuna sweeper ignores other tags, so a typo of "
            f"log would go unnoticed)"
        )
    options = group_options or []
    if isinstance(v, (ChoiceSweep, Glob)) or (isinstance(v, RangeSweep) and v.shuffle):
        if "log" in tags:
            raise SpecError(f"{where}: tag log applies to interval() only, not to {source!r}")
        values = grammar.expand(override, is_group, lambda: options, where)
        if isinstance(v, Glob) and not values:
            raise SpecError(
                f"{where}: {source!r} matches no option of group {key!r}; "
                f"allowed: a glob matching some of {', '.join(options)}"
            )
        return _choice(key, values, source, is_group, group_options)
    if is_group:
        raise SpecError(
            f"{where}: {key!r} is a config group; its space must be a choice of "
            f"its options ({', '.join(options)}), not {source!r}"
        )
    if isinstance(v, RangeSweep):
        if "log" in tags:
            raise SpecError(
                f"{where}: tag log with range() is not supported (the Optuna "
                f"sweeper drops the tag and samples the range uniformly); "
                f"allowed: tag(log, int(interval(lo, hi)))"
            )
        n, first, last = grammar.range_bounds(v)
        if n == 0:
            raise SpecError(
                f"{where}: {source!r} is empty (the end is excluded and must lie "
                f"beyond the start in the step's direction)"
            )
        if n == 1:
            raise SpecError(
                f"{where}: {source!r} has a single value {first!r} (the end is "
                f"excluded); allowed: a range of two or more values, or set the "
                f"key outside the space"
            )
        lo, hi, step = min(first, last), max(first, last), abs(v.step)
        if all(isinstance(x, int) for x in (v.start, v.stop, v.step)):
            return Param(key, IntDistribution(int(lo), int(hi), step=int(step)), source)
        if n > _MAX_FLOAT_STEPS:  # Optuna's decimal arithmetic fails; floats blur anyway
            raise SpecError(
                f"{where}: {source!r} has {grammar.count_text(n)} steps; allowed: a "
                f"float range of at most 2**53 steps, or interval(lo, hi)"
            )
        return Param(key, FloatDistribution(float(lo), float(hi), step=float(step)), source)
    assert isinstance(v, IntervalSweep)  # the grammar has no other sweep
    lo, hi = v.start, v.end
    assert lo is not None and hi is not None  # interval() always has both bounds
    if not lo < hi:
        raise SpecError(
            f"{where}: {source!r} has low {lo!r} >= high {hi!r}; allowed: "
            f"interval(low, high) with low < high"
        )
    log = "log" in tags
    if log and lo <= 0:
        raise SpecError(
            f"{where}: {source!r} is log-scaled but its low {lo!r} is not > 0; "
            f"allowed: low > 0 with tag(log, ...)"
        )
    if isinstance(lo, int) and isinstance(hi, int):
        return Param(key, IntDistribution(lo, hi, log=log), source)
    return Param(key, FloatDistribution(float(lo), float(hi), log=log), source)


def _choice(
    key: str, values: list[Any], source: str, is_group: bool, group_options: list[str] | None
) -> Param:
    """A categorical parameter. Its labels are what Optuna stores: scalars as they are, a
    list or dict as its JSON text (the sweeper's label is Hydra's text of it; the config
    value is the same), which ``decode`` maps back to the value."""
    where = f"{WHERE}{key}"
    if is_group:
        bad = [x for x in values if x not in (group_options or [])]
        if bad:
            raise SpecError(
                f"{where}: {bad[0]!r} is not an option of group {key!r}; "
                f"allowed: {', '.join(group_options or [])}"
            )
    labels = [json.dumps(x) if isinstance(x, (list, dict)) else x for x in values]
    decode = []
    for x, label in zip(values, labels):
        if isinstance(x, (list, dict)):
            decode.append((label, x))
        elif not (x is None or isinstance(x, (str, int, float, bool))):
            raise SpecError(
                f"{where}: choice {x!r} of type {type(x).__name__} is not allowed; "
                f"allowed: numbers, strings, booleans, null, lists, dicts"
            )
    # Type and value: True and 'True' are two choices (str() would make them one).
    seen = [(type(label).__name__, label) for label in labels]
    if len(set(seen)) != len(seen):
        raise SpecError(f"{where}: {source!r} repeats a choice; allowed: distinct values")
    return Param(key, CategoricalDistribution(labels), source, is_group, (), tuple(decode))


def _text(o: Override) -> str:
    """The value part of an override as written (``interval(0, 1)``)."""
    return o.input_line.partition("=")[2] or o.input_line if o.input_line else str(o.value())


def plan_search(
    builder: TrialBuilder, spec: SearchSpec, cli_axes: list[Override], pinned: dict[str, Any]
) -> SearchPlan:
    """Parse and check a study's search space (plus command-line sweeps), before any run.

    A command-line sweep (``optimizer=sgd_momentum,adam``, ``optimizer.lr='interval(...)'``)
    adds a dimension or replaces the study's on its key; a plain override on a key of the
    space (``optimizer=adam``) pins it: the dimension is dropped, and conditions that read it
    are decided by the pinned value.

    Args:
        builder: Builds and validates trials of this study.
        spec: The study's validated ``search`` section.
        cli_axes: The sweep overrides of the command line (and of the quick variant).
        pinned: Key -> value of the plain overrides.

    Returns:
        The :class:`SearchPlan`.

    Raises:
        SpecError: Bad grammar or bounds, an unknown key or group option, a condition or a
            claim on a key that is not in the space, or a space corner the task's spec
            rejects.
    """
    composer = builder.composer
    entries: dict[str, tuple[Any, Override | None]] = {
        k: (v, None) for k, v in spec.space.items() if k not in pinned
    }
    for o in cli_axes:
        # `search.space.optimizer.lr=interval(..)` names the space's key in full.
        entries[o.key_or_group.removeprefix(WHERE)] = (None, o)
    params: dict[str, Param] = {}
    for key, (value, override) in entries.items():
        group = builder.is_group(key)
        options = composer.group_options(key) if group else None
        params[key] = parse_param(key, value, group, options, override)
    if not params:
        raise SpecError(
            "search.space: no parameter left to search (every key is pinned); "
            "allowed: at least one distribution"
        )
    params = _apply_conditions(params, spec.conditions, pinned)
    for i, claim in enumerate(spec.claims):
        for field_name in ("first", "last", "params", "ranges"):
            unknown = [k for k in getattr(claim, field_name) if k not in params and k not in pinned]
            if unknown:
                raise SpecError(
                    f"search.claims.{i}.{field_name}: {unknown[0]!r} is not a key of "
                    f"search.space; allowed: {', '.join(sorted(params))}"
                )
    space = SearchSpace(_ordered(params))
    metrics = tuple(spec.metrics) or (builder.base.sweep.metric,)
    modes = tuple(spec.directions) or (builder.base.sweep.mode,) * len(metrics)
    if spec.sampler == "grid":
        space.grid()  # raises for a continuous dimension
    if spec.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SpecError(
            "search.sampler: 'cmaes' needs the cmaes package (pip install "
            "cmaes); allowed without it: tpe, random, grid, nsga2"
        )
    plan = SearchPlan(
        spec,
        space,
        builder,
        metrics,
        tuple("maximize" if m == "max" else "minimize" for m in modes),
        spec.report_metric or metrics[0],
        pinned,
    )
    _check_keys_and_corners(plan)
    return plan


def _apply_conditions(
    params: dict[str, Param], conditions: Mapping[str, Mapping[str, Any]], pinned: Mapping[str, Any]
) -> dict[str, Param]:
    out = dict(params)
    dropped: set[str] = set()
    for key, cond in conditions.items():
        where = f"search.conditions.{key}"
        if key in pinned:
            continue  # the key is fixed: there is nothing to suggest, conditionally or not
        if key not in params:
            raise SpecError(
                f"{where}: {key!r} is not a parameter of search.space; allowed: {', '.join(params)}"
            )
        if not isinstance(cond, Mapping) or not cond:
            raise SpecError(
                f"{where}: a condition is a mapping {{parameter: value or list of "
                f"values}}; got {cond!r}"
            )
        clauses = []
        for other, allowed in cond.items():
            values = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
            if not values:
                raise SpecError(f"{where}.{other}: an empty list of values; allowed: one or more")
            if other == key:
                raise SpecError(f"{where}: a parameter cannot depend on itself")
            if other in pinned:
                if not any(_same(pinned[other], v) for v in values):
                    dropped.add(key)  # pinned to a value under which it is never suggested
                continue
            if other not in params:
                raise SpecError(
                    f"{where}.{other}: {other!r} is not a parameter of "
                    f"search.space; allowed: {', '.join(k for k in params if k != key)}"
                )
            d = params[other].distribution
            if not isinstance(d, CategoricalDistribution):
                raise SpecError(
                    f"{where}.{other}: a condition can only read a choice "
                    f"parameter; {other!r} is {params[other].source!r}"
                )
            bad = [v for v in values if not any(_same(c, v) for c in d.choices)]
            if bad:
                raise SpecError(
                    f"{where}.{other}: {bad[0]!r} is not a choice of {other!r}; "
                    f"allowed: {', '.join(map(str, d.choices))}"
                )
            clauses.append((other, values))
        out[key] = Param(
            out[key].key,
            out[key].distribution,
            out[key].source,
            out[key].group,
            tuple(clauses),
            out[key].decode,
        )
    # A parameter conditioned on a dropped one is never suggested either.
    changed = True
    while changed:
        changed = False
        for key, p in out.items():
            if key not in dropped and any(k in dropped for k, _ in p.condition):
                dropped.add(key)
                changed = True
    return {k: p for k, p in out.items() if k not in dropped}


def _ordered(params: dict[str, Param]) -> tuple[Param, ...]:
    """Declaration order, except that a parameter comes after those its condition reads."""
    done: list[str] = []
    pending = list(params)
    while pending:
        ready = [k for k in pending if all(c in done for c, _ in params[k].condition)]
        if not ready:
            raise SpecError(
                f"search.conditions: a cycle among {', '.join(pending)}; allowed: "
                f"conditions that form a tree"
            )
        done.append(ready[0])
        pending.remove(ready[0])
    return tuple(params[k] for k in done)


def _check_keys_and_corners(plan: SearchPlan) -> None:
    """Each key exists where it is suggested, and the task accepts the space's corners."""
    space, builder = plan.space, plan.builder
    groups = [p for p in space.params if p.group]
    choices = [list(p.distribution.choices) for p in groups]  # type: ignore[attr-defined]
    n = math.prod(len(c) for c in choices)
    if n <= _MAX_COMBOS:
        combos = [dict(zip((p.key for p in groups), c)) for c in itertools.product(*choices)]
    else:  # too many to compose: each choice alone, the others at their first option
        first = {p.key: c[0] for p, c in zip(groups, choices)}
        combos = [{**first, p.key: x} for p, c in zip(groups, choices) for x in c]
    for combo in combos:
        # Which parameters can be active under these group choices (a condition on a value
        # parameter may hold, so it counts as active here).
        chosen: dict[str, Any] = dict(combo)
        active: list[Param] = []
        for p in space.params:
            if p.group:
                if p.active(chosen):
                    active.append(p)
                continue
            if all(
                k not in combo or any(_same(combo[k], v) for v in vals) for k, vals in p.condition
            ):
                active.append(p)
                if isinstance(p.distribution, CategoricalDistribution):
                    chosen.setdefault(p.key, p.distribution.choices[0])
        cfg = OmegaConf.create(
            builder.composed({k: v for k, v in combo.items() if any(p.key == k for p in active)})
        )
        under = f" (with {', '.join(f'{k}={v}' for k, v in combo.items())})" if combo else ""
        values = [p for p in active if not p.group]
        for p in values:
            if OmegaConf.select(cfg, p.key, default=_ABSENT) is _ABSENT:
                groups_txt = ", ".join(g.key for g in groups) or "a group"
                raise SpecError(
                    f"{WHERE}{p.key}: no such key in the composed config{under}; "
                    f"allowed: an existing key, or a condition "
                    f"(search.conditions.{p.key}: {{{groups_txt}: [...]}}) that "
                    f"suggests it only where it exists"
                )
        # The corners: every value parameter at its low end, then at its high end, then
        # each choice of each categorical one.
        group_point = {p.key: combo[p.key] for p in active if p.group}
        lows = {p.key: p.bounds[0] for p in values}
        probes = [lows, {p.key: p.bounds[1] for p in values}]
        for p in values:
            if isinstance(p.distribution, CategoricalDistribution):
                probes += [{**lows, p.key: c} for c in p.distribution.choices[1:-1]]
        for labels in probes:
            point = {**group_point, **{k: space.get(k).value(v) for k, v in labels.items()}}
            try:
                builder.build(point, -1, where="")
            except SpecError as e:
                shown = ", ".join(f"{k}={v}" for k, v in point.items())
                raise SpecError(
                    f"search.space: the task rejects the space's corner {shown}: {e}"
                ) from None


def budget(search: SearchPlan) -> int:
    """Settled trials the search runs: ``n_trials``, capped at the grid's size for grid."""
    n = search.spec.n_trials
    if search.spec.sampler == "grid":
        n = min(n, math.prod(len(v) for v in search.space.grid().values()))
    return n
