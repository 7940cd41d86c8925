"""Data parallelism for tasks: the process-group context, rendezvous, sharding, reductions.

Ray-free by design: the orchestrator starts ``world_size`` processes, calls
:func:`open_store` on rank 0 and :func:`join` on every rank, and hands each rank's task a
:class:`DistContext`. A task that accepts a ``dist`` keyword argument is data-parallel; it
uses the helpers below so that every rank runs the same sequence of collectives:

* :func:`prepare_model`: SyncBN conversion for ``norm: syncbn`` (``tasks.syncbn`` on CPU,
  ``nn.SyncBatchNorm`` on CUDA) and the DDP wrap;
* :func:`batches`: the per-rank slice of each global batch. The global batches are exactly
  those a single process would draw with batch ``world_size * b`` from the same seeded
  permutation, and rank ``r`` takes every ``world_size``-th example of it (what
  ``DistributedSampler`` does over the whole epoch), so k workers at batch b see the same
  examples per step as one worker at batch k*b (BN-6);
* :func:`reduce_sums`: SUM all-reduce of metric sums, so rank 0 reports global values;
* :func:`evaluate`: sharded evaluation of rank 0's model, all-reduced;
* :func:`gather_to_main`: one picklable object per rank, collected on rank 0 (the RNG
  states that go into rank 0's checkpoints).

Only rank 0's events are streamed by the orchestrator; the other ranks' are discarded, but
they are computed identically, which is what keeps the collectives in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from tasks.syncbn import convert_for_device

#: How long a collective may wait for a peer before raising. A peer that crashed without
#: closing its sockets would otherwise hang the trial for torch's default of 30 minutes.
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistContext:
    """What a rank of a data-parallel trial knows about its group (the default world group)."""

    rank: int
    world_size: int
    backend: str  # "gloo" (CPU tensors) or "nccl" (CUDA tensors)

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank whose events the orchestrator streams."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        # Ray gives each GPU worker its own CUDA_VISIBLE_DEVICES, so its GPU is always cuda:0.
        return torch.device("cuda", 0) if self.backend == "nccl" else torch.device("cpu")


def backend_for(gpus_per_worker: float) -> str:
    """NCCL when the worker holds a GPU and CUDA works; gloo otherwise."""
    return "nccl" if gpus_per_worker > 0 and torch.cuda.is_available() else "gloo"


def open_store(host: str) -> tuple[torch_dist.TCPStore, int]:
    """Rank 0's rendezvous store on ``host`` and a port the OS picked (no probe-then-bind race)."""
    store = torch_dist.TCPStore(
        host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    return store, store.port


def join(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str,
    store: torch_dist.TCPStore | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DistContext:
    """Initialise the default process group through rank 0's TCP store (blocks until all join).

    Rank 0 passes the store it opened; the others connect to ``host:port``.
    """
    if store is None:
        store = torch_dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))
    torch_dist.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    return DistContext(rank, world_size, backend)


def leave() -> None:
    """Destroy the default process group (a no-op when there is none)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def prepare_model(
    model: nn.Module, norm: str, ctx: DistContext | None, device: torch.device
) -> nn.Module:
    """``model`` ready for data-parallel training: synced BN if asked, then DDP.

    Without a context (one worker) the model is returned unchanged: ``syncbn`` at world size
    1 is plain BatchNorm. Local ``bn`` keeps per-rank batch statistics; DDP broadcasts rank
    0's running statistics before each training forward (its default), so every rank
    evaluates the same buffers.
    """
    if ctx is None or ctx.world_size == 1:
        return model
    if norm == "syncbn":
        model = convert_for_device(model, device)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (evaluation must not trigger DDP's collectives)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def batches(
    perm: torch.Tensor, batch_size: int, ctx: DistContext | None
) -> Iterator[tuple[torch.Tensor, float]]:
    """This rank's ``(indices, loss_weight)`` for each step of an epoch over ``perm``.

    One worker: consecutive slices of ``batch_size``, weight 1. With ``k`` ranks: global
    batches of ``k * batch_size`` and rank ``r`` takes ``global[r::k]``. The loss weight is
    ``k * local / global``: DDP averages gradients over ranks, so weighting each rank's mean
    loss this way makes the averaged gradient the mean over the global batch even when the
    last batch splits unevenly. A last global batch with fewer examples than ranks is
    dropped (a rank would get none) on every rank alike.
    """
    if ctx is None or ctx.world_size == 1:
        for i in range(0, len(perm), batch_size):
            yield perm[i : i + batch_size], 1.0
        return
    k = ctx.world_size
    step = k * batch_size
    for i in range(0, len(perm), step):
        glob = perm[i : i + step]
        if len(glob) < k:
            return
        mine = glob[ctx.rank :: k]
        yield mine, k * len(mine) / len(glob)


def reduce_sums(
    values: list[float], ctx: DistContext | None, device: torch.device = torch.device("cpu")
) -> list[float]:
    """Element-wise SUM over ranks of ``values`` in one collective (identity for one worker)."""
    if ctx is None or ctx.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.tolist()


def reduce_batch(
    loss: float, correct: float, count: int, ctx: DistContext | None
) -> tuple[float, float, float]:
    """A step's (mean loss, correct, examples) over the global batch; this rank's alone
    when there is one worker. One collective of three numbers per step."""
    if ctx is None or ctx.world_size == 1:
        return loss, correct, float(count)
    loss_sum, correct_sum, n = reduce_sums([loss * count, correct, float(count)], ctx, ctx.device)
    return loss_sum / n, correct_sum, n


def gather_to_main(obj: Any, ctx: DistContext | None) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` for one
    worker). A collective: every rank calls it at the same point."""
    if ctx is None or ctx.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def any_rank(flag: bool, ctx: DistContext | None) -> bool:
    """True on every rank when ``flag`` is true on any (a collective stop decision)."""
    if ctx is None or ctx.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device if ctx.backend == "nccl" else "cpu")
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item())


def evaluate(
    evaluate_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[float, float]],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: DistContext | None,
) -> tuple[float, float]:
    """Mean loss and accuracy of rank 0's model on all of ``(x, y)``, computed sharded.

    ``evaluate_fn(module, x, y)`` is the single-process evaluation (mean loss, accuracy). Each
    rank evaluates ``x[rank::k]`` with the unwrapped module after taking rank 0's buffers (with
    local BN the ranks' running statistics drift apart within a step); the sums are
    all-reduced, so every rank returns the global values.
    """
    module = unwrap(model)
    if ctx is None or ctx.world_size == 1:
        return evaluate_fn(module, x, y)
    for buf in module.buffers():
        torch_dist.broadcast(buf, src=0)
    xs, ys = x[ctx.rank :: ctx.world_size], y[ctx.rank :: ctx.world_size]
    loss, acc = evaluate_fn(module, xs, ys) if len(xs) else (0.0, 0.0)
    loss_sum, correct, n = reduce_sums(
        [loss * len(xs), acc * len(xs), float(len(xs))], ctx, ctx.device
    )
    return loss_sum / n, correct / n
