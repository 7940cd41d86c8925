"""Learning-rate schedules: one validated spec per family and one builder.

A schedule is a *multiplier* of the optimizer's configured LR (each param group's ``lr``):
the optimizer spec owns the LR, and per-group LRs (discriminative fine-tuning) keep their
ratios. :func:`build_scheduler` returns a torch ``LRScheduler`` stepped once per optimizer
step; :func:`lr_multipliers` lists the multiplier at every step (plots, tests).

Units: every time-like parameter (``decay_steps``, ``first_decay_steps``, ``boundaries``,
``milestones``, ``step_size``, ``step_size_up/down``, ``warmup_epochs``) is in EPOCHS, floats
allowed, so one config fits any dataset and batch size. The builder converts with
``steps_per_epoch`` and rounds to the nearest step (at least one). Parameter names follow
TensorFlow's ``tf.train.*_decay`` as quoted in the notes (002:L1377-1481) even where the unit
is epochs: ``decay_steps: 2.0`` means two epochs. ``cyclic.gamma`` is a factor per epoch.
The one clock kept in steps is ``noisy_linear_cosine``'s noise variance, which TF decays per
draw, i.e. per step.

Families, with t the step since the family started and D = ``decay_steps`` in steps
(``null`` = the rest of the run):

torch's own schedulers
  constant           1                                                  (LambdaLR)
  step               gamma^floor(t/step_size)                           (StepLR)
  multistep          gamma^(milestones passed)                          (MultiStepLR)
  exponential        decay_rate^(t/D), floor(t/D) if staircase          (ExponentialLR, StepLR)
  natural_exp        exp(-decay_rate*t/D), floor(t/D) if staircase      (ExponentialLR, StepLR)
  polynomial         (1-min(t,D)/D)^power when end_factor=0, no cycle   (PolynomialLR)
  cosine             alpha + (1-alpha)*(1+cos(pi*min(t,D)/D))/2         (CosineAnnealingLR)
  cosine_restarts    SGDR, period first_decay_steps*t_mul^i, m_mul=1    (CosineAnnealingWarm-
                                                                        Restarts)
  onecycle           Smith's 1cycle; the optimizer's LR is the peak     (OneCycleLR)
  cyclic             triangular / triangular2 / exp_range between
                     base_factor*LR and LR                              (CyclicLR)
ours (LambdaLR around the pure functions below, TF's formulas)
  piecewise_constant values[i] between boundaries
  inverse_time       1/(1+decay_rate*t/D), floor(t/D) if staircase
  polynomial         (1-end_factor)*(1-t/D')^power + end_factor; cycle: D' = D*ceil(t/D)
  cosine, cosine_restarts   where torch cannot express the spec (the decay ends before the
                     run does, m_mul != 1, a fractional t_mul, or alpha > 0 with per-group LRs)
  linear_cosine      (alpha + (D-t)/D) * (1+cos(2*pi*num_periods*t/D))/2 + beta
  noisy_linear_cosine  linear_cosine with N(0, initial_variance/(1+t)^variance_decay) noise
                     added to the linear term; seeded by ``seed``

Warmup (every family): ``warmup_epochs`` of linear warmup (LinearLR) from
``warmup_start_factor`` up to the family's first LR, then the family (SequentialLR). The
family's clock starts when warmup ends: its times count from there, and ``null`` durations
and onecycle's length mean the steps left after warmup.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Annotated, Literal, assert_never

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from tasks.spec import StrictModel

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler as lrs

# Finite numbers only: an ``inf`` duration would pass ``gt=0`` and then fail in round().
Epochs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Factor = Annotated[float, Field(gt=0, le=1)]  # a multiplicative decay per period
Floor = Annotated[float, Field(ge=0, lt=1)]  # a floor as a fraction of the LR


def _increasing(v: tuple[float, ...]) -> tuple[float, ...]:
    if any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError(f"must be strictly increasing, got {list(v)}")
    return v


Points = Annotated[tuple[Epochs, ...], Field(min_length=1), AfterValidator(_increasing)]


class _Warmup(StrictModel):
    """Fields every family has: a linear warmup composed in front of it."""

    warmup_epochs: NonNegative = 0.0
    warmup_start_factor: Factor = 0.01


class ConstantSpec(_Warmup):
    name: Literal["constant"] = "constant"


class StepSpec(_Warmup):
    """Multiply the LR by ``gamma`` every ``step_size`` epochs.

    Defaults here and in the decay families below end at 0.01 x LR over 20 epochs (the
    lr_schedules study's budget), so that LR-3 compares shapes, not how far each decays."""

    name: Literal["step"] = "step"
    step_size: Epochs = 7.0
    gamma: Factor = 0.1


class MultiStepSpec(_Warmup):
    """Multiply the LR by ``gamma`` at each milestone (epochs); the ResNet recipe (LR-4),
    milestones at 50% and 75% of 20 epochs."""

    name: Literal["multistep"] = "multistep"
    milestones: Points = (10.0, 15.0)
    gamma: Factor = 0.1


class ExponentialSpec(_Warmup):
    """TF ``exponential_decay``, per epoch: 0.794^20 = 0.01 (TF's docstring example 0.96
    ended at 0.44)."""

    name: Literal["exponential"] = "exponential"
    decay_steps: Epochs = 1.0
    decay_rate: Factor = 0.794
    staircase: bool = False


class NaturalExpSpec(_Warmup):
    """TF ``natural_exp_decay``: exp(-1.15 * 20/5) = 0.01 (TF's docstring example k=0.5
    ended at 0.14)."""

    name: Literal["natural_exp"] = "natural_exp"
    decay_steps: Epochs = 5.0
    decay_rate: Positive = 1.15
    staircase: bool = False


class PiecewiseConstantSpec(_Warmup):
    """TF ``piecewise_constant``; ``values`` are multipliers of the optimizer's LR.

    ``values[i]`` holds from ``boundaries[i-1]`` (inclusive) to ``boundaries[i]``: the switch
    happens at the boundary's first step, as MultiStepLR's milestones do (TF switches one
    step later, after ``x <= boundary``), so a boundary of 5.0 is the start of epoch 5.
    """

    name: Literal["piecewise_constant"] = "piecewise_constant"
    boundaries: Points = (5.0, 8.0)
    values: tuple[Positive, ...] = (1.0, 0.1, 0.01)

    @field_validator("values")
    @classmethod
    def _one_more_than_boundaries(
        cls, v: tuple[float, ...], info: ValidationInfo
    ) -> tuple[float, ...]:
        boundaries = info.data.get("boundaries")  # absent when boundaries itself was invalid
        if boundaries is not None and len(v) != len(boundaries) + 1:
            raise ValueError(
                f"needs one more entry than boundaries ({len(boundaries) + 1}), got {len(v)}"
            )
        return v


class PolynomialSpec(_Warmup):
    """TF ``polynomial_decay``. ``end_factor`` = end_learning_rate / LR, 0.01 like the other
    families (TF's 1e-4 at the notes' 0.02 would be 0.005). ``decay_steps: null`` = the rest
    of the run."""

    name: Literal["polynomial"] = "polynomial"
    decay_steps: Epochs | None = None
    end_factor: Floor = 0.01
    power: Positive = 1.0
    cycle: bool = False


class InverseTimeSpec(_Warmup):
    """TF ``inverse_time_decay``: 1/(1 + 4.95 * 20) = 0.01 (TF's docstring example 0.5
    ended at 0.09)."""

    name: Literal["inverse_time"] = "inverse_time"
    decay_steps: Epochs = 1.0
    decay_rate: Positive = 4.95
    staircase: bool = False


class CosineSpec(_Warmup):
    """TF ``cosine_decay``: down to ``alpha`` x LR at ``decay_steps`` (null = end of run)."""

    name: Literal["cosine"] = "cosine"
    decay_steps: Epochs | None = None
    alpha: Floor = 0.01


class CosineRestartsSpec(_Warmup):
    """TF ``cosine_decay_restarts`` (SGDR): periods ``first_decay_steps * t_mul^i``, the i-th
    restart peaking at ``m_mul^i``. The first period of 4/3 epochs makes the fourth period
    end at 20 epochs (4/3 * (1+2+4+8)), so a run of that length ends a cycle, as cosine does."""

    name: Literal["cosine_restarts"] = "cosine_restarts"
    first_decay_steps: Epochs = 1.3333
    t_mul: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    m_mul: Factor = 1.0
    alpha: Floor = 0.01


class _LinearCosine(_Warmup):
    decay_steps: Epochs | None = None
    num_periods: Positive = 0.5
    alpha: NonNegative = 0.0
    beta: NonNegative = 0.01  # the end multiplier (num_periods 0.5), 0.01 like the others


class LinearCosineSpec(_LinearCosine):
    """TF ``linear_cosine_decay`` (from RL, the notes say)."""

    name: Literal["linear_cosine"] = "linear_cosine"


class NoisyLinearCosineSpec(_LinearCosine):
    """TF ``noisy_linear_cosine_decay``. The noise at step t depends only on (seed, t)."""

    name: Literal["noisy_linear_cosine"] = "noisy_linear_cosine"
    initial_variance: NonNegative = 1.0
    variance_decay: NonNegative = 0.55
    seed: int = 0


class OneCycleSpec(_Warmup):
    """torch ``OneCycleLR`` over the run; the optimizer's LR is the peak (``max_lr``).
    Momentum is not cycled: the schedule changes the LR only."""

    name: Literal["onecycle"] = "onecycle"
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 25.0
    final_div_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 1e4
    three_phase: bool = False


class CyclicSpec(_Warmup):
    """torch ``CyclicLR`` between ``base_factor`` x LR and LR. ``step_size_up`` of 2 epochs is
    the low end of Smith's 2-10 epochs; ``gamma`` (per epoch) is used by exp_range only."""

    name: Literal["cyclic"] = "cyclic"
    base_factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    step_size_up: Epochs = 2.0
    step_size_down: Epochs | None = None
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: Factor = 0.9


SchedulerSpec = Annotated[
    ConstantSpec
    | StepSpec
    | MultiStepSpec
    | ExponentialSpec
    | NaturalExpSpec
    | PiecewiseConstantSpec
    | PolynomialSpec
    | InverseTimeSpec
    | CosineSpec
    | CosineRestartsSpec
    | LinearCosineSpec
    | NoisyLinearCosineSpec
    | OneCycleSpec
    | CyclicSpec,
    Field(discriminator="name"),
]


# --- pure multiplier functions (step -> factor); all durations in steps ---


def constant(step: int) -> float:
    """1.0 at every step."""
    return 1.0


def piecewise_constant(step: int, boundaries: Sequence[int], values: Sequence[float]) -> float:
    """``values[i]`` where i = number of boundaries at or before ``step``."""
    return values[bisect_right(boundaries, step)]


def inverse_time_decay(
    step: int, decay_steps: int, decay_rate: float, staircase: bool = False
) -> float:
    """TF: 1 / (1 + decay_rate * p), p = step/decay_steps (floored if staircase)."""
    p = step / decay_steps
    return 1.0 / (1.0 + decay_rate * (math.floor(p) if staircase else p))


def polynomial_decay(
    step: int, decay_steps: int, power: float = 1.0, end_factor: float = 0.0, cycle: bool = False
) -> float:
    """TF: (1-end)(1 - t/D)^power + end. With ``cycle``, D grows to the next multiple of
    ``decay_steps`` past t, so each cycle restarts from a lower peak (~(1/k)^power)."""
    if cycle:
        decay_steps *= max(1, math.ceil(step / decay_steps))  # TF: multiplier 1 at step 0
    else:
        step = min(step, decay_steps)
    return (1.0 - end_factor) * (1.0 - step / decay_steps) ** power + end_factor


def cosine_decay(step: int, decay_steps: int, alpha: float = 0.0) -> float:
    """TF: half a cosine from 1 to ``alpha`` over ``decay_steps``, then ``alpha``."""
    p = min(step, decay_steps) / decay_steps
    return alpha + (1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * p))


def cosine_decay_restarts(
    step: int, first_decay_steps: int, t_mul: float = 2.0, m_mul: float = 1.0, alpha: float = 0.0
) -> float:
    """TF (SGDR): cosine periods of ``first_decay_steps * t_mul^i``; restart i peaks at
    ``m_mul^i`` (above the ``alpha`` floor)."""
    # Walk the periods instead of TF's log(): exact at the boundaries, where log() can
    # land on the wrong side of an integer.
    start, period, i = 0.0, float(first_decay_steps), 0
    while step >= start + period:
        start, period, i = start + period, period * t_mul, i + 1
    cos = 0.5 * (m_mul**i) * (1.0 + math.cos(math.pi * (step - start) / period))
    return alpha + (1.0 - alpha) * cos


def linear_cosine_decay(
    step: int, decay_steps: int, num_periods: float = 0.5, alpha: float = 0.0, beta: float = 0.001
) -> float:
    """TF: (alpha + linear) * cosine + beta; note it starts at 1 + beta, as TF's does."""
    t = min(step, decay_steps)
    linear = (decay_steps - t) / decay_steps
    return (alpha + linear) * _cos_periods(t, decay_steps, num_periods) + beta


def noisy_linear_cosine_decay(
    step: int,
    decay_steps: int,
    initial_variance: float = 1.0,
    variance_decay: float = 0.55,
    num_periods: float = 0.5,
    alpha: float = 0.0,
    beta: float = 0.001,
    seed: int = 0,
) -> float:
    """TF's linear_cosine with N(0, initial_variance / (1+t)^variance_decay) added to the
    linear term. The noisy term is clipped at 0 (TF's is not): at the default variance it
    is negative ~16% of the time early on, which would make the LR negative."""
    t = min(step, decay_steps)
    std = math.sqrt(initial_variance / (1.0 + t) ** variance_decay)
    # A generator per (seed, step): the value is a function of the step, whatever the
    # order or number of calls (string seeds hash with SHA-512, stable across processes).
    z = random.Random(f"noisy_linear_cosine:{seed}:{step}").gauss(0.0, 1.0)
    linear = max(0.0, (decay_steps - t) / decay_steps + std * z)
    return (alpha + linear) * _cos_periods(t, decay_steps, num_periods) + beta


def _cos_periods(t: int, decay_steps: int, num_periods: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_periods * t / decay_steps))


# --- builder ---


def _steps(epochs: float, steps_per_epoch: int) -> int:
    """A duration in epochs as a whole number of steps, at least one."""
    return max(1, round(epochs * steps_per_epoch))


def _points(field: str, epochs: Sequence[float], steps_per_epoch: int) -> list[int]:
    """Increasing epoch points as steps; two points rounding onto one step is an error."""
    steps = [_steps(e, steps_per_epoch) for e in epochs]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(
            f"{field}: {list(epochs)} epochs fall on the same step at "
            f"{steps_per_epoch} steps per epoch; space them further apart"
        )
    return steps


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, steps_per_epoch: int, epochs: int
) -> lrs.LRScheduler:
    """The scheduler ``spec`` describes for a run of ``epochs`` x ``steps_per_epoch`` steps,
    to be stepped after every optimizer step. Build it once, on a fresh optimizer."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}"
        )
    total = steps_per_epoch * epochs
    warmup = _steps(spec.warmup_epochs, steps_per_epoch) if spec.warmup_epochs > 0 else 0
    if warmup >= total:
        raise ValueError(
            f"warmup_epochs: {spec.warmup_epochs} epochs of warmup leave no step "
            f"of the {epochs}-epoch run to the {spec.name} schedule"
        )
    # The family is built first: OneCycleLR and CyclicLR set the groups' starting LR
    # ("initial_lr"), which SequentialLR restores and the warmup then ramps up to, so the
    # hand-over is continuous for every family.
    family = _family(optimizer, spec, steps_per_epoch, total - warmup)
    if warmup == 0:
        return family
    from torch.optim import lr_scheduler as lrs  # here: the specs are importable without torch

    ramp = lrs.LinearLR(
        optimizer, start_factor=spec.warmup_start_factor, end_factor=1.0, total_iters=warmup
    )
    return lrs.SequentialLR(optimizer, [ramp, family], milestones=[warmup])


def _family(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, spe: int, steps: int
) -> lrs.LRScheduler:
    """The family's own scheduler over ``steps`` steps (the run after warmup)."""
    from torch.optim import lr_scheduler as lrs

    peaks = [float(g["lr"]) for g in optimizer.param_groups]
    # torch's eta_min is an absolute LR, one for all groups: alpha*LR fits only if the
    # groups share one LR (or alpha is 0).
    eta_min = spec.alpha * peaks[0] if isinstance(spec, CosineSpec | CosineRestartsSpec) else 0.0
    floor_fits = eta_min == 0.0 or len(set(peaks)) == 1

    def span(epochs: float | None) -> int:
        return steps if epochs is None else _steps(epochs, spe)

    def ours(fn: partial[float]) -> lrs.LRScheduler:
        return lrs.LambdaLR(optimizer, fn)

    match spec:
        case ConstantSpec():
            return ours(partial(constant))
        case StepSpec():
            return lrs.StepLR(optimizer, _steps(spec.step_size, spe), spec.gamma)
        case MultiStepSpec():
            return lrs.MultiStepLR(
                optimizer, _points("milestones", spec.milestones, spe), spec.gamma
            )
        case ExponentialSpec() | NaturalExpSpec():
            d = span(spec.decay_steps)
            # natural_exp is exponential with base e^-decay_rate per decay period.
            base = (
                spec.decay_rate if isinstance(spec, ExponentialSpec) else math.exp(-spec.decay_rate)
            )
            if spec.staircase:
                return lrs.StepLR(optimizer, d, base)
            return lrs.ExponentialLR(optimizer, base ** (1.0 / d))
        case PiecewiseConstantSpec():
            return ours(
                partial(
                    piecewise_constant,
                    boundaries=_points("boundaries", spec.boundaries, spe),
                    values=spec.values,
                )
            )
        case PolynomialSpec():
            d = span(spec.decay_steps)
            if not spec.cycle and spec.end_factor == 0:
                return lrs.PolynomialLR(optimizer, total_iters=d, power=spec.power)
            return ours(
                partial(
                    polynomial_decay,
                    decay_steps=d,
                    power=spec.power,
                    end_factor=spec.end_factor,
                    cycle=spec.cycle,
                )
            )
        case InverseTimeSpec():
            return ours(
                partial(
                    inverse_time_decay,
                    decay_steps=span(spec.decay_steps),
                    decay_rate=spec.decay_rate,
                    staircase=spec.staircase,
                )
            )
        case CosineSpec():
            d = span(spec.decay_steps)
            # CosineAnnealingLR climbs back after T_max; TF holds the floor, so torch's
            # fits only when the decay lasts the whole run.
            if d >= steps and floor_fits:
                return lrs.CosineAnnealingLR(optimizer, T_max=d, eta_min=eta_min)
            return ours(partial(cosine_decay, decay_steps=d, alpha=spec.alpha))
        case CosineRestartsSpec():
            d = span(spec.first_decay_steps)
            # torch's SGDR has no m_mul and takes an integer T_mult only.
            if spec.m_mul == 1 and spec.t_mul.is_integer() and floor_fits:
                return lrs.CosineAnnealingWarmRestarts(
                    optimizer, T_0=d, T_mult=int(spec.t_mul), eta_min=eta_min
                )
            return ours(
                partial(
                    cosine_decay_restarts,
                    first_decay_steps=d,
                    t_mul=spec.t_mul,
                    m_mul=spec.m_mul,
                    alpha=spec.alpha,
                )
            )
        case LinearCosineSpec():
            return ours(
                partial(
                    linear_cosine_decay,
                    decay_steps=span(spec.decay_steps),
                    num_periods=spec.num_periods,
                    alpha=spec.alpha,
                    beta=spec.beta,
                )
            )
        case NoisyLinearCosineSpec():
            return ours(
                partial(
                    noisy_linear_cosine_decay,
                    decay_steps=span(spec.decay_steps),
                    initial_variance=spec.initial_variance,
                    variance_decay=spec.variance_decay,
                    num_periods=spec.num_periods,
                    alpha=spec.alpha,
                    beta=spec.beta,
                    seed=spec.seed,
                )
            )
        case OneCycleSpec():
            return lrs.OneCycleLR(
                optimizer,
                max_lr=peaks,
                total_steps=steps,
                pct_start=spec.pct_start,
                anneal_strategy=spec.anneal_strategy,
                div_factor=spec.div_factor,
                final_div_factor=spec.final_div_factor,
                three_phase=spec.three_phase,
                cycle_momentum=False,
            )
        case CyclicSpec():
            down = None if spec.step_size_down is None else _steps(spec.step_size_down, spe)
            # cycle_momentum=False: torch's default needs a momentum/betas optimizer
            # (Adagrad has neither) and would overwrite the optimizer's momentum.
            return lrs.CyclicLR(
                optimizer,
                base_lr=[spec.base_factor * p for p in peaks],
                max_lr=peaks,
                step_size_up=_steps(spec.step_size_up, spe),
                step_size_down=down,
                mode=spec.mode,
                gamma=spec.gamma ** (1.0 / spe),
                cycle_momentum=False,
            )
        case _:
            assert_never(spec)


def lr_multipliers(spec: SchedulerSpec, steps_per_epoch: int, epochs: int) -> list[float]:
    """The LR multiplier used at each of the run's steps, by driving a throwaway SGD
    optimizer (LR 1) through :func:`build_scheduler`."""
    import torch

    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, spec, steps_per_epoch, epochs)
    out: list[float] = []
    for _ in range(steps_per_epoch * epochs):
        out.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient, so a no-op; torch warns if the scheduler steps first
        scheduler.step()
    return out
