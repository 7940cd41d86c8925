"""MLP-d's options for the depth and BN-mechanism claims (ARCH-1, BNW-1, BNW-2):
``model.residual`` and the norms ``bn_noise`` and ``fixed_scale`` (tasks/models.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from orchestrator.errors import describe_validation_error
from tasks.model_specs import MLPSpec
from tasks.models import FIXED_SCALE, build_model

SHAPE, CLASSES = (1, 8, 8), 10


def _mlp(**kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(MLPSpec(hidden=[64, 64, 64], **kw), SHAPE, CLASSES)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", ["none", "bn", "bn_noise", "fixed_scale"])
def test_residual_adds_no_parameters(norm: str) -> None:
    plain, residual = _mlp(norm=norm), _mlp(norm=norm, residual=True)
    assert _count(plain) == _count(residual)
    # Same initial weights too: the skip is the arms' only difference.
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), residual.parameters()))


def test_residual_is_the_identity_at_zero_weights() -> None:
    model = _mlp(residual=True).eval()
    with torch.no_grad():
        for p in model.features.parameters():
            p.zero_()
    x = torch.rand(5, *SHAPE)  # non-negative, as pixels and ReLU outputs are
    assert torch.equal(model.features(x), x.flatten(1))


def test_residual_skips_only_layers_of_equal_width() -> None:
    torch.manual_seed(0)
    model = build_model(MLPSpec(hidden=[32, 32], residual=True), SHAPE, CLASSES)
    # 64 pixels -> 32 has no identity; 32 -> 32 does.
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Flatten", "Linear", "Identity", "ReLU", "_SkipLayer"]


def test_fixed_scale_multiplies_by_1e_3_and_learns_nothing() -> None:
    model = _mlp(norm="fixed_scale")
    scales = [m for m in model.features if type(m).__name__ == "_FixedScale"]
    assert len(scales) == 3 and FIXED_SCALE == 1e-3
    x = torch.randn(7, 64)
    for m in scales:
        assert not list(m.parameters()) and not list(m.buffers())
        assert torch.equal(m.train()(x), 1e-3 * x) and torch.equal(m.eval()(x), 1e-3 * x)


def test_bn_noise_differs_from_bn_only_in_training() -> None:
    bn, noisy = _mlp(norm="bn"), _mlp(norm="bn_noise")
    # Same seed, same weights; the noise adds no parameters or buffers.
    assert [t.tolist() for t in bn.state_dict().values()] == [
        t.tolist() for t in noisy.state_dict().values()
    ]
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        assert torch.equal(bn.eval()(x), noisy.eval()(x))
        trained_bn, trained_noisy = bn.train()(x), noisy.train()(x)
    assert not torch.allclose(trained_bn, trained_noisy)
    # The noise is redrawn every batch: two training passes differ.
    with torch.no_grad():
        assert not torch.equal(noisy(x), noisy(x))


def test_bn_noise_draws_a_per_unit_shift_and_scale_per_batch() -> None:
    torch.manual_seed(1)
    layer = build_model(MLPSpec(hidden=[64], norm="bn_noise"), SHAPE, CLASSES).features[2]
    x = torch.randn(256, 64)
    with torch.no_grad():
        y = layer.train()(x)
        z = layer.bn.train()(x)  # BN alone, normalised by the same batch
    # Each unit's output is an affine image of its BN output: s * z + m, s in [0.5, 1.5].
    s = (y - y.mean(0)).std(0) / (z - z.mean(0)).std(0)
    m = y.mean(0) - s * z.mean(0)
    assert torch.allclose(y, s * z + m, atol=1e-5)
    assert s.min() >= 0.5 - 1e-4 and s.max() <= 1.5 + 1e-4 and s.std() > 0.1
    assert m.abs().max() <= 1.0 + 1e-4 and m.std() > 0.2


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"norm": "bn_nois"}, "model.norm: Input should be 'none', 'bn', 'syncbn', 'gn', 'ln', "),
        ({"norm": "fixed"}, "'bn_noise' or 'fixed_scale' (got 'fixed')"),
        ({"residual": "maybe"}, "model.residual: Input should be a valid boolean"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        MLPSpec.model_validate(raw)
    msg = describe_validation_error(e.value, raw, prefix="model.")
    assert "\n" not in msg and needle in msg


def test_residual_default_keeps_trial_keys() -> None:
    # Trial keys hash the dumped spec: the default must dump as before the option existed.
    assert "residual" not in MLPSpec().model_dump()
    assert MLPSpec(residual=True).model_dump()["residual"] is True
