"""Small models for the digits tasks: MLP-d, CNN-d and a residual CNN.

Every model is ``features`` (the backbone, a Sequential of blocks) followed by ``head``
(one Linear layer). Fine-tuning freezes or re-initialises by that split, and the norm
layer is a config choice, so local BN, synced BN, GroupNorm and LayerNorm arms share one
model definition.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from tasks.spec import StrictModel

Norm = Literal["none", "bn", "syncbn", "gn", "ln"]
Activation = Literal["relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
}


class MLPSpec(StrictModel):
    """MLP-d: an MLP on the 64 digit pixels."""

    name: Literal["mlp_d"] = "mlp_d"
    hidden: list[PositiveInt] = [128, 64]
    activation: Activation = "relu"
    norm: Norm = "none"
    dropout: float = Field(0.0, ge=0, lt=1)
    # torch's convention: running = (1 - momentum) * running + momentum * batch.
    # The notes' "0.9" (retention) is torch's 0.1.
    bn_momentum: float = Field(0.1, gt=0, le=1)


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


ModelSpec = Annotated[MLPSpec | CNNSpec | ResNetSpec, Field(discriminator="name")]


class Classifier(nn.Module):
    """``head(features(x))``: the split fine-tuning relies on."""

    def __init__(self, features: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def norm_layer(kind: Norm, channels: int, *, spatial: bool, groups: int = 4,
               momentum: float = 0.1) -> nn.Module:
    """The normalisation layer a config names. ``syncbn`` builds a BatchNorm here; data-parallel
    trials convert it to the synced version once the process group exists."""
    if kind in ("bn", "syncbn"):
        return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, momentum=momentum)
    if kind == "gn":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "ln":
        # LayerNorm over all of (C, H, W) is GroupNorm with one group.
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    return nn.Identity()


def build_model(spec: MLPSpec | CNNSpec | ResNetSpec, input_shape: tuple[int, ...],
                num_classes: int) -> Classifier:
    """Instantiate the model a spec names for inputs of ``input_shape`` (without the batch)."""
    act = _ACTIVATIONS[spec.activation]
    if isinstance(spec, MLPSpec):
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for h in spec.hidden:
            layers += [nn.Linear(width, h), norm_layer(spec.norm, h, spatial=False,
                                                       momentum=spec.bn_momentum), act()]
            if spec.dropout:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        return Classifier(nn.Sequential(*layers), nn.Linear(width, num_classes))

    in_ch = input_shape[0]
    if isinstance(spec, CNNSpec):
        blocks: list[nn.Module] = []
        for out_ch in spec.channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=spec.norm == "none"),
                norm_layer(spec.norm, out_ch, spatial=True, groups=spec.gn_groups,
                           momentum=spec.bn_momentum),
                act()))
            in_ch = out_ch
        tail: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if spec.dropout:
            tail.append(nn.Dropout(spec.dropout))
        return Classifier(nn.Sequential(*blocks, nn.Sequential(*tail)), nn.Linear(in_ch, num_classes))

    stem = nn.Sequential(
        nn.Conv2d(in_ch, spec.width, 3, padding=1, bias=False),
        norm_layer(spec.norm, spec.width, spatial=True, groups=spec.gn_groups,
                   momentum=spec.bn_momentum), act())
    res = [_ResidualBlock(spec, act) for _ in range(spec.blocks)]
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec.dropout:
        tail.append(nn.Dropout(spec.dropout))
    return Classifier(nn.Sequential(stem, *res, nn.Sequential(*tail)), nn.Linear(spec.width, num_classes))


class _ResidualBlock(nn.Module):
    def __init__(self, spec: ResNetSpec, act: type[nn.Module]) -> None:
        super().__init__()
        w = spec.width

        def norm() -> nn.Module:
            return norm_layer(spec.norm, w, spatial=True, groups=spec.gn_groups,
                              momentum=spec.bn_momentum)

        self.body = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), norm(), act(),
                                  nn.Conv2d(w, w, 3, padding=1, bias=False), norm())
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))
