"""Regularisers and the statistics that show what they do (claims REG-2..4 of the notes).

* :func:`l1_penalty`: ``sum |p|`` over the parameters, for ``train.l1`` (REG-3: L1 sparsifies,
  L2, the optimizer's weight_decay, shrinks).
* :func:`near_zero_fraction` and :func:`weight_rms`: what that does to the weight matrices.
* :class:`WeightEMA`: the notes' moving average of the weights with bias correction, for
  ``train.ema`` (REG-4: the averaged weights evaluate better).
* :func:`bn_variance_shift`: how far each BatchNorm's running variance is from the variance
  its input has at evaluation (REG-2: dropout right before BN shifts it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: |w| below this counts as zero (REG-3). About 1% of the default init's scale for the
#: widths in use (1/sqrt(fan_in): 0.125 for the 64 pixels, 0.0625 for 256 units), and above
#: the jitter of an SGD step on an L1-zeroed weight (lr * l1, 1e-5 at the study's values).
NEAR_ZERO = 1e-3


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum |p|`` over every element of ``params`` (differentiable; its gradient is sign(p))."""
    return torch.stack([p.abs().sum() for p in params]).sum()


def _weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The connection weights (Linear and conv kernels: 2 or more dimensions), not biases or
    norm scales, which are few and are not what "sparse weights" means."""
    return [p.detach() for name, p in model.named_parameters() if p.dim() >= 2]


def near_zero_fraction(model: nn.Module, threshold: float = NEAR_ZERO) -> float:
    """Fraction of the weight matrices' entries with ``|w| < threshold``."""
    w = torch.cat([t.flatten() for t in _weight_matrices(model)])
    return (w.abs() < threshold).float().mean().item()


def weight_rms(model: nn.Module) -> float:
    """Root mean square of the weight matrices' entries (the size L2 shrinks)."""
    w = torch.cat([t.flatten() for t in _weight_matrices(model)])
    return w.pow(2).mean().sqrt().item()


class WeightEMA:
    """The notes' moving average (000:L486-522): ``v_t = decay * v_{t-1} + (1 - decay) * theta_t``
    from ``v_0 = 0``, read bias-corrected as ``v_t / (1 - decay ** t)`` after ``t`` updates.

    Over every floating-point entry of the state dict: parameters and BN's running statistics
    alike (they belong to the weights they were measured with); integer buffers (BN's batch
    count) are the live model's. ``decay = 0`` is exactly the live weights. The average only
    reads the model, so a run with it trains bitwise as one without.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.shadow = {
            k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()
        }
        self._copy = copy.deepcopy(model)  # the module the averaged weights are loaded into

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights in (after each optimizer step)."""
        self.steps += 1
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(self.decay).add_(v, alpha=1 - self.decay)

    @torch.no_grad()
    def averaged(self, model: nn.Module) -> nn.Module:
        """A module with the bias-corrected average (the live ``model``'s own weights before
        the first update); reused between calls, so evaluate it before the next one."""
        correction = 1 - self.decay**self.steps
        state = model.state_dict()
        for k, v in self._copy.state_dict().items():
            if k in self.shadow and self.steps:
                v.copy_(self.shadow[k] / correction)
            else:
                v.copy_(state[k])
        return self._copy

    def state_dict(self) -> dict[str, object]:
        """The average's state, for a checkpoint."""
        return {"steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object] | None) -> None:
        """Restore what :meth:`state_dict` returned; another model's state is a ValueError."""
        steps, shadow = (state or {}).get("steps"), (state or {}).get("shadow")
        if not isinstance(steps, int) or not isinstance(shadow, dict):
            raise ValueError("no weight-average state (steps, shadow) to restore")
        if shadow.keys() != self.shadow.keys():
            raise ValueError(
                f"the weight average has entries {sorted(shadow)}, the model {sorted(self.shadow)}"
            )
        self.steps = steps
        for k, v in shadow.items():
            self.shadow[k].copy_(v)


@torch.no_grad()
def bn_variance_shift(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """``bn/<k>/var_shift`` for the k-th BatchNorm of ``model`` (k from 0, in module order):
    the mean over its channels of ``|log((running_var + eps) / (var + eps))|``, where ``var``
    is the variance of the layer's input over all of ``x`` in eval mode (dropout off).

    ``running_var + eps`` is what BN divides by at evaluation and ``var + eps`` what it would
    need to normalise this input, so the ratio is the scale error it applies (squared); 0 when
    they agree. The RNG and the model's mode and buffers are left as they were.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    inputs: dict[int, torch.Tensor] = {}

    def keep(k: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[k] = args[0].detach()

        return hook

    handles = [m.register_forward_pre_hook(keep(k)) for k, m in enumerate(bns)]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: dict[str, float] = {}
    for k, m in enumerate(bns):
        a = inputs[k].transpose(0, 1).flatten(1)  # channels x (examples * positions)
        var = a.var(dim=1, unbiased=True)
        running = m.running_var
        assert running is not None
        ratio = (running + m.eps) / (var + m.eps)
        out[f"bn/{k}/var_shift"] = ratio.log().abs().mean().item()
    return out
