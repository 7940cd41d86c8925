"""The claim language and its statistics: claims checked against a trial table.

Pure data in, verdicts out: no Ray, no MLflow, no Hydra. The rules are documented in
:mod:`orchestrator.verdicts.engine`.
"""

from orchestrator.verdicts.engine import (
    CONFIRMED,
    INCONCLUSIVE,
    REFUTED,
    ArmStats,
    ClaimSpec,
    Verdict,
    evaluate,
    parse_claims,
    values_match,
    verdicts_from_json,
    verdicts_to_json,
)

__all__ = ["CONFIRMED", "INCONCLUSIVE", "REFUTED", "ArmStats", "ClaimSpec", "Verdict", "evaluate",
           "parse_claims", "values_match", "verdicts_from_json", "verdicts_to_json"]
