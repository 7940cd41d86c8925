"""Validated specs at the service's edge: the sweep (how to run) and the trial (what runs).

Like Ray's ``Tuner/TuneConfig/RunConfig``, *what* a trial computes (the task's own spec,
validated by the task) is kept apart from *how* the sweep runs (:class:`SweepSpec`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from tasks.spec import StrictModel

#: Top-level config keys that describe the sweep; every other key belongs to the trial.
SWEEP_KEYS = ("study", "task", "sweep", "resources", "cluster", "tracking")


class StudyInfo(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    claims: list[dict[str, Any]] = []
    quick: list[str] = []


class SweepSettings(StrictModel):
    """The grid: ``axes`` shared by every trial; ``grids``, if given, are named sub-grids
    (each a dict of further axes) whose trials are joined, so one study can hold several
    sub-experiments (an LR range test beside a schedule comparison). A trial's arm records
    its grid's name under ``grid``."""

    axes: dict[str, Any] = {}
    grids: dict[str, dict[str, Any]] = {}
    seeds: PositiveInt = 1
    metric: str = Field("val/acc", min_length=1)
    mode: Literal["min", "max"] = "max"
    max_concurrent: PositiveInt | None = None
    retries: NonNegativeInt = 1


class Resources(StrictModel):
    """Per-trial resources. Fractional GPUs pack several trials on one GPU."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    memory_mb: PositiveInt | None = None

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a fraction of a GPU must be below 1; above 1 use whole GPUs")
        return v


class ClusterSpec(StrictModel):
    address: str | None = None
    num_cpus: PositiveInt | None = None
    num_gpus: NonNegativeInt | None = None


class TrackingSpec(StrictModel):
    uri: str | None = None
    experiment: str | None = None


class TaskRef(StrictModel):
    name: str = Field(min_length=1)


class SweepSpec(StrictModel):
    """How a sweep runs: everything in the composed config except the trial's own keys."""

    study: StudyInfo
    task: TaskRef
    sweep: SweepSettings = SweepSettings()
    resources: Resources = Resources()
    cluster: ClusterSpec = ClusterSpec()
    tracking: TrackingSpec = TrackingSpec()


@dataclass(frozen=True)
class Trial:
    """One planned trial: its resolved config (validated by its task) and identity."""

    index: int
    task: str
    config: dict[str, Any]          # the task spec, dumped to JSON-able values
    arm: dict[str, Any]             # axis key -> value, seed excluded
    seed: int
    key: str = field(default="")
    upstream: "Trial | None" = None  # the run this trial needs first (pre-training)

    @staticmethod
    def make_key(task: str, config: dict[str, Any]) -> str:
        """Identity of a trial: a hash of its task and fully resolved config."""
        blob = json.dumps({"task": task, "config": config}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]
