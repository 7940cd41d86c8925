"""Experiment orchestration for deep-learning research: Hydra studies, Ray dispatch, MLflow tracking.

Pipeline: compose (Hydra) -> validate (pydantic specs) -> plan (grid x seeds) ->
dispatch (Ray core) -> track (MLflow). :class:`Client` queries the results.
"""

from orchestrator.client import Client

__all__ = ["Client"]
