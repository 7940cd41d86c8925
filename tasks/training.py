"""The training loop shared by the built-in task families.

A readable loop in the spirit of nanoGPT: shuffle, step, evaluate each epoch, yield the
metrics. Divergence (a NaN/inf batch loss, or one past ``diverge_factor`` times the first
batch's, i.e. times chance level at initialisation) ends the run at once with outcome
``diverged`` instead of raising, because for LR studies divergence is evidence, not an error.

After every ``train.checkpoint_every``-th epoch, unless less than
``train.checkpoint_min_interval_s`` seconds passed since the last checkpoint (or the start),
the loop also yields a :class:`Checkpoint`. The interval keeps short trials almost free
(bench/checkpoint.md: about 1 ms per checkpoint against 10 ms epochs of a digits MLP) while
long trials, whose epochs outlast it, checkpoint every epoch. Its state is one
``torch.save``d dict (read by :func:`read_checkpoint`), enough to continue exactly where the
epoch ended:

==============  ================================================================
``format``      :data:`CHECKPOINT_FORMAT`
``epoch``       the last finished epoch (= the Checkpoint's step)
``config``      the trial's spec as JSON values (resume refuses another trial's)
``world_size``  ranks that trained it (1 without ``dist``)
``model``       the (unwrapped) model's state_dict
``optimizer``   ``optimizer.state_dict()``
``scheduler``   ``scheduler.state_dict()`` or None
``data_order``  the shuffle generator's state: the next epoch draws the same permutation
``rng``         per rank: torch CPU (and CUDA) and numpy and python ``random`` states
``progress``    steps and train time so far, and the first batch's loss (divergence test)
``ema``         the weight average's state (``train.ema``), or None
==============  ================================================================

Regularisation options (``tasks.regularizers``): ``train.l1`` adds ``l1 * sum |p|`` to the
back-propagated loss (the reported losses stay the data loss); ``train.ema`` keeps a moving
average of the weights and reports ``val/loss_ema``, ``val/acc_ema`` per epoch and
``test/loss_ema``, ``test/acc_ema`` at the end; ``train.final_stats`` adds
``weights/near_zero``, ``weights/rms`` and each BatchNorm's ``bn/<k>/var_shift`` (on the test
set) to the summary.

Adaptive optimizers (AdaGrad, RMSProp, AdaDelta) also report ``opt/eff_lr`` per epoch
(``tasks.opt_stats``). Late progress (OPT-3, OPT-4): the summary's ``train/loss_drop_late`` is
``1 - train/loss(last epoch) / train/loss(epoch E//2 - 1)``, the fraction of the mid-training
loss removed over the second half, and ``opt/eff_lr_ratio_late`` the same two epochs' ratio
of ``opt/eff_lr``; the mid-training values ride in checkpoints, so a resumed run has them.
A dataset's ``test_subsets`` add ``test/acc_<name>`` (accuracy on that part of the test set).
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks import distributed
from tasks.data import Dataset
from tasks.events import Checkpoint, CheckpointError, Event, Metrics, Summary
from tasks.opt_stats import effective_lr
from tasks.regularizers import (
    WeightEMA,
    bn_variance_shift,
    l1_penalty,
    near_zero_fraction,
    weight_rms,
)

# TrainSpec is re-exported: it lives where torch is not needed.
from tasks.train_spec import CHECKPOINT_FORMAT, RUNTIME_FIELDS, TrainSpec


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        loss_sum += nn.functional.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    return loss_sum / len(x), correct / len(x)


def fit(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    train: TrainSpec,
    seed: int,
    device: torch.device,
    extra_metrics: dict[str, float] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    dist: distributed.DistContext | None = None,
    resume: bytes | None = None,
    config: dict[str, Any] | None = None,
) -> Iterator[Event]:
    """Train ``model`` on ``data``: yield :class:`Metrics` per epoch, then a :class:`Summary`.

    With ``dist`` (a data-parallel rank, ``model`` already DDP-wrapped) each step trains on
    this rank's slice of a global batch of ``world_size * batch_size``, and every reported
    value (losses, accuracies, divergence) is over the global batch or the whole split, so
    all ranks agree and rank 0 reports global numbers.

    ``on_epoch_start(epoch)`` runs after ``model.train()`` at the start of every epoch, so a
    fine-tuning task can freeze or unfreeze blocks (and keep frozen ones in eval mode).

    Every ``train.checkpoint_every`` epochs, at most once per
    ``train.checkpoint_min_interval_s``, a :class:`Checkpoint` follows the epoch's Metrics
    (when data-parallel, on every rank, with the state on rank 0 only: ``b""`` on the
    others). ``resume``, such a checkpoint's state, restores everything the loop and
    ``model``, ``optimizer`` and ``scheduler`` carry from one epoch to the next, and training
    continues with the epoch after it. ``config`` (the trial's spec as JSON values) is
    stored in checkpoints and must match on resume, except :data:`RUNTIME_FIELDS`. The
    caller builds ``model``, ``optimizer`` and ``scheduler`` as for a fresh run;
    ``on_epoch_start`` must depend on the epoch only.
    """
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    probe = (x_tr[:PROBE_SIZE], y_tr[:PROBE_SIZE])  # fixed: epochs compare like with like
    x_va, y_va = data.x_val.to(device), data.y_val.to(device)
    n = len(x_tr)
    world = dist.world_size if dist is not None else 1
    rank = dist.rank if dist is not None else 0
    first_loss: float | None = None
    steps, evals, train_time, start_epoch = 0, 0, 0.0, 0
    midpoint: dict[str, float] = {}  # epoch E//2 - 1's train/loss and opt/eff_lr
    late: dict[str, float] = {}  # the summary's late-progress values, set at the last epoch
    # L-BFGS re-evaluates the batch inside its step (line search, several iterations).
    closure_step = isinstance(optimizer, torch.optim.LBFGS)
    module = distributed.unwrap(model)
    ema = WeightEMA(module, train.ema) if train.ema is not None else None
    if resume is not None:
        ckpt = read_checkpoint(resume, config, world, train.epochs)
        _restore(ckpt, module, optimizer, scheduler, ema)
        gen.set_state(ckpt["data_order"])
        set_rng_state(ckpt["rng"][rank], device)
        steps, train_time = ckpt["progress"]["steps"], ckpt["progress"]["train_time"]
        # Checkpoints from before the count had first-order steps only: one evaluation each.
        evals = ckpt["progress"].get("evals", steps)
        first_loss = ckpt["progress"]["first_loss"]
        midpoint = ckpt["progress"].get("midpoint", {})  # absent in older checkpoints
        start_epoch = ckpt["epoch"] + 1
    last_checkpoint = time.monotonic()
    for epoch in range(start_epoch, train.epochs):
        model.train()
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        layers = layer_stats(module, *probe) if train.layer_stats else {}
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum, correct, seen, epoch_steps = 0.0, 0.0, 0.0, 0
        for idx, weight in distributed.batches(perm, train.batch_size, dist):
            record: list[tuple[torch.Tensor, torch.Tensor]] = []
            closure = _batch_closure(model, optimizer, x_tr[idx], y_tr[idx], weight, train, record)
            if closure_step:
                optimizer.step(closure)  # evaluates the batch as often as it needs
            else:
                closure()
                optimizer.step()
            evals += len(record)
            # The first evaluation is at the step's starting weights, as for a first-order step.
            loss, logits = record[0]
            if ema is not None:
                ema.update(module)
            if scheduler is not None:
                scheduler.step()
            # Over the global batch when data-parallel, so every rank takes the same
            # divergence decision (one stopping alone would hang the others).
            batch_loss, batch_correct, batch_n = distributed.reduce_batch(
                loss.item(), (logits.argmax(1) == y_tr[idx]).sum().item(), len(idx), dist
            )
            first_loss = batch_loss if first_loss is None else first_loss
            if not math.isfinite(batch_loss) or batch_loss > train.diverge_factor * first_loss:
                yield Summary(
                    {"train/loss": _finite(batch_loss), "epochs_run": epoch + 1},
                    outcome="diverged",
                    reason=f"batch loss {batch_loss:.4g} at epoch {epoch}, step "
                    f"{steps} (first batch {first_loss:.4g})",
                )
                return
            # An L-BFGS step can leave non-finite weights after a finite first evaluation
            # (its step length comes from curvature pairs); the next batch would only show it
            # if there is one.
            if closure_step and distributed.any_rank(not _finite_weights(module), dist):
                yield Summary(
                    {"train/loss": _finite(batch_loss), "epochs_run": epoch + 1},
                    outcome="diverged",
                    reason=f"non-finite weights after the step at epoch {epoch}, step {steps}",
                )
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
        averaged: dict[str, float] = {}
        if ema is not None:
            ema_loss, ema_acc = distributed.evaluate(
                evaluate, ema.averaged(module), x_va, y_va, dist
            )
            averaged = {"val/loss_ema": ema_loss, "val/acc_ema": ema_acc}
        adaptive = effective_lr(optimizer)
        if epoch == train.epochs // 2 - 1:
            midpoint = {"train/loss": train_loss, **adaptive}
        if epoch == train.epochs - 1 and midpoint:
            late = {"train/loss_drop_late": 1.0 - train_loss / midpoint["train/loss"]}
            if "opt/eff_lr" in midpoint:
                late["opt/eff_lr_ratio_late"] = adaptive["opt/eff_lr"] / midpoint["opt/eff_lr"]
        yield Metrics(
            epoch,
            {
                "train/loss": train_loss,
                "train/acc": correct / seen,
                "val/loss": val_loss,
                "val/acc": val_acc,
                "lr": lr,
                "time/step_ms": 1000 * epoch_time / max(epoch_steps, 1),
                # Gradient evaluations so far (this rank's batches): one per first-order step,
                # as many as L-BFGS asked for; progress per evaluation reads against it.
                "opt/evals": float(evals),
                **averaged,
                **adaptive,
                **layers,
                **(extra_metrics or {}),
            },
        )
        due = train.checkpoint_every and (epoch + 1) % train.checkpoint_every == 0
        # any_rank: the ranks' clocks differ, and every rank must take part in the gather.
        if due and distributed.any_rank(
            time.monotonic() - last_checkpoint >= train.checkpoint_min_interval_s, dist
        ):
            last_checkpoint = time.monotonic()
            # Dropout draws differ between ranks, so each rank's RNG state is kept; the
            # rest is replicated (DDP's gradients, rank 0's buffers after evaluate).
            rngs = distributed.gather_to_main(rng_state(device), dist)
            if rngs is None:
                # Every rank yields as many events as rank 0 (a runner may run a collective
                # per event); only rank 0's carries the state.
                yield Checkpoint(epoch, b"")
            else:
                yield Checkpoint(
                    epoch,
                    _to_bytes(
                        {
                            "format": CHECKPOINT_FORMAT,
                            "epoch": epoch,
                            "config": config,
                            "world_size": world,
                            "model": module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "data_order": gen.get_state(),
                            "rng": rngs,
                            "progress": {
                                "steps": steps,
                                "evals": evals,
                                "train_time": train_time,
                                "first_loss": first_loss,
                                "midpoint": midpoint,
                            },
                            "ema": ema.state_dict() if ema is not None else None,
                        }
                    ),
                )

    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    test_loss, test_acc = distributed.evaluate(evaluate, model, x_te, y_te, dist)
    train_eval_loss, train_eval_acc = distributed.evaluate(evaluate, model, x_tr, y_tr, dist)
    extra: dict[str, float] = dict(late)
    for name, mask in data.test_subsets.items():
        if mask.any():  # an empty subset has no accuracy
            m = mask.to(device)
            _, extra[f"test/acc_{name}"] = distributed.evaluate(
                evaluate, model, x_te[m], y_te[m], dist
            )
    if ema is not None:
        ema_loss, ema_acc = distributed.evaluate(evaluate, ema.averaged(module), x_te, y_te, dist)
        extra |= {"test/loss_ema": ema_loss, "test/acc_ema": ema_acc}
    if train.final_stats:
        # After the evaluations above: data-parallel, they gave every rank rank 0's buffers.
        extra |= {
            "weights/near_zero": near_zero_fraction(module),
            "weights/rms": weight_rms(module),
            **bn_variance_shift(module, x_te),
        }
    # val/* of the last epoch is already the latest value; train/eval_* differ from the
    # epoch's running train/* (eval mode, final weights), hence their own names.
    yield Summary(
        {
            "test/loss": test_loss,
            "test/acc": test_acc,
            "train/eval_loss": train_eval_loss,
            "train/eval_acc": train_eval_acc,
            "train/objective": train_eval_loss + _penalty(module, optimizer, train.l1),
            "gap/acc": train_eval_acc - test_acc,
            "time/step_ms": 1000 * train_time / max(steps, 1),
            **extra,
        }
    )


def _batch_closure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: float,
    train: TrainSpec,
    record: list[tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[], float]:
    """One gradient evaluation on the batch ``(x, y)``: the closure a closure-based optimizer
    (L-BFGS) calls as often as it needs, and first-order steps call once. Each call appends
    the data loss and logits to ``record`` (its length counts the evaluations) and returns
    the back-propagated objective."""

    def closure() -> float:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        objective = loss + train.l1 * l1_penalty(model.parameters()) if train.l1 else loss
        scaled = objective * (train.loss_scale * weight)
        scaled.backward()
        if train.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        record.append((loss.detach(), logits.detach()))
        return scaled.item()

    return closure


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch (CPU, and ``device``'s if CUDA), numpy and ``random`` states."""
    np_state = np.random.get_state(legacy=False)
    # As a tensor: torch.load(weights_only=True) refuses numpy arrays.
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    version, words, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np_state,
        # One tensor, not 625 ints: torch.save pays a Python callback per object.
        "python": (version, torch.tensor(words, dtype=torch.int64), gauss),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (a CUDA state only onto a CUDA device)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = dict(state["numpy"])
    np_state["state"] = {
        **np_state["state"],
        "key": np_state["state"]["key"].numpy().astype(np.uint32),
    }
    np.random.set_state(np_state)
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))


def read_checkpoint(
    blob: bytes, config: dict[str, Any] | None, world_size: int, epochs: int
) -> dict[str, Any]:
    """The checkpoint dict in ``blob``, checked against the trial resuming from it.

    Raises :class:`CheckpointError` naming the problem: unreadable bytes, another format,
    another trial's config (the differing fields), another world size, or an epoch at or
    past the end of training.
    """
    try:
        # weights_only: bytes from a store must not run code when loaded.
        ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"resume checkpoint is not readable (corrupt or not a "
            f"checkpoint): {type(e).__name__}: {str(e)[:200]}"
        ) from e
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"resume checkpoint has format {fmt!r}; this task reads {CHECKPOINT_FORMAT!r}"
        )
    diffs = _differences(ckpt["config"], config)
    if diffs:
        raise CheckpointError(
            "resume checkpoint belongs to another trial config: "
            + "; ".join(diffs[:5])
            + (" ..." if len(diffs) > 5 else "")
        )
    if ckpt["world_size"] != world_size:
        raise CheckpointError(
            f"resume checkpoint was trained by {ckpt['world_size']} "
            f"rank(s); this trial has {world_size}"
        )
    if not 0 <= ckpt["epoch"] < epochs:
        raise CheckpointError(
            f"resume checkpoint is at epoch {ckpt['epoch']}, outside this trial's {epochs} epochs"
        )
    return ckpt


def _restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ema: WeightEMA | None,
) -> None:
    """Load the checkpoint's states; a mismatch is a :class:`CheckpointError`."""
    try:
        model.load_state_dict(ckpt["model"])  # strict: missing or extra keys raise
        if ema is not None:
            ema.load_state_dict(ckpt.get("ema"))
        optimizer.load_state_dict(ckpt["optimizer"])
        if (scheduler is None) != (ckpt["scheduler"] is None):
            raise ValueError("the checkpoint and this trial disagree on having a scheduler")
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"resume checkpoint does not fit this trial's model, "
            f"optimizer, scheduler or weight average: {str(e)[:300]}"
        ) from e


def _differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """``path: checkpoint X, this trial Y`` for each leaf where two configs differ, ignoring
    :data:`RUNTIME_FIELDS` (a missing key reads as absent)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            d
            for k in sorted(set(saved) | set(current))
            for d in _differences(
                saved.get(k, "<absent>"),
                current.get(k, "<absent>"),
                f"{path}.{k}" if path else str(k),
            )
        ]
    if path in RUNTIME_FIELDS or saved == current:
        return []
    return [f"{path or 'config'}: checkpoint {saved!r}, this trial {current!r}"]


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


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
    layers = {
        name: m
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    }
    acts: dict[str, torch.Tensor] = {}

    def keep(
        name: str,
    ) -> Callable[[nn.Module, object, torch.Tensor | tuple[torch.Tensor, ...]], None]:
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
                torch.linalg.vector_norm(torch.cat([t.flatten() for t in g])).item() if g else 0.0
            )
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


def _finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@torch.no_grad()
def _penalty(model: nn.Module, optimizer: torch.optim.Optimizer, l1: float) -> float:
    """The regularisation terms of the objective that training descends: ``l1 * sum |p|``
    and, per parameter group, ``weight_decay / 2 * sum p^2`` (coupled weight decay adds
    ``weight_decay * p`` to the gradient: that term's gradient; AdamW's decoupled decay
    descends no objective, and its term is a reference value only)."""
    total = l1 * float(l1_penalty(model.parameters())) if l1 else 0.0
    for group in optimizer.param_groups:
        wd = group.get("weight_decay", 0.0)
        if wd:
            total += wd / 2 * float(sum(p.pow(2).sum() for p in group["params"]))
    return total


def _finite(x: float) -> float:
    """MLflow rejects NaN/inf in some stores; report a huge sentinel instead."""
    return x if math.isfinite(x) else 1e30
