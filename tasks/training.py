"""The training loop shared by the built-in task families.

A readable loop in the spirit of nanoGPT: shuffle, step, evaluate each epoch, yield the
metrics. Divergence (a NaN/inf batch loss, or one past ``diverge_factor`` times the first
batch's, i.e. times chance level at initialisation) ends the run at once with outcome
``diverged`` instead of raising, because for LR studies divergence is evidence, not an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from tasks import distributed
from tasks.data import Dataset
from tasks.events import Event, Metrics, Summary
from tasks.spec import StrictModel


class TrainSpec(StrictModel):
    """How long and how to train (the what: data, model, optimizer, live beside it)."""

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


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss_sum += nn.functional.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return loss_sum / len(x), correct / len(x)


def fit(model: nn.Module, data: Dataset, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, train: TrainSpec,
        seed: int, device: torch.device, extra_metrics: dict[str, float] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        dist: distributed.DistContext | None = None,
        ) -> Iterator[Event]:
    """Train ``model`` on ``data``: yield :class:`Metrics` per epoch, then a :class:`Summary`.

    With ``dist`` (a data-parallel rank, ``model`` already DDP-wrapped) each step trains on
    this rank's slice of a global batch of ``world_size * batch_size``, and every reported
    value (losses, accuracies, divergence) is over the global batch or the whole split, so
    all ranks agree and rank 0 reports global numbers.

    ``on_epoch_start(epoch)`` runs after ``model.train()`` at the start of every epoch, so a
    fine-tuning task can freeze or unfreeze blocks (and keep frozen ones in eval mode).
    """
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    probe = (x_tr[:PROBE_SIZE], y_tr[:PROBE_SIZE])  # fixed: epochs compare like with like
    x_va, y_va = data.x_val.to(device), data.y_val.to(device)
    n = len(x_tr)
    first_loss: float | None = None
    steps, train_time = 0, 0.0
    for epoch in range(train.epochs):
        model.train()
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        layers = layer_stats(distributed.unwrap(model), *probe) if train.layer_stats else {}
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum, correct, seen, epoch_steps = 0.0, 0.0, 0.0, 0
        for idx, weight in distributed.batches(perm, train.batch_size, dist):
            logits = model(x_tr[idx])
            loss = nn.functional.cross_entropy(logits, y_tr[idx],
                                               label_smoothing=train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss * (train.loss_scale * weight)).backward()
            if train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            # Over the global batch when data-parallel, so every rank takes the same
            # divergence decision (one stopping alone would hang the others).
            batch_loss, batch_correct, batch_n = distributed.reduce_batch(
                loss.item(), (logits.argmax(1) == y_tr[idx]).sum().item(), len(idx), dist)
            first_loss = batch_loss if first_loss is None else first_loss
            if not math.isfinite(batch_loss) or batch_loss > train.diverge_factor * first_loss:
                yield Summary({"train/loss": _finite(batch_loss), "epochs_run": epoch + 1},
                              outcome="diverged",
                              reason=f"batch loss {batch_loss:.4g} at epoch {epoch}, step "
                                     f"{steps} (first batch {first_loss:.4g})")
                return
            loss_sum += batch_loss * batch_n
            correct += batch_correct
            seen += batch_n
            steps += 1
            epoch_steps += 1
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        train_loss = loss_sum / seen
        lr = optimizer.param_groups[-1]["lr"]
        val_loss, val_acc = distributed.evaluate(evaluate, model, x_va, y_va, dist)
        yield Metrics(epoch, {"train/loss": train_loss, "train/acc": correct / seen,
                              "val/loss": val_loss, "val/acc": val_acc, "lr": lr,
                              "time/step_ms": 1000 * epoch_time / max(epoch_steps, 1),
                              **layers, **(extra_metrics or {})})

    test_loss, test_acc = distributed.evaluate(evaluate, model, data.x_test.to(device),
                                               data.y_test.to(device), dist)
    train_eval_loss, train_eval_acc = distributed.evaluate(evaluate, model, x_tr, y_tr, dist)
    # val/* of the last epoch is already the latest value; train/eval_* differ from the
    # epoch's running train/* (eval mode, final weights), hence their own names.
    yield Summary({
        "test/loss": test_loss, "test/acc": test_acc,
        "train/eval_loss": train_eval_loss, "train/eval_acc": train_eval_acc,
        "gap/acc": train_eval_acc - test_acc,
        "time/step_ms": 1000 * train_time / max(steps, 1),
    })


PROBE_SIZE = 256  # training examples (the first ones) that layer_stats() measures on


def layer_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-layer statistics of one forward/backward pass on ``(x, y)``, leaving no trace.

    A *layer* is a module with parameters of its own (Linear, Conv, GRU, norm layers), named
    as in ``model.named_modules()``. ``layer/<name>/act_mean`` and ``act_std`` are over every
    element of its output (a Linear's output is the pre-activation); ``grad_norm`` is the L2
    norm of the loss gradient over its own parameters. Each ReLU module reports
    ``layer/<name>/dead_frac``: the fraction of its units (dimension 1) that output 0 on every
    probe example and position, i.e. get no gradient (ACT-3). The pass runs in the model's current
    mode (training mode keeps BN's batch statistics, as in a training step); buffers (BN's
    running statistics), the RNG (dropout) and ``.grad`` are restored afterwards, so a run
    with the statistics trains exactly like one without.
    """
    layers = {name: m for name, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, object, torch.Tensor | tuple[torch.Tensor, ...]], None]:
        def hook(_: nn.Module, __: object, out: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
            acts[name] = (out[0] if isinstance(out, tuple) else out).detach()  # GRU: (output, h)
        return hook

    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    handles = [m.register_forward_hook(keep(name)) for name, m in (layers | relus).items()]
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    grads = {p: p.grad for p in model.parameters()}
    try:
        with torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else []):
            for p in model.parameters():
                p.grad = None
            nn.functional.cross_entropy(model(x), y).backward()
        out: dict[str, float] = {}
        for name, m in layers.items():
            a = acts[name].float()
            g = [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
            out[f"layer/{name}/act_mean"] = a.mean().item()
            out[f"layer/{name}/act_std"] = a.std().item()
            out[f"layer/{name}/grad_norm"] = (
                torch.linalg.vector_norm(torch.cat([t.flatten() for t in g])).item() if g else 0.0)
        for name in relus:
            alive = acts[name].transpose(0, 1).flatten(1) > 0  # units x (examples * positions)
            out[f"layer/{name}/dead_frac"] = 1.0 - alive.any(1).float().mean().item()
        return out
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        for p, g0 in grads.items():
            p.grad = g0


def _finite(x: float) -> float:
    """MLflow rejects NaN/inf in some stores; report a huge sentinel instead."""
    return x if math.isfinite(x) else 1e30
