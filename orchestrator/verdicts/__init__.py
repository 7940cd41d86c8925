"""The claim language and its statistics: claims checked against a trial table.

Pure data in, verdicts out: no Ray, no MLflow, no Hydra. The rules are documented in
:mod:`orchestrator.verdicts.engine`.
"""

from orchestrator.verdicts.engine import (
    CONFIRMED,
    DEPENDENT,
    INCONCLUSIVE,
    NOT_REPLICATED,
    PAIR_PREDICTS,
    REFUTED,
    REPLICATED,
    TREND_PREDICTS,
    ArmStats,
    ClaimSpec,
    LearnedSpec,
    Verdict,
    evaluate,
    parse_claims,
    values_match,
    verdict_label,
    verdict_rows,
    verdicts_from_json,
    verdicts_to_json,
)

__all__ = [
    "CONFIRMED",
    "DEPENDENT",
    "INCONCLUSIVE",
    "NOT_REPLICATED",
    "PAIR_PREDICTS",
    "REFUTED",
    "REPLICATED",
    "TREND_PREDICTS",
    "ArmStats",
    "ClaimSpec",
    "LearnedSpec",
    "Verdict",
    "evaluate",
    "parse_claims",
    "values_match",
    "verdict_label",
    "verdict_rows",
    "verdicts_from_json",
    "verdicts_to_json",
]
