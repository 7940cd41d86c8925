"""Small models for the built-in tasks: MLP-d, CNN-d and a residual CNN for the digits
(CNN-d and the residual CNN also take 1-D inputs, N x C x L, with 1-D convolutions), and the
four MNIST-1D baselines (logistic regression, MLP, 1-D CNN, GRU).

Every model is ``features`` (the backbone, a Sequential of blocks) followed by ``head``
(one Linear layer). Fine-tuning freezes or re-initialises by that split, and the norm
layer is a config choice, so local BN, synced BN, GroupNorm and LayerNorm arms share one
model definition.
"""

from __future__ import annotations

import torch
from torch import nn

# The specs are re-exported: they live where torch is not needed.
from tasks.model_specs import (
    CNN1DSpec,
    CNNSpec,
    GRU1DSpec,
    Init,
    LogRegSpec,
    MLP1DSpec,
    MLPSpec,
    Norm,
    ResNetSpec,
)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


class Classifier(nn.Module):
    """``head(features(x))``: the split fine-tuning relies on."""

    def __init__(self, features: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def norm_layer(
    kind: Norm,
    channels: int,
    *,
    spatial: bool,
    groups: int = 4,
    momentum: float = 0.1,
    dims: int = 2,
) -> nn.Module:
    """The normalisation layer a config names (``dims``: 1 or 2 spatial dimensions). ``syncbn``
    builds a BatchNorm here; data-parallel trials convert it to the synced version once the
    process group exists."""
    if kind in ("bn", "syncbn", "bn_noise"):
        bn = nn.BatchNorm2d if spatial and dims == 2 else nn.BatchNorm1d
        layer = bn(channels, momentum=momentum)
        return _NoisyShift(layer) if kind == "bn_noise" else layer
    if kind == "fixed_scale":
        return _FixedScale(FIXED_SCALE)
    if kind == "gn":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "ln":
        # LayerNorm over all of (C, H, W) is GroupNorm with one group.
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    return nn.Identity()


def build_model(
    spec: MLPSpec | CNNSpec | ResNetSpec | LogRegSpec | MLP1DSpec | CNN1DSpec | GRU1DSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> Classifier:
    """Instantiate the model a spec names for inputs of ``input_shape`` (without the batch)."""
    width = int(torch.tensor(input_shape).prod())
    if isinstance(spec, LogRegSpec):
        return Classifier(nn.Sequential(nn.Flatten()), nn.Linear(width, num_classes))
    if isinstance(spec, MLP1DSpec):
        act1d = _ACTIVATIONS[spec.activation]
        return Classifier(
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(width, spec.hidden),
                act1d(),
                _Residual(nn.Sequential(nn.Linear(spec.hidden, spec.hidden), act1d())),
            ),
            nn.Linear(spec.hidden, num_classes),
        )
    if isinstance(spec, CNN1DSpec):
        act1d = _ACTIVATIONS[spec.activation]
        c, length = input_shape[0], input_shape[-1]
        convs: list[nn.Module] = []
        for k_in, k in ((c, 5), (spec.channels, 3), (spec.channels, 3)):
            convs += [nn.Conv1d(k_in, spec.channels, k, stride=2, padding=1), act1d()]
            length = (length + 2 - k) // 2 + 1
        return Classifier(
            nn.Sequential(*convs, nn.Flatten()), nn.Linear(spec.channels * length, num_classes)
        )
    if isinstance(spec, GRU1DSpec):
        directions = 2 if spec.bidirectional else 1
        return Classifier(
            nn.Sequential(_GRUFeatures(input_shape[0], spec.hidden, spec.bidirectional)),
            nn.Linear(directions * spec.hidden * input_shape[-1], num_classes),
        )

    act = _ACTIVATIONS[spec.activation]
    if isinstance(spec, MLPSpec):
        layers: list[nn.Module] = [nn.Flatten()]
        for h in spec.hidden:
            linear = nn.Linear(width, h)
            norm = norm_layer(spec.norm, h, spatial=False, momentum=spec.bn_momentum)
            drop = [nn.Dropout(spec.dropout)] if spec.dropout else []
            if spec.residual and h == width:
                layers += [_SkipLayer(nn.Sequential(linear, norm), act()), *drop]
            else:
                block = {
                    "norm_act_dropout": [norm, act(), *drop],
                    "act_dropout_norm": [act(), *drop, norm],
                    "act_norm_dropout": [act(), norm, *drop],
                }[spec.order]
                layers += [linear, *block]
            width = h
        mlp = Classifier(nn.Sequential(*layers), nn.Linear(width, num_classes))
        if spec.init != "default":
            for m in mlp.modules():
                if isinstance(m, nn.Linear):
                    _init_linear(m, spec.init)
        return mlp

    in_ch = input_shape[0]
    dims = len(input_shape) - 1  # C x H x W (digits) or C x L (MNIST-1D)
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
    if isinstance(spec, CNNSpec):
        blocks: list[nn.Module] = []
        for out_ch in spec.channels:
            blocks.append(
                nn.Sequential(
                    conv(in_ch, out_ch, 3, padding=1, bias=spec.norm == "none"),
                    norm_layer(
                        spec.norm,
                        out_ch,
                        spatial=True,
                        groups=spec.gn_groups,
                        momentum=spec.bn_momentum,
                        dims=dims,
                    ),
                    act(),
                )
            )
            in_ch = out_ch
        tail: list[nn.Module] = [pool(1), nn.Flatten()]
        if spec.dropout:
            tail.append(nn.Dropout(spec.dropout))
        return Classifier(
            nn.Sequential(*blocks, nn.Sequential(*tail)), nn.Linear(in_ch, num_classes)
        )

    stem = nn.Sequential(
        conv(in_ch, spec.width, 3, padding=1, bias=False),
        norm_layer(
            spec.norm,
            spec.width,
            spatial=True,
            groups=spec.gn_groups,
            momentum=spec.bn_momentum,
            dims=dims,
        ),
        act(),
    )
    res = [_ResidualBlock(spec, act, dims) for _ in range(spec.blocks)]
    tail = [pool(1), nn.Flatten()]
    if spec.dropout:
        tail.append(nn.Dropout(spec.dropout))
    return Classifier(
        nn.Sequential(stem, *res, nn.Sequential(*tail)), nn.Linear(spec.width, num_classes)
    )


class _ResidualBlock(nn.Module):
    def __init__(self, spec: ResNetSpec, act: type[nn.Module], dims: int) -> None:
        super().__init__()
        w = spec.width
        conv = nn.Conv2d if dims == 2 else nn.Conv1d

        def norm() -> nn.Module:
            return norm_layer(
                spec.norm,
                w,
                spatial=True,
                groups=spec.gn_groups,
                momentum=spec.bn_momentum,
                dims=dims,
            )

        self.body = nn.Sequential(
            conv(w, w, 3, padding=1, bias=False),
            norm(),
            act(),
            conv(w, w, 3, padding=1, bias=False),
            norm(),
        )
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _init_linear(layer: nn.Linear, kind: Init) -> None:
    if kind == "xavier":
        nn.init.xavier_normal_(layer.weight)
    elif kind == "kaiming":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    else:
        nn.init.constant_(layer.weight, 1.0 / layer.in_features)
    nn.init.zeros_(layer.bias)


class _SkipLayer(nn.Module):
    """``act(x + body(x))``, ``body`` = Linear then norm: He et al. 2015's residual block
    (fig. 2, activation after the sum) with one layer instead of two, for MLP-d's
    ``residual``. With zero weights it is the identity on the non-negative inputs a ReLU
    network feeds it. The form ``x + act(body(x))`` diverged at 20 layers in a pilot: each
    ReLU branch adds a positive mean, which piles up with depth."""

    def __init__(self, body: nn.Sequential, act: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class _Residual(nn.Module):
    """``x + body(x)``: MLPBase's second hidden layer."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


#: BNW-2's constant: the notes' "1/1000 layer" (004:L945-955).
FIXED_SCALE = 1e-3
#: BNW-1's noise (004:L945-955, after Santurkar et al. 2018, "How Does Batch Normalization
#: Help Optimization?", sec. 2.1: noise of non-zero mean and non-unit variance after each BN,
#: redrawn every step). The notes give no magnitude; ours is of the order of the normalised
#: unit scale: per unit and batch, scale ~ U(1 - a, 1 + a), shift ~ U(-b, b).
NOISE_SCALE, NOISE_SHIFT = 0.5, 1.0


class _FixedScale(nn.Module):
    """``factor * x``: a constant rescaling with no parameters or statistics (BNW-2)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class _NoisyShift(nn.Module):
    """``bn(x)``, then in training ``s * bn(x) + m`` with ``s``, ``m`` drawn per unit (channel)
    afresh for every batch (:data:`NOISE_SCALE`, :data:`NOISE_SHIFT`): the next layer sees an
    input distribution that shifts at every step, the covariate shift BN is said to remove.
    Evaluation is plain BN (running statistics, no noise)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if not self.training:
            return y
        shape = (1, y.shape[1]) + (1,) * (y.dim() - 2)
        scale = torch.empty(shape, device=y.device, dtype=y.dtype).uniform_(
            1 - NOISE_SCALE, 1 + NOISE_SCALE
        )
        shift = torch.empty(shape, device=y.device, dtype=y.dtype).uniform_(
            -NOISE_SHIFT, NOISE_SHIFT
        )
        return scale * y + shift


class _GRUFeatures(nn.Module):
    """A GRU over the L positions of an N x C x L input (C features per step), its outputs at
    every step flattened: N x (directions * hidden * L). Zero initial state (torch's default)."""

    def __init__(self, channels: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.transpose(1, 2))
        return out.flatten(1)
