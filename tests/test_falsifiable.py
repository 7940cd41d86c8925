"""Every built-in claim can be confirmed and can be refuted by the design its study runs.

For each claim of each ``conf/study/*.yaml`` (read directly, parsed with the verdict module's
parser; the search claims of hpo.yaml are a different engine), the trial table is the one
the study's plan produces: the planner's trials (arms of its axes and sub-grids, its
seeds; a trial shared by overlapping grids gets a row per arm,
as ``Client.trials`` gives it). Its metrics are synthetic: in one table the notes' prediction
clearly holds (a large effect, tiny noise), in the other its opposite clearly holds, and the
engine must say confirmed and refuted (the effect is the same on every dataset, so a
per-dataset claim, ``groups: each``, must never come out dependent). A claim is evaluated
at the one-sided level ``0.025 / k`` for a study of ``k`` claims: Holm holds the claim with
the smallest p to it, so a claim that cannot reach it can never be decided first.

What the design fixes whatever the metrics are is kept: a trial the study's own premise
makes diverge (LRs of 10 and above in lr_schedules' range grid; LR-1/diverge) has no final
metric. A claim that fails here is a design bug, fixed in the study file, not here. The
quick variants (the study's ``quick`` overrides: fewer seeds and arms) are only required
never to give the wrong verdict.
"""

from __future__ import annotations

import math
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.verdicts import (
    TREND_PREDICTS,
    ClaimSpec,
    evaluate,
    parse_claims,
    values_match,
)

STUDIES = Path(__file__).resolve().parent.parent / "conf" / "study"
BASE = 0.6  # every metric's value where the scenario says nothing
NOISE = 0.002  # per-trial noise, tiny next to the effects
METRICS = ("test/acc", "val/acc", "train/eval_loss", "time/step_ms", "backbone/drift", "gap/acc")


def _study_claims() -> list[tuple[str, ClaimSpec, int]]:
    out = []
    for path in sorted(STUDIES.glob("*.yaml")):
        claims = (yaml.safe_load(path.read_text()).get("study") or {}).get("claims") or []
        parsed = parse_claims(claims, where=f"{path.name}: study.claims")
        out += [(path.stem, c, len(parsed)) for c in parsed]
    return out


CLAIMS = _study_claims()


@cache
def _design(study: str, quick: bool) -> pd.DataFrame:
    """One row per (trial, arm) of the study's plan, shaped like ``Client.trials``."""
    plan = plan_sweep(composer(None), study, [], quick=quick)
    rows = []
    for t in plan.trials:
        for arm in (t.arm, *t.also):
            rows.append(
                {
                    "run_id": f"t{t.index}",
                    "trial_index": t.index,
                    "seed": t.seed,
                    "outcome": "finished",
                    # A trial's params hold its dataset whether or not data is an axis
                    # (the column of the studies' per-dataset claims).
                    "data.name": t.config["data"]["name"],
                    **arm,
                }
            )
    return pd.DataFrame(rows)


def _diverges(study: str, table: pd.DataFrame) -> pd.Series:
    """The study's premise, true whatever the metrics: too high an LR diverges."""
    if study != "lr_schedules" or "optimizer.lr" not in table:
        return pd.Series(False, index=table.index)
    lr = pd.to_numeric(table["optimizer.lr"], errors="coerce")
    return (table["grid"] == "range") & (lr >= 10.0)


def _is(table: pd.DataFrame, col: str, value: Any) -> pd.Series:
    values = value if isinstance(value, list) else [value]
    return table[col].map(lambda v: any(values_match(v, x) for x in values)).astype(bool)


def _scenario(
    claim: ClaimSpec, design: pd.DataFrame, study: str, holds: bool, winner: Any
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The design with metrics (or outcomes) in which the claim (``holds``) or its opposite
    clearly holds; ``winner`` is the arm made best for ``best`` claims. Returns the table and
    each run's value of the claim's metric (its per-epoch history for ``at_step``)."""
    rng = np.random.default_rng(zlib.crc32(f"{claim.id}|{holds}|{winner}".encode()))
    t = design.copy()
    metrics = _metrics(claim)
    for m in metrics:
        t[m] = BASE + rng.normal(0.0, NOISE, len(t))
    axis = claim.axis or ""
    big = 0.1 + 5 * claim.min_effect
    better = big * (1.0 if claim.mode != "min" else -1.0)  # a value shift that is better
    if claim.test == "rate":
        event = pd.Series(False, index=t.index)
        if claim.predict in TREND_PREDICTS:
            x = pd.to_numeric(t[axis], errors="coerce")
            scope = t[_is_all(t, claim.where)]
            mid = float(np.median(pd.to_numeric(scope[axis], errors="coerce").dropna().unique()))
            up = (claim.predict == "increasing") == holds
            event = (x > mid) if up else (x < mid)
        else:
            favoured = (
                claim.a if (claim.predict in ("a_better", "a_not_worse")) == holds else claim.b
            )
            other = claim.b if favoured == claim.a else claim.a
            event = _is(t, axis, other)
        t.loc[event, "outcome"] = "diverged"
    else:
        t.loc[_diverges(study, t), "outcome"] = "diverged"
        metric = claim.metric or "test/acc"
        if claim.test == "best":
            t.loc[_is(t, axis, winner), metric] += better
        elif claim.test == "compare":
            p = claim.predict
            if p in ("a_better", "b_better"):
                lift = claim.a if (p == "a_better") == holds else claim.b
                t.loc[_is(t, axis, lift), metric] += better
            elif p in ("a_not_worse", "b_not_worse") and not holds:
                worse = claim.a if p == "a_not_worse" else claim.b
                t.loc[_is(t, axis, worse), metric] -= better
            elif p == "equal" and not holds:
                t.loc[_is(t, axis, claim.a), metric] += better
        elif claim.test == "replicate":
            target = (claim.published or 0.0) + (0.0 if holds else 5 * (claim.tolerance or 0.0))
            t[metric] = target + rng.normal(0.0, NOISE, len(t))
    for m in metrics:
        t.loc[t["outcome"] != "finished", m] = math.nan
    values = dict(zip(t["run_id"], t[claim.metric])) if claim.metric else {}
    return t, values


def _metrics(claim: ClaimSpec) -> list[str]:
    """METRICS and the claim's own (``layer/...``), in a fixed order: the noise drawn for
    each must not depend on the hash seed."""
    own = claim.metric or "test/acc"
    return [*METRICS, *([own] if own not in METRICS else [])]


def _is_all(t: pd.DataFrame, where: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=t.index)
    for col, value in where.items():
        mask &= _is(t, col, value)
    return mask


def _verdict(claim: ClaimSpec, table: pd.DataFrame, values: dict[str, float], k: int) -> Any:
    """The claim alone at the level Holm holds the first of ``k`` claims to."""
    strict = claim.model_copy(update={"confidence": 1 - 0.05 / k})

    def history(run_id: str, metric: str) -> pd.DataFrame:
        return pd.DataFrame({"step": range(30), "value": [values[run_id]] * 30})

    (v,) = evaluate([strict], table, history=history)
    return v


def _outcomes(claim: ClaimSpec, design: pd.DataFrame, study: str, k: int) -> tuple[list, list]:
    """(verdicts where the claim holds, verdicts where its opposite does)."""
    if claim.test != "best":
        yes = _verdict(claim, *_scenario(claim, design, study, True, None), k)
        no = _verdict(claim, *_scenario(claim, design, study, False, None), k)
        return [yes], [no]
    # best: each predicted arm winning must confirm, each other arm winning must refute.
    scope = design[_is_all(design, claim.where)]
    arms = list(dict.fromkeys(scope[claim.axis or ""]))
    inside = [a for a in arms if any(values_match(a, p) for p in claim.predict_in or [])]
    outside = [a for a in arms if a not in inside]
    yes = [
        _verdict(claim, *_scenario(claim, design, study, True, a), k)
        for a in inside
        if not _diverges(study, scope[_is(scope, claim.axis or "", a)]).all()
    ]
    no = [_verdict(claim, *_scenario(claim, design, study, False, a), k) for a in outside]
    return yes, no


def _words(claim: ClaimSpec) -> tuple[str, str]:
    if claim.test == "replicate":
        return "replicated", "not replicated"
    return "confirmed", "refuted"


@pytest.mark.parametrize("study,claim,k", CLAIMS, ids=[f"{s}:{c.id}" for s, c, _ in CLAIMS])
def test_claim_can_be_confirmed_and_refuted(study: str, claim: ClaimSpec, k: int) -> None:
    yes, no = _outcomes(claim, _design(study, False), study, k)
    good, bad = _words(claim)
    assert yes and no, "the design has no arm on one side of the claim"
    assert all(v.verdict == good for v in yes), [v.detail for v in yes if v.verdict != good]
    assert all(v.verdict == bad for v in no), [v.detail for v in no if v.verdict != bad]


@pytest.mark.parametrize("study,claim,k", CLAIMS, ids=[f"{s}:{c.id}" for s, c, _ in CLAIMS])
def test_quick_variant_is_never_wrong(study: str, claim: ClaimSpec, k: int) -> None:
    """The quick variants are smoke runs (2-3 seeds, 1-4 epochs): most of their claims
    cannot be decided, by design, but none may ever say the opposite of the truth."""
    yes, no = _outcomes(claim, _design(study, True), study, k)
    good, bad = _words(claim)
    assert not any(v.verdict == bad for v in yes), [v.detail for v in yes]
    assert not any(v.verdict == good for v in no), [v.detail for v in no]


def test_every_study_with_claims_is_covered() -> None:
    covered = {s for s, _, _ in CLAIMS}
    assert covered == {
        "adaptive",
        "bn_sync",
        "finetune",
        "lr_schedules",
        "optimizers",
        "init_act",
        "mnist1d_baselines",
        "regularization",
        "norm_batch",
        "depth_norm",
        "reg_more",
        "second_order",
        "gd_noise",
        "hp3_staged",
    }
    assert len(CLAIMS) >= 35
