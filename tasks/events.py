"""The events a task yields while it runs, and how a task resumes from a checkpoint.

A task is a generator: it yields :class:`Metrics` after every reporting step (an epoch
for the built-in tasks) and may yield :class:`Summary` once at the end. The orchestrator
streams them to the driver, which logs them to MLflow and feeds pruners. Tasks never
import Ray, MLflow or Hydra.

Checkpoints and resume (the contract between a task and its runner):

* A task may yield :class:`Checkpoint` ``(step, state)`` right after ``Metrics(step)``:
  ``state`` is opaque bytes from which the task can continue after ``step``. The built-in
  tasks write one every ``train.checkpoint_every`` epochs, at most once per
  ``train.checkpoint_min_interval_s`` (``tasks.training``), so a runner can store each
  Checkpoint it gets; only the latest one is needed to resume.
* A task whose ``run`` accepts a ``resume`` keyword (``tasks.registry.accepts(run,
  "resume")``) is called as ``run(spec, resume=state)`` with the ``state`` of a Checkpoint
  that an earlier attempt of *the same trial* (same spec) yielded. It then yields
  ``Metrics`` for steps ``step + 1, ...`` only, each once, and its Summary as if it had never
  stopped; a deterministic task gives the same values as an uninterrupted run.
* Everything a task yielded with a step at or below the checkpoint's step came before the
  Checkpoint, so a runner that records events in order can resume from its latest stored
  Checkpoint without losing a step; steps above it that an interrupted attempt reported are
  reported again by the resumed run (the runner decides whether to keep the first or the
  second report).
* A data-parallel task yields each Checkpoint on every rank, so that all ranks yield the
  same sequence of events (a runner may run a collective per event), but only rank 0's
  carries the state (all ranks hold the same replicated state); other ranks yield ``b""``.
  On resume the runner passes rank 0's bytes to every rank.
* A ``resume`` state the task cannot use (corrupt bytes, another format, another trial's
  config or world size, a model it does not fit) raises :class:`CheckpointError` before
  anything is yielded, with a message naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metrics:
    """Metric values at one reporting step (``step`` counts from 0)."""

    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class Summary:
    """Final metrics of a trial plus its outcome.

    ``outcome`` is ``"finished"`` or ``"diverged"`` (loss became NaN/inf or exploded:
    the task stopped early and says so instead of raising).
    """

    values: dict[str, float]
    outcome: str = "finished"
    reason: str = ""
    artifacts: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """State to resume a trial from after reporting step ``step`` (see the module docstring).

    Bytes, not a path: the event travels from a worker to a driver on another node and is
    stored as a run artifact, like ``Summary.artifacts`` and upstream artifacts are.
    """

    step: int
    state: bytes = field(repr=False)


class CheckpointError(ValueError):
    """A ``resume`` state that this task cannot resume from; the message says why."""


Event = Metrics | Summary | Checkpoint
