"""The built-in models' specs: what a config may say about a model, importable without torch
(the driver validates every trial against them; ``tasks.models`` builds the modules)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from tasks.spec import KeyedSpec, StrictModel

# bn_noise and fixed_scale are BNW-1/BNW-2's controls (tasks.models.norm_layer): BN whose
# output gets a random per-batch shift and scale in training, and a constant x1e-3 layer.
Norm = Literal["none", "bn", "syncbn", "gn", "ln", "bn_noise", "fixed_scale"]
# Weight init of MLP-d's linear layers (INIT-*): torch's default (Kaiming-uniform with
# a=sqrt(5)), Xavier/Glorot normal (gain 1, for tanh), Kaiming/He normal (fan-in, for ReLU),
# or every weight 1/fan_in (symmetric: hidden units of a layer stay identical). Biases are
# zero in the three explicit schemes.
Init = Literal["default", "xavier", "kaiming", "constant"]
BlockOrder = Literal["norm_act_dropout", "act_dropout_norm", "act_norm_dropout"]
Activation = Literal["relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu"]


class MLPSpec(KeyedSpec):
    """MLP-d: an MLP on the 64 digit pixels."""

    added_fields = ("residual", "order")

    name: Literal["mlp_d"] = "mlp_d"
    hidden: list[PositiveInt] = [128, 64]
    activation: Activation = "relu"
    init: Init = "default"
    norm: Norm = "none"
    dropout: float = Field(0.0, ge=0, lt=1)
    # torch's convention: running = (1 - momentum) * running + momentum * batch.
    # The notes' "0.9" (retention) is torch's 0.1.
    bn_momentum: float = Field(0.1, gt=0, le=1)
    # ARCH-1: an identity skip across every hidden layer whose input and output widths are
    # equal, act(x + norm(Wx + b)); no extra parameters, so plain and residual arms match.
    residual: bool = False
    # A hidden block's layers after its Linear (REG-2): the activation first puts dropout
    # directly before the norm (act_dropout_norm) or directly after it (act_norm_dropout).
    order: BlockOrder = "norm_act_dropout"

    @model_validator(mode="after")
    def _skip_needs_default_order(self) -> MLPSpec:
        if self.residual and self.order != "norm_act_dropout":
            raise ValueError("model.residual: true needs model.order norm_act_dropout")
        return self


class CNNSpec(StrictModel):
    """CNN-d: conv blocks on the 1x8x8 digits, global average pool, linear head."""

    name: Literal["cnn_d"] = "cnn_d"
    channels: list[PositiveInt] = [16, 32]
    activation: Activation = "relu"
    norm: Norm = "bn"
    gn_groups: PositiveInt = 4
    dropout: float = Field(0.0, ge=0, lt=1)
    bn_momentum: float = Field(0.1, gt=0, le=1)


class ResNetSpec(StrictModel):
    """A small residual CNN (two-conv blocks with identity shortcuts)."""

    name: Literal["resnet_d"] = "resnet_d"
    width: PositiveInt = 32
    blocks: PositiveInt = 3
    activation: Activation = "relu"
    norm: Norm = "bn"
    gn_groups: PositiveInt = 4
    dropout: float = Field(0.0, ge=0, lt=1)
    bn_momentum: float = Field(0.1, gt=0, le=1)


# The MNIST-1D baselines mirror the models of the dataset's repository
# (github.com/greydanus/mnist1d, notebooks/models.py: LinearBase, MLPBase, ConvBase, GRUBase),
# whose published accuracies conf/study/mnist1d_baselines.yaml replicates. They have no norm
# layer; ``norm`` exists because the data-parallel path reads it.


class LogRegSpec(StrictModel):
    """Logistic regression: one linear layer on the flattened input (LinearBase)."""

    name: Literal["logreg_1d"] = "logreg_1d"
    norm: Literal["none"] = "none"


class MLP1DSpec(StrictModel):
    """MLPBase: linear + ReLU, a residual linear + ReLU block, linear head (hidden 100)."""

    name: Literal["mlp_1d"] = "mlp_1d"
    hidden: PositiveInt = 100
    activation: Activation = "relu"
    norm: Literal["none"] = "none"


class CNN1DSpec(StrictModel):
    """ConvBase: three strided 1-D convolutions (kernel 5, 3, 3; stride 2; 25 channels), ReLU,
    then a linear head on the flattened feature map (not pooled: position stays visible)."""

    name: Literal["cnn_1d"] = "cnn_1d"
    channels: PositiveInt = 25
    activation: Activation = "relu"
    norm: Literal["none"] = "none"


class GRU1DSpec(StrictModel):
    """GRUBase: a bidirectional GRU (hidden 6) over the sequence, one scalar per step; the head
    reads the outputs of every step (flattened)."""

    name: Literal["gru_1d"] = "gru_1d"
    hidden: PositiveInt = 6
    bidirectional: bool = True
    norm: Literal["none"] = "none"


ModelSpec = Annotated[
    MLPSpec | CNNSpec | ResNetSpec | LogRegSpec | MLP1DSpec | CNN1DSpec | GRU1DSpec,
    Field(discriminator="name"),
]
