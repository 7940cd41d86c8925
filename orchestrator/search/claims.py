"""Search claims (HP-*): importance order, "the optimum lies inside the ranges", and "each
parameter matters"."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config.space import Param, SearchPlan
from orchestrator.core.specs import SearchClaimSpec
from orchestrator.search.analysis import SearchSummary, best_trial, branch_trials
from orchestrator.search.importance import importance_verdict, matters_verdict
from orchestrator.search.verdict import claim_verdict
from orchestrator.verdicts import CONFIRMED, INCONCLUSIVE, REFUTED, Verdict, verdicts_from_json


# -- HP claims ------------------------------------------------------------------------------
def _verdict(
    claim: SearchClaimSpec,
    verdict: str,
    detail: str,
    effect: float | None = None,
    n: int = 0,
    metric: str | None = None,
) -> Verdict:
    method = "best trial vs ranges" if claim.test == "inside" else "bootstrap fANOVA"
    return claim_verdict(claim, verdict, detail, method=method, effect=effect, n=n, metric=metric)


def search_verdicts(
    claims: Sequence[SearchClaimSpec],
    study: optuna.Study,
    search: SearchPlan,
    imps: Mapping[str, Mapping[str, float]],
) -> list[Verdict]:
    """Verdicts of a search's claims (tests ``importance``, ``inside`` and ``matters``).

    ``importance`` (HP-1) ranks the parameters of the claim's branch (``where``, e.g.
    ``{optimizer: adam}``; default the unconditional parameters) by bootstrap fANOVA over
    all its trials at a common step, pruned ones included
    (:mod:`orchestrator.search.importance`): an order is confirmed or refuted only where
    the intervals separate. *Inconclusive* also with fewer than ``min_trials`` complete
    trials in the branch, or no ranking.

    ``inside`` (HP-2) reads the best complete trial (of the branch). *Confirmed*: every
    parameter of ``ranges`` lies inside its range and, where the range's edge is also the
    search space's edge (and not a floor at 0), at least ``margin`` of the range's width
    (in log10 for log parameters) from it. *Refuted*: a value outside its range or pinned
    against such an edge (the optimum may lie beyond). *Inconclusive*: too few complete
    trials, or the best trial lacks a parameter.

    ``matters`` (HP-4) asks of each parameter in ``params`` for a bootstrap fANOVA
    importance above ``min_importance`` (:func:`orchestrator.search.importance.matters_verdict`).

    Returns:
        :class:`orchestrator.verdicts.Verdict` objects, in the claims' order.
    """
    out = []
    for claim in claims:
        where = dict(claim.where)
        branch = "all" if not where else "=".join(map(str, next(iter(where.items()))))
        n = (
            len(branch_trials(study, branch))
            if len(where) <= 1
            else len(
                [
                    t
                    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if all(str(t.params.get(k)) == str(v) for k, v in where.items())
                ]
            )
        )
        if n < claim.min_trials:
            out.append(
                _verdict(
                    claim,
                    INCONCLUSIVE,
                    f"{n} complete trial(s) in {branch}, {claim.min_trials} needed.",
                    n=n,
                )
            )
            continue
        if claim.test in ("importance", "matters"):
            imp = imps.get(branch)
            if not imp:
                out.append(_verdict(claim, INCONCLUSIVE, f"no fANOVA ranking for {branch}.", n=n))
                continue
            if claim.test == "matters":
                out.append(
                    matters_verdict(
                        claim,
                        _branch_all(study, where),
                        list(imp),
                        branch,
                        len(study.directions) > 1,
                    )
                )
                continue
            out.append(
                importance_verdict(
                    claim,
                    _branch_all(study, where),
                    list(imp),
                    branch,
                    study.directions[0] == optuna.study.StudyDirection.MAXIMIZE,
                    len(study.directions) > 1,
                )
            )
        else:
            best = best_trial(study, where)
            out.append(_inside_verdict(claim, best, search, n, CONFIRMED, REFUTED, INCONCLUSIVE))
    return out


def _inside_verdict(
    claim: SearchClaimSpec,
    best: FrozenTrial | None,
    search: SearchPlan,
    n: int,
    confirmed: str,
    refuted: str,
    inconclusive: str,
) -> Verdict:
    if best is None:
        return _verdict(claim, inconclusive, "no complete trial.", n=n)
    parts, problems = [], []
    for key, (lo, hi) in claim.ranges.items():
        if key not in best.params:
            return _verdict(
                claim,
                inconclusive,
                f"the best trial ({best.number}) has no "
                f"{key} (a conditional parameter of another branch?).",
                n=n,
            )
        v = float(best.params[key])
        p: Param | None = next((q for q in search.space.params if q.key == key), None)
        log = p is not None and p.log and lo > 0
        f = math.log10 if log else (lambda x: x)
        width = f(hi) - f(lo)
        parts.append(f"{key}={v:.4g} in [{lo:g}, {hi:g}]")
        if not lo <= v <= hi:
            problems.append(f"{key}={v:.4g} is outside [{lo:g}, {hi:g}]")
            continue
        space_lo, space_hi = p.bounds if p is not None else (None, None)
        for edge, space_edge, dist in ((lo, space_lo, f(v) - f(lo)), (hi, space_hi, f(hi) - f(v))):
            at_space_edge = space_edge is not None and math.isclose(
                float(space_edge), edge, rel_tol=1e-9, abs_tol=1e-15
            )
            if at_space_edge and edge != 0 and dist < claim.margin * width:
                problems.append(
                    f"{key}={v:.4g} is pinned against the space's edge {edge:g} "
                    f"(within {claim.margin:.0%} of the range)"
                )
    detail = (
        f"best trial {best.number} ({search.metrics[0]}={best.values[0]:.4g}): "
        + "; ".join(parts)
        + "; "
        + (f"refuted ({'; '.join(problems)})." if problems else "confirmed.")
    )
    return _verdict(claim, refuted if problems else confirmed, detail, None, n, search.metrics[0])


def _branch_all(study: optuna.Study, where: Mapping[str, object]) -> list[FrozenTrial]:
    """Every trial of the branch, pruned and failed ones included (the evidence is chosen by
    :func:`orchestrator.search.importance.evidence`)."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if all(str(t.params.get(k)) == str(v) for k, v in where.items())
    ]


def summary_verdicts(summary: SearchSummary | None) -> list[Verdict]:
    """The verdicts a search logged (:attr:`SearchSummary.verdicts`) as ``Verdict`` objects,
    for the sweep's report and ``verdicts.json`` beside the study's own claims."""
    if summary is None or not summary.verdicts:
        return []
    return verdicts_from_json(json.dumps(summary.verdicts))
