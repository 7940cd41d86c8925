"""Task family ``classify``: supervised classification on digits or synthetic data.

Used by the optimizer and LR-schedule studies.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tasks import data as datasets
from tasks.events import Event
from tasks.models import ModelSpec, build_model
from tasks.optimizers import OptimizerSpec, build_optimizer
from tasks.registry import register
from tasks.schedules import SchedulerSpec, build_scheduler
from tasks.spec import StrictModel
from tasks.training import TrainSpec, fit, pick_device


class ClassifySpec(StrictModel):
    """A fully resolved classification trial."""

    data: datasets.DataSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec
    train: TrainSpec = TrainSpec()
    seed: int = 0


@register("classify", ClassifySpec)
def run(spec: ClassifySpec) -> Iterator[Event]:
    """Train a classifier from scratch and report per-epoch and final metrics."""
    torch.manual_seed(spec.seed)
    device = pick_device(spec.train.device)
    data = datasets.load(spec.data)
    model = build_model(spec.model, data.input_shape, data.num_classes).to(device)
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    steps_per_epoch = -(-len(data.x_train) // spec.train.batch_size)
    scheduler = build_scheduler(optimizer, spec.scheduler, steps_per_epoch, spec.train.epochs)
    yield from fit(model, data, optimizer, scheduler, spec.train, spec.seed, device)
