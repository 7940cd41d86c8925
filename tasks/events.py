"""The events a task yields while it runs.

A task is a generator: it yields :class:`Metrics` after every reporting step (an epoch
for the built-in tasks) and may yield :class:`Summary` once at the end. The orchestrator
streams them to the driver, which logs them to MLflow and feeds pruners. Tasks never
import Ray, MLflow or Hydra.
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


Event = Metrics | Summary
