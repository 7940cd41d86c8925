"""HP-1 with uncertainty: bootstrap fANOVA over all trials (pruned ones at the common step)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from orchestrator.core.specs import SearchClaimSpec
from orchestrator.search.importance import evidence, importance_verdict

STEPS = 4


def _study(value: Callable[[float, float], float], n: int = 40) -> optuna.Study:
    """In-memory study on (x, z): a value per step, the later steps closer to ``value``;
    every third trial is pruned after step 1."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    dists = {"x": FloatDistribution(0, 1), "z": FloatDistribution(0, 1)}
    for i in range(n):
        t = study.ask(dists)
        v = value(t.params["x"], t.params["z"])
        for step in range(STEPS):
            t.report(v * (step + 1) / STEPS + rng.normal(0, 0.05), step)
            if i % 3 == 0 and step == 1:
                study.tell(t, state=TrialState.PRUNED)
                break
        else:
            study.tell(t, v + rng.normal(0, 0.05))
    return study


CLAIM = SearchClaimSpec(id="HP", test="importance", first=["x"], last=["z"])
REVERSED = SearchClaimSpec(id="HP-rev", test="importance", first=["z"], last=["x"])


def test_pruned_trials_count_at_the_common_step() -> None:
    trials, used = evidence(_study(lambda x, z: x).get_trials(), multi_objective=False)
    assert len(trials) == 40 and "14 of them pruned" in used and "common step 1" in used


def test_one_parameter_matters() -> None:
    trials = _study(lambda x, z: 3 * x).get_trials()
    v = importance_verdict(CLAIM, trials, ["x", "z"], "all", n_boot=20)
    assert v.verdict == "confirmed", v.detail
    assert v.ci_low is not None and v.ci_low > 0
    assert "PED-ANOVA" in v.detail and "pruned" in v.detail
    assert importance_verdict(REVERSED, trials, ["x", "z"], "all", n_boot=20).verdict == "refuted"


def test_equal_importance_is_inconclusive() -> None:
    trials = _study(lambda x, z: x + z).get_trials()
    for claim in (CLAIM, REVERSED):
        v = importance_verdict(claim, trials, ["x", "z"], "all", n_boot=20)
        assert v.verdict == "inconclusive", v.detail
