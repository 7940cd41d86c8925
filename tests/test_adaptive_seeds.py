"""Adaptive seeds: the sequential rule's error and power by simulation, and a sweep whose
rounds add seeds only to open claims, with the seeds used shown per claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator import Client
from orchestrator.cli import main
from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.errors import SpecError
from orchestrator.verdicts import ClaimSpec, evaluate
from orchestrator.verdicts.sequential import (
    claim_arm_matches,
    look_confidence,
    looks,
    sequential_verdicts,
)

CLAIM = {
    "id": "C",
    "test": "compare",
    "metric": "m",
    "mode": "max",
    "axis": "opt",
    "a": "x",
    "b": "y",
    "predict": "a_better",
}
SCHEDULE = looks(3, 13)


def _table(rng: np.random.Generator, effect: float, n: int) -> pd.DataFrame:
    rows = [
        {
            "run_id": f"{arm}{s}",
            "outcome": "finished",
            "opt": arm,
            "seed": s,
            "m": rng.normal(mu, 1.0),
        }
        for s in range(n)
        for arm, mu in (("x", effect), ("y", 0.0))
    ]
    return pd.DataFrame(rows)


def test_schedule_and_levels() -> None:
    assert SCHEDULE == [3, 5, 8, 13]
    assert looks(2, 6) == [2, 4, 6]
    assert looks(5, 5) == [5]
    assert look_confidence(0.95, 4) == pytest.approx(1 - 0.05 / 4)


def test_null_error_stays_at_alpha_with_a_look_per_round() -> None:
    """No effect, four looks, stop at the first decision: wrong decisions (confirmed or
    refuted; each side is a one-sided 2.5% test) stay <= 5% + slack, where deciding at the
    nominal level at every look would not (measured ~12% with this seed)."""
    rng = np.random.default_rng(0)
    n, wrong, naive = 200, 0, 0
    for _ in range(n):
        df = _table(rng, 0.0, SCHEDULE[-1])
        (v,), _ = sequential_verdicts([CLAIM], df, SCHEDULE)
        wrong += v.verdict != "inconclusive"
        naive += any(
            evaluate([CLAIM], df[df.seed < k])[0].verdict != "inconclusive" for k in SCHEDULE
        )
    assert wrong / n <= 0.05 + 0.03
    assert naive > wrong  # peeking at the nominal level is what the rule avoids


def test_clear_effect_stops_early() -> None:
    rng = np.random.default_rng(1)
    stops, confirmed = [], 0
    for _ in range(40):
        (v,), (s,) = sequential_verdicts([CLAIM], _table(rng, 2.0, SCHEDULE[-1]), SCHEDULE)
        confirmed += v.verdict == "confirmed"
        stops.append(s.seeds)
        assert v.seeds_used == s.seeds and v.stopped is not None
    assert confirmed >= 0.85 * 40
    assert np.mean(stops) < SCHEDULE[-1] - 2  # most decided before max


def test_claim_arms() -> None:
    claim = ClaimSpec.model_validate({**CLAIM, "where": {"model": "mlp"}})
    assert claim_arm_matches(claim, {"opt": "x", "model": "mlp"})
    assert not claim_arm_matches(claim, {"opt": "z", "model": "mlp"})
    assert not claim_arm_matches(claim, {"opt": "x", "model": "cnn"})
    best = ClaimSpec.model_validate(
        {
            "id": "B",
            "test": "best",
            "metric": "m",
            "mode": "max",
            "axis": "opt",
            "predict_in": ["x"],
        }
    )
    assert claim_arm_matches(best, {"opt": "z"})


def test_adaptive_spec_validated_and_planned_at_min() -> None:
    plan = plan_sweep(composer(None), "optimizers", ["sweep.seeds={min:2,max:5}"], quick=True)
    assert sorted({t.seed for t in plan.trials}) == [0, 1]
    with pytest.raises(SpecError):
        plan_sweep(composer(None), "optimizers", ["sweep.seeds={min:4,max:3}"])


@pytest.mark.slow
def test_adaptive_sweep_adds_seeds_and_shows_them(ray_session, tracking_uri: str) -> None:
    assert (
        main(
            [
                "sweep",
                "optimizers",
                "--quick",
                "sweep.seeds={min:2,max:4}",
                "optimizer=sgd_momentum,adam",
                "train.epochs=1",
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 0
    )
    client = Client(tracking_uri)
    sid = client.sweeps().sweep_id.iloc[0]
    df = client.trials(sid)
    # Look 1 (2 seeds) cannot decide (min_seeds is 3): every arm of an open claim gets
    # seeds 2 and 3; indices stay unique, keys are those a plain 4-seed sweep plans.
    assert sorted(df.seed) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert df.trial_index.is_unique
    plain = plan_sweep(
        composer(None),
        "optimizers",
        ["seed=range(4)", "optimizer=sgd_momentum,adam", "train.epochs=1"],
        quick=True,
    )
    assert set(df.trial_key) == {t.key for t in plain.trials}
    verdicts = client.verdicts(sid)
    assert verdicts and all(v.seeds_used in (2, 4) and v.stopped for v in verdicts)
    assert all("Sequential:" in v.detail for v in verdicts)
