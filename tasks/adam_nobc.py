"""Adam without bias correction (the notes' update for claim OPT-7); torch's Adam has no
switch for it. Imported only where an optimizer is built (a worker), never for specs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """The notes' Adam without bias correction: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    w <- w - lr m / (sqrt(v) + eps); L2 weight decay added to g, as torch's Adam does."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

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
