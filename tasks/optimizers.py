"""Optimizers with the defaults the notes state (see ``shared/claims.md``).

torch's defaults differ from the notes in places (SGD has no momentum, RMSProp's alpha is
0.99), so every spec sets its values explicitly and the study configs record them.
RMSProp follows notes 000 (decay 0.9, lr 1e-3, eps 1e-8).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, PositiveFloat, model_validator

from tasks.spec import StrictModel

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
    def _nesterov_needs_momentum(self) -> "SGDSpec":
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
    def _correction_switch_is_adams(self) -> "AdamSpec":
        if not self.bias_correction and self.name != "adam":
            raise ValueError("bias_correction=false is implemented for adam only")
        return self


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """The notes' Adam without bias correction: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    w <- w - lr m / (sqrt(v) + eps); L2 weight decay added to g, as torch's Adam does."""

    def __init__(self, params: Iterable[Any], lr: float, betas: tuple[float, float],
                 eps: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None if closure is None else closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss


OptimizerSpec = Annotated[
    SGDSpec | AdagradSpec | AdadeltaSpec | RMSpropSpec | AdamSpec, Field(discriminator="name")]

_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax, "nadam": torch.optim.NAdam,
}


def build_optimizer(params: Iterable[Any], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The torch optimizer a spec names. ``params`` may be tensors or parameter groups
    (dicts with their own ``lr``), as fine-tuning uses."""
    kwargs = spec.model_dump(exclude={"name", "bias_correction"})
    if isinstance(spec, AdamSpec):
        kwargs["betas"] = tuple(kwargs["betas"])
        if not spec.bias_correction:
            return AdamNoBiasCorrection(params, **kwargs)
    return _CLASSES[spec.name](params, **kwargs)
