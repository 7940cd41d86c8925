"""User tasks registered from a module named on the command line (``--tasks``).

``boom`` raises for the seeds listed in ``fail_seeds`` and otherwise reports a few steps,
so tests can check that a failing trial is recorded FAILED while the sweep goes on.
``slow`` sleeps between reports (a test can kill its worker mid-trial), ``nan`` ends with
a NaN metric without saying it diverged, ``hog`` grows its memory past a limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from tasks.events import Event, Metrics, Summary
from tasks.registry import register
from tasks.spec import StrictModel


class BoomSpec(StrictModel):
    steps: int = 3
    fail_seeds: list[int] = []
    seed: int = 0


@register("boom", BoomSpec)
def boom(spec: BoomSpec) -> Iterator[Event]:
    """Report ``steps`` metrics, or raise for the listed seeds."""
    for step in range(spec.steps):
        if spec.seed in spec.fail_seeds and step == 1:
            raise RuntimeError(f"boom at step {step} (seed {spec.seed})")
        yield Metrics(step, {"score": float(step + spec.seed)})
    yield Summary({"final": float(spec.steps + spec.seed)})


class SlowSpec(StrictModel):
    """``steps`` reports ``step_s`` seconds apart: long enough for a test to act mid-trial."""

    steps: int = 5
    step_s: float = 0.5
    seed: int = 0


@register("slow", SlowSpec)
def slow(spec: SlowSpec) -> Iterator[Event]:
    """Sleep between reports; the score is the step, the final value steps + seed."""
    for step in range(spec.steps):
        time.sleep(spec.step_s)
        yield Metrics(step, {"score": float(step)})
    yield Summary({"final": float(spec.steps + spec.seed)})


class NanSpec(StrictModel):
    """Ends with a NaN final metric for ``nan_seeds``, raises at step 1 for ``raise_seeds``."""

    nan_seeds: list[int] = []
    raise_seeds: list[int] = []
    seed: int = 0


@register("nan", NanSpec)
def nan(spec: NanSpec) -> Iterator[Event]:
    """A task that does not notice its own divergence: the orchestrator must."""
    yield Metrics(0, {"loss": 1.0})
    if spec.seed in spec.raise_seeds:
        raise ValueError(f"raised at step 1 (seed {spec.seed})")
    final = math.nan if spec.seed in spec.nan_seeds else 0.5
    yield Metrics(1, {"loss": final})
    yield Summary({"loss": final})


class HogSpec(StrictModel):
    """Allocates ``chunk_mb`` MiB every ``every_s`` up to ``total_mb`` (touching each page so
    it is resident), then reports and finishes: without a limit it finishes."""

    total_mb: int = 2000
    chunk_mb: int = 50
    every_s: float = 0.05
    seed: int = 0


@register("hog", HogSpec)
def hog(spec: HogSpec) -> Iterator[Event]:
    """Grow the resident memory in chunks; report the MiB held after each."""
    held: list[bytearray] = []
    for i in range(spec.total_mb // spec.chunk_mb):
        held.append(bytearray(b"\x01" * (spec.chunk_mb * 2**20)))  # written: resident
        time.sleep(spec.every_s)
        if i % 5 == 0:
            yield Metrics(i, {"held_mb": float((i + 1) * spec.chunk_mb)})
    yield Summary({"held_mb": float(len(held) * spec.chunk_mb)})
