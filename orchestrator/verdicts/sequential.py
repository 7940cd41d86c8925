"""Seeds until the answer is clear: a sequential rule over planned looks.

A study with ``sweep.seeds: {min, max}`` runs ``min`` seeds per arm, computes the verdicts,
and adds seeds only to the arms of claims still inconclusive, until each claim is decided or
``max`` is reached. Looking after every round and stopping when a test fires would, with
tests at the nominal level, inflate the error (with looks at 3, 5, 8 and 13 seeds a compare
claim with no effect was wrongly decided in 12.5% of simulated studies instead of 5%). This
module is the rule that keeps it at the nominal level (measured in tests/test_adaptive_seeds.py).

Procedure: group-sequential, with the error split over planned looks (Bonferroni spending).
    The looks are planned before any data: seed counts growing geometrically (x1.6, rounded
    up: 3, 5, 8, 13, 21, ...) from ``min``, the last one ``max`` (:func:`looks`); ``K`` of
    them. Each claim's one-sided level ``alpha = (1 - confidence) / 2`` is spent in equal
    parts: at look ``k`` every claim is tested with the usual engine (two one-sided tests,
    Holm across the study's claims) at one-sided level ``alpha / K``, i.e. ``confidence_k = 1
    - 2 alpha / K`` (:func:`look_confidence`). A claim is decided at the first look where it
    is confirmed or refuted, and keeps that verdict; one still inconclusive at ``max`` stays
    inconclusive ("max reached").

Why it is valid.
    A wrong decision (confirming or refuting against the truth) made by *any* stopping rule
    is a wrong decision of the level-``alpha / K`` test at some planned look, so its chance is
    at most ``sum_k alpha / K = alpha`` (union bound). This needs no model of how the looks
    correlate and holds for any data-dependent choice of which claims get more seeds, since
    at each look an open claim's arms hold exactly that look's planned seed count. The
    price is power: equal spending is more conservative than O'Brien-Fleming boundaries
    (which need the joint t-distribution of the looks, awkward with Welch/paired/Fisher/
    Spearman tests and ``best``'s intersection-union tests); it was chosen because it wraps
    every test of the engine unchanged. Holm across claims is applied at each look to the
    whole, fixed family of the study's claims (decided ones included, on the seeds they
    have), so each look's familywise error is at most ``alpha / K`` and the union over looks
    at most ``alpha``; a decided claim's arms may still grow for another claim, so its
    p-value at later looks serves only Holm's ranking (it is approximate there).

Replay.
    :func:`sequential_verdicts` recomputes the whole sequence from a trial table: look ``k``
    sees the trials with ``seed < n_k``. The driver calls it after every round to find the
    open claims; the report calls it once at the end, so both agree, and the verdict of each
    claim is the one from its stopping look, with ``seeds_used`` and ``stopped`` set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from orchestrator.verdicts.engine import (
    INCONCLUSIVE,
    ClaimSpec,
    History,
    LearnedSpec,
    Verdict,
    evaluate,
    parse_claims,
    values_match,
)

#: Growth of the seed count from one look to the next (Fibonacci-like: 3, 5, 8, 13, 21).
GROWTH = 1.6
#: The verdict that keeps a claim's sequence going (replicate claims share it).
_OPEN = (INCONCLUSIVE,)


def looks(min_seeds: int, max_seeds: int) -> list[int]:
    """The planned seed counts per arm at each look: ``min``, then x1.6 rounded up, capped
    at and ending with ``max``."""
    out = [min_seeds]
    while out[-1] < max_seeds:
        out.append(min(max_seeds, max(out[-1] + 1, math.ceil(out[-1] * GROWTH))))
    return out


def look_confidence(confidence: float, n_looks: int) -> float:
    """The two-sided confidence at each of ``n_looks`` looks: one-sided alpha split equally."""
    return 1.0 - (1.0 - confidence) / n_looks


@dataclass(frozen=True)
class ClaimState:
    """Where a claim's sequence stands after the looks done so far."""

    claim_id: str
    look: int  # 1-based look that decided it, or the last look done
    seeds: int  # seeds per arm at that look
    decided: bool
    verdict: str


def sequential_verdicts(
    claims: Sequence[ClaimSpec | Mapping[str, Any]],
    trials: pd.DataFrame,
    schedule: Sequence[int],
    history: History | None = None,
    axes: Sequence[str] | None = None,
    learned: LearnedSpec | Mapping[str, Any] | None = None,
    done: int | None = None,
) -> tuple[list[Verdict], list[ClaimState]]:
    """Replay the planned looks over ``trials`` (module docstring).

    Args:
        schedule: Seed counts of the planned looks (:func:`looks`); their number is ``K``.
        done: How many looks have data (default: every look whose seed count the table
            reaches, i.e. ``n_k <= max(seed) + 1``).

    Returns:
        The verdicts (each from its stopping look, with ``seeds_used``/``stopped`` filled)
        and each claim's state, in claim order.
    """
    specs = parse_claims(claims)
    k_total = len(schedule)
    if done is None:
        top = int(pd.to_numeric(trials["seed"]).max()) + 1 if len(trials) else 0
        done = max(1, sum(n <= top for n in schedule))
    staged = [
        c.model_copy(update={"confidence": look_confidence(c.confidence, k_total)}) for c in specs
    ]
    final: list[Verdict | None] = [None] * len(specs)
    states: list[ClaimState | None] = [None] * len(specs)
    for k in range(done):
        n = schedule[k]
        table = trials[pd.to_numeric(trials["seed"]) < n] if len(trials) else trials
        for i, v in enumerate(evaluate(staged, table, history, axes, learned)):
            state = states[i]
            if state is not None and state.decided:
                continue
            decided = v.verdict not in _OPEN
            final[i] = v
            states[i] = ClaimState(specs[i].id, k + 1, n, decided, v.verdict)
    out = []
    for last, s in zip(final, states):
        assert last is not None and s is not None
        if s.decided:
            why = f"decided at look {s.look} of {k_total}"
        elif s.look == k_total:
            why = f"max reached at look {k_total}"
        else:
            why = f"open after look {s.look} of {k_total}"
        note = (
            f" Sequential: {why} ({s.seeds} seeds per arm planned at that look; each of "
            f"the {k_total} looks at one-sided level alpha/{k_total})."
        )
        out.append(replace(last, seeds_used=s.seeds, stopped=why, detail=last.detail + note))
    return out, [s for s in states if s is not None]


def claim_arm_matches(claim: ClaimSpec, arm: Mapping[str, Any]) -> bool:
    """Whether a trial with this arm (axis -> value) is evidence for ``claim``.

    A ``where`` key or axis the arm does not hold (a pinned config value) is not a reason to
    leave the trial out: growing an arm too many is safe, missing one is not.
    """
    for key, target in claim.where.items():
        targets = target if isinstance(target, list) else [target]
        if key in arm and not any(values_match(arm[key], t) for t in targets):
            return False
    if claim.axis is None or claim.axis not in arm:
        return True
    named = [x for x in (claim.a, claim.b) if x is not None]
    if (
        claim.test in ("compare", "rate", "replicate")
        and named
        and claim.predict not in ("increasing", "decreasing")
    ):
        return any(values_match(arm[claim.axis], x) for x in named)
    return True  # best and trends use every arm of the axis


__all__ = ["ClaimState", "claim_arm_matches", "look_confidence", "looks", "sequential_verdicts"]
