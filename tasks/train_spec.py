"""How long and how to train (``TrainSpec``), importable without torch: the driver validates
trials against it; ``tasks.training`` runs them."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from tasks.spec import KeyedSpec

CHECKPOINT_FORMAT = "orch.fit/1"
#: Default cadence: every epoch, at most once a minute (bench/checkpoint.md).
CHECKPOINT_EVERY = 1
CHECKPOINT_MIN_INTERVAL_S = 60.0
#: Spec fields a resumed attempt may change: they say where and how often a trial runs,
#: not what it computes.
RUNTIME_FIELDS = frozenset(
    {"train.device", "train.checkpoint_every", "train.checkpoint_min_interval_s"}
)


class TrainSpec(KeyedSpec):
    """How long and how to train (the what: data, model, optimizer, live beside it)."""

    added_fields = (
        "checkpoint_every",
        "checkpoint_min_interval_s",
        "layer_stats",
        "l1",
        "ema",
        "final_stats",
    )

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    loss_scale: PositiveFloat = 1.0  # multiplies the loss (OPT-6: Adam's scale invariance)
    grad_clip: PositiveFloat | None = None
    diverge_factor: PositiveFloat = 10.0  # x the first batch's loss; a healthy run never gets there
    device: Literal["auto", "cpu", "cuda"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Per-layer statistics at the start of every epoch (epoch 0: at initialisation), see
    # layer_stats(): for the initialisation and activation claims (INIT-*, ACT-*).
    layer_stats: bool = False
    # REG-3: an L1 penalty ``l1 * sum |p|`` over every parameter (the set the optimizer's
    # weight_decay, the L2 penalty, covers), added to the back-propagated loss only: train/loss
    # stays the data loss, comparable across arms (tasks.regularizers).
    l1: NonNegativeFloat = 0.0
    # REG-4: decay of an exponential moving average of the weights, evaluated beside them
    # (val/acc_ema per epoch, test/acc_ema at the end); it reads the weights, never writes them.
    # 0 is the raw weights (the notes' beta = 0, 000:L486-522).
    ema: float | None = Field(None, ge=0, lt=1)
    # REG-2/3: weight sparsity and BN running-vs-eval variance at the end (tasks.regularizers).
    final_stats: bool = False
    checkpoint_every: NonNegativeInt = CHECKPOINT_EVERY  # epochs per Checkpoint; 0 = never
    checkpoint_min_interval_s: NonNegativeFloat = CHECKPOINT_MIN_INTERVAL_S
