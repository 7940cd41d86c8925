"""Plan a grid sweep: the study's axes (and the command line's) times seeds.

Axes use Hydra's override grammar (``a,b``, ``range(3)``, ``glob(*)``) and are parsed by
Hydra's own parser. A command-line override on a key replaces the study's axis on that
key: a sweep override becomes the new axis, a plain one pins the key.

Composition is cached by the combination of config-group choices; value axes
(``optimizer.lr=...``, ``seed=...``) are applied to the composed config directly, which
keeps planning a 1,000-trial sweep well under a second.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from orchestrator.config import grammar
from orchestrator.config.builder import TrialBuilder, task_by_name
from orchestrator.config.compose import Composer, config_dict
from orchestrator.config.overrides import expand, parse_overrides, plain_overrides
from orchestrator.config.space import plan_search
from orchestrator.core.specs import SWEEP_KEYS, SweepSpec, Trial
from orchestrator.errors import SpecError, describe_validation_error
from tasks import registry


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: how it runs, the trials, and the composed config (for the record)."""

    spec: SweepSpec
    trials: list[Trial]
    axes: dict[str, list[Any]]
    config: dict[str, Any]
    overrides: list[str]  # as given (the quick variant's are not included)
    quick: bool = False
    config_dir: str | None = None
    #: A search study's parsed space and trial builder (``orchestrator.config.space``); then
    #: ``trials`` is empty: the search asks for them one at a time while it runs.
    search: Any = None


def plan_sweep(
    composer: Composer, study: str, overrides: list[str], quick: bool = False
) -> SweepPlan:
    """Compose ``study`` with ``overrides``, validate everything and list the trials."""
    base = composer.compose(study, plain_overrides(parse_overrides(overrides)))
    quick_overrides = list(base.study.get("quick") or []) if quick else []
    # The quick variant's overrides come first so that the user's own win.
    parsed = parse_overrides([*quick_overrides, *overrides])
    cli_axes = [o for o in parsed if o.is_sweep_override()]
    fixed = plain_overrides(parsed)
    if quick_overrides:
        base = composer.compose(study, fixed)
    _forbid_code_references(OmegaConf.to_container(base, resolve=False))
    spec = _validate_sweep(base)
    task = task_by_name(spec.task.name)

    pinned = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    if spec.search is not None:
        # A search: command-line sweeps (interval() included) become search dimensions.
        search = plan_search(
            TrialBuilder(composer, study, fixed, base, task),
            spec.search,
            cli_axes,
            {o.key_or_group: o.value() for o in parsed if not o.is_sweep_override()},
        )
        return SweepPlan(
            spec,
            [],
            {p.key: [p.source] for p in search.space.params},
            config_dict(base),
            list(overrides),
            quick,
            None if composer.config_dir is None else str(composer.config_dir),
            search=search,
        )
    for o in cli_axes:
        if not o.is_discrete_sweep():
            raise SpecError(
                f"{o.key_or_group}: a grid axis must be a choice, range or glob; "
                f"interval() belongs in a search space"
            )
    grids = spec.sweep.grids or {"": {}}
    cap = spec.sweep.max_trials
    all_axes: dict[str, dict[str, list[Any]]] = {}
    for name, grid in grids.items():
        where = f"sweep.grids.{name}." if name else "sweep.axes."
        declared = {**spec.sweep.axes, **grid}
        # A command-line axis replaces the grids' axis on its key; one no grid has is shared.
        mine = [
            o
            for o in cli_axes
            if o.key_or_group in declared or not any(o.key_or_group in g for g in grids.values())
        ]
        all_axes[name] = _axes(
            composer, base, declared, spec.sweep.first_seeds, mine, pinned, where, cap
        )
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
    return SweepPlan(
        spec,
        trials,
        axes,
        config_dict(base),
        list(overrides),
        quick,
        None if composer.config_dir is None else str(composer.config_dir),
    )


def _forbid_code_references(tree: Any, path: str = "") -> None:
    """Configs name registered tasks, models, optimizers and schedulers, never Python code."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            where = f"{path}.{k}" if path else str(k)
            if k in ("_target_", "_partial_", "_call_"):
                raise SpecError(
                    f"{where}: a config may not name Python code; only registered "
                    f"tasks ({', '.join(registry.names())}) and the config groups' "
                    f"options can be named"
                )
            _forbid_code_references(v, where)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _forbid_code_references(v, f"{path}[{i}]")


def _validate_sweep(cfg: DictConfig) -> SweepSpec:
    resolved = config_dict(cfg)
    raw = {k: resolved[k] for k in SWEEP_KEYS if k in resolved}
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, raw)) from None


def _too_many(count: int, cap: int, what: str) -> NoReturn:
    raise SpecError(
        f"{what}: {grammar.count_text(count)} trials planned, more than "
        f"sweep.max_trials = {cap:,}; allowed: at most {cap:,} (fewer axis values "
        f"or seeds, or raise sweep.max_trials)"
    )


def _axes(
    composer: Composer,
    cfg: DictConfig,
    declared: dict[str, Any],
    seeds: int,
    cli_axes: list[Override],
    pinned: set[str],
    where: str,
    cap: int,
) -> dict[str, list[Any]]:
    # Each axis as a list or a parsed sweep; the trial count (the product of the axis
    # sizes) is checked against the cap before any sweep is expanded.
    pending: dict[str, list[Any] | Override | range] = {}
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
        pending["seed"] = range(seeds)  # sized, not expanded
    # (len() of a range past sys.maxsize raises: sweep.seeds is an unbounded int)
    sizes = [
        grammar.sweep_size(v, functools.partial(composer.group_options, k))
        if isinstance(v, Override)
        else v.stop
        if isinstance(v, range)
        else len(v)
        for k, v in pending.items()
    ]
    count = math.prod(sizes)
    if count > cap:
        shown = " x ".join(f"{k}={grammar.count_text(n)}" for k, n in zip(pending, sizes))
        _too_many(count, cap, f"{where.rstrip('.')} ({shown})")
    axes = {
        k: expand(composer, v) if isinstance(v, Override) else list(v) for k, v in pending.items()
    }
    for key, values in axes.items():
        if not values:
            raise SpecError(f"{where}{key}: the axis has no values")
        if composer.is_group(key):
            options = composer.group_options(key)
            bad = [v for v in values if v not in options]
            if bad:
                raise SpecError(
                    f"{where}{key}: {bad[0]!r} is not an option of group "
                    f"{key!r}; allowed: {', '.join(options)}"
                )
        elif OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise SpecError(f"{where}{key}: no such key in the composed config")
    return axes


def _trials(
    composer: Composer,
    study: str,
    fixed: list[str],
    base: DictConfig,
    axes: dict[str, list[Any]],
    task: registry.Task,
) -> list[Trial]:
    builder = TrialBuilder(composer, study, fixed, base, task)
    keys = list(axes)
    return [
        builder.build(dict(zip(keys, values)), i)
        for i, values in enumerate(itertools.product(*(axes[k] for k in keys)))
    ]


_ABSENT = object()
