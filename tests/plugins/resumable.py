"""``stepper``: a small task that checkpoints after every step and resumes from it, or, with
``refuse_resume``, refuses every checkpoint (``CheckpointError``) as a task would whose
state format changed."""

from __future__ import annotations

import time
from collections.abc import Iterator

from tasks.events import Checkpoint, CheckpointError, Event, Metrics, Summary
from tasks.registry import register
from tasks.spec import StrictModel


class StepperSpec(StrictModel):
    steps: int = 20
    step_s: float = 0.3
    refuse_resume: bool = False
    seed: int = 0


@register("stepper", StepperSpec)
def stepper(spec: StepperSpec, resume: bytes | None = None) -> Iterator[Event]:
    """Report ``score = step`` every ``step_s`` seconds, each followed by a Checkpoint."""
    start = 0
    if resume is not None:
        if spec.refuse_resume:
            raise CheckpointError("refused: this task's checkpoints are not resumable")
        start = int(resume.decode()) + 1
    for step in range(start, spec.steps):
        time.sleep(spec.step_s)
        yield Metrics(step, {"score": float(step)})
        yield Checkpoint(step, str(step).encode())
    yield Summary({"final": float(spec.steps + spec.seed)})
