"""Validated specs at the service's edge: the sweep (how to run) and the trial (what runs).

Like Ray's ``Tuner/TuneConfig/RunConfig``, *what* a trial computes (the task's own spec,
validated by the task) is kept apart from *how* the sweep runs (:class:`SweepSpec`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    field_validator,
    model_validator,
)

from orchestrator.verdicts import ClaimSpec, LearnedSpec
from tasks.spec import StrictModel

#: Top-level config keys that describe the sweep; every other key belongs to the trial.
SWEEP_KEYS = ("study", "task", "sweep", "resources", "cluster", "tracking", "search")


class StudyInfo(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    claims: list[ClaimSpec] = []  # checked at plan time: a malformed claim is exit 2
    #: The sanity gate every claim without its own ``learned`` uses: an arm whose mean metric
    #: is not above it "did not learn" and its claims are inconclusive.
    learned: LearnedSpec | None = None
    quick: list[str] = []

    @field_validator("claims")
    @classmethod
    def _unique_ids(cls, v: list[ClaimSpec]) -> list[ClaimSpec]:
        # A claim's id names its tag (orch.verdict.<id>); two claims must not share one.
        ids = [c.id for c in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"claim ids must be unique; repeated: {', '.join(dup)}")
        return v


_POSITIVE_INT = TypeAdapter(PositiveInt)


class AdaptiveSeeds(StrictModel):
    """``sweep.seeds: {min, max}``: start with ``min`` seeds per arm and add seeds, at the
    looks of :func:`orchestrator.verdicts.sequential.looks`, only to the arms of claims still
    inconclusive, up to ``max`` (``orchestrator.sweep.adaptive``)."""

    min: int = Field(ge=2)
    max: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveSeeds:
        if self.max < self.min:
            raise ValueError(f"seeds.max ({self.max}) must be >= seeds.min ({self.min})")
        return self


class SweepSettings(StrictModel):
    """The grid: ``axes`` shared by every trial; ``grids``, if given, are named sub-grids
    (each a dict of further axes) whose trials are joined, so one study can hold several
    sub-experiments (an LR range test beside a schedule comparison). A trial's arm records
    its grid's name under ``grid``."""

    axes: dict[str, Any] = {}
    grids: dict[str, dict[str, Any]] = {}
    seeds: PositiveInt | AdaptiveSeeds = 1
    metric: str = Field("val/acc", min_length=1)
    mode: Literal["min", "max"] = "max"
    max_concurrent: PositiveInt | None = None
    retries: NonNegativeInt = 1
    #: Most trials a grid may plan; counted (product of axis sizes) before expanding, so a
    #: typo like range(10**9) is bad input, not a minute of planning and a MemoryError.
    max_trials: PositiveInt = 10_000
    #: Checkpoints kept per trial attempt (the latest ones; resuming needs only the last).
    checkpoints_keep: PositiveInt = 2

    @field_validator("seeds", mode="wrap")
    @classmethod
    def _one_kind(cls, v: Any, handler: Any) -> int | AdaptiveSeeds:
        # Validate as the kind given, so a bad value gets one message, not one per kind.
        if isinstance(v, (dict, AdaptiveSeeds)):
            return AdaptiveSeeds.model_validate(v)
        return _POSITIVE_INT.validate_python(v)

    @property
    def first_seeds(self) -> int:
        """Seeds per arm planned before any look (all of them unless adaptive)."""
        return self.seeds if isinstance(self.seeds, int) else self.seeds.min

    #: A trial another sweep claimed (its RUNNING run) is waited for, not trained again,
    #: unless that run's heartbeat is older than this: its driver is gone, the trial runs here.
    lease_timeout_s: PositiveFloat = 300.0


class Resources(StrictModel):
    """Per-trial resources. Fractional GPUs pack several trials on one GPU.

    ``workers: k`` > 1 makes trials data-parallel: k ranks (a gang of actors, one
    ``torch.distributed`` group) each holding ``cpus``/``gpus``/``memory_mb``, so a trial
    takes k times these. ``resources.workers`` may also be a sweep axis (the trial's world
    size is then part of its identity).
    """

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    memory_mb: PositiveInt | None = None
    workers: PositiveInt = 1

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a fraction of a GPU must be below 1; above 1 use whole GPUs")
        return v


class ClusterSpec(StrictModel):
    """Where trials run: an existing Ray cluster (``address``), or a local one started with
    ``num_cpus``/``num_gpus``. The two are mutually exclusive: Ray sizes a cluster only
    when it starts one."""

    address: str | None = None
    num_cpus: PositiveInt | None = None
    num_gpus: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _address_or_size(self) -> ClusterSpec:
        if self.address and (self.num_cpus is not None or self.num_gpus is not None):
            raise ValueError(
                "address and num_cpus/num_gpus are mutually exclusive: the size "
                "applies only to a local cluster; allowed: one or the other"
            )
        return self


class TrackingSpec(StrictModel):
    uri: str | None = None
    experiment: str | None = None


class TaskRef(StrictModel):
    name: str = Field(min_length=1)


class PrunerSpec(StrictModel):
    """An Optuna pruner and its native options (each pruner reads only its own).

    ``median``: ``n_startup_trials`` (trials that must end before anything is pruned),
    ``n_warmup_steps`` (steps of a trial before it can be pruned), ``interval_steps``.
    ``successive_halving`` and ``hyperband``: ``min_resource``, ``reduction_factor``;
    ``hyperband`` also ``max_resource`` (``auto``: the longest trial seen). A step is one
    reporting step of the task (an epoch for the built-in tasks).
    """

    name: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    n_startup_trials: NonNegativeInt = 5
    n_warmup_steps: NonNegativeInt = 0
    interval_steps: PositiveInt = 1
    min_resource: PositiveInt | Literal["auto"] = "auto"
    max_resource: PositiveInt | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2)


class SearchClaimSpec(StrictModel):
    """A claim about a search (HP-1, HP-2), checked by :func:`orchestrator.search.search_verdicts`.

    ``importance``: the most important parameter (fANOVA) is one of ``first`` and the
    ``last`` parameters rank, on average, below the others. ``inside``: the best trial's
    value of each parameter in ``ranges`` lies inside its range and, at an edge that is also
    the search space's, at least ``margin`` (a fraction of the range, log-scaled for log
    parameters) away from it: a best trial pinned against the space's edge says the optimum
    may lie beyond. ``matters``: each parameter of ``params`` explains at least
    ``min_importance`` of the metric's variance (fANOVA, normalised over the branch's
    parameters), read from the complete trials' final values (and the diverged ones' at
    ``diverged_value``, when set). ``where`` selects the trials of one branch of a
    conditional space.
    """

    id: str = Field(min_length=1)
    source: str = ""
    statement: str = ""
    test: Literal["importance", "inside", "matters"]
    first: list[str] = []
    params: list[str] = []
    min_importance: float = Field(0.02, gt=0, lt=1)
    # matters: a diverged trial counts with this value (what a model that learned nothing
    # scores, e.g. chance accuracy); None leaves diverged trials out of the evidence.
    diverged_value: float | None = None
    last: list[str] = []
    ranges: dict[str, tuple[float, float]] = {}
    margin: float = Field(0.02, ge=0, lt=0.5)
    where: dict[str, Any] = {}
    min_trials: PositiveInt = 20

    @model_validator(mode="after")
    def _fits_test(self) -> SearchClaimSpec:
        if self.test == "importance" and not self.first:
            raise ValueError(f"claim {self.id!r}: first is required for test 'importance'")
        if self.test == "inside" and not self.ranges:
            raise ValueError(f"claim {self.id!r}: ranges is required for test 'inside'")
        if self.test == "matters" and not self.params:
            raise ValueError(f"claim {self.id!r}: params is required for test 'matters'")
        if self.test != "matters" and self.diverged_value is not None:
            raise ValueError(f"claim {self.id!r}: diverged_value is for test 'matters' only")
        for key, (lo, hi) in self.ranges.items():
            if not lo < hi:
                raise ValueError(f"claim {self.id!r}: ranges.{key} [{lo}, {hi}] needs low < high")
        return self


class SearchSpec(StrictModel):
    """A hyperparameter search (Optuna) instead of a grid; ``orchestrator.search`` runs it.

    ``space`` maps a config key (``optimizer.lr``) or config group (``optimizer``) to a
    distribution in the grammar of Hydra's Optuna sweeper: ``interval(1e-4, 1e-1)``,
    ``tag(log, interval(1e-4, 1e-1))``, ``int(interval(8, 128))``, ``range(1, 5)`` (end
    excluded, as everywhere in Hydra) or a choice ``a,b,c``. ``conditions`` maps a
    parameter to ``{other parameter: value or list of values}``: it is suggested only when
    every listed parameter took one of the values. ``metrics``/``directions`` default to
    ``sweep.metric``/``sweep.mode``; two or more make a multi-objective search (nsga2 or
    random, no pruner). ``report_metric`` is the per-step metric fed to the pruner (default
    the first objective). ``storage`` (an Optuna RDB URL) defaults to ``optuna.db`` beside
    an sqlite MLflow store; a server store needs one given explicitly.
    """

    sampler: Literal["tpe", "random", "cmaes", "grid", "nsga2"] = "tpe"
    n_trials: PositiveInt = 20
    seed: int | None = 0
    n_startup_trials: NonNegativeInt = 10
    population_size: int = Field(20, ge=2)
    pruner: PrunerSpec = PrunerSpec()
    space: dict[str, Any] = Field(min_length=1)
    conditions: dict[str, dict[str, Any]] = {}
    metrics: list[str] = []
    directions: list[Literal["max", "min"]] = []
    report_metric: str | None = Field(None, min_length=1)
    storage: str | None = None
    importance: bool = True
    plots: bool = True
    claims: list[SearchClaimSpec] = []

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, v: Any) -> Any:
        # `search.pruner=none` on the command line replaces the mapping with its name.
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _objectives(self) -> SearchSpec:
        if self.directions and len(self.directions) != len(self.metrics):
            raise ValueError(
                f"directions: {len(self.directions)} given for "
                f"{len(self.metrics)} metrics; give one (max or min) per metric"
            )
        if len(self.metrics) > 1:
            if self.pruner.name != "none":
                raise ValueError(
                    f"pruner: {self.pruner.name!r} cannot prune a multi-objective "
                    f"search ({len(self.metrics)} metrics); allowed: none"
                )
            if self.sampler == "cmaes":
                raise ValueError(
                    "sampler: 'cmaes' is single-objective; allowed with several "
                    "metrics: nsga2, tpe, random, grid"
                )
        return self


class SweepSpec(StrictModel):
    """How a sweep runs: everything in the composed config except the trial's own keys."""

    study: StudyInfo
    task: TaskRef
    sweep: SweepSettings = SweepSettings()
    resources: Resources = Resources()
    cluster: ClusterSpec = ClusterSpec()
    tracking: TrackingSpec = TrackingSpec()
    search: SearchSpec | None = None


@dataclass(frozen=True)
class Trial:
    """One planned trial: its resolved config (validated by its task) and identity."""

    index: int
    task: str
    config: dict[str, Any]  # the task spec, dumped to JSON-able values
    arm: dict[str, Any]  # axis key -> value, seed excluded
    seed: int
    key: str = field(default="")
    upstream: Trial | None = None  # the run this trial needs first (pre-training)
    workers: int = 1  # data-parallel world size (resources.workers)
    #: Further arms of the same config: sub-grids may overlap, and a shared trial runs once
    #: but counts in each grid's claims (``Client.trials`` gives it a row per arm).
    also: tuple[dict[str, Any], ...] = ()
    #: Relative length from the task's spec (``StrictModel.cost``), None if it does not say.
    cost: float | None = None

    @staticmethod
    def make_key(task: str, config: dict[str, Any], workers: int = 1) -> str:
        """Identity of a trial: a hash of its task and fully resolved config, and of its
        world size when above 1 (k ranks at batch b train differently from one at b)."""
        ident: dict[str, Any] = {"task": task, "config": config}
        if workers > 1:  # single-worker keys stay what they always were
            ident["workers"] = workers
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]
