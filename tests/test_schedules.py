"""Shapes of the learning-rate schedules (tasks/schedules.py) and their configs."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import TypeAdapter, ValidationError

from tasks import schedules as S

ROOT = Path(__file__).resolve().parent.parent
SPEC: TypeAdapter[S.SchedulerSpec] = TypeAdapter(S.SchedulerSpec)
CLASSES = typing.get_args(typing.get_args(S.SchedulerSpec)[0])
NAMES = [c.model_fields["name"].default for c in CLASSES]


def spec(name: str, **kw: object) -> S.SchedulerSpec:
    return SPEC.validate_python({"name": name, **kw})


def mults(name: str, spe: int = 10, epochs: int = 10, **kw: object) -> list[float]:
    return S.lr_multipliers(spec(name, **kw), spe, epochs)


def restarts(m: list[float]) -> list[int]:
    """Steps where the multiplier jumps up."""
    return [i for i in range(1, len(m)) if m[i] > m[i - 1] + 1e-9]


# --- families' shapes ---


def test_cosine_restarts_returns_to_start_lr_with_doubling_periods() -> None:
    m = mults("cosine_restarts", spe=10, epochs=15, first_decay_steps=1.0, alpha=0.0)
    assert restarts(m) == [10, 30, 70]  # periods 10, 20, 40 steps: t_mul = 2
    for r in [0, 10, 30, 70]:
        assert m[r] == pytest.approx(1.0)  # back to the initial LR (m_mul = 1)
        if r:
            assert m[r - 1] < 0.03  # from near the floor
    assert m[10:30] == pytest.approx([S.cosine_decay(t, 20) for t in range(20)])


def test_cosine_restarts_peaks_scale_by_m_mul_above_alpha() -> None:
    m = mults("cosine_restarts", spe=10, epochs=15, first_decay_steps=1.0, m_mul=0.5, alpha=0.1)
    assert restarts(m) == [10, 30, 70]
    peaks = [m[r] for r in [0, 10, 30, 70]]
    assert peaks == pytest.approx([0.1 + 0.9 * 0.5**i for i in range(4)])
    assert min(m) >= 0.1 - 1e-12


def test_cosine_restarts_torch_path_matches_tf_formula() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = S.build_scheduler(
        opt, spec("cosine_restarts", first_decay_steps=1.0, t_mul=3.0, alpha=0.2), 10, 15
    )
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    m = mults("cosine_restarts", spe=10, epochs=15, first_decay_steps=1.0, t_mul=3.0, alpha=0.2)
    assert restarts(m) == [10, 40, 130]  # periods 10, 30, 90
    assert m == pytest.approx([S.cosine_decay_restarts(t, 10, 3.0, 1.0, 0.2) for t in range(150)])


def test_polynomial_cycle_redecays_from_lower_peaks() -> None:
    m = mults("polynomial", spe=10, epochs=6, decay_steps=2.0, cycle=True, end_factor=0.0)
    assert m[20] == pytest.approx(0.0)  # end of the first cycle
    assert 0.4 < m[21] < 0.6  # second cycle restarts near (1/2)^power...
    assert all(b < a for a, b in zip(m[21:41], m[22:41]))  # ...and decays again
    assert m[40] == pytest.approx(0.0)
    assert m[41] < m[21]  # third peak lower still, ~1/3
    assert m[41] == pytest.approx(1 - 41 / 60)


def test_polynomial_without_cycle_holds_end_factor() -> None:
    m = mults("polynomial", spe=10, epochs=4, decay_steps=2.0, power=2.0, end_factor=0.1)
    assert m[:21] == pytest.approx([0.9 * (1 - t / 20) ** 2 + 0.1 for t in range(21)])
    assert m[20:] == pytest.approx([0.1] * 20)


def test_polynomial_torch_path_matches_tf_formula() -> None:
    m = mults("polynomial", spe=10, epochs=5, power=0.5, end_factor=0.0)  # PolynomialLR
    assert m == pytest.approx([S.polynomial_decay(t, 50, power=0.5) for t in range(50)])


def test_piecewise_constant_values_exact() -> None:
    m = mults("piecewise_constant", spe=10, epochs=4, boundaries=[1.0, 2.5], values=[1.0, 0.5, 0.1])
    assert m == [1.0] * 10 + [0.5] * 15 + [0.1] * 15


def test_staircase_exponential_is_piecewise_constant() -> None:
    m = mults("exponential", spe=5, epochs=8, decay_steps=2.0, decay_rate=0.5, staircase=True)
    assert m == pytest.approx([0.5 ** (t // 10) for t in range(40)])
    assert len(set(m[:10])) == 1 and len(set(m[10:20])) == 1
    smooth = mults("exponential", spe=5, epochs=8, decay_steps=2.0, decay_rate=0.5)
    assert smooth == pytest.approx([0.5 ** (t / 10) for t in range(40)])
    assert all(b < a for a, b in zip(smooth, smooth[1:]))


@pytest.mark.parametrize("staircase", [False, True])
def test_natural_exp_and_inverse_time_follow_tf(staircase: bool) -> None:
    p = [t // 10 if staircase else t / 10 for t in range(50)]
    m = mults("natural_exp", spe=10, epochs=5, decay_steps=1.0, decay_rate=0.3, staircase=staircase)
    assert m == pytest.approx([math.exp(-0.3 * x) for x in p])
    m = mults(
        "inverse_time", spe=10, epochs=5, decay_steps=1.0, decay_rate=0.5, staircase=staircase
    )
    assert m == pytest.approx([1 / (1 + 0.5 * x) for x in p])


def test_cosine_holds_alpha_after_decay_and_torch_path_matches() -> None:
    m = mults("cosine", spe=10, epochs=4, decay_steps=2.0, alpha=0.2)  # ends early: ours
    assert m[:21] == pytest.approx(
        [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * t / 20)) for t in range(21)]
    )
    assert m[20:] == pytest.approx([0.2] * 20)
    full = mults("cosine", spe=10, epochs=4, alpha=0.2)  # CosineAnnealingLR
    assert full == pytest.approx([S.cosine_decay(t, 40, 0.2) for t in range(40)])


def test_linear_cosine_follows_tf() -> None:
    m = mults("linear_cosine", spe=10, epochs=2, num_periods=2.0, beta=0.01)
    want = [(1 - t / 20) * 0.5 * (1 + math.cos(2 * math.pi * 2 * t / 20)) + 0.01 for t in range(20)]
    assert m == pytest.approx(want)


def test_noisy_linear_cosine_is_seeded_and_reduces_to_linear_cosine() -> None:
    a = mults("noisy_linear_cosine", seed=1)
    assert a == mults("noisy_linear_cosine", seed=1)
    assert a != mults("noisy_linear_cosine", seed=2)
    assert min(a) >= 0.01 - 1e-12  # the clipped noise keeps beta
    assert mults("noisy_linear_cosine", initial_variance=0.0) == pytest.approx(
        mults("linear_cosine")
    )
    # Random access: the value depends on the step only, not on the calls before it.
    assert S.noisy_linear_cosine_decay(57, 100, beta=0.01, seed=1) == a[57]


def test_onecycle_peaks_at_pct_start() -> None:
    m = mults("onecycle", spe=10, epochs=10)
    assert m[0] == pytest.approx(1 / 25)
    assert max(m) == pytest.approx(1.0) and m.index(max(m)) == pytest.approx(30, abs=1)
    assert m[-1] == pytest.approx(1 / 25 / 1e4, rel=0.01)


def test_cyclic_modes() -> None:
    tri = mults("cyclic", spe=10, epochs=8, step_size_up=1.0, base_factor=0.2)
    assert tri[0] == pytest.approx(0.2) and tri[10] == pytest.approx(1.0)
    assert tri[20] == pytest.approx(0.2) and tri[30] == pytest.approx(1.0)
    tri2 = mults("cyclic", spe=10, epochs=8, step_size_up=1.0, base_factor=0.2, mode="triangular2")
    assert [tri2[p] - 0.2 for p in (10, 30, 50)] == pytest.approx([0.8, 0.4, 0.2])
    exp = mults(
        "cyclic", spe=10, epochs=8, step_size_up=1.0, base_factor=0.2, mode="exp_range", gamma=0.5
    )  # gamma per epoch
    assert exp[10] - 0.2 == pytest.approx(0.8 * 0.5)
    assert exp[30] - 0.2 == pytest.approx(0.8 * 0.5**3)


def test_step_and_multistep() -> None:
    assert mults("step", spe=4, epochs=7, step_size=3.0, gamma=0.5) == pytest.approx(
        [0.5 ** (t // 12) for t in range(28)]
    )
    m = mults("multistep", spe=4, epochs=10, milestones=[2.5, 8.0], gamma=0.1)
    assert m == pytest.approx([1.0] * 10 + [0.1] * 22 + [0.01] * 8)


# --- warmup ---


def test_warmup_rises_linearly_then_hands_over_at_the_right_step() -> None:
    m = mults("cosine", spe=10, epochs=6, alpha=0.0, warmup_epochs=1.5, warmup_start_factor=0.1)
    ramp = m[:15]
    assert ramp[0] == pytest.approx(0.1)
    assert [b - a for a, b in zip(ramp, ramp[1:])] == pytest.approx([0.9 / 15] * 14)
    assert ramp[-1] < 1.0
    # The family starts at step 15, on its own clock, over the 45 steps left.
    assert m[15:] == pytest.approx([S.cosine_decay(t, 45) for t in range(45)])


def test_warmup_shifts_the_family_clock() -> None:
    m = mults("multistep", spe=10, epochs=10, milestones=[2.0], gamma=0.1, warmup_epochs=1.0)
    assert m[10:30] == [1.0] * 20 and m[30] == pytest.approx(0.1)


@pytest.mark.parametrize("name,start", [("onecycle", 1 / 25), ("cyclic", 0.1)])
def test_warmup_ramps_to_the_familys_first_lr(name: str, start: float) -> None:
    m = mults(name, spe=10, epochs=10, warmup_epochs=1.0, warmup_start_factor=0.5)
    assert m[0] == pytest.approx(0.5 * start)
    assert m[9] < m[10] == pytest.approx(start)


# --- every family on a real optimizer ---


@pytest.mark.parametrize("warmup", [0.0, 0.5])
@pytest.mark.parametrize("name", NAMES)
def test_every_family_trains_with_finite_positive_lr(name: str, warmup: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    # Adagrad has neither momentum nor betas: cyclic/onecycle must not cycle momentum.
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    spe, epochs = 5, 3
    sched = S.build_scheduler(opt, spec(name, warmup_epochs=warmup), spe, epochs)
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    seen = []
    for _ in range(spe * epochs):
        seen.append(opt.param_groups[0]["lr"])  # the LR this step uses
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    # The defaults keep a floor (beta, end_factor, final_div_factor, ...) or reach 0 only
    # after the last step (cosine, polynomial), so no step of the run has LR 0.
    assert all(math.isfinite(v) and v > 0 for v in seen), seen
    assert torch.isfinite(loss)
    assert len(mults(name, spe=spe, epochs=epochs, warmup_epochs=warmup)) == spe * epochs


@pytest.mark.parametrize(
    "name,kw",
    [
        ("cosine", {"alpha": 0.1}),
        ("onecycle", {}),
        ("cyclic", {}),
        ("cosine_restarts", {"alpha": 0.1}),
    ],
)
def test_param_groups_keep_their_lr_ratio(name: str, kw: dict[str, object]) -> None:
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], momentum=0.9)
    sched = S.build_scheduler(opt, spec(name, warmup_epochs=1.0, **kw), 4, 5)
    for _ in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(10 * opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]  # left alone


# --- validation ---


@pytest.mark.parametrize(
    "name,kw,field",
    [
        ("exponential", {"decay_rate": -0.5}, "decay_rate"),
        ("natural_exp", {"decay_rate": 0}, "decay_rate"),
        ("multistep", {"milestones": [5.0, 3.0]}, "milestones"),
        ("multistep", {"milestones": [2.0, 2.0]}, "milestones"),
        ("multistep", {"milestones": []}, "milestones"),
        ("piecewise_constant", {"boundaries": [1.0, 0.5]}, "boundaries"),
        ("piecewise_constant", {"values": [1.0, 0.1]}, "values"),
        ("exponential", {"decay_stpes": 2.0}, "decay_stpes"),
        ("cosine", {"decay_steps": float("inf")}, "decay_steps"),
        ("cosine", {"alpha": 1.0}, "alpha"),
        ("cosine_restarts", {"t_mul": 0.5}, "t_mul"),
        ("step", {"step_size": 0}, "step_size"),
        ("constant", {"warmup_epochs": -1}, "warmup_epochs"),
        ("constant", {"warmup_start_factor": 0.0}, "warmup_start_factor"),
        ("cyclic", {"mode": "sideways"}, "mode"),
        ("noisy_linear_cosine", {"initial_variance": -1.0}, "initial_variance"),
    ],
)
def test_validation_errors_name_the_field(name: str, kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        spec(name, **kw)
    locs = [err["loc"] for err in e.value.errors()]
    assert any(field in loc for loc in locs), locs
    assert field in str(e.value)


def test_unknown_family_names_the_choices() -> None:
    with pytest.raises(ValidationError, match="name") as e:
        spec("warm_restarts")
    assert "cosine_restarts" in str(e.value)


@pytest.mark.parametrize(
    "name,kw,field",
    [
        ("multistep", {"milestones": [1.0, 1.02]}, "milestones"),
        ("piecewise_constant", {"boundaries": [1.0, 1.02]}, "boundaries"),
        ("constant", {"warmup_epochs": 10.0}, "warmup_epochs"),
    ],
)
def test_build_errors_name_the_field(name: str, kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        S.lr_multipliers(spec(name, **kw), 10, 10)


# --- configs ---


def test_every_family_has_a_config_matching_the_spec_defaults() -> None:
    files = sorted((ROOT / "conf" / "scheduler").glob("*.yaml"))
    assert sorted(f.stem for f in files) == sorted(NAMES)
    for f in files:
        raw = yaml.safe_load(f.read_text())
        assert raw["name"] == f.stem and "_target_" not in raw
        parsed = SPEC.validate_python(raw)
        # Every field is listed, so `scheduler.x=...` overrides need no '+'.
        assert set(raw) == set(type(parsed).model_fields), f.name
        assert parsed == type(parsed)(), f"{f.name} differs from the spec's defaults"


@pytest.mark.parametrize(
    "name",
    [
        "step",
        "multistep",
        "exponential",
        "natural_exp",
        "piecewise_constant",
        "polynomial",
        "inverse_time",
        "cosine",
        "cosine_restarts",
        "linear_cosine",
        "noisy_linear_cosine",
    ],
)
@pytest.mark.parametrize("spe", [36, 45])
def test_decay_families_end_at_the_same_multiplier_over_the_study_budget(
    name: str, spe: int
) -> None:
    # lr_schedules runs 20 epochs (LR-3): every family's config must end at 0.01 x LR there,
    # so the comparison is of shapes, not of how far each one decays.
    raw = yaml.safe_load((ROOT / "conf" / "scheduler" / f"{name}.yaml").read_text())
    m = S.lr_multipliers(SPEC.validate_python(raw), spe, 20)
    assert m[-1] == pytest.approx(0.01, rel=0.15), m[-1]


def test_cosine_restarts_default_ends_a_cycle_at_20_epochs() -> None:
    m = mults("cosine_restarts", spe=45, epochs=20)
    assert len(restarts(m)) == 3 and m[-1] < 0.011  # 4 periods, the last one finished
