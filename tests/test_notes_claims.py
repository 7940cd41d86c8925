"""Claims of shared/claims.md that a unit check settles without a sweep (mapped in
conf/claims.yaml).

OPT-6: Adam's trajectory is unchanged when the loss is rescaled, SGD's is not.
OPT-10: one step (three, to exercise the state) of torch's optimizers equals the notes' update
rule. BN-5: BN momentum changes evaluation only. INIT-1: constant init keeps hidden units
identical. INIT-3: a gain g per layer scales the gradient by g^depth. ERR-1..3: the notes'
known errors about activation functions, shown wrong against torch's definitions. Also the
per-layer statistics (train.layer_stats) the INIT/ACT study uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tasks import data as datasets
from tasks.classify import ClassifySpec, run
from tasks.events import Metrics
from tasks.models import Classifier, build_model
from tasks.optimizers import AdamSpec, build_optimizer
from tasks.training import fit

STEPS = 3


def _loss(theta: torch.Tensor) -> torch.Tensor:
    # Not quadratic, so the gradient depends on where it is taken (Nesterov's look-ahead matters).
    return (torch.sin(3 * theta) + theta**4 / 4 + theta**2).sum()


def _grad(theta: torch.Tensor) -> torch.Tensor:
    t = theta.detach().clone().requires_grad_(True)
    _loss(t).backward()
    assert t.grad is not None
    return t.grad


def _torch_trajectory(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], theta0: torch.Tensor
) -> list[torch.Tensor]:
    p = theta0.clone().requires_grad_(True)
    opt = make([p])
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(p).backward()
        opt.step()
        out.append(p.detach().clone())
    return out


THETA0 = torch.tensor([0.7, -1.3, 0.05, 2.0], dtype=torch.float64)


def test_OPT_10_nesterov_matches_notes_after_change_of_variables() -> None:
    # Notes (003:L124, Goodfellow et al. 8.3.3): v <- a v - e grad J(theta + a v);
    # theta <- theta + v.
    # torch (SGD, nesterov=True, dampening 0; Sutskever et al.'s form): b <- a b + g;
    # p <- p - e (g + a b), with g the gradient at p. Change of variables: torch's parameter is
    # the look-ahead point p = theta + a v, and its buffer is b = -v / e. Then
    # p' = theta' + a v' = p + (1 + a) v' - a v = p - e (b' + a b' - a b) = p - e (g + a b'),
    # which is torch's step. Both start from v = 0 (torch's first buffer is g).
    a, e = 0.9, 0.05
    got = _torch_trajectory(lambda ps: torch.optim.SGD(ps, lr=e, momentum=a, nesterov=True), THETA0)
    theta, v = THETA0.clone(), torch.zeros_like(THETA0)
    for step in range(STEPS):
        v = a * v - e * _grad(theta + a * v)
        theta = theta + v
        torch.testing.assert_close(got[step], theta + a * v, rtol=1e-12, atol=1e-12)
    # The look-ahead is not a no-op: the trajectory differs from classical momentum's.
    classical = _torch_trajectory(lambda ps: torch.optim.SGD(ps, lr=e, momentum=a), THETA0)
    assert not torch.allclose(classical[-1], got[-1])


def test_OPT_10_adagrad_matches_notes() -> None:
    # Notes (003:L135): r <- r + g*g; theta <- theta - e / sqrt(r) * g. torch adds eps to
    # sqrt(r) (set to 0 here) and has an lr decay (0 by default): no change of variables.
    e = 0.1
    got = _torch_trajectory(lambda ps: torch.optim.Adagrad(ps, lr=e, eps=0.0), THETA0)
    theta, r = THETA0.clone(), torch.zeros_like(THETA0)
    for step in range(STEPS):
        g = _grad(theta)
        r = r + g * g
        theta = theta - e / r.sqrt() * g
        torch.testing.assert_close(got[step], theta, rtol=1e-12, atol=1e-12)


def test_OPT_10_rmsprop_matches_notes() -> None:
    # Notes (003:L145, 004:L250): r <- p r + (1 - p) g*g; theta <- theta - e / sqrt(r) * g.
    # torch's alpha is the notes' p; torch adds eps to sqrt(r) (0 here).
    e, rho = 0.01, 0.9
    got = _torch_trajectory(lambda ps: torch.optim.RMSprop(ps, lr=e, alpha=rho, eps=0.0), THETA0)
    theta, r = THETA0.clone(), torch.zeros_like(THETA0)
    for step in range(STEPS):
        g = _grad(theta)
        r = rho * r + (1 - rho) * g * g
        theta = theta - e / r.sqrt() * g
        torch.testing.assert_close(got[step], theta, rtol=1e-12, atol=1e-12)


def test_OPT_10_adam_matches_notes_with_bias_correction() -> None:
    # Notes (004:L262-284): v <- b1 v + (1-b1) g; S <- b2 S + (1-b2) g^2; v^ = v / (1-b1^t);
    # S^ = S / (1-b2^t); W <- W - a v^ / (sqrt(S^) + eps). torch computes the same quotient as
    # (a / (1-b1^t)) v / (sqrt(S) / sqrt(1-b2^t) + eps): algebraically identical.
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    got = _torch_trajectory(lambda ps: torch.optim.Adam(ps, lr=lr, betas=(b1, b2), eps=eps), THETA0)
    theta, v, s = THETA0.clone(), torch.zeros_like(THETA0), torch.zeros_like(THETA0)
    uncorrected = THETA0.clone()
    for step in range(STEPS):
        t = step + 1
        g = _grad(theta)
        v = b1 * v + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        theta = theta - lr * (v / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(got[step], theta, rtol=1e-10, atol=1e-12)
        if t == 1:
            uncorrected = THETA0 - lr * v / (s.sqrt() + eps)
    # Without the correction the first step differs (by ~sqrt(1-b2)/(1-b1) ~ 0.32x).
    assert not torch.allclose(got[0], uncorrected)


def test_OPT_7_adam_without_bias_correction_is_the_notes_rule_minus_the_correction() -> None:
    # The OPT-7 arm (conf/optimizer/adam_nobc.yaml): the notes' Adam (004:L262-284) with
    # v^ = v and S^ = S. Its first step is (1-b1)/sqrt(1-b2) ~ 3.2x the corrected one's.
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    spec = AdamSpec(lr=lr, betas=(b1, b2), eps=eps, bias_correction=False)
    got = _torch_trajectory(lambda ps: build_optimizer(ps, spec), THETA0)
    corrected = _torch_trajectory(lambda ps: build_optimizer(ps, AdamSpec(lr=lr)), THETA0)
    theta, v, s = THETA0.clone(), torch.zeros_like(THETA0), torch.zeros_like(THETA0)
    for step in range(STEPS):
        g = _grad(theta)
        v = b1 * v + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        theta = theta - lr * v / (s.sqrt() + eps)
        torch.testing.assert_close(got[step], theta, rtol=1e-10, atol=1e-12)
    first = (got[0] - THETA0) / (corrected[0] - THETA0)
    torch.testing.assert_close(
        first, torch.full_like(first, (1 - b1) / (1 - b2) ** 0.5), rtol=1e-5, atol=0
    )
    with pytest.raises(ValueError, match="adam only"):
        AdamSpec(name="adamw", bias_correction=False)


def _bn_run(bn_momentum: float) -> list[Metrics]:
    spec = ClassifySpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {"name": "mlp_d", "hidden": [32], "norm": "bn", "bn_momentum": bn_momentum},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "scheduler": {"name": "constant"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
            "seed": 3,
        }
    )
    return [e for e in run(spec) if isinstance(e, Metrics)]


def test_BN_5_bn_momentum_changes_evaluation_only() -> None:
    # torch's momentum convention (the notes' retention 0.9 is torch's 0.1). Training uses the
    # batch statistics, so the training trajectory is bitwise identical; evaluation uses the
    # running statistics, whose averaging the momentum sets.
    slow, fast = _bn_run(0.01), _bn_run(0.9)
    assert [m.values["train/loss"] for m in slow] == [m.values["train/loss"] for m in fast]
    assert [m.values["train/acc"] for m in slow] == [m.values["train/acc"] for m in fast]
    assert slow[-1].values["val/loss"] != fast[-1].values["val/loss"]


X = torch.linspace(-6, 6, 241, dtype=torch.float64)


def test_ERR_1_sigmoid_is_neither_even_nor_odd() -> None:
    # Notes 002:L467 say sigmoid is even. What holds: sigmoid(-x) = 1 - sigmoid(x).
    s, s_neg = torch.sigmoid(X), torch.sigmoid(-X)
    torch.testing.assert_close(s_neg, 1 - s)
    nonzero = X != 0
    assert not torch.allclose(s_neg[nonzero], s[nonzero])  # not even
    assert not torch.allclose(s_neg[nonzero], -s[nonzero])  # not odd


def test_ERR_2_elu_is_identity_for_positive_inputs() -> None:
    # Notes 002:L519 say ELU's gradient may vanish for positive inputs. It is the identity
    # there: gradient exactly 1 however large x is.
    x = torch.tensor([1e-3, 0.5, 3.0, 50.0, 1e4], dtype=torch.float64, requires_grad=True)
    y = nn.functional.elu(x)
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(y.detach(), x.detach())
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("k", [0.01, 0.2])
def test_ERR_3_leaky_relu_is_max_kx_x(k: float) -> None:
    # Notes 002:L1206 say LeakyReLU = max(kx, 0). What holds (0 < k < 1): max(kx, x).
    got = nn.functional.leaky_relu(X, negative_slope=k)
    torch.testing.assert_close(got, torch.maximum(k * X, X))
    notes = torch.maximum(k * X, torch.zeros_like(X))
    assert not torch.allclose(got, notes)
    # The notes' formula is zero on negatives and scales positives by k: neither leaky nor ReLU.
    assert torch.all(notes[X < 0] == 0) and torch.all(got[X < 0] < 0)


def _fit(spec: ClassifySpec) -> tuple[list[Metrics], Classifier]:
    torch.manual_seed(spec.seed)
    data = datasets.load(spec.data)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    events = fit(
        model,
        data,
        build_optimizer(model.parameters(), spec.optimizer),
        None,
        spec.train,
        spec.seed,
        torch.device("cpu"),
    )
    return [e for e in events if isinstance(e, Metrics)], model


def _mlp_run(**train: object) -> tuple[list[Metrics], Classifier]:
    spec = ClassifySpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {
                "name": "mlp_d",
                "hidden": [32, 32],
                "init": train.pop("init", "default"),
                "norm": train.pop("norm", "none"),
                "dropout": 0.2,
            },
            "optimizer": {"name": "sgd", "lr": 0.05},
            "scheduler": {"name": "constant"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu", **train},
            "seed": 1,
        }
    )
    return _fit(spec)


def test_INIT_1_constant_init_keeps_hidden_units_identical() -> None:
    # Every hidden unit of a layer starts with the same weights; its gradient is then the
    # same too, so after training they are still copies of one another (no dropout here: its
    # random masks would break the symmetry).
    spec = ClassifySpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {"name": "mlp_d", "hidden": [16, 16], "init": "constant"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "scheduler": {"name": "constant"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
        }
    )
    _, model = _fit(spec)
    hidden = [m for m in model.features if isinstance(m, nn.Linear)]
    for layer in hidden:
        assert torch.allclose(layer.weight, layer.weight[:1].expand_as(layer.weight))
        assert not torch.allclose(
            layer.weight, torch.full_like(layer.weight, 1 / layer.in_features)
        )
    # A default-initialised layer's units differ from the start.
    default = build_model(spec.model.model_copy(update={"init": "default"}), (1, 8, 8), 10)
    first = default.features[1]
    assert isinstance(first, nn.Linear)
    assert not torch.allclose(first.weight, first.weight[:1].expand_as(first.weight))


@pytest.mark.parametrize("gain", [0.8, 1.0, 1.25])
def test_INIT_3_gain_g_scales_the_gradient_by_g_per_layer(gain: float) -> None:
    # Notes (001:L17-25): a per-layer factor below 1 vanishes the gradient towards the input,
    # above 1 explodes it. A unit test, not a study: in a deep linear net at init the scaling
    # is arithmetic (E|W^T u|^2 = g^2 |u|^2 for W ~ N(0, g^2/n)), true by construction.
    # Measured as the notes state it, the loss gradient w.r.t. each layer's input; the loss is
    # linear in the output, so the gradient at the top is fixed. Width 512 concentrates the
    # norms (per-layer log-norm noise ~ 1/sqrt(2n), a log bias ~ -1/(2n)).
    width, depth = 512, 30
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(width, width, generator=gen) * gain / width**0.5 for _ in range(depth)]
    x = torch.randn(1, width, generator=gen).requires_grad_(True)
    h, inputs = x, []
    for w in weights:
        h.retain_grad()
        inputs.append(h)
        h = h @ w.T
    (h * torch.randn(1, width, generator=gen)).sum().backward()
    # Layers from the top: the gradient at the input of the k-th from the top passed k-1
    # weight matrices on its way down.
    log_norms = torch.stack([t.grad.norm().log() for t in reversed(inputs) if t.grad is not None])
    k = torch.arange(depth, dtype=log_norms.dtype)
    slope = ((k - k.mean()) * (log_norms - log_norms.mean())).sum() / ((k - k.mean()) ** 2).sum()
    assert slope.item() == pytest.approx(math.log(gain), abs=0.01)
    # Linear in depth: the straight line explains the log norms (residuals small).
    fit = log_norms.mean() + slope * (k - k.mean())
    assert (log_norms - fit).abs().max().item() < 0.15


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_layer_stats_are_reported_and_leave_training_unchanged(norm: str) -> None:
    # Support for the INIT/ACT study: the probe pass must not touch BN buffers, the RNG
    # (dropout is on) or the gradients, so the trajectory is bitwise that of a plain run.
    plain, plain_model = _mlp_run(norm=norm)
    stats, stats_model = _mlp_run(norm=norm, layer_stats=True)
    for a, b in zip(plain, stats):
        assert {
            k: v for k, v in b.values.items() if not k.startswith("layer/") and k != "time/step_ms"
        } == {k: v for k, v in a.values.items() if k != "time/step_ms"}
    for (k, a), (_, b) in zip(plain_model.state_dict().items(), stats_model.state_dict().items()):
        assert torch.equal(a, b), k
    layer_keys = {k for k in stats[0].values if k.startswith("layer/")}
    names = {"features.1", "features.5", "head"} | (
        {"features.2", "features.6"} if norm == "bn" else set()
    )
    assert layer_keys == (
        {f"layer/{n}/{s}" for n in names for s in ("act_mean", "act_std", "grad_norm")}
        | {"layer/features.3/dead_frac", "layer/features.7/dead_frac"}
    )
    assert all(0 <= stats[1].values[f"layer/features.{i}/dead_frac"] < 1 for i in (3, 7))
    assert all(stats[0].values[f"layer/{n}/grad_norm"] > 0 for n in names)
    # Epoch 0 is measured at initialisation, epoch 1 after training: they differ.
    assert stats[0].values["layer/head/act_std"] != stats[1].values["layer/head/act_std"]


def _moved_and_deviation(optimizer: dict, scale: float) -> tuple[float, float]:
    """One epoch of MLP-d on digits with the loss x ``scale``: how far the weights moved
    from their initialisation at scale 1, and how far the scaled run's weights end from
    the scale-1 run's (same seed: same init, same batches)."""

    def final(c: float) -> tuple[torch.Tensor, torch.Tensor]:
        spec = ClassifySpec.model_validate(
            {
                "data": {"name": "digits"},
                "model": {"name": "mlp_d", "hidden": [32, 32]},
                "optimizer": optimizer,
                "scheduler": {"name": "constant"},
                "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "loss_scale": c},
            }
        )
        torch.manual_seed(spec.seed)
        init = build_model(spec.model, (1, 8, 8), 10)
        _, model = _fit(spec)

        def flat(m: nn.Module) -> torch.Tensor:
            return torch.cat([p.detach().flatten() for p in m.parameters()])

        return flat(init), flat(model)

    init, base = final(1.0)
    _, scaled = final(scale)
    return float((base - init).norm()), float((scaled - base).norm())


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_OPT_6_adam_is_invariant_to_rescaling_the_loss_and_sgd_is_not(scale: float) -> None:
    # Adam divides the step by sqrt(v): a factor c on the gradient cancels up to eps. Measured
    # (one epoch, 34 steps): the run ends 0.02% (c = 1e3) and 4.7% (c = 1e-3: eps 1e-8 is no
    # longer small beside the scaled gradients of the least used weights) of its travel away
    # from the c = 1 run; with eps 1e-10, 0.15%.
    moved, deviation = _moved_and_deviation({"name": "adam", "lr": 1e-3}, scale)
    assert deviation < 0.1 * moved, (moved, deviation)
    # SGD's step is lr x gradient: c = 1e-3 barely moves (deviation ~ all of the travel),
    # c = 1e3 diverges (a NaN deviation is not "small" either).
    moved, deviation = _moved_and_deviation({"name": "sgd", "lr": 0.05}, scale)
    assert not deviation < 0.5 * moved, (moved, deviation)
    # The invariance is bounded by eps: with eps 1e-4, near the RMS of the c = 1e-3
    # gradients, that run is damped and leaves the trajectory (97% of the travel).
    if scale < 1:
        moved, deviation = _moved_and_deviation({"name": "adam", "lr": 1e-3, "eps": 1e-4}, scale)
        assert not deviation < 0.5 * moved, (moved, deviation)
