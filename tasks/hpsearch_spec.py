"""Task ``hpsearch``'s spec and registration, importable without torch or Optuna.

One trial of ``hpsearch`` is one whole small hyperparameter search (``tasks.hpsearch``):
``budget`` inner classification trainings, each a :class:`~tasks.builtin.ClassifySpec` made
from this spec's base fields (data, model, optimizer, scheduler, train, seed) with the
sampled values set at their dotted paths. A claim about a search *strategy* (HP-3: staged
vs joint, 002:L1326) needs independent replicate searches; here each replicate is a trial,
so an ordinary grid study over ``hpsearch.strategy`` and seeds compares them.

``strategy: joint`` searches the union of every stage's keys for the whole budget.
``strategy: staged`` searches stage k's keys for ``stage_trials[k]`` inner trials, every other
key fixed at the best-so-far inner trial's value (the base config's value until a stage
searched it).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    Tag,
    ValidationError,
    model_validator,
)

from tasks.builtin import ClassifySpec
from tasks.registry import register_lazy
from tasks.spec import StrictModel, set_dotted


class RangeParam(StrictModel):
    """A numeric range: uniform (or log-uniform with ``log``) in [low, high], integers with
    ``int``."""

    # "int" is the config's word; the attribute is is_int (a field named int would shadow
    # the type in the class body).
    model_config = ConfigDict(serialize_by_alias=True)

    low: float
    high: float
    log: bool = False
    is_int: bool = Field(False, alias="int")

    @model_validator(mode="after")
    def _sane(self) -> RangeParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0 (got {self.low})")
        if self.is_int and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs whole bounds (got {self.low}, {self.high})")
        return self

    def corners(self) -> list[Any]:
        return [int(self.low), int(self.high)] if self.is_int else [self.low, self.high]


class ChoiceParam(StrictModel):
    """One of ``choices`` (any JSON value: a number, a string, a list such as
    ``model.hidden``'s architectures)."""

    choices: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceParam:
        if len(set(self.labels())) != len(self.choices):
            raise ValueError(f"choices must be distinct (got {self.choices})")
        return self

    def labels(self) -> list[str]:
        """Each choice as JSON: what the sampler sees (Optuna's categorical takes scalars)."""
        return [json.dumps(c) for c in self.choices]

    def corners(self) -> list[Any]:
        return list(self.choices)


def _param_kind(v: Any) -> str:
    if isinstance(v, ChoiceParam) or (isinstance(v, dict) and "choices" in v):
        return "choices"
    return "range"


# A mapping with `choices` is a choice, any other a range: a malformed entry then reports the
# problems of the kind it was meant to be, not of both.
SpaceParam = Annotated[
    Annotated[RangeParam, Tag("range")] | Annotated[ChoiceParam, Tag("choices")],
    Discriminator(_param_kind),
]


class SearchSettings(StrictModel):
    """``hpsearch:``: the strategy, the budget and the space of one search."""

    strategy: Literal["joint", "staged"] = "staged"
    budget: PositiveInt  # inner trials (trainings of train.epochs each), both strategies
    stages: list[list[str]] = Field(min_length=1)
    stage_trials: list[PositiveInt]  # inner trials per stage; they sum to budget
    space: dict[str, SpaceParam] = Field(min_length=1)
    # Random inner trials before TPE models the results, per Optuna study: joint runs one
    # study, staged one per stage (capped at the stage's trials).
    n_startup_trials: NonNegativeInt = 10

    @model_validator(mode="after")
    def _consistent(self) -> SearchSettings:
        if len(self.stage_trials) != len(self.stages):
            raise ValueError(
                f"hpsearch.stage_trials has {len(self.stage_trials)} entries for "
                f"{len(self.stages)} stages"
            )
        if sum(self.stage_trials) != self.budget:
            raise ValueError(
                f"hpsearch.stage_trials {self.stage_trials} sums to {sum(self.stage_trials)}, "
                f"not hpsearch.budget {self.budget}"
            )
        for k, keys in enumerate(self.stages):
            if not keys:
                raise ValueError(f"hpsearch.stages.{k} is empty")
            missing = [key for key in keys if key not in self.space]
            if missing:
                raise ValueError(f"hpsearch.stages.{k}: {missing} not in hpsearch.space")
        unstaged = [key for key in self.space if key not in self.keys()]
        if unstaged:
            # Joint searches the union of the stages: a key in no stage would be searched
            # by joint only, and the strategies would not search the same space.
            raise ValueError(f"hpsearch.space: {unstaged} in no stage of hpsearch.stages")
        return self

    def keys(self) -> list[str]:
        """Every searched key, in stage order (joint's space)."""
        return list(dict.fromkeys(key for keys in self.stages for key in keys))

    def plan(self) -> list[tuple[list[str], int]]:
        """The searches run one after the other: (keys, inner trials) each."""
        if self.strategy == "joint":
            return [(self.keys(), self.budget)]
        return list(zip(self.stages, self.stage_trials, strict=True))

    def stage_ends(self) -> list[int]:
        """Inner trials done at the end of each stage (the same for both strategies)."""
        ends, n = [], 0
        for count in self.stage_trials:
            n += count
            ends.append(n)
        return ends


class HPSearchSpec(ClassifySpec):
    """A whole search: the base config of every inner trial (ClassifySpec's fields) and how
    to search around it (``hpsearch``)."""

    hpsearch: SearchSettings

    def cost(self) -> float | None:
        return float(self.train.epochs * self.hpsearch.budget)

    def base(self) -> dict[str, Any]:
        """The inner trials' base config (ClassifySpec's fields as JSON values)."""
        return self.model_dump(mode="json", exclude={"hpsearch"})

    def inner(self, params: dict[str, Any], seed: int) -> ClassifySpec:
        """The inner trial with ``params`` (key -> value) set into the base config."""
        config = json.loads(json.dumps(self.base()))  # a deep copy
        for key, value in params.items():
            set_dotted(config, key, value)
        config["seed"] = seed
        return ClassifySpec.model_validate(config)

    @model_validator(mode="after")
    def _space_fits_base(self) -> HPSearchSpec:
        # Every key at each of its corners (both bounds, every choice), then every key at
        # its low and at its high end together: a key ClassifySpec does not have, or a
        # value it refuses, fails here, before anything runs.
        space = self.hpsearch.space
        for key, param in space.items():
            for value in param.corners():
                self._check({key: value}, f"hpsearch.space.{key}")
        for end in (0, -1):
            self._check({k: p.corners()[end] for k, p in space.items()}, "hpsearch.space")
        return self

    def _check(self, params: dict[str, Any], where: str) -> None:
        try:
            self.inner(params, self.seed)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValueError(
                f"{where}: {params} gives an invalid trial: {loc}: {err['msg']}"
            ) from None
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ValueError(f"{where}: not a field path of the trial ({e})") from None


register_lazy(
    "hpsearch",
    HPSearchSpec,
    "tasks.hpsearch:run",
    "Run one small hyperparameter search (TPE over classify trials), staged or joint; "
    "report its best-so-far curve.",
)
