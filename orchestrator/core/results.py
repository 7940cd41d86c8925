"""What a trial's attempt comes back as, and what a sweep returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.specs import Trial


@dataclass(frozen=True)
class Failure:
    """A trial raised: the error's type, message and traceback."""

    error_type: str
    message: str
    traceback: str
    #: The worker process is unfit for another trial (the trial's thread could not be
    #: stopped and still holds its memory): the dispatcher replaces the actor.
    restart_worker: bool = False


@dataclass(frozen=True)
class Stopped:
    """The trial was stopped on request (pruned or cancelled) after its last event."""


@dataclass(frozen=True)
class NodeInfo:
    """Where an attempt runs: the Ray node, its host name, the worker's process id."""

    node_id: str
    hostname: str
    pid: int


@dataclass
class TrialResult:
    """A settled trial as the sweep recorded it."""

    trial: Trial
    run_id: str
    outcome: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    reused: bool = False


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: every trial's result and how the sweep ended."""

    sweep_id: str
    parent_run_id: str
    experiment_id: str
    results: list[TrialResult]
    cancelled: bool = False
    unwritten: list[str] = field(default_factory=list)
    metric: str = ""
    tracking_uri: str = ""

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.results)
