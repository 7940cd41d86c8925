"""A task with an upstream run, without torch: ``pre`` sleeps and stores a small artifact,
``tune`` needs it (as fine-tuning needs pre-training) and reports a value read from it, so a
test can tell which upstream run a trial's result came from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tasks.events import Event, Metrics, Summary
from tasks.registry import register
from tasks.spec import StrictModel

#: The artifact ``pre`` stores: its value, as text.
ARTIFACT = "value.txt"


class PreSpec(StrictModel):
    steps: int = 3
    step_s: float = 0.5
    seed: int = 0


@register("pre", PreSpec)
def pre(spec: PreSpec) -> Iterator[Event]:
    for step in range(spec.steps):
        time.sleep(spec.step_s)
        yield Metrics(step, {"score": float(step)})
    yield Summary({"final": 10.0 + spec.seed}, artifacts={ARTIFACT: str(10.0 + spec.seed).encode()})


class TuneSpec(StrictModel):
    steps: int = 2
    step_s: float = 0.2
    seed: int = 0
    pre: PreSpec = PreSpec()


def _needs(spec: TuneSpec) -> tuple[str, dict[str, Any]]:
    return "pre", spec.pre.model_dump(mode="json")


@register("tune", TuneSpec, upstream=_needs)
def tune(spec: TuneSpec, upstream: dict[str, bytes] | None = None) -> Iterator[Event]:
    """``final`` is the upstream's value plus the seed: which run it came from shows."""
    base = float((upstream or {})[ARTIFACT].decode())
    for step in range(spec.steps):
        time.sleep(spec.step_s)
        yield Metrics(step, {"score": float(step)})
    yield Summary({"final": base + spec.seed})
