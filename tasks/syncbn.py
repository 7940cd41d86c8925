"""Synchronized BatchNorm on CPU over ``torch.distributed`` (gloo), for data-parallel trials.

torch's ``nn.SyncBatchNorm`` only runs on accelerators (its kernels, ``batch_norm_stats`` and
friends, have no CPU implementation), so CPU data-parallel trials need their own.

The math. Each rank holds a shard ``x_r`` of the global batch. Per channel ``c`` it computes its
local ``sum_r = sum(x_r)``, ``sumsq_r = sum(x_r ** 2)`` and element count ``n_r`` (batch times
spatial size), packs them into one ``2C + 1`` vector and all-reduces it (SUM), so every rank
gets the global ``S1``, ``S2`` and ``N`` in a single collective. Then

    mean = S1 / N,   var = S2 / N - mean ** 2   (biased: what normalises the batch),
    y    = (x - mean) / sqrt(var + eps) * weight + bias.

Using the global count ``N`` (rather than averaging per-rank means) is what makes uneven shards,
empty ones included, exact. The sums are accumulated in float64 because ``E[x^2] - E[x]^2``
cancels catastrophically in float32 when ``|mean| >> std``.

The backward pass is plain autograd through the expression above. The one non-local step is
the all-reduce, which is an autograd Function whose backward all-reduces the incoming gradient
too: ``S = sum_r s_r`` appears in every rank's loss, so ``d(sum_r L_r)/d s_q = sum_r dL_r/dS``.
Hence each rank's input gradient is exactly its slice of the gradient of BatchNorm over the
concatenated global batch (with global loss = sum of the ranks' losses), and the local
``weight``/``bias`` gradients sum over ranks to the global ones (DDP's average is that sum
divided by the world size, as for every other parameter). Forward costs one all-reduce of
``2C + 1`` numbers per layer, backward one more.

Running statistics follow torch's convention exactly: ``running = (1 - m) * running + m * stat``
with momentum ``m`` (or ``1 / num_batches_tracked`` when ``momentum is None``, a cumulative
average), ``running_var`` takes the unbiased variance ``var * N / (N - 1)`` of the global batch,
and ``num_batches_tracked`` counts training forwards. Eval mode uses the running statistics and
does no communication. Without an initialised process group, or with a world size of 1, the
module is exactly torch's BatchNorm (``F.batch_norm``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "SyncBatchNorm",
    "all_reduce_sum",
    "convert_for_device",
    "convert_sync_batchnorm",
    "sync_batch_norm",
]


class _AllReduceSum(torch.autograd.Function):
    """SUM all-reduce whose backward is a SUM all-reduce of the gradient.

    ``torch.distributed.all_reduce`` is in place and invisible to autograd; this wrapper makes
    the global statistics differentiable with respect to every rank's local contribution.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone()  # all_reduce works in place; never clobber an autograd input
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank must enter this collective, in the same order, or the group deadlocks.
        # Autograd materialises a zero gradient when this rank's loss ignores the output, so
        # the call happens as long as the output took part in the backward graph at all.
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def all_reduce_sum(tensor: Tensor, group: Any = None) -> Tensor:
    """Differentiable SUM all-reduce over ``group`` (default: the world); returns a new tensor."""
    return _AllReduceSum.apply(tensor, group)


def sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    process_group: Any = None,
) -> Tensor:
    """Training-mode batch norm with statistics over the whole ``process_group``.

    Every rank of the group must call this, with the same channel count, for each forward.
    ``momentum`` is the exponential-average factor already resolved by the caller (torch's
    ``exponential_average_factor``); the running buffers, when given, are updated in place.
    Raises ``ValueError`` (on every rank alike) when the global batch has a single value per
    channel, as torch's BatchNorm does.
    """
    channels = input.size(1)
    reduce_dims = [0, *range(2, input.dim())]
    # float64 sums: one all-reduce of (sum, sumsq) needs E[x^2] - E[x]^2, which loses all
    # precision in float32 when the mean is large relative to the spread.
    acc = input.to(torch.float64)
    count = torch.full(
        (1,), input.numel() // channels if channels else 0, dtype=torch.float64, device=input.device
    )
    local = torch.cat([acc.sum(reduce_dims), (acc * acc).sum(reduce_dims), count])
    stats = all_reduce_sum(local, process_group)
    total = stats[2 * channels].detach()  # the count is data-independent: no gradient
    n = float(total.item())
    if n <= 1:
        # Every rank sees the same global count, so they all raise together (no hang).
        raise ValueError(
            f"Expected more than 1 value per channel when training, got {int(n)} "
            "over the process group"
        )
    mean = stats[:channels] / n
    # clamp: rounding can push a constant channel's variance a hair below zero.
    var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)

    if running_mean is not None and running_var is not None:
        with torch.no_grad():  # torch's BN updates buffers outside autograd too
            running_mean.mul_(1.0 - momentum).add_(
                mean.detach().to(running_mean.dtype), alpha=momentum
            )
            unbiased = var.detach() * (n / (n - 1.0))
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)

    # Normalise in the input's precision (float32 for half types, like torch's CPU kernel);
    # only the reductions above needed float64.
    compute = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    shape = [1, channels] + [1] * (input.dim() - 2)
    scale = torch.rsqrt(var + eps).to(compute)
    if weight is not None:
        scale = scale * weight.to(compute)
    out = (input.to(compute) - mean.to(compute).view(shape)) * scale.view(shape)
    if bias is not None:
        out = out + bias.to(compute).view(shape)
    return out.to(input.dtype)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span a process group; works on CPU (gloo).

    Same constructor as ``torch.nn.SyncBatchNorm``. Accepts any input of at least 2
    dimensions ``(N, C, *)``. When ``torch.distributed`` is not initialised, the group has one
    member, or the module is in eval mode, it is exactly torch's BatchNorm and communicates
    nothing. In training with a larger group, every rank must run the forward (and, if any
    does, the backward) of every SyncBatchNorm layer in the same order, like any collective.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _world_size(self) -> int:
        """Size of the group to synchronise over; 1 when torch.distributed is not set up."""
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` with group-wide batch statistics (training) or running ones."""
        self._check_input_dim(input)
        if input.size(1) != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels, got input of shape {tuple(input.shape)}"
            )

        # Same bookkeeping as torch's _BatchNorm.forward, so running stats match it exactly.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )

        # Batch statistics in training, and in eval only when there are no running buffers.
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None

        # Sync only in training (eval never communicates, as in torch's SyncBatchNorm).
        if not (self.training and self._world_size() > 1):
            return F.batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                bn_training,
                factor,
                self.eps,
            )
        return sync_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            factor,
            self.eps,
            self.process_group,
        )


def _convert(module: nn.Module, make: Any) -> nn.Module:
    """Replace every ``_BatchNorm`` in ``module`` by ``make(bn)``, sharing params and buffers."""
    out = module
    if isinstance(module, _BatchNorm):
        out = make(module)
        if module.affine:
            # Share the Parameter objects (torch does the same): an optimizer built earlier
            # still points at the live weights.
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert(child, make))
    return out


def convert_sync_batchnorm(module: nn.Module, process_group: Any | None = None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` with :class:`SyncBatchNorm`.

    Mirrors ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: weights, biases and running
    buffers are shared (not copied) with the originals, the training flag is kept, and a
    bare BatchNorm argument yields a new module (so always use the return value).
    """

    def make(bn: _BatchNorm) -> SyncBatchNorm:
        ref = bn.weight if bn.weight is not None else bn.running_mean
        return SyncBatchNorm(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            process_group,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
            bias=bn.bias is not None,
        )

    return _convert(module, make)


def convert_for_device(
    module: nn.Module, device: torch.device | str, process_group: Any | None = None
) -> nn.Module:
    """Convert ``module``'s BatchNorms to the synchronised kind that runs on ``device``.

    CUDA gets torch's ``nn.SyncBatchNorm`` (fused kernels, NCCL-friendly); anything else gets
    ours, because torch's raises on non-accelerator input: its statistics kernels exist only
    for CUDA-like backends. Both give the same numbers.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return convert_sync_batchnorm(module, process_group)
