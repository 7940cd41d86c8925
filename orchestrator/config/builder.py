"""Validated trials from points (key -> value), for grids and searches alike."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from orchestrator.config.compose import Composer, config_dict
from orchestrator.core.specs import SWEEP_KEYS, Trial
from orchestrator.errors import SpecError, describe_validation_error
from tasks import registry
from tasks.spec import set_dotted


def task_by_name(name: str) -> registry.Task:
    try:
        return registry.get(name)
    except KeyError as e:
        raise SpecError(f"task.name: {e.args[0]}") from None


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

    def __init__(
        self,
        composer: Composer,
        study: str,
        fixed: list[str],
        base: DictConfig,
        task: registry.Task,
    ) -> None:
        self.composer, self.study, self.fixed, self.base, self.task = (
            composer,
            study,
            fixed,
            base,
            task,
        )
        self.trial_keys = [str(k) for k in base if k not in SWEEP_KEYS]
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
            cfg = (
                self.composer.compose(self.study, [*self.fixed, *(f"{k}={v}" for k, v in ident)])
                if ident
                else self.base
            )
            resolved = config_dict(cfg)
            self._composed[ident] = {k: resolved[k] for k in self.trial_keys}
        return copy.deepcopy(self._composed[ident])

    def build(
        self, point: dict[str, Any], index: int, arm: dict[str, Any] | None = None, where: str = ""
    ) -> Trial:
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
                set_dotted(raw, k, v)
        try:
            validated = self.task.spec.model_validate(raw)
        except ValidationError as e:
            raise SpecError(describe_validation_error(e, raw, prefix=where)) from None
        config = validated.model_dump(mode="json")
        arm = {k: v for k, v in point.items() if k != "seed"} if arm is None else arm
        return Trial(
            index,
            self.task.name,
            config,
            arm,
            int(config.get("seed", 0)),
            Trial.make_key(self.task.name, config, workers),
            _upstream(self.task, validated),
            workers,
            cost=_cost(validated),
        )


def _cost(spec: Any) -> float | None:
    """The spec's own estimate of its trial's length (``tasks.spec.StrictModel.cost``)."""
    cost = getattr(spec, "cost", None)
    value = cost() if callable(cost) else None
    return float(value) if value is not None else None


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


def _upstream(task: registry.Task, spec: Any) -> Trial | None:
    """The upstream run a trial needs, validated by its own task like any trial."""
    need = task.upstream(spec) if task.upstream else None
    if need is None:
        return None
    name, raw = need
    up_task = task_by_name(name)
    try:
        config = up_task.spec.model_validate(raw).model_dump(mode="json")
    except ValidationError as e:
        raise SpecError(describe_validation_error(e, raw, prefix=f"upstream {name}: ")) from None
    return Trial(
        -1,
        name,
        config,
        {"upstream": name},
        int(config.get("seed", 0)),
        Trial.make_key(name, config),
    )
