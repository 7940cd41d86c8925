"""Learning-rate schedules (so far: constant with optional linear warmup)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from tasks.spec import StrictModel


class ConstantSpec(StrictModel):
    name: Literal["constant"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)


SchedulerSpec = Annotated[ConstantSpec, Field(discriminator="name")]


def build_scheduler(optimizer: torch.optim.Optimizer, spec: ConstantSpec, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler: linear warmup over ``warmup_epochs``, then constant."""
    warm = round(spec.warmup_epochs * steps_per_epoch)
    start = spec.warmup_start_factor

    def factor(step: int) -> float:
        return start + (1 - start) * step / warm if step < warm else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
