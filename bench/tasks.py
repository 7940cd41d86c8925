"""Benchmark tasks, registered like any user plugin (``orch sweep --tasks bench.tasks``).

Every runner (orch, the plain loop, Ray Tune, Hydra multirun) runs trials through
:mod:`tasks.registry`, so they all execute the same generator on the same config. Both tasks
put their own wall-clock span in the Summary (``time/start``, ``time/end``: Unix seconds,
``time/trial_s``), so slot utilisation is computed from what the trials saw, not from when a
driver happened to notice them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydantic import Field, NonNegativeFloat, PositiveInt

from tasks.builtin import ClassifySpec
from tasks.events import Event, Metrics, Summary
from tasks.registry import register
from tasks.spec import StrictModel


class WorkSpec(StrictModel):
    """A synthetic trial: ``epochs`` steps of ``seconds`` each (busy CPU or sleep)."""

    seconds: NonNegativeFloat = 0.0
    epochs: PositiveInt = 1
    seed: int = Field(0, ge=0)
    busy: bool = True

    def cost(self) -> float | None:
        return self.seconds * self.epochs


def _timing(start: float) -> dict[str, float]:
    end = time.time()
    return {"time/start": start, "time/end": end, "time/trial_s": end - start}


@register("work", WorkSpec)
def work(spec: WorkSpec) -> Iterator[Event]:
    """Spend ``seconds`` per epoch (busy-looping, so it occupies a CPU like training does)."""
    start = time.time()
    for epoch in range(spec.epochs):
        if spec.busy:
            until = time.perf_counter() + spec.seconds
            while time.perf_counter() < until:
                pass
        elif spec.seconds:
            time.sleep(spec.seconds)
        yield Metrics(epoch, {"epoch_s": spec.seconds, "seed": float(spec.seed)})
    yield Summary(_timing(start))


@register("classify_timed", ClassifySpec)
def classify_timed(spec: ClassifySpec) -> Iterator[Event]:
    """The project's ``classify`` task, unchanged, plus its own wall-clock span in the Summary."""
    from tasks.classify import run as run_classify  # torch: in the worker, not the driver

    start = time.time()
    for event in run_classify(spec):
        if isinstance(event, Summary):
            event = Summary(
                {**event.values, **_timing(start)}, event.outcome, event.reason, event.artifacts
            )
        yield event
