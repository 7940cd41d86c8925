"""The rare-feature synthetic data (OPT-3) and the effective-LR and late-progress metrics
(OPT-3, OPT-4) on real data and real torch optimizers."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tasks.builtin import ClassifySpec
from tasks.classify import run
from tasks.data import SyntheticSpec, load, rare_count
from tasks.events import Metrics, Summary
from tasks.opt_stats import effective_lr

RARE = {
    "name": "synthetic",
    "n_samples": 4000,
    "n_features": 100,
    "n_informative": 20,
    "sparsity": 0.5,
    "rare_fraction": 0.5,
    "rare_rate": 0.02,
}


def test_rare_features_are_rare_and_the_others_are_not() -> None:
    spec = SyntheticSpec.model_validate(RARE)
    ds = load(spec)
    present = (ds.x_train != 0).float().mean(0)
    k, k_rare = spec.n_informative, rare_count(spec)
    assert k_rare == 10
    assert present[k - k_rare : k].max() < 0.04  # rate 0.02
    assert present[: k - k_rare].min() > 0.45 and present[k:].min() > 0.45  # rate 0.5
    rare = ds.test_subsets["rare"]
    assert torch.equal(rare, (ds.x_test[:, k - k_rare : k] != 0).any(1))
    assert torch.equal(ds.test_subsets["frequent"], ~rare)
    assert 0.1 < rare.float().mean() < 0.3  # 1 - 0.98^10 = 0.18
    assert 0.4 < ds.y_train.float().mean() < 0.6  # a sign teacher: balanced classes


def test_default_synthetic_data_and_its_dump_are_unchanged() -> None:
    spec = SyntheticSpec(sparsity=0.9)
    assert "rare_fraction" not in spec.model_dump() and "rare_rate" not in spec.model_dump()
    assert load(spec).test_subsets == {}
    assert SyntheticSpec.model_validate(RARE).model_dump()["rare_fraction"] == 0.5


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"n_classes": 3}, "data.n_classes"),
        ({"rare_fraction": 0.01}, "data.rare_fraction"),
        ({"rare_fraction": 0.99}, "data.rare_fraction"),
    ],
)
def test_rare_option_rejects_what_it_cannot_build(bad: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        SyntheticSpec.model_validate({**RARE, **bad})


def _run(optimizer: dict, epochs: int = 6) -> tuple[list[dict[str, float]], dict[str, float]]:
    spec = ClassifySpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {"name": "mlp_d", "hidden": [32]},
            "optimizer": optimizer,
            "scheduler": {"name": "constant"},
            "train": {"epochs": epochs, "device": "cpu", "checkpoint_every": 0},
        }
    )
    events = list(run(spec))
    per_epoch = [e.values for e in events if isinstance(e, Metrics)]
    (summary,) = [e.values for e in events if isinstance(e, Summary)]
    return per_epoch, summary


def test_OPT_3_adagrad_effective_lr_only_shrinks_and_rmsprop_does_not() -> None:
    adagrad, summary = _run({"name": "adagrad", "lr": 0.01})
    eff = [m["opt/eff_lr"] for m in adagrad]
    assert all(b <= a for a, b in zip(eff, eff[1:])), eff
    mid, last = adagrad[2], adagrad[5]  # epochs 6 // 2 - 1 and 5
    assert summary["opt/eff_lr_ratio_late"] == pytest.approx(last["opt/eff_lr"] / mid["opt/eff_lr"])
    assert summary["train/loss_drop_late"] == pytest.approx(
        1 - last["train/loss"] / mid["train/loss"]
    )
    # The contrast that makes the AdaGrad check mean something: a moving average forgets.
    rms = [m["opt/eff_lr"] for m in _run({"name": "rmsprop", "lr": 1e-3})[0]]
    assert any(b > a for a, b in zip(rms, rms[1:])), rms


def test_effective_lr_is_the_median_step_per_unit_gradient() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adagrad([p], lr=0.1, eps=0.0)
    assert effective_lr(opt) == {}  # state exists before the first step, but no step yet
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    assert effective_lr(opt)["opt/eff_lr"] == pytest.approx(0.1 / 2.0)
    sgd = torch.optim.SGD([p], lr=0.1)
    sgd.step()
    assert effective_lr(sgd) == {}  # not adaptive: nothing to report
    _, summary = _run({"name": "sgd", "lr": 0.02}, epochs=2)
    assert "train/loss_drop_late" in summary and "opt/eff_lr_ratio_late" not in summary


def test_rare_subsets_are_reported_on_the_test_split() -> None:
    spec = ClassifySpec.model_validate(
        {
            "data": RARE,
            "model": {"name": "logreg_1d"},
            "optimizer": {"name": "adagrad", "lr": 1.0},
            "scheduler": {"name": "constant"},
            "train": {"epochs": 2, "device": "cpu", "checkpoint_every": 0},
        }
    )
    (summary,) = [e.values for e in run(spec) if isinstance(e, Summary)]
    rare = load(spec.data).test_subsets["rare"].float().mean().item()
    mixed = rare * summary["test/acc_rare"] + (1 - rare) * summary["test/acc_frequent"]
    assert mixed == pytest.approx(summary["test/acc"])
