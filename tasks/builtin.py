"""The built-in tasks: their specs and their registration, importable without torch.

The driver plans and validates every trial against these specs before anything runs; only a
worker runs a task, so each ``run`` is named by module (``tasks.classify:run``) and imported,
with torch, on its first use there (:attr:`tasks.registry.Task.run`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from tasks.data import DataSpec
from tasks.model_specs import ModelSpec
from tasks.optimizers import OptimizerSpec
from tasks.registry import register_lazy
from tasks.schedules import SchedulerSpec
from tasks.spec import KeyedSpec, StrictModel
from tasks.train_spec import TrainSpec


class ClassifySpec(StrictModel):
    """A fully resolved classification trial."""

    data: DataSpec
    model: ModelSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec
    train: TrainSpec = TrainSpec()
    seed: int = 0

    def cost(self) -> float | None:
        return float(self.train.epochs)


class PretrainSpec(ClassifySpec):
    """A pre-training run: a classification trial whose weights are kept as an artifact."""


class ScratchStrategy(StrictModel):
    """No checkpoint: the same architecture trained from a random init at the optimizer's LR."""

    name: Literal["scratch"] = "scratch"


class HeadOnlyStrategy(StrictModel):
    """Linear probe: the pre-trained backbone is frozen; only the new head trains."""

    name: Literal["head_only"] = "head_only"
    lr_multiple: PositiveFloat = 0.1  # backbone LR = lr_multiple x optimizer.lr (unused: frozen)
    head_lr_ratio: PositiveFloat = 10.0  # head LR = head_lr_ratio x backbone LR


class FullStrategy(StrictModel):
    """Every layer trains from the start at one LR, ``lr_multiple`` x the scratch LR."""

    name: Literal["full"] = "full"
    lr_multiple: PositiveFloat = 0.1


class DiscriminativeStrategy(StrictModel):
    """Strategy A (002:L1501): one stage, the new head at a larger LR than the backbone."""

    name: Literal["discriminative"] = "discriminative"
    lr_multiple: PositiveFloat = 0.1
    head_lr_ratio: PositiveFloat = 10.0


class GradualStrategy(KeyedSpec):
    """Strategy B (002:L1503, L1509): head only for ``head_epochs``, then unfreeze the top
    half of the backbone's blocks or all of them; the LRs are those of strategy A.

    ``warmup``: ``within`` counts the head phase in ``train.epochs`` (the backbone trains
    fewer epochs than strategy A's in a run of the same length); ``before`` runs it ahead
    of ``train.epochs``, so the backbone trains exactly as many epochs as strategy A's
    (FT-3's drift comparison, which ``within`` would decide by construction).
    """

    added_fields: ClassVar[tuple[str, ...]] = ("warmup",)

    name: Literal["gradual"] = "gradual"
    lr_multiple: PositiveFloat = 0.1
    head_lr_ratio: PositiveFloat = 10.0
    head_epochs: PositiveInt | None = None  # None: a third of train.epochs (at least one)
    unfreeze: Literal["top_half", "all"] = "all"
    warmup: Literal["within", "before"] = "within"

    def head_phase(self, epochs: int) -> int:
        """Epochs with the backbone frozen, in a run whose ``train.epochs`` is ``epochs``."""
        return self.head_epochs if self.head_epochs is not None else max(1, epochs // 3)

    def total_epochs(self, epochs: int) -> int:
        """Epochs the run trains for, ``train.epochs`` being ``epochs``."""
        return epochs + self.head_phase(epochs) if self.warmup == "before" else epochs


StrategySpec = Annotated[
    ScratchStrategy | HeadOnlyStrategy | FullStrategy | DiscriminativeStrategy | GradualStrategy,
    Field(discriminator="name"),
]


class FinetuneSpec(StrictModel):
    """A fully resolved fine-tuning trial: the target task, the strategy, and the pretrain
    run whose checkpoint it starts from (``pretrain``, an upstream run shared by trials)."""

    data: DataSpec
    model: ModelSpec
    optimizer: OptimizerSpec  # its lr is the scratch LR; see the strategies' lr_multiple
    scheduler: SchedulerSpec
    strategy: StrategySpec
    pretrain: PretrainSpec
    train: TrainSpec = TrainSpec()
    seed: int = 0

    def cost(self) -> float | None:
        return float(self.epochs)  # its pre-training is an upstream run of its own

    @property
    def epochs(self) -> int:
        """Epochs the fine-tuning run trains for (a ``before`` warm-up adds its own)."""
        s = self.strategy
        return (
            s.total_epochs(self.train.epochs)
            if isinstance(s, GradualStrategy)
            else self.train.epochs
        )

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        if self.model != self.pretrain.model:
            raise ValueError(
                "model must equal pretrain.model: the checkpoint's backbone is "
                "loaded into the fine-tuned model"
            )
        if self.optimizer.name == "lbfgs":
            # torch's LBFGS takes one parameter group; the strategies give groups own LRs.
            raise ValueError("optimizer lbfgs is not supported for fine-tuning")
        if self.data.name != self.pretrain.data.name:
            raise ValueError("data and pretrain.data must be the same dataset (input shape)")
        if (
            isinstance(self.strategy, GradualStrategy)
            and self.strategy.warmup == "within"
            and self.strategy.head_phase(self.train.epochs) >= self.train.epochs
        ):
            raise ValueError(
                f"strategy.head_epochs ({self.strategy.head_epochs}) must be "
                f"below train.epochs ({self.train.epochs}) or nothing is unfrozen"
            )
        return self


def needs_pretrain(spec: FinetuneSpec) -> tuple[str, dict[str, Any]] | None:
    """The upstream run a trial needs: the ``pretrain`` run of ``spec.pretrain`` (none for
    ``scratch``). Trials naming the same pretrain config share one run."""
    if isinstance(spec.strategy, ScratchStrategy):
        return None
    return "pretrain", spec.pretrain.model_dump(mode="json")


register_lazy(
    "classify",
    ClassifySpec,
    "tasks.classify:run",
    "Train a classifier from scratch and report per-epoch and final metrics.",
)
register_lazy(
    "pretrain",
    PretrainSpec,
    "tasks.finetune:pretrain",
    "Pre-train a classifier on the source task; its weights are the run's artifact.",
)
register_lazy(
    "finetune",
    FinetuneSpec,
    "tasks.finetune:run",
    "Fine-tune a pre-trained backbone on the target task with one strategy (or train "
    "the same model from scratch).",
    upstream=needs_pretrain,
)
