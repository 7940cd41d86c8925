"""A tiny task whose metric is a known function of its parameters (search tests, bench).

``score = -(x - optimum)^2 - (y - optimum)^2 * y_weight`` at every step, so a pruner sees a
trial's final rank from its first step and a sampler's suggestions can be checked against
the known optimum. Each step sleeps ``step_s * (1 + slow * x)`` seconds: trials of uneven
length when ``slow`` > 0 (the bench's asynchronous-dispatch case).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydantic import Field

from tasks.events import Event, Metrics, Summary
from tasks.registry import register
from tasks.spec import StrictModel


class QuadraticSpec(StrictModel):
    x: float = 0.5
    y: float = 0.5
    y_weight: float = Field(0.0, ge=0)
    optimum: float = 0.7
    steps: int = Field(4, ge=1)
    step_s: float = Field(0.05, ge=0)
    slow: float = Field(0.0, ge=0)
    fail_above: float | None = None
    seed: int = 0


def score(spec: QuadraticSpec) -> float:
    """The objective the task reports: maximal (0) at x = y = optimum."""
    return -((spec.x - spec.optimum) ** 2) - spec.y_weight * (spec.y - spec.optimum) ** 2


@register("quadratic", QuadraticSpec)
def quadratic(spec: QuadraticSpec) -> Iterator[Event]:
    """Report ``score`` for ``steps`` steps; raise when x is above ``fail_above``."""
    value = score(spec)
    for step in range(spec.steps):
        time.sleep(spec.step_s * (1 + spec.slow * spec.x))
        if spec.fail_above is not None and spec.x > spec.fail_above:
            raise RuntimeError(f"x={spec.x} is above fail_above={spec.fail_above}")
        yield Metrics(step, {"score": value, "loss": -value})
    yield Summary({"final": value, "time/step_ms": 1000 * spec.step_s * (1 + spec.slow * spec.x)})
