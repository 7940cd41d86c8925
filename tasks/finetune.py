"""Task families ``pretrain`` and ``finetune``: transfer from digits 0-4 to a target task.

``pretrain`` trains a classifier (CNN-d by default) on the source classes and returns its
weights as ``Summary.artifacts["checkpoint.pt"]``. ``finetune`` names that run as its
upstream (:func:`needs_pretrain`), so the orchestrator trains it once per distinct pretrain
config, keeps it as an MLflow artifact and hands the same bytes to every fine-tune trial.

A fine-tune trial loads the checkpoint's backbone (``model.features``), puts a freshly
initialised head on it for the target classes and trains with one of the strategies the
notes describe (002:L1501-1516):

========================  ============================================================
``scratch``               no checkpoint; every layer at the optimizer's LR (the baseline)
``head_only``             linear probe: the backbone stays frozen throughout
``full``                  every layer at one LR, ``lr_multiple`` x the scratch LR
``discriminative``        strategy A: head LR = ``head_lr_ratio`` x backbone LR, one stage
``gradual``               strategy B: head only for ``head_epochs`` (default: a third of
                          the run), then the top half of the backbone blocks or all of
                          them (``unfreeze``) train as well
========================  ============================================================

The optimizer's ``lr`` is the *scratch* LR (the notes' from-scratch range, 002:L1345);
pre-trained layers train at ``lr_multiple`` x that (FT-6: fine-tuning wants 1-2 orders of
magnitude less). Frozen blocks get no gradient and stay in eval mode, so neither their
weights nor their BatchNorm statistics move. Every epoch reports ``backbone/drift``, the
relative L2 distance of the backbone's parameters from where training started (the
checkpoint; a random init for ``scratch``), which FT-3 compares between strategies.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tasks import data as datasets

# The specs and the registration live in tasks.builtin, without torch (re-exported here).
from tasks.builtin import (
    ClassifySpec,
    FinetuneSpec,
    GradualStrategy,
    HeadOnlyStrategy,
    PretrainSpec,
    ScratchStrategy,
    StrategySpec,
    needs_pretrain,  # noqa: F401 - re-exported
)
from tasks.events import Event, Metrics, Summary
from tasks.models import Classifier, build_model
from tasks.optimizers import build_optimizer
from tasks.schedules import build_scheduler
from tasks.train_spec import TrainSpec
from tasks.training import fit, pick_device

CHECKPOINT = "checkpoint.pt"  # pretrain's artifact: the model's state_dict
SOURCE = "checkpoint_source.json"  # finetune's artifact: which checkpoint it started from


# --------------------------------------------------------------------------- pretrain


def save_checkpoint(model: nn.Module) -> bytes:
    """``model``'s state_dict as bytes (``torch.save`` into memory), tensors on the CPU."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def load_checkpoint(blob: bytes) -> dict[str, torch.Tensor]:
    """The state_dict :func:`save_checkpoint` wrote; ``weights_only`` so bytes from a store
    cannot run code when loaded."""
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _setup(
    spec: ClassifySpec | FinetuneSpec, data: datasets.Dataset, params: Any, train: TrainSpec
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Optimizer and per-step scheduler over ``params`` (tensors or parameter groups), for a
    run of ``train.epochs``."""
    optimizer = build_optimizer(params, spec.optimizer)
    steps_per_epoch = -(-len(data.x_train) // train.batch_size)
    return optimizer, build_scheduler(optimizer, spec.scheduler, steps_per_epoch, train.epochs)


def pretrain(spec: PretrainSpec, resume: bytes | None = None) -> Iterator[Event]:
    """Pre-train a classifier on the source task; its weights are the run's artifact.
    ``resume``: the state of a Checkpoint it yielded (``tasks.training.fit``)."""
    torch.manual_seed(spec.seed)
    device = pick_device(spec.train.device)
    data = datasets.load(spec.data)
    model = build_model(spec.model, data.input_shape, data.num_classes).to(device)
    optimizer, scheduler = _setup(spec, data, model.parameters(), spec.train)
    for event in fit(
        model,
        data,
        optimizer,
        scheduler,
        spec.train,
        spec.seed,
        device,
        resume=resume,
        config=spec.model_dump(mode="json"),
    ):
        if isinstance(event, Summary) and event.outcome == "finished":
            # Only a finished run yields a checkpoint: a diverged pretrain has no artifact,
            # and the orchestrator fails its fine-tune trials as "upstream did not finish".
            event = Summary(event.values, artifacts={CHECKPOINT: save_checkpoint(model)})
        yield event


# --------------------------------------------------------------------------- mechanics


def backbone_blocks(model: Classifier) -> list[nn.Module]:
    """The backbone's blocks that hold parameters, bottom to top (CNN-d: its conv blocks)."""
    return [m for m in model.features.children() if any(True for _ in m.parameters())]


def top_half(blocks: list[nn.Module]) -> list[nn.Module]:
    """The upper half of ``blocks`` (at least one): what ``unfreeze: top_half`` trains."""
    return blocks[len(blocks) - max(1, len(blocks) // 2) :]


class Freezer:
    """Which backbone blocks train in each epoch; passed to ``fit`` as ``on_epoch_start``.

    A frozen block has ``requires_grad`` off (no gradient, so the optimizer skips it, weight
    decay included) and is put in eval mode after ``fit``'s ``model.train()``, so its
    BatchNorm running statistics stay those of the checkpoint.
    """

    def __init__(self, model: Classifier, strategy: StrategySpec, epochs: int) -> None:
        self.blocks = backbone_blocks(model)
        self.strategy = strategy
        self.epochs = epochs
        self.frozen: list[nn.Module] = []

    def frozen_at(self, epoch: int) -> list[nn.Module]:
        s = self.strategy
        if isinstance(s, HeadOnlyStrategy):
            return self.blocks
        if isinstance(s, GradualStrategy):
            if epoch < s.head_phase(self.epochs):
                return self.blocks
            if s.unfreeze == "top_half":
                trained = top_half(self.blocks)
                return [b for b in self.blocks if all(b is not t for t in trained)]
        return []

    def __call__(self, epoch: int) -> None:
        self.frozen = self.frozen_at(epoch)
        for block in self.blocks:
            trainable = all(block is not f for f in self.frozen)
            for p in block.parameters():
                p.requires_grad_(trainable)
            if not trainable:
                block.eval()


def param_groups(model: Classifier, spec: FinetuneSpec) -> list[dict[str, Any]]:
    """Backbone and head parameter groups with the LRs the strategy gives them."""
    s, lr = spec.strategy, spec.optimizer.lr
    if isinstance(s, ScratchStrategy):
        backbone_lr = head_lr = lr
    else:
        backbone_lr = s.lr_multiple * lr
        head_lr = backbone_lr * getattr(s, "head_lr_ratio", 1.0)  # full: one LR for all
    return [
        {"params": list(model.features.parameters()), "lr": backbone_lr, "name": "backbone"},
        {"params": list(model.head.parameters()), "lr": head_lr, "name": "head"},
    ]


def backbone_vector(model: Classifier) -> torch.Tensor:
    """The backbone's parameters as one flat vector (buffers excluded)."""
    return torch.cat([p.detach().reshape(-1) for p in model.features.parameters()])


def drift(model: Classifier, start: torch.Tensor) -> float:
    """Relative L2 distance of the backbone's parameters from ``start`` (FT-3)."""
    now = backbone_vector(model).to(start.device)
    return float(torch.linalg.vector_norm(now - start) / torch.linalg.vector_norm(start))


def build_finetune_model(
    spec: FinetuneSpec, data: datasets.Dataset, checkpoint: dict[str, torch.Tensor] | None
) -> Classifier:
    """The target model: the checkpoint's backbone (if any) under a fresh head sized for the
    target's classes (initialised from ``spec.seed``, so seeds differ in the head)."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    if checkpoint is not None:
        prefix = "features."
        backbone = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        model.features.load_state_dict(backbone)  # strict: an architecture mismatch raises
    return model


def run(
    spec: FinetuneSpec, upstream: dict[str, bytes] | None = None, resume: bytes | None = None
) -> Iterator[Event]:
    """Fine-tune a pre-trained backbone on the target task with one strategy (or train the
    same model from scratch) and report per-epoch metrics, final metrics and backbone drift.

    ``resume``: the state of a Checkpoint it yielded; the upstream is still needed, since
    drift is measured from the pre-trained weights."""
    device = pick_device(spec.train.device)
    data = datasets.load(spec.data)
    source: dict[str, Any] = {"task": None}
    checkpoint = None
    if not isinstance(spec.strategy, ScratchStrategy):
        if not upstream or CHECKPOINT not in upstream:
            raise ValueError(
                f"strategy {spec.strategy.name!r} needs the pretrain run's "
                f"{CHECKPOINT}; the upstream gave {sorted(upstream or {})}"
            )
        blob = upstream[CHECKPOINT]
        checkpoint = load_checkpoint(blob)
        # Where the weights came from, kept with the run: the checkpoint's digest matches
        # the pretrain run's artifact, and its config identifies that run.
        source = {
            "task": "pretrain",
            "artifact": CHECKPOINT,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "config": spec.pretrain.model_dump(mode="json"),
        }
    model = build_finetune_model(spec, data, checkpoint).to(device)
    start = backbone_vector(model)
    # A warm-up run `before` train.epochs adds its head phase to the run (FinetuneSpec.epochs).
    train = spec.train.model_copy(update={"epochs": spec.epochs})
    optimizer, scheduler = _setup(spec, data, param_groups(model, spec), train)
    freezer = Freezer(model, spec.strategy, spec.train.epochs)
    # The Freezer depends on the epoch only, so a resumed run freezes what the original did.
    for event in fit(
        model,
        data,
        optimizer,
        scheduler,
        train,
        spec.seed,
        device,
        on_epoch_start=freezer,
        resume=resume,
        config=spec.model_dump(mode="json"),
    ):
        if isinstance(event, Metrics):
            lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
            event = Metrics(
                event.step,
                {
                    **event.values,
                    **lrs,
                    "backbone/drift": drift(model, start),
                    "backbone/frozen_blocks": float(len(freezer.frozen)),
                },
            )
        elif isinstance(event, Summary):
            d = drift(model, start)
            event = Summary(
                {**event.values, "backbone/drift": d if math.isfinite(d) else 1e30},
                event.outcome,
                event.reason,
                {SOURCE: json.dumps(source, sort_keys=True, indent=1).encode()},
            )
        yield event
