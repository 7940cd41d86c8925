"""The step an adaptive optimizer takes per unit gradient, read from its state (OPT-3, OPT-4).

AdaGrad divides by the root of a *sum* of squared gradients, so each coordinate's step can
only shrink; RMSProp and AdaDelta divide by a moving average, which forgets. The loop logs
the median over every coordinate of every parameter as ``opt/eff_lr`` after each epoch. The
median, not the mean: a coordinate that never saw a gradient (a weight on an input that is
always 0, a dead unit) has AdaGrad step lr/eps = 1e8 and would be the mean; and since an
order statistic of coordinates that each only shrink only shrinks, the median keeps the
property the claim is about.
"""

from __future__ import annotations

import torch

_ADAPTIVE = (torch.optim.Adagrad, torch.optim.RMSprop, torch.optim.Adadelta)


def effective_lr(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"opt/eff_lr": median per-coordinate step per unit gradient}`` for AdaGrad, RMSProp
    and AdaDelta once they have state; ``{}`` for other optimizers or before the first step."""
    if not isinstance(optimizer, _ADAPTIVE):  # others keep no "step" (SGD's momentum, L-BFGS)
        return {}
    steps: list[torch.Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or float(state["step"]) == 0:  # AdaGrad has state before its first step
                continue
            if isinstance(optimizer, torch.optim.Adagrad):
                # torch's lr decay: lr / (1 + (t - 1) * lr_decay); eps outside the root.
                lr = group["lr"] / (1 + (float(state["step"]) - 1) * group["lr_decay"])
                steps.append(lr / (state["sum"].sqrt() + group["eps"]))
            elif isinstance(optimizer, torch.optim.RMSprop):
                avg = state["square_avg"]
                if group["centered"]:
                    avg = avg - state["grad_avg"] ** 2
                steps.append(group["lr"] / (avg.sqrt() + group["eps"]))
            elif isinstance(optimizer, torch.optim.Adadelta):
                eps = group["eps"]
                delta, avg = state["acc_delta"], state["square_avg"]
                steps.append(group["lr"] * (delta + eps).sqrt() / (avg + eps).sqrt())
    if not steps:
        return {}
    return {"opt/eff_lr": torch.cat([s.flatten() for s in steps]).median().item()}
