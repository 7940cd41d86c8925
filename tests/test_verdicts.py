"""Verdicts from synthetic trial tables: every test x predict path, pairing, filters, matching.

The tables have the shape of ``Client.trials``: run_id, outcome, seed, arm columns and final
metrics as columns. Values are built so that each expected verdict follows from the rules in
``orchestrator/verdicts/engine.py`` with a clear margin, not from a lucky random draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.verdicts import (
    ClaimSpec,
    Verdict,
    evaluate,
    values_match,
    verdicts_from_json,
    verdicts_to_json,
)

NOISE = [0.004, -0.003, 0.001, -0.002, 0.0]  # fixed per-seed noise, mean 0


def table(
    arms: dict,
    metric: str = "test/acc",
    seeds: int = 5,
    axis: str = "optimizer",
    noise: list[float] | None = None,
    extra: dict | None = None,
    outcomes: dict | None = None,
) -> pd.DataFrame:
    """One row per (arm, seed): value = arm mean + noise[seed] (+ a per-arm noise scale)."""
    rows = []
    for arm, spec in arms.items():
        mean, scale = spec if isinstance(spec, tuple) else (spec, 1.0)
        for s in range(seeds):
            n = (noise or NOISE)[s % len(noise or NOISE)] * scale
            outcome = (outcomes or {}).get((arm, s), "finished")
            rows.append(
                {
                    "run_id": f"{arm}-{s}",
                    "outcome": outcome,
                    "seed": s,
                    axis: arm,
                    metric: mean + n if outcome == "finished" else math.nan,
                    **(extra or {}),
                }
            )
    return pd.DataFrame(rows)


def compare(predict: str, a: str = "x", b: str = "y", **kw) -> dict:
    return {
        "id": "C",
        "test": "compare",
        "metric": "test/acc",
        "mode": "max",
        "axis": "optimizer",
        "a": a,
        "b": b,
        "predict": predict,
        **kw,
    }


def one(claim: dict, df: pd.DataFrame, **kw) -> Verdict:
    (v,) = evaluate([claim], df, **kw)
    return v


# -- compare: every predict x verdict ---------------------------------------------------------
CLEAR_A = {"x": 0.90, "y": 0.80}  # a better by 0.10, tiny noise
CLEAR_B = {"x": 0.80, "y": 0.90}
SAME = {"x": 0.85, "y": 0.85}  # identical up to the shared noise
SMALL_A = {"x": 0.853, "y": 0.850}  # a better by 0.003, tight interval
NOISY = {"x": (0.86, 20.0), "y": (0.85, -15.0)}  # 0.01 apart, noise of +-0.08


@pytest.mark.parametrize(
    "predict,arms,min_effect,expected",
    [
        ("a_better", CLEAR_A, 0.01, "confirmed"),
        ("a_better", CLEAR_B, 0.0, "refuted"),
        ("a_better", SMALL_A, 0.01, "refuted"),  # significant, but below min_effect
        ("a_better", NOISY, 0.0, "inconclusive"),
        ("b_better", CLEAR_B, 0.01, "confirmed"),
        ("b_better", CLEAR_A, 0.0, "refuted"),
        ("b_better", NOISY, 0.0, "inconclusive"),
        ("equal", SAME, 0.02, "confirmed"),
        ("equal", CLEAR_A, 0.02, "refuted"),
        ("equal", NOISY, 0.02, "inconclusive"),
        ("a_not_worse", SAME, 0.01, "confirmed"),
        ("a_not_worse", CLEAR_B, 0.01, "refuted"),
        ("a_not_worse", NOISY, 0.01, "inconclusive"),
        ("b_not_worse", SAME, 0.01, "confirmed"),
        ("b_not_worse", CLEAR_A, 0.01, "refuted"),
        ("b_not_worse", NOISY, 0.01, "inconclusive"),
    ],
)
def test_compare_rules(predict: str, arms: dict, min_effect: float, expected: str) -> None:
    v = one(compare(predict, min_effect=min_effect), table(arms))
    assert v.verdict == expected, v.detail
    assert v.method == "paired t" and v.n_a == v.n_b == 5
    assert v.ci_low <= v.effect <= v.ci_high
    assert f"{expected}" in v.detail and "CI [" in v.detail
    assert [a.label for a in v.arms] == ["x", "y"]


def test_compare_effect_is_oriented_by_mode() -> None:
    df = table({"x": 0.20, "y": 0.30}, metric="test/loss")  # x has the lower loss
    claim = compare("a_better", metric="test/loss", mode="min")
    v = one(claim, df)
    assert v.verdict == "confirmed"
    assert v.effect == pytest.approx(0.10)
    v_max = one({**claim, "mode": "max"}, df)
    assert v_max.verdict == "refuted" and v_max.effect == pytest.approx(-0.10)


def test_paired_interval_equals_scipy_paired_t() -> None:
    df = table({"x": (0.9, 3.0), "y": (0.88, -2.0)})
    v = one(compare("a_better"), df)
    x = df[df.optimizer == "x"].sort_values("seed")["test/acc"].to_numpy()
    y = df[df.optimizer == "y"].sort_values("seed")["test/acc"].to_numpy()
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    assert v.method == "paired t"
    assert (v.ci_low, v.ci_high) == pytest.approx((ci.low, ci.high))


def test_unpaired_when_seeds_differ_and_failures_are_reported() -> None:
    df = table(
        {"x": (0.9, 3.0), "y": (0.8, 3.0)}, outcomes={("y", 2): "failed", ("y", 4): "diverged"}
    )
    v = one(compare("a_better"), df)
    assert v.method == "Welch t" and (v.n_a, v.n_b) == (5, 3)
    x = df[(df.optimizer == "x")]["test/acc"].to_numpy()
    y = df[(df.optimizer == "y") & (df.outcome == "finished")]["test/acc"].to_numpy()
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (v.ci_low, v.ci_high) == pytest.approx((ci.low, ci.high))
    assert "1 diverged" in v.detail and "1 failed" in v.detail
    assert v.verdict == "confirmed"
    assert v.arms[1].n_failed == 1 and v.arms[1].n_diverged == 1 and v.arms[1].n == 3


def test_pairing_uses_the_other_arm_columns() -> None:
    """Two models per optimizer: pairs are (seed, model); seed alone would not be unique."""
    df = pd.concat(
        [
            table({"x": 0.90, "y": 0.80}, extra={"model": "mlp_d"}),
            table({"x": 0.70, "y": 0.60}, extra={"model": "cnn_d"}),
        ],
        ignore_index=True,
    )
    v = one(compare("a_better"), df)
    assert v.method == "paired t" and "seed+model" in v.detail
    assert v.effect == pytest.approx(0.10)
    given = one(compare("a_better"), df, axes=["optimizer", "model", "seed"])
    assert given.method == "paired t" and (given.ci_low, given.ci_high) == (v.ci_low, v.ci_high)
    # Without the model column the seed is not unique in an arm: Welch.
    assert one(compare("a_better"), df.drop(columns="model")).method == "Welch t"


def test_too_few_seeds_is_inconclusive_with_the_reason() -> None:
    df = table(CLEAR_A, outcomes={("x", s): "diverged" for s in range(3)})  # x keeps 2 seeds
    v = one(compare("a_better"), df)
    assert v.verdict == "inconclusive"
    assert "too few finished seeds: a has 2, b has 5, min_seeds is 3" in v.detail
    assert v.effect == pytest.approx(0.10, abs=0.01)  # still reported
    assert one(compare("a_better", min_seeds=2), df).verdict == "confirmed"


def test_where_filters_rows() -> None:
    df = pd.concat(
        [table(CLEAR_A, extra={"model": "mlp_d"}), table(CLEAR_B, extra={"model": "cnn_d"})],
        ignore_index=True,
    )
    assert one(compare("a_better", where={"model": "mlp_d"}), df).verdict == "confirmed"
    assert one(compare("a_better", where={"model": "cnn_d"}), df).verdict == "refuted"
    assert one(compare("a_better", where={"model": ["cnn_d", "nope"]}), df).verdict == "refuted"
    missing = one(compare("a_better", where={"grid": "range"}), df)
    assert missing.verdict == "inconclusive" and "'grid' not in the trials table" in missing.detail


def test_group_by_holds_in_every_group() -> None:
    mlp = table(CLEAR_A, extra={"model": "mlp_d"})
    cnn = table({"x": 0.95, "y": 0.80}, extra={"model": "cnn_d"})
    v = one(compare("a_better", group_by="model"), pd.concat([mlp, cnn], ignore_index=True))
    assert v.verdict == "confirmed"
    assert [(g.group, g.verdict) for g in v.groups] == [
        ("mlp_d", "confirmed"),
        ("cnn_d", "confirmed"),
    ]
    assert v.groups[0].id == "C[model=mlp_d]"
    assert v.effect == pytest.approx(0.10, abs=0.01)  # the weakest group's numbers
    assert v.n_a == 10
    bad = table(CLEAR_B, extra={"model": "cnn_d"})
    v = one(compare("a_better", group_by="model"), pd.concat([mlp, bad], ignore_index=True))
    assert v.verdict == "refuted" and "refuted in model=cnn_d" in v.detail
    noisy = table(NOISY, extra={"model": "cnn_d"})
    v = one(compare("a_better", group_by="model"), pd.concat([mlp, noisy], ignore_index=True))
    assert v.verdict == "inconclusive" and "inconclusive in model=cnn_d" in v.detail


def test_at_step_reads_the_history() -> None:
    """Final values say y is better; at step 1 x is ahead: at_step decides."""
    df = table(CLEAR_B, metric="val/acc")
    calls: list[tuple[str, str]] = []

    def history(run_id: str, metric: str) -> pd.DataFrame:
        calls.append((run_id, metric))
        arm, seed = run_id.split("-")
        early = 0.7 if arm == "x" else 0.5
        return pd.DataFrame({"step": [0, 1, 2], "value": [0.1, early + NOISE[int(seed)], 0.9]})

    claim = compare("a_better", metric="val/acc", at_step=1, min_effect=0.1)
    v = one(claim, df, history=history)
    assert v.verdict == "confirmed" and v.effect == pytest.approx(0.2)
    assert "at step 1" in v.detail
    assert ("x-0", "val/acc") in calls and len(calls) == 10
    assert one({**claim, "at_step": None}, df).verdict == "refuted"
    beyond = one({**claim, "at_step": 7}, df, history=history)
    assert (
        beyond.verdict == "inconclusive" and "without a value of val/acc at step 7" in beyond.detail
    )
    assert one(claim, df).verdict == "inconclusive"  # no history source


def test_float_int_and_string_axis_values_match() -> None:
    assert values_match(2, 2.0) and values_match("2.0", 2) and values_match("1e-3", 0.001)
    assert values_match(True, "true") and not values_match(True, 1)
    assert not values_match("cosine", "constant") and not values_match(math.nan, math.nan)
    df = table({"2": 0.9, "0": 0.8}, axis="scheduler.warmup_epochs")
    df["scheduler.warmup_epochs"] = df["scheduler.warmup_epochs"].map({"2": 2, "0": "0.0"})
    v = one(compare("a_better", axis="scheduler.warmup_epochs", a=2.0, b=0.0), df)
    assert v.verdict == "confirmed" and v.n_a == v.n_b == 5
    assert [a.label for a in v.arms] == ["2", "0"]


# -- best -----------------------------------------------------------------------------------
def best(predict_in: list, **kw) -> dict:
    return {
        "id": "B",
        "test": "best",
        "metric": "train/loss",
        "mode": "min",
        "axis": "optimizer.lr",
        "predict_in": predict_in,
        **kw,
    }


U_SHAPE = {1e-4: 1.0, 1e-3: 0.5, 1e-2: 0.1, 1e-1: 0.3, 1.0: 0.9}


def test_best_confirmed_refuted_inconclusive() -> None:
    df = table(U_SHAPE, metric="train/loss", axis="optimizer.lr")
    v = one(best([1e-3, 1e-2, 1e-1]), df)
    assert v.verdict == "confirmed", v.detail
    assert "predicted 0.01" in v.detail and "closest 1 " in v.detail
    assert v.effect == pytest.approx(0.8)  # closest outside is lr=1 (0.9) vs 0.1, lower is better
    refuted = one(best([1e-4, 1.0]), df)
    assert refuted.verdict == "refuted" and "0.01 beats the predicted arm" in refuted.detail
    close = table(
        {1e-3: (0.100, 20.0), 1e-2: (0.101, -20.0)}, metric="train/loss", axis="optimizer.lr"
    )
    assert one(best([1e-2]), close).verdict == "inconclusive"
    assert len(one(best([1e-2]), df).arms) == 5


def test_best_leaves_out_arms_with_too_few_seeds_and_applies_where() -> None:
    out = {(1.0, s): "diverged" for s in range(5)}
    df = table(
        {**U_SHAPE, 1.0: 0.01},
        metric="train/loss",
        axis="optimizer.lr",
        outcomes=out,
        extra={"grid": "range"},
    )
    other = table({10.0: 0.0}, metric="train/loss", axis="optimizer.lr", extra={"grid": "families"})
    v = one(best([1e-2], where={"grid": "range"}), pd.concat([df, other], ignore_index=True))
    assert v.verdict == "confirmed"
    assert "left out: 1" in v.detail and "5 diverged" in v.detail
    assert "10" not in [a.label for a in v.arms]
    none_inside = one(best([1.0], where={"grid": "range"}), df)
    assert none_inside.verdict == "inconclusive" and "inside predict_in" in none_inside.detail


# -- rate -----------------------------------------------------------------------------------
def rate_table(events: dict, axis: str = "scheduler.warmup_epochs") -> pd.DataFrame:
    """arm -> (events, trials): the first ``events`` seeds diverge."""
    rows = []
    for arm, (k, n) in events.items():
        for s in range(n):
            rows.append(
                {
                    "run_id": f"{arm}-{s}",
                    "seed": s,
                    axis: arm,
                    "outcome": "diverged" if s < k else "finished",
                }
            )
    rows.append({"run_id": "killed", "seed": 99, axis: list(events)[0], "outcome": "killed"})
    return pd.DataFrame(rows)


def rate(predict: str, **kw) -> dict:
    return {
        "id": "R",
        "test": "rate",
        "axis": "scheduler.warmup_epochs",
        "a": 2.0,
        "b": 0.0,
        "predict": predict,
        **kw,
    }


@pytest.mark.parametrize(
    "predict,events,min_effect,expected",
    [
        ("a_better", {2.0: (0, 10), 0.0: (8, 10)}, 0.0, "confirmed"),
        ("a_better", {2.0: (8, 10), 0.0: (0, 10)}, 0.0, "refuted"),
        ("a_better", {2.0: (1, 3), 0.0: (2, 3)}, 0.0, "inconclusive"),
        ("a_better", {2.0: (0, 40), 0.0: (0, 40)}, 0.2, "refuted"),  # flat with enough samples
        ("a_better", {2.0: (0, 3), 0.0: (0, 3)}, 0.2, "inconclusive"),  # flat, too few to say
        ("b_better", {2.0: (8, 10), 0.0: (0, 10)}, 0.0, "confirmed"),
        ("b_better", {2.0: (0, 10), 0.0: (8, 10)}, 0.0, "refuted"),
        ("equal", {2.0: (1, 40), 0.0: (1, 40)}, 0.2, "confirmed"),
        ("equal", {2.0: (0, 20), 0.0: (20, 20)}, 0.2, "refuted"),
        ("a_not_worse", {2.0: (1, 40), 0.0: (1, 40)}, 0.2, "confirmed"),
        ("a_not_worse", {2.0: (20, 20), 0.0: (0, 20)}, 0.2, "refuted"),
        ("b_not_worse", {2.0: (3, 6), 0.0: (3, 6)}, 0.1, "inconclusive"),
    ],
)
def test_rate_pair_rules(predict: str, events: dict, min_effect: float, expected: str) -> None:
    v = one(rate(predict, min_effect=min_effect), rate_table(events))
    assert v.verdict == expected, v.detail
    assert v.method == "Fisher exact"
    (ka, na), (kb, nb) = events[2.0], events[0.0]
    assert (v.n_a, v.n_b) == (na, nb)  # the killed trial is no evidence
    assert v.effect == pytest.approx(kb / nb - ka / na)
    assert v.arms[0].mean == pytest.approx(ka / na)


def test_rate_pair_p_value_is_fishers_and_too_few_is_inconclusive() -> None:
    v = one(rate("a_better"), rate_table({2.0: (0, 10), 0.0: (8, 10)}))
    # The decisive p is Fisher's one-sided one (a has fewer events), not the two-sided one.
    assert v.p_value == pytest.approx(
        stats.fisher_exact([[0, 10], [8, 2]], alternative="less").pvalue
    )
    few = one(rate("a_better"), rate_table({2.0: (0, 2), 0.0: (2, 2)}))
    assert few.verdict == "inconclusive" and "too few trials: a has 2" in few.detail


def trend(predict: str, **kw) -> dict:
    return {"id": "T", "test": "rate", "axis": "optimizer.lr", "predict": predict, **kw}


LR_DIVERGE = {1e-3: (0, 4), 1e-2: (0, 4), 1e-1: (1, 4), 1.0: (4, 4), 10.0: (4, 4)}


@pytest.mark.parametrize(
    "predict,events,min_effect,expected",
    [
        ("increasing", LR_DIVERGE, 0.2, "confirmed"),
        ("increasing", LR_DIVERGE, 0.5, "inconclusive"),  # change +1 but lower bound 0.31 < 0.5
        ("decreasing", LR_DIVERGE, 0.0, "refuted"),
        ("increasing", {1e-3: (1, 3), 1e-2: (1, 3), 1.0: (2, 3)}, 0.0, "inconclusive"),
        ("increasing", {1e-3: (0, 30), 1e-2: (0, 30), 1.0: (0, 30)}, 0.2, "refuted"),  # flat
        ("increasing", {1e-3: (0, 3), 1.0: (0, 3)}, 0.2, "inconclusive"),  # flat, too few
        ("decreasing", {1e-3: (4, 4), 1e-1: (2, 4), 1.0: (0, 4), 10.0: (0, 4)}, 0.0, "confirmed"),
    ],
)
def test_rate_trend_rules(predict: str, events: dict, min_effect: float, expected: str) -> None:
    df = rate_table(events, axis="optimizer.lr")
    v = one(trend(predict, min_effect=min_effect), df)
    assert v.verdict == expected, v.detail
    assert v.method == "Spearman trend"
    assert len(v.arms) == len(events)


def test_rate_trend_statistics_and_string_axis_values() -> None:
    df = rate_table(LR_DIVERGE, axis="optimizer.lr")
    ev = df[df.outcome != "killed"]
    rho = stats.spearmanr(ev["optimizer.lr"], ev.outcome == "diverged").statistic
    v = one(trend("increasing"), df)
    assert f"{rho:+.3f}" in v.detail
    assert v.effect == pytest.approx(1.0)  # 0/4 at 1e-3 -> 4/4 at 10
    as_text = df.assign(**{"optimizer.lr": df["optimizer.lr"].map(str)})
    assert one(trend("increasing"), as_text).verdict == "confirmed"
    words = rate_table({"sgd": (0, 4), "adam": (4, 4)}, axis="optimizer.lr")
    nonnum = one(trend("increasing"), words)
    assert nonnum.verdict == "inconclusive" and "not numeric" in nonnum.detail
    single = one(trend("increasing"), rate_table({1.0: (2, 4)}, axis="optimizer.lr"))
    assert single.verdict == "inconclusive" and "a trend needs 2 or more" in single.detail


def test_rate_where_and_group_by() -> None:
    a = rate_table({2.0: (0, 10), 0.0: (8, 10)}).assign(grid="warmup", model="mlp_d")
    b = rate_table({2.0: (0, 10), 0.0: (9, 10)}).assign(grid="warmup", model="cnn_d")
    noise = rate_table({2.0: (10, 10), 0.0: (0, 10)}).assign(grid="other", model="mlp_d")
    df = pd.concat([a, b, noise], ignore_index=True)
    v = one(rate("a_better", where={"grid": "warmup"}, group_by="model"), df)
    assert v.verdict == "confirmed", v.detail
    assert {g.group for g in v.groups} == {"mlp_d", "cnn_d"} and v.n_a == 20
    assert one(rate("a_better"), df).n_a == 30


# -- specs, errors, JSON --------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw,needle",
    [
        (compare("a_better", colour="red"), "colour"),
        ({k: v for k, v in compare("a_better").items() if k != "b"}, "b is required"),
        ({k: v for k, v in compare("a_better").items() if k != "metric"}, "metric is required"),
        (compare("increasing"), "allowed: a_better"),
        (compare("equal"), "min_effect must be > 0"),
        (compare("a_better", a="x", b="x"), "same arm"),
        (compare("a_better", test="sideways"), "test"),
        (compare("a_better", min_seeds=1), "min_seeds"),
        (compare("a_better", confidence=1.5), "confidence"),
        (
            {"id": "B", "test": "best", "metric": "m", "mode": "max", "axis": "o"},
            "predict_in is required",
        ),
        ({"id": "R", "test": "rate", "axis": "o", "predict": "a_better"}, "either a and b"),
        (
            {"id": "R", "test": "rate", "axis": "o", "predict": "increasing", "metric": "m"},
            "metric is not used",
        ),
        (
            {"id": "R", "test": "rate", "axis": "o", "predict": "increasing", "a": 1},
            "a is not used",
        ),
    ],
)
def test_claimspec_rejects(raw: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ClaimSpec.model_validate(raw)
    with pytest.raises(SpecError, match=r"study\.claims\.0"):
        evaluate([raw], table(CLEAR_A))


def test_builtin_claims_validate() -> None:
    import yaml

    root = Path(__file__).resolve().parent.parent / "conf/study"
    for name in ("optimizers", "lr_schedules"):
        claims = yaml.safe_load((root / f"{name}.yaml").read_text())["study"]["claims"]
        parsed = [ClaimSpec.model_validate(c) for c in claims]
        assert len(parsed) == len(claims) >= 5
    lr6 = ClaimSpec.model_validate(
        next(
            c
            for c in yaml.safe_load((root / "lr_schedules.yaml").read_text())["study"]["claims"]
            if c["id"] == "LR-6"
        )
    )
    assert lr6.a == 2.0 and lr6.b == 0.0 and lr6.where == {"grid": "warmup"}


def test_malformed_claim_in_a_study_is_exit_2_at_plan_time(tmp_path: Path, capsys) -> None:
    study = tmp_path / "conf" / "study"
    study.mkdir(parents=True)
    (study / "badclaim.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /model: mlp_d\n  - override /optimizer: sgd\n"
        "study:\n  name: badclaim\n  claims:\n"
        "    - {id: X, test: compare, metric: test/acc, mode: max, axis: optimizer,\n"
        "       a: sgd, b: adam, predict: a_beter}\n"
    )
    db = tmp_path / "mlflow.db"
    code = main(
        [
            "sweep",
            "badclaim",
            "--dry-run",
            "--config-dir",
            str(tmp_path / "conf"),
            "--tracking-uri",
            f"sqlite:///{db}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "study.claims.0.predict" in err and "a_better" in err
    assert not db.exists()


def test_duplicate_claim_ids_are_rejected() -> None:
    from orchestrator.core.specs import StudyInfo

    with pytest.raises(ValidationError, match="repeated: C"):
        StudyInfo.model_validate(
            {"name": "s", "claims": [compare("a_better"), compare("b_better")]}
        )


def test_json_round_trip_keeps_groups_arms_and_missing_numbers() -> None:
    mlp = table(CLEAR_A, extra={"model": "mlp_d"})
    few = table(CLEAR_A, seeds=1, extra={"model": "cnn_d"})
    verdicts = evaluate(
        [
            compare("a_better", group_by="model"),
            rate("a_better"),
            compare("a_better", where={"model": "none"}),
        ],
        pd.concat([mlp, few], ignore_index=True),
    )
    assert verdicts[0].groups[1].effect is None  # one seed: no interval at all
    text = verdicts_to_json(verdicts)
    assert "NaN" not in text
    back = verdicts_from_json(text)
    assert back == verdicts
    assert back[0].groups[0].arms[0].label == "x"
    assert [v.verdict for v in back] == ["inconclusive", "inconclusive", "inconclusive"]


def test_empty_table_is_inconclusive() -> None:
    (v,) = evaluate([compare("a_better")], pd.DataFrame())
    assert v.verdict == "inconclusive" and "no trials" in v.detail


# -- margins, multiplicity, the sanity gate, replication ------------------------------------
def test_confirming_needs_the_lower_bound_past_min_effect() -> None:
    """Estimate above the margin but the interval reaches below it: no longer confirmed."""
    df = table({"x": (0.815, 1.0), "y": (0.80, -1.0)})  # effect 0.015, CI about +-0.01
    v = one(compare("a_better", min_effect=0.01), df)
    assert v.effect > 0.01 and v.ci_low < 0.01 < v.ci_high
    assert v.verdict == "inconclusive", v.detail
    assert one(compare("a_better", min_effect=0.001), df).verdict == "confirmed"


def test_best_refutes_only_when_an_outside_arm_wins_after_bonferroni() -> None:
    """One outside arm ahead with one-sided p between alpha/5 and alpha: the former rule
    (best outside vs best inside at alpha) refuted; over 5 outside arms it is inconclusive."""
    noise = [0.010, -0.012, 0.004, -0.006, 0.002, 0.0]
    arms = {"p": (0.80, 1.0), "q": (0.82, -1.0), **{f"o{i}": (0.70, 1.0) for i in range(4)}}
    claim = {
        "id": "B",
        "test": "best",
        "metric": "test/acc",
        "mode": "max",
        "axis": "optimizer",
        "predict_in": ["p"],
    }
    v = one(claim, table(arms, seeds=6, noise=noise))
    assert 0.025 / 5 < v.p_refute / 5 < 0.025, v.detail  # raw p of the q comparison
    assert v.verdict == "inconclusive" and "closest q" in v.detail, v.detail
    clear = table({**arms, "q": (0.85, -1.0)}, seeds=6, noise=noise)
    assert one(claim, clear).verdict == "refuted"


def test_holm_across_claims_decides_on_adjusted_p() -> None:
    df = table({"x": (0.815, 1.0), "y": (0.80, -1.0)})  # a_better at m=0: p about 0.001
    alone = one(compare("a_better"), df)
    assert alone.verdict == "confirmed" and alone.p_adjusted == alone.p_value
    claims = [compare("a_better", id=f"C{i}") for i in range(40)]
    many = evaluate(claims, df)  # 40 copies: Holm multiplies the smallest p by 40
    assert all(v.p_adjusted == pytest.approx(min(1.0, 40 * alone.p_value)) for v in many)
    assert all(v.verdict == "inconclusive" and "Holm over 40 claims" in v.detail for v in many)
    assert many[0].confidence == pytest.approx(1 - 2 * 0.025 / 40)
    few = evaluate(claims[:3], df)
    assert [v.verdict for v in few] == ["confirmed"] * 3
    assert [round(v.p_adjusted / alone.p_value) for v in few] == [3, 3, 3]


def test_groups_all_and_any() -> None:
    good = table(CLEAR_A, extra={"model": "mlp_d"})
    noisy = table(NOISY, extra={"model": "cnn_d"})
    bad = table(CLEAR_B, extra={"model": "cnn_d"})
    both = pd.concat([good, noisy], ignore_index=True)
    assert one(compare("a_better", group_by="model"), both).verdict == "inconclusive"
    v = one(compare("a_better", group_by="model", groups="any"), both)
    assert v.verdict == "confirmed" and "confirmed in model=mlp_d" in v.detail
    mixed = pd.concat([good, bad], ignore_index=True)
    assert one(compare("a_better", group_by="model", groups="any"), mixed).verdict == "confirmed"
    assert one(compare("a_better", group_by="model"), mixed).verdict == "refuted"
    two_bad = pd.concat([table(CLEAR_B, extra={"model": "mlp_d"}), bad], ignore_index=True)
    assert one(compare("a_better", group_by="model", groups="any"), two_bad).verdict == "refuted"
    with pytest.raises(SpecError, match="groups is used only with group_by"):
        evaluate([compare("a_better", groups="any")], good)


def by_data(**groups: dict) -> pd.DataFrame:
    """One table per dataset (``data.name``, as Client.trials has it), stacked."""
    return pd.concat(
        [table(arms, extra={"data.name": name}) for name, arms in groups.items()],
        ignore_index=True,
    )


def each(predict: str = "a_better", **kw) -> dict:
    return compare(predict, group_by="data.name", groups="each", **kw)


def test_groups_each_confirmed_refuted_dependent_inconclusive() -> None:
    v = one(each(), by_data(digits=CLEAR_A, mnist1d=CLEAR_A))
    assert v.verdict == "confirmed" and [g.verdict for g in v.groups] == ["confirmed"] * 2
    # Each group is decided at alpha / 2 in both directions.
    assert all(g.confidence == pytest.approx(1 - 2 * 0.025 / 2) for g in v.groups)
    assert v.p_confirm == pytest.approx(2 * max(g.p_confirm for g in v.groups))
    assert v.p_value == v.p_confirm and v.group_by == "data.name"
    assert one(each(), by_data(digits=CLEAR_B, mnist1d=CLEAR_B)).verdict == "refuted"
    dep = one(each(), by_data(digits=CLEAR_A, mnist1d=CLEAR_B))
    assert dep.verdict == "dependent", dep.detail
    assert "confirmed on digits; refuted on mnist1d" in dep.detail
    assert "dataset-dependent: confirmed in data.name=digits" in dep.detail
    assert dep.p_value == pytest.approx(2 * max(dep.groups[0].p_confirm, dep.groups[1].p_refute))
    half = one(each(), by_data(digits=CLEAR_A, mnist1d=NOISY))
    assert half.verdict == "inconclusive"
    assert "confirmed on digits; inconclusive on mnist1d" in half.detail
    # Three groups: one of each still shows that the outcome depends on the dataset.
    three = one(each(), by_data(digits=CLEAR_A, mnist1d=CLEAR_B, other=NOISY))
    assert three.verdict == "dependent" and three.groups[0].confidence == pytest.approx(
        1 - 2 * 0.025 / 3
    )


def test_groups_each_label_json_and_replicate_words() -> None:
    from orchestrator.verdicts import verdict_label, verdict_rows

    dep = one(each(), by_data(digits=CLEAR_A, mnist1d=CLEAR_B))
    assert dep.label == verdict_label(dep.verdict, dep.group_by) == "dataset-dependent"
    assert verdict_label("dependent", "model") == "model-dependent"
    assert verdict_label("confirmed", "data") == "confirmed"
    (back,) = verdicts_from_json(verdicts_to_json([dep]))
    assert back == dep
    rep = replicate(group_by="data.name", groups="each")
    near_far = by_data(digits={"x": 0.851}, mnist1d={"x": 0.90})
    v = one(rep, near_far)
    assert v.verdict == "dependent"
    assert [g.verdict for g in v.groups] == ["replicated", "not replicated"]
    assert one(rep, by_data(digits={"x": 0.851}, mnist1d={"x": 0.849})).verdict == "replicated"
    assert verdict_rows([dep])[0][2] == "dataset-dependent"  # the CLI's table


def test_groups_each_dependent_from_noise_is_rare() -> None:
    """Equal arms in both datasets (the truth is the same in each): ``dependent`` needs a
    wrong confirmation in one group and a wrong refutation in another, each at alpha / 2.
    Over 400 simulated studies it must stay far below alpha = 0.025 (expected ~ 2 x
    0.0125^2 = 0.03%); wrong confirmations of the whole claim stay below alpha too."""
    rng = np.random.default_rng(20240613)
    counts = {"dependent": 0, "confirmed": 0, "refuted": 0}
    n = 400
    for _ in range(n):
        rows = []
        for data in ("digits", "mnist1d"):
            for arm in ("x", "y"):
                for s, value in enumerate(0.85 + rng.normal(0.0, 0.01, 5)):
                    rows.append(
                        {
                            "run_id": f"{data}-{arm}-{s}",
                            "outcome": "finished",
                            "seed": s,
                            "optimizer": arm,
                            "data.name": data,
                            "test/acc": value,
                        }
                    )
        v = one(each(), pd.DataFrame(rows))
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    assert counts["dependent"] <= 2, counts  # <= 0.5%
    assert counts["confirmed"] + counts["refuted"] <= 4, counts


def test_learned_gate_makes_the_claim_inconclusive_first() -> None:
    df = table({"x": 0.30, "y": 0.09})
    gate = {"metric": "test/acc", "above": 0.15}
    v = one(compare("a_better", learned=gate), df)
    assert v.verdict == "inconclusive" and v.p_value is None
    assert v.detail.startswith("arm y did not learn (mean test/acc 0.09")
    # The study-wide default applies to claims without their own gate, not to rate claims.
    (d, r) = evaluate(
        [compare("a_better"), rate("a_better")],
        pd.concat([df, rate_table({2.0: (0, 10), 0.0: (8, 10)})]),
        learned=gate,
    )
    assert d.detail.startswith("arm y did not learn") and r.verdict == "confirmed"
    assert one(compare("a_better", learned={**gate, "above": 0.05}), df).verdict == "confirmed"
    # A gate on another metric (step time claims gated on accuracy).
    timed = df.assign(**{"time/step_ms": [10.0] * 5 + [20.0] * 5})
    t = one(compare("a_better", metric="time/step_ms", mode="min", learned=gate), timed)
    assert t.detail.startswith("arm y did not learn")
    grouped = pd.concat(
        [
            table(CLEAR_A, extra={"model": "mlp_d"}),
            table({"x": 0.30, "y": 0.09}, extra={"model": "cnn_d"}),
        ]
    )
    g = one(compare("a_better", group_by="model", learned=gate), grouped)
    assert g.verdict == "inconclusive" and g.detail.startswith("arm y did not learn")
    with pytest.raises(SpecError, match="learned"):
        evaluate([rate("a_better", learned=gate)], df)


def replicate(**kw) -> dict:
    return {
        "id": "REP",
        "test": "replicate",
        "metric": "test/acc",
        "published": 0.85,
        "tolerance": 0.02,
        "source": "paper, table 2",
        "where": {"optimizer": "x"},
        **kw,
    }


def test_replicate_verdicts() -> None:
    assert one(replicate(), table({"x": 0.851})).verdict == "replicated"
    far = one(replicate(), table({"x": 0.90}))
    assert far.verdict == "not replicated" and far.effect == pytest.approx(0.05)
    edge = one(replicate(), table({"x": (0.869, 5.0)}))  # CI crosses 0.87
    assert edge.verdict == "inconclusive", edge.detail
    by_axis = one(replicate(where={}, axis="optimizer", a="y"), table({"x": 0.9, "y": 0.85}))
    assert by_axis.verdict == "replicated" and by_axis.n_a == 5


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({k: v for k, v in replicate().items() if k != "published"}, "published is required"),
        ({k: v for k, v in replicate().items() if k != "source"}, "source is required"),
        (replicate(tolerance=0), "tolerance"),
        (replicate(mode="max"), "mode is not used"),
        (replicate(axis="optimizer"), "axis and a together"),
        (compare("a_better", published=0.8), "published is not used"),
        ({k: v for k, v in compare("a_better").items() if k != "axis"}, "axis is required"),
    ],
)
def test_replicate_spec_rejects(raw: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        evaluate([raw], table(CLEAR_A))


def test_json_without_the_new_fields_still_loads() -> None:
    (v,) = evaluate([compare("a_better")], table(CLEAR_A))
    assert v.p_confirm is not None and v.p_adjusted == v.p_value
    old = [
        {k: x for k, x in d.items() if k not in ("p_adjusted", "p_confirm", "p_refute", "group_by")}
        for d in __import__("json").loads(verdicts_to_json([v]))
    ]
    (back,) = verdicts_from_json(__import__("json").dumps(old))
    assert back.p_adjusted is None and back.verdict == "confirmed"


def test_t_and_normal_helpers_give_scipy_stats_numbers_exactly() -> None:
    """The engine calls scipy.special's ufuncs directly (scipy.stats' argument checks were a
    fifth of a verdict's cost); a p-value off by one ulp could flip a verdict at its level."""
    from orchestrator.verdicts import engine

    for df in (1.0, 4.0, 9.5, 100.0, math.inf):
        for x in (-3.0, -0.5, 0.0, 0.7, 2.5):
            assert engine._t_sf(x, df) == float(stats.t.sf(x, df))
            assert engine._t_cdf(x, df) == float(stats.t.cdf(x, df))
        for q in (0.0125, 0.025, 0.5, 0.975, 0.9875):
            assert engine._t_ppf(q, df) == float(stats.t.ppf(q, df))
    for x in (-3.0, 0.0, 1.96, 8.0):
        assert engine._norm_sf(x) == float(stats.norm.sf(x))
    for q in (0.0125, 0.5, 0.975):
        assert engine._norm_ppf(q) == float(stats.norm.ppf(q))
    v = np.array([0.81, 0.79, 0.83, 0.8])
    se = float(np.std(v, ddof=1)) / math.sqrt(len(v))
    want = stats.t.interval(0.95, len(v) - 1, loc=float(np.mean(v)), scale=se)
    assert engine._mean_ci(v, 0.95) == (float(want[0]), float(want[1]))


@pytest.mark.parametrize("dtype", [object, "str"])
def test_outcome_counts_are_value_counts(dtype: object) -> None:
    """Counted in Python, through a mask instead of a row selection: the same counts as
    pandas' value_counts() of the selection, missing outcomes left out."""
    from orchestrator.verdicts import engine

    df = pd.DataFrame(
        {"outcome": pd.Series(["finished", None, "diverged", "finished", "failed"], dtype=dtype)}
    )
    mask = np.array([True, True, False, True, True])
    for m, selected in ((None, df), (mask, df[mask])):
        want = {k: int(n) for k, n in selected["outcome"].value_counts().items()}
        assert engine._outcome_counts(df, m) == want
    assert engine._outcome_counts(pd.DataFrame({"x": [1, 2]})) == {"finished": 2}
    assert engine._outcome_counts(pd.DataFrame({"x": [1, 2]}), np.array([False, False])) == {}
