"""One search claim's verdict as the verdict engine's :class:`~orchestrator.verdicts.Verdict`."""

from __future__ import annotations

from orchestrator.core.specs import SearchClaimSpec
from orchestrator.verdicts import Verdict


def claim_verdict(
    claim: SearchClaimSpec,
    verdict: str,
    detail: str,
    *,
    method: str,
    effect: float | None = None,
    ci: tuple[float | None, float | None] = (None, None),
    n: int = 0,
    min_effect: float = 0.0,
    confidence: float = 0.95,
    metric: str | None = None,
) -> Verdict:
    """A search claim's verdict: ``n`` trials of evidence, no second arm."""
    return Verdict(
        id=claim.id,
        statement=claim.statement,
        source=claim.source,
        test=claim.test,
        verdict=verdict,
        effect=effect,
        ci_low=ci[0],
        ci_high=ci[1],
        min_effect=min_effect,
        n_a=n,
        n_b=0,
        method=method,
        detail=detail,
        metric=metric,
        axis=", ".join(claim.first or claim.params or claim.ranges),
        confidence=confidence,
    )


__all__ = ["claim_verdict"]
