"""Optimizers with the defaults the notes state (see ``shared/claims.md``).

torch's defaults differ from the notes in places (SGD has no momentum, RMSProp's alpha is
0.99), so every spec sets its values explicitly and the study configs record them.
RMSProp follows notes 000 (decay 0.9, lr 1e-3, eps 1e-8).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from tasks.spec import StrictModel

if TYPE_CHECKING:
    import torch

Decay = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class SGDSpec(StrictModel):
    """Plain SGD, SGD with momentum, or Nesterov (the notes' "common config": 0.02/0.9/1e-4)."""

    name: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.02
    momentum: Beta = 0.0
    nesterov: bool = False
    dampening: Beta = 0.0
    weight_decay: Decay = 1e-4

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDSpec:
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=true needs momentum > 0 and dampening = 0")
        return self


class AdagradSpec(StrictModel):
    name: Literal["adagrad"] = "adagrad"
    lr: PositiveFloat = 0.01
    eps: PositiveFloat = 1e-10
    weight_decay: Decay = 0.0


class AdadeltaSpec(StrictModel):
    """AdaDelta "has no learning rate": torch's ``lr`` is a multiplier, kept at 1.0."""

    name: Literal["adadelta"] = "adadelta"
    lr: PositiveFloat = 1.0
    rho: Beta = 0.9
    eps: PositiveFloat = 1e-6
    weight_decay: Decay = 0.0


class RMSpropSpec(StrictModel):
    name: Literal["rmsprop"] = "rmsprop"
    lr: PositiveFloat = 1e-3
    alpha: Beta = 0.9
    eps: PositiveFloat = 1e-8
    momentum: Beta = 0.0
    centered: bool = False
    weight_decay: Decay = 0.0


class AdamSpec(StrictModel):
    """Adam and its relatives (``adamw``, ``adamax``, ``nadam``) share the same knobs.

    ``bias_correction: false`` (Adam only) drops the 1/(1-b^t) factors of the notes'
    update (000:L356-380) for claim OPT-7; torch's Adam has no such switch.
    """

    name: Literal["adam", "adamw", "adamax", "nadam"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: Decay = 0.0
    bias_correction: bool = True

    @model_validator(mode="after")
    def _correction_switch_is_adams(self) -> AdamSpec:
        if not self.bias_correction and self.name != "adam":
            raise ValueError("bias_correction=false is implemented for adam only")
        return self


class LBFGSSpec(StrictModel):
    """L-BFGS (OPT-9), a closure-based step: ``tasks.training.fit`` passes it a closure that
    re-evaluates the batch, and each ``step`` may call it several times (up to ``max_iter``
    iterations, more with the line search), all on the same batch. torch's LBFGS has no
    weight decay. The defaults are torch's (the notes give none); ``opt/evals`` counts the
    evaluations each step took."""

    name: Literal["lbfgs"] = "lbfgs"
    lr: PositiveFloat = 1.0
    max_iter: PositiveInt = 20
    history_size: PositiveInt = 100
    line_search_fn: Literal["none", "strong_wolfe"] = "none"


OptimizerSpec = Annotated[
    SGDSpec | AdagradSpec | AdadeltaSpec | RMSpropSpec | AdamSpec | LBFGSSpec,
    Field(discriminator="name"),
]


def build_optimizer(params: Iterable[Any], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The torch optimizer a spec names. ``params`` may be tensors or parameter groups
    (dicts with their own ``lr``), as fine-tuning uses."""
    import torch  # here: specs are validated where torch is not imported (the driver)

    from tasks.adam_nobc import AdamNoBiasCorrection  # a torch Optimizer: worker side too

    classes: dict[str, type[torch.optim.Optimizer]] = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "adadelta": torch.optim.Adadelta,
        "rmsprop": torch.optim.RMSprop,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adamax": torch.optim.Adamax,
        "nadam": torch.optim.NAdam,
    }
    if isinstance(spec, LBFGSSpec):
        return torch.optim.LBFGS(
            params,
            lr=spec.lr,
            max_iter=spec.max_iter,
            history_size=spec.history_size,
            line_search_fn=None if spec.line_search_fn == "none" else spec.line_search_fn,
        )
    kwargs = spec.model_dump(exclude={"name", "bias_correction"})
    if isinstance(spec, AdamSpec):
        kwargs["betas"] = tuple(kwargs["betas"])
        if not spec.bias_correction:
            return AdamNoBiasCorrection(params, **kwargs)
    return classes[spec.name](params, **kwargs)
