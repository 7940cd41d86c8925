"""Task family ``classify``: supervised classification on digits or synthetic data.

Used by the optimizer and LR-schedule studies. The spec (``ClassifySpec``, re-exported here)
and the registration live in ``tasks.builtin``, without torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tasks import data as datasets
from tasks import distributed
from tasks.builtin import ClassifySpec
from tasks.events import Event
from tasks.models import build_model
from tasks.optimizers import build_optimizer
from tasks.schedules import build_scheduler
from tasks.training import fit, pick_device


def run(
    spec: ClassifySpec, dist: distributed.DistContext | None = None, resume: bytes | None = None
) -> Iterator[Event]:
    """Train a classifier from scratch and report per-epoch and final metrics.

    With ``dist`` (one rank of a data-parallel trial) the model is DDP-wrapped (its BNs
    synced for ``norm: syncbn``), each rank trains on its shard of every global batch of
    ``world_size * train.batch_size`` and the metrics are global (all-reduced).

    Yields a Checkpoint every ``train.checkpoint_every`` epochs, at most once per
    ``train.checkpoint_min_interval_s``; ``resume`` (one's state) continues after its epoch
    (``tasks.training.fit``).
    """
    torch.manual_seed(spec.seed)  # same seed on every rank: identical initial weights
    device = dist.device if dist is not None else pick_device(spec.train.device)
    data = datasets.load(spec.data)
    model: nn.Module = build_model(spec.model, data.input_shape, data.num_classes).to(device)
    model = distributed.prepare_model(model, spec.model.norm, dist, device)
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    global_batch = spec.train.batch_size * (dist.world_size if dist is not None else 1)
    steps_per_epoch = -(-len(data.x_train) // global_batch)
    scheduler = build_scheduler(optimizer, spec.scheduler, steps_per_epoch, spec.train.epochs)
    yield from fit(
        model,
        data,
        optimizer,
        scheduler,
        spec.train,
        spec.seed,
        device,
        dist=dist,
        resume=resume,
        config=spec.model_dump(mode="json"),
    )
