"""HP-2 on the hpo study's real space (conf/study/hpo.yaml): the space is the notes' ranges
(batch from 1, 002:L1343-1350), so "inside" is true by construction and the claim is "not
pinned at an edge" with the stated 5% margin. Each case is one best trial of a real Optuna
study read by the real verdict code; none of them is confirmed by construction."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.search.claims import search_verdicts

INTERIOR = {
    "optimizer": "adam",
    "optimizer.lr": 3e-3,
    "train.batch_size": 32,
    "optimizer.weight_decay": 5e-5,
    "model.dropout": 0.2,
}
DISTS = {
    "optimizer": CategoricalDistribution(["sgd_momentum", "adam"]),
    "optimizer.lr": FloatDistribution(1e-3, 1e-2, log=True),
    "train.batch_size": IntDistribution(1, 1024, log=True),
    "optimizer.weight_decay": FloatDistribution(0, 1e-4),
    "model.dropout": FloatDistribution(0, 0.5),
}


def _hp2(quick: bool, best: dict[str, object], n: int = 40) -> str:
    plan = plan_sweep(composer(None), "hpo", [], quick=quick)
    assert plan.search is not None
    (claim,) = [c for c in plan.search.spec.claims if c.id == "HP-2"]
    study = optuna.create_study(direction="maximize")
    for i in range(n):  # n-1 worse trials at the interior point, then the best one
        params = best if i == n - 1 else INTERIOR
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=DISTS, value=0.9 if i == n - 1 else 0.5
            )
        )
    (v,) = search_verdicts([claim], study, plan.search, {})
    return v.verdict


def test_space_and_claim_are_the_notes_ranges() -> None:
    plan = plan_sweep(composer(None), "hpo", [], quick=False)
    assert plan.search is not None
    bounds = {p.key: p.bounds for p in plan.search.space.params}
    assert bounds["train.batch_size"] == (1, 1024)
    (claim,) = [c for c in plan.search.spec.claims if c.id == "HP-2"]
    assert claim.ranges["train.batch_size"] == (1, 1024) and claim.margin == 0.05


@pytest.mark.parametrize(
    "change,verdict",
    [
        ({}, "confirmed"),
        ({"train.batch_size": 1}, "refuted"),  # the notes' floor: the optimum may lie below
        ({"train.batch_size": 800}, "refuted"),  # within 5% of log10(1024) of the top
        ({"optimizer.lr": 9.5e-3}, "refuted"),
        ({"model.dropout": 0.49}, "refuted"),
        ({"optimizer.weight_decay": 0.0}, "confirmed"),  # 0 is the parameter's floor, not an edge
    ],
)
def test_hp2_is_refuted_only_when_pinned(change: dict[str, object], verdict: str) -> None:
    assert _hp2(False, {**INTERIOR, **change}) == verdict


def test_quick_variant_leaves_hp2_undecided() -> None:
    # The smoke run searches batch [16, 256] only: HP-2 must not be decided on it.
    assert _hp2(True, {**INTERIOR, "train.batch_size": 64}, n=30) == "inconclusive"
