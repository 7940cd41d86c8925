"""Plan a grid sweep: the study's axes (and the command line's) times seeds.

Axes use Hydra's override grammar (``a,b``, ``range(3)``, ``glob(*)``) and are parsed by
Hydra's own parser. A command-line override on a key replaces the study's axis on that
key: a sweep override becomes the new axis, a plain one pins the key.

Composition is cached by the combination of config-group choices; value axes
(``optimizer.lr=...``, ``seed=...``) are applied to the composed config directly, which
keeps planning a 1,000-trial sweep well under a second.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from orchestrator import grammar, safe_yaml
from orchestrator.compose import Composer
from orchestrator.errors import SpecError, describe_validation_error
from orchestrator.specs import SWEEP_KEYS, SweepSpec, Trial
from tasks import registry


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: how it runs, the trials, and the composed config (for the record)."""

    spec: SweepSpec
    trials: list[Trial]
    axes: dict[str, list[Any]]
    config: dict[str, Any]
    overrides: list[str]          # as given (the quick variant's are not included)
    quick: bool = False
    config_dir: str | None = None
    #: A search study's parsed space and trial builder (``orchestrator.space``); then
    #: ``trials`` is empty: the search asks for them one at a time while it runs.
    search: Any = None


def _plain(parsed: list[Override]) -> list[str]:
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def parse_overrides(strings: list[str]) -> list[Override]:
    """Hydra overrides, parsed with limits (:func:`orchestrator.grammar.parse`); no
    resolver that reads outside the config (:mod:`orchestrator.safe_yaml`)."""
    for s in strings:
        safe_yaml.check_resolvers(s, f"overrides: {s}")
    return grammar.parse(strings)


def plan_sweep(composer: Composer, study: str, overrides: list[str], quick: bool = False
               ) -> SweepPlan:
    """Compose ``study`` with ``overrides``, validate everything and list the trials."""
    base = composer.compose(study, _plain(parse_overrides(overrides)))
    quick_overrides = list(base.study.get("quick") or []) if quick else []
    # The quick variant's overrides come first so that the user's own win.
    parsed = parse_overrides([*quick_overrides, *overrides])
    cli_axes = [o for o in parsed if o.is_sweep_override()]
    fixed = _plain(parsed)
    if quick_overrides:
        base = composer.compose(study, fixed)
    _forbid_code_references(OmegaConf.to_container(base, resolve=False))
    spec = _validate_sweep(base)
    task = _task(spec.task.name)

    pinned = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    if spec.search is not None:
        # A search: command-line sweeps (interval() included) become search dimensions.
        from orchestrator.space import plan_search

        search = plan_search(TrialBuilder(composer, study, fixed, base, task), spec.search,
                             cli_axes, {o.key_or_group: o.value() for o in parsed
                                        if not o.is_sweep_override()})
        return SweepPlan(spec, [], {p.key: [p.source] for p in search.space.params},
                         OmegaConf.to_container(base, resolve=True), list(overrides), quick,
                         None if composer.config_dir is None else str(composer.config_dir),
                         search=search)
    for o in cli_axes:
        if not o.is_discrete_sweep():
            raise SpecError(f"{o.key_or_group}: a grid axis must be a choice, range or glob; "
                            f"interval() belongs in a search space")
    grids = spec.sweep.grids or {"": {}}
    cap = spec.sweep.max_trials
    all_axes: dict[str, dict[str, list[Any]]] = {}
    for name, grid in grids.items():
        where = f"sweep.grids.{name}." if name else "sweep.axes."
        declared = {**spec.sweep.axes, **grid}
        # A command-line axis replaces the grids' axis on its key; one no grid has is shared.
        mine = [o for o in cli_axes if o.key_or_group in declared
                or not any(o.key_or_group in g for g in grids.values())]
        all_axes[name] = _axes(composer, base, declared, spec.sweep.seeds, mine, pinned,
                               where, cap)
    total = sum(math.prod(len(v) for v in a.values()) for a in all_axes.values())
    if total > cap:
        _too_many(total, cap, "sweep.grids: the grids together")
    trials: list[Trial] = []
    axes: dict[str, list[Any]] = {}
    seen: dict[str, int] = {}
    for name, grid_axes in all_axes.items():
        for t in _trials(composer, study, fixed, base, grid_axes, task):
            arm = {"grid": name, **t.arm} if name else t.arm
            if t.key in seen:  # grids may overlap: the trial runs once, with an arm in each
                first = trials[seen[t.key]]
                trials[first.index] = replace(first, also=(*first.also, arm))
            else:
                seen[t.key] = len(trials)
                trials.append(replace(t, index=len(trials), arm=arm))
        for k, values in [*(("grid", [name]),) * bool(name), *grid_axes.items()]:
            axes.setdefault(k, [])
            axes[k] += [v for v in values if v not in axes[k]]
    return SweepPlan(spec, trials, axes, OmegaConf.to_container(base, resolve=True),
                     list(overrides), quick,
                     None if composer.config_dir is None else str(composer.config_dir))


def _forbid_code_references(tree: Any, path: str = "") -> None:
    """Configs name registered tasks, models, optimizers and schedulers, never Python code."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            where = f"{path}.{k}" if path else str(k)
            if k in ("_target_", "_partial_", "_call_"):
                raise SpecError(f"{where}: a config may not name Python code; only registered "
                                f"tasks ({', '.join(registry.names())}) and the config groups' "
                                f"options can be named")
            _forbid_code_references(v, where)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _forbid_code_references(v, f"{path}[{i}]")


def _validate_sweep(cfg: DictConfig) -> SweepSpec:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    raw = {k: resolved[k] for k in SWEEP_KEYS if k in resolved}
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, raw)) from None


def _task(name: str) -> registry.Task:
    try:
        return registry.get(name)
    except KeyError as e:
        raise SpecError(f"task.name: {e.args[0]}") from None


def _too_many(count: int, cap: int, what: str) -> NoReturn:
    raise SpecError(f"{what}: {grammar.count_text(count)} trials planned, more than "
                    f"sweep.max_trials = {cap:,}; allowed: at most {cap:,} (fewer axis values "
                    f"or seeds, or raise sweep.max_trials)")


def _axes(composer: Composer, cfg: DictConfig, declared: dict[str, Any], seeds: int,
          cli_axes: list[Override], pinned: set[str], where: str, cap: int
          ) -> dict[str, list[Any]]:
    # Each axis as a list or a parsed sweep; the trial count (the product of the axis
    # sizes) is checked against the cap before any sweep is expanded.
    pending: dict[str, list[Any] | Override] = {}
    for key, value in declared.items():
        if key in pinned:
            continue
        if isinstance(value, list):
            pending[key] = value
            continue
        (o,) = grammar.parse([f"{key}={value}"], field=f"{where}{key}")
        pending[key] = o if o.is_sweep_override() else [o.value()]
    for o in cli_axes:
        pending[o.key_or_group] = o
    if "seed" not in pending and "seed" not in pinned:
        pending["seed"] = range(seeds)  # type: ignore[assignment] - sized, not expanded
    # (len() of a range past sys.maxsize raises: sweep.seeds is an unbounded int)
    sizes = [grammar.sweep_size(v, lambda k=k: composer.group_options(k))
             if isinstance(v, Override) else v.stop if isinstance(v, range) else len(v)
             for k, v in pending.items()]
    count = math.prod(sizes)
    if count > cap:
        shown = " x ".join(f"{k}={grammar.count_text(n)}" for k, n in zip(pending, sizes))
        _too_many(count, cap, f"{where.rstrip('.')} ({shown})")
    axes = {k: _expand(composer, v) if isinstance(v, Override) else list(v)
            for k, v in pending.items()}
    for key, values in axes.items():
        if not values:
            raise SpecError(f"{where}{key}: the axis has no values")
        if composer.is_group(key):
            options = composer.group_options(key)
            bad = [v for v in values if v not in options]
            if bad:
                raise SpecError(f"{where}{key}: {bad[0]!r} is not an option of group "
                                f"{key!r}; allowed: {', '.join(options)}")
        elif OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise SpecError(f"{where}{key}: no such key in the composed config")
    return axes


_ABSENT = object()


def _expand(composer: Composer, o: Override) -> list[Any]:
    key = o.key_or_group
    return grammar.expand(o, composer.is_group(key), lambda: composer.group_options(key), key)


class TrialBuilder:
    """Validated trials from points (key -> value), for grids and searches alike.

    A point's config-group keys (``optimizer: adam``) need a Hydra compose; it is done once
    per combination of group choices and cached. Value keys (``optimizer.lr``,
    ``optimizer.betas.0``) are set on a copy of the composed trial config, which the task's
    spec then validates.

    Args:
        composer: Composes the study.
        study: The study's name.
        fixed: The plain overrides every trial shares.
        base: The study composed with ``fixed``.
        task: The registered task whose spec validates each trial.
    """

    def __init__(self, composer: Composer, study: str, fixed: list[str], base: DictConfig,
                 task: registry.Task) -> None:
        self.composer, self.study, self.fixed, self.base, self.task = \
            composer, study, fixed, base, task
        self.trial_keys = [k for k in base if k not in SWEEP_KEYS]
        # The sweep's world size; a ``resources.workers`` axis sets it per trial.
        self.workers = int(OmegaConf.select(base, "resources.workers", default=1) or 1)
        self._composed: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
        self._is_group: dict[str, bool] = {}

    def is_group(self, key: str) -> bool:
        """Whether ``key`` names a config group (its value picks an option file)."""
        if key not in self._is_group:
            self._is_group[key] = self.composer.is_group(key)
        return self._is_group[key]

    def composed(self, groups: dict[str, Any]) -> dict[str, Any]:
        """The trial part of the study composed with these group choices (cached; a copy)."""
        ident = tuple(sorted(groups.items()))
        if ident not in self._composed:
            cfg = self.composer.compose(self.study, [*self.fixed, *(f"{k}={v}" for k, v in ident)]) \
                if ident else self.base
            resolved = OmegaConf.to_container(cfg, resolve=True)
            self._composed[ident] = {k: resolved[k] for k in self.trial_keys}
        return copy.deepcopy(self._composed[ident])

    def build(self, point: dict[str, Any], index: int, arm: dict[str, Any] | None = None,
              where: str = "") -> Trial:
        """The validated trial at ``point``.

        Args:
            point: Key -> value; group keys pick options, other keys set values.
            index: The trial's index (a grid position, or an Optuna trial number).
            arm: What to record as the trial's arm; default the point without ``seed``.
            where: Prefix of the field named in an error (``search.space.``).

        Raises:
            SpecError: The task's spec rejects the resulting config, naming the field.
        """
        raw = self.composed({k: v for k, v in point.items() if self.is_group(k)})
        workers = _workers(point, self.workers, where)
        for k, v in point.items():
            if not self.is_group(k) and not k.startswith("resources."):
                _set_dotted(raw, k, v)
        try:
            validated = self.task.spec.model_validate(raw)
        except ValidationError as e:
            raise SpecError(describe_validation_error(e, raw, prefix=where)) from None
        config = validated.model_dump(mode="json")
        arm = {k: v for k, v in point.items() if k != "seed"} if arm is None else arm
        return Trial(index, self.task.name, config, arm, int(config.get("seed", 0)),
                     Trial.make_key(self.task.name, config, workers),
                     _upstream(self.task, validated), workers)


def _workers(point: dict[str, Any], default: int, where: str) -> int:
    """The trial's world size: its ``resources.workers`` axis value, else the sweep's. The
    other resources are the sweep's own (slots are sized by them), never an axis."""
    for k in point:
        if k.startswith("resources.") and k != "resources.workers":
            raise SpecError(f"{where}{k}: only resources.workers can vary between trials")
    value = point.get("resources.workers", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where}resources.workers: {value!r} is not a positive integer")
    return value


def _trials(composer: Composer, study: str, fixed: list[str], base: DictConfig,
            axes: dict[str, list[Any]], task: registry.Task) -> list[Trial]:
    builder = TrialBuilder(composer, study, fixed, base, task)
    keys = list(axes)
    return [builder.build(dict(zip(keys, values)), i)
            for i, values in enumerate(itertools.product(*(axes[k] for k in keys)))]


def _upstream(task: registry.Task, spec: Any) -> Trial | None:
    """The upstream run a trial needs, validated by its own task like any trial."""
    need = task.upstream(spec) if task.upstream else None
    if need is None:
        return None
    name, raw = need
    up_task = _task(name)
    try:
        config = up_task.spec.model_validate(raw).model_dump(mode="json")
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, raw, prefix=f"upstream {name}: ")) from None
    return Trial(-1, name, config, {"upstream": name}, int(config.get("seed", 0)),
                 Trial.make_key(name, config))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    # A numeric part indexes a list (``optimizer.betas.0``), as in OmegaConf.select.
    *parents, last = key.split(".")
    for p in parents:
        tree = tree[int(p)] if isinstance(tree, list) else tree[p]
    if isinstance(tree, list):
        tree[int(last)] = value
    else:
        tree[last] = value
