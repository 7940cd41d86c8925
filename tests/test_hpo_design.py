"""HP-2 on the hpo study's real space (conf/study/hpo.yaml): the space is the notes' ranges
(batch from 1, 002:L1343-1350), so "inside" is true by construction and the claim is "not
pinned at an edge" with the stated 5% margin. Each case is one best trial of a real Optuna
study read by the real verdict code; none of them is confirmed by construction."""

from __future__ import annotations

import numpy as np
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


# -- HP-4: the notes' tunable list (000:L474-484) and the tunables study -------------------
#: Each item of the notes' list -> the parameter of conf/study/tunables.yaml that tunes it.
NOTES_TUNABLES = {
    "预处理 (preprocessing: data normalization)": "data.normalize",
    "Batch-Size": "train.batch_size",
    "学习率 (LR)": "optimizer.lr",
    "优化器 (optimizer)": "optimizer",
    "损失函数 (loss)": "train.label_smoothing",
    "激活函数 (activation)": "model.activation",
    "Epoch": "train.epochs",
    "权重初始化 (weight init)": "model.init",
    "NAS网络架构搜索 (architecture)": "model.hidden",
}


def test_hp4_space_covers_the_notes_list() -> None:
    plan = plan_sweep(composer(None), "tunables", [], quick=False)
    assert plan.search is not None
    keys = [p.key for p in plan.search.space.params]
    assert sorted(keys) == sorted(NOTES_TUNABLES.values())
    (claim,) = plan.search.spec.claims
    assert claim.test == "matters" and sorted(claim.params) == sorted(keys)
    assert plan.search.spec.sampler == "random" and plan.search.spec.pruner.name == "none"


def _matters(effects: dict[str, float], n: int = 120, threshold: float = 0.02) -> str:
    """A random-search table where y = sum of effect x each parameter (uniform in [0, 1]),
    plus a little noise, read by the real verdict code."""
    from orchestrator.core.specs import SearchClaimSpec
    from orchestrator.search.importance import matters_verdict

    rng = np.random.default_rng(0)
    dists = {p: FloatDistribution(0, 1) for p in effects}
    trials = []
    for _ in range(n):
        params = {p: float(rng.random()) for p in effects}
        value = sum(e * params[p] for p, e in effects.items()) + 0.01 * rng.normal()
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    claim = SearchClaimSpec(
        id="HP-4", test="matters", params=list(effects), min_importance=threshold
    )
    return matters_verdict(claim, trials, list(effects), "all", n_boot=20).verdict


@pytest.mark.parametrize(
    "effects,verdict",
    [
        ({"a": 1.0, "b": 0.8, "c": 0.6}, "confirmed"),  # every one explains >10%
        ({"a": 1.0, "b": 0.8, "c": 0.0}, "refuted"),  # c changes nothing
    ],
)
def test_matters_can_come_out_either_way(effects: dict[str, float], verdict: str) -> None:
    assert _matters(effects) == verdict


def test_a_parameter_that_matters_by_divergence_counts_only_with_its_diverged_trials() -> None:
    # c changes nothing in the runs that finish, but c > 0.7 makes a run diverge: left out,
    # those runs hide c's effect; counted (at 0.55, 0.2 below the finished runs' mean, so
    # that c's share does not swamp a's and b's) they show it.
    from optuna.trial import TrialState

    from orchestrator.core.specs import SearchClaimSpec
    from orchestrator.search.importance import matters_verdict
    from orchestrator.search.study import ATTR_OUTCOME

    rng = np.random.default_rng(1)
    dists = {p: FloatDistribution(0, 1) for p in "abc"}
    trials = []
    for _ in range(150):
        params = {p: float(rng.random()) for p in "abc"}
        if params["c"] > 0.7:
            trials.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions=dists,
                    state=TrialState.FAIL,
                    user_attrs={ATTR_OUTCOME: "diverged"},
                )
            )
            continue
        value = 0.5 + 0.3 * params["a"] + 0.2 * params["b"] + 0.01 * rng.normal()
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    verdicts = {}
    for diverged_value in (None, 0.55):
        claim = SearchClaimSpec(
            id="HP-4", test="matters", params=["a", "b", "c"], diverged_value=diverged_value
        )
        verdicts[diverged_value] = matters_verdict(claim, trials, ["a", "b", "c"], "all", n_boot=20)
    assert verdicts[None].verdict == "refuted" and "c below" in verdicts[None].detail
    assert verdicts[0.55].verdict == "confirmed", verdicts[0.55].detail
    assert "and 46 diverged at 0.55" in verdicts[0.55].detail


def test_matters_with_too_few_trials_is_inconclusive() -> None:
    assert _matters({"a": 1.0, "b": 0.8, "c": 0.0}, n=3) == "inconclusive"


def test_a_claim_on_a_key_outside_the_space_is_bad_input() -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError, match=r"search\.claims\.0\.params: 'model\.depth' is not a key"):
        plan_sweep(composer(None), "tunables", ["search.claims.0.params=[model.depth]"])


def test_matters_needs_params() -> None:
    from pydantic import ValidationError

    from orchestrator.core.specs import SearchClaimSpec

    with pytest.raises(ValidationError, match="params is required"):
        SearchClaimSpec(id="HP-4", test="matters")


def test_tunables_claim_is_decided_through_search_verdicts() -> None:
    # The study's claim, narrowed to two of its parameters, and its space, read by the code a
    # sweep runs: a table where those two move val/acc and the other seven do not.
    plan = plan_sweep(
        composer(None), "tunables", ["search.claims.0.params=[optimizer.lr,model.hidden]"]
    )
    assert plan.search is not None
    space = plan.search.space
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    hidden = space.get("model.hidden").distribution.choices  # type: ignore[attr-defined]

    def objective(trial: optuna.Trial) -> float:
        labels = space.suggest(trial)  # as a sweep asks them (model.hidden as JSON text)
        lr = np.log10(labels["optimizer.lr"]) + 4  # 0..3 over the range
        return 0.3 + 0.1 * lr + 0.1 * hidden.index(labels["model.hidden"])

    study.optimize(objective, n_trials=100)
    imps = {"all": {p.key: 1 / len(space.params) for p in space.params}}
    (v,) = search_verdicts(plan.search.spec.claims, study, plan.search, imps)
    assert v.id == "HP-4" and v.verdict == "confirmed", v.detail
