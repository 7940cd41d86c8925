"""A user task registered from a module named on the command line (``--tasks``).

``boom`` raises for the seeds listed in ``fail_seeds`` and otherwise reports a few steps,
so tests can check that a failing trial is recorded FAILED while the sweep goes on.
"""

from __future__ import annotations

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
