"""The regularisation options the reg_more study (REG-2..4) runs: train.l1, train.ema,
train.final_stats and mlp_d's model.order, and the statistics behind their claims.

Real torch on CPU, one thread (the machine is shared; a fixed thread count keeps two runs'
floating-point reductions in the same order, so "trains exactly like" is bitwise).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from orchestrator.errors import describe_validation_error
from tasks.classify import ClassifySpec, run
from tasks.events import Checkpoint, Metrics, Summary
from tasks.models import build_model
from tasks.regularizers import (
    NEAR_ZERO,
    WeightEMA,
    bn_variance_shift,
    near_zero_fraction,
)
from tasks.train_spec import TrainSpec

BASE: dict[str, Any] = {
    "data": {"name": "digits"},
    "model": {"name": "mlp_d", "hidden": [32]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "scheduler": {"name": "constant"},
    "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "checkpoint_min_interval_s": 0},
    "seed": 1,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(model: dict[str, Any] | None = None, **train: Any) -> ClassifySpec:
    return ClassifySpec.model_validate(
        {
            **BASE,
            "model": {**BASE["model"], **(model or {})},
            "train": {**BASE["train"], **train},
        }
    )


def _run(spec: ClassifySpec) -> tuple[list[Metrics], Summary]:
    events = list(run(spec))
    summary = events[-1]
    assert isinstance(summary, Summary) and summary.outcome == "finished", summary
    return [e for e in events if isinstance(e, Metrics)], summary


def test_l1_zeroes_weights_that_l2_only_shrinks() -> None:
    # REG-3's mechanism on a small problem: L1's constant pull takes weights to (about) zero,
    # L2's proportional pull leaves them small but nonzero. This L2 costs more training loss
    # than this L1 (a stronger constraint), and still zeroes fewer.
    _, l1 = _run(_spec(l1=3e-3, final_stats=True, epochs=10))
    plain = _spec(final_stats=True, epochs=10)
    _, l2 = _run(
        plain.model_copy(
            update={"optimizer": plain.optimizer.model_copy(update={"weight_decay": 3e-2})}
        )
    )
    _, none = _run(plain)
    assert l2.values["train/eval_loss"] > l1.values["train/eval_loss"]
    assert l1.values["weights/near_zero"] > 0.3
    assert l1.values["weights/near_zero"] > 3 * l2.values["weights/near_zero"]
    assert l2.values["weights/rms"] < none.values["weights/rms"]


def test_near_zero_fraction_counts_weight_matrices_only() -> None:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, NEAR_ZERO / 2, 1.0, -NEAR_ZERO], [2.0] * 4]))
        layer.bias.zero_()  # biases are not counted
    assert near_zero_fraction(layer) == 2 / 8


def test_ema_of_constant_weights_is_the_weights() -> None:
    # The bias correction: an average of one repeated value is that value from the first step
    # (uncorrected, v_1 would be (1 - decay) * theta).
    model = build_model(_spec(model={"norm": "bn"}).model, (1, 8, 8), 10)
    for decay in (0.0, 0.9, 0.999):
        ema = WeightEMA(model, decay)
        for _ in range(3):
            ema.update(model)
        averaged = ema.averaged(model).state_dict()
        for k, v in model.state_dict().items():
            assert torch.allclose(averaged[k], v, rtol=1e-5, atol=1e-7), (decay, k)


def test_ema_is_a_weighted_mean_of_the_updates() -> None:
    model = nn.Linear(1, 1, bias=False)
    ema = WeightEMA(model, 0.5)
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # (0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25): weights 1/3 and 2/3.
    assert ema.averaged(model).weight.item() == pytest.approx(1 / 3 + 2)


def test_ema_reads_the_weights_only_and_decay_zero_is_the_raw_weights() -> None:
    spec = _spec(model={"dropout": 0.2})  # dropout: the RNG must not be touched either
    plain, plain_summary = _run(spec)
    for decay in (0.0, 0.9):
        with_ema, summary = _run(_spec(model={"dropout": 0.2}, ema=decay))
        for a, b in zip(plain, with_ema):
            assert b.values["train/loss"] == a.values["train/loss"]
            assert b.values["val/acc"] == a.values["val/acc"]
        assert summary.values["test/acc"] == plain_summary.values["test/acc"]
        assert {"val/acc_ema", "val/loss_ema"} <= set(with_ema[-1].values)
        if decay == 0.0:
            assert summary.values["test/acc_ema"] == summary.values["test/acc"]
            assert summary.values["test/loss_ema"] == pytest.approx(summary.values["test/loss"])
        else:
            assert summary.values["test/loss_ema"] != summary.values["test/loss"]


def test_ema_resumes_from_a_checkpoint() -> None:
    spec = _spec(ema=0.9, checkpoint_every=1)
    _, full = _run(spec)
    events = run(spec)
    state = next(e.state for e in events if isinstance(e, Checkpoint) and e.step == 1)
    events.close()  # type: ignore[attr-defined]
    resumed = list(run(spec, resume=state))[-1]
    assert isinstance(resumed, Summary)
    assert resumed.values["test/loss_ema"] == pytest.approx(full.values["test/loss_ema"])


@pytest.mark.parametrize(
    "order,expected",
    [
        ("norm_act_dropout", [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]),
        ("act_dropout_norm", [nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d]),
        ("act_norm_dropout", [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout]),
    ],
)
def test_order_builds_the_block(order: str, expected: list[type[nn.Module]]) -> None:
    spec = _spec(model={"norm": "bn", "dropout": 0.5, "order": order, "hidden": [8, 8]})
    features = build_model(spec.model, (1, 8, 8), 10).features
    assert [type(m) for m in features] == [nn.Flatten, *expected, *expected]


def _toy_shift(first: nn.Module, second: nn.Module) -> float:
    """Train-mode passes over N(0, 1) inputs, then the shift of the one BN at evaluation."""
    torch.manual_seed(0)
    model = nn.Sequential(first, second)
    model.train()
    for _ in range(200):
        model(torch.randn(256, 16))
    return bn_variance_shift(model, torch.randn(4096, 16))["bn/0/var_shift"]


def test_variance_shift_only_when_dropout_feeds_bn() -> None:
    # momentum=None: BN's running variance is the cumulative average of the batches'.
    after = _toy_shift(nn.BatchNorm1d(16, momentum=None), nn.Dropout(0.5))
    before = _toy_shift(nn.Dropout(0.5), nn.BatchNorm1d(16, momentum=None))
    assert after < 0.05
    # Inverted dropout at p = 0.5 doubles a zero-mean input's variance in training only.
    assert before == pytest.approx(math.log(2), abs=0.05)


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("train", "l1", -1e-4),
        ("train", "ema", 1.0),
        ("train", "ema", -0.5),
        ("model", "order", "dropout_norm"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(section: str, field: str, value: Any) -> None:
    raw = {**BASE, section: {**BASE[section], field: value}}
    with pytest.raises(ValidationError) as e:
        ClassifySpec.model_validate(raw)
    message = describe_validation_error(e.value, raw)
    assert "\n" not in message and message.startswith(f"{section}.{field}: "), message


def test_defaults_keep_old_trial_keys() -> None:
    # Trial keys hash the dumped spec: the new options' defaults must not appear in it.
    assert not {"l1", "ema", "final_stats"} & set(TrainSpec().model_dump())
    assert TrainSpec(ema=0.99, l1=1e-4).model_dump()["ema"] == 0.99
