"""Experiment orchestration for deep-learning research: Hydra studies, Ray dispatch, MLflow
tracking.

Layers, each importing only from those below it (``.importlinter`` checks this):

=============  =====================================================================
``cli``        the ``orch`` command
``client``,    ``Client`` (query sweeps from Python); ``sweep`` (run one: dispatch,
``sweep``      record, report)
``report``     verdicts and the HTML report of a stored sweep (``dashboards.report``)
``search``     Optuna: samplers, the ask-on-free-slot source, analysis, search claims
``config``,    compose and plan (Hydra, grids, search spaces); the MLflow store (schema,
``store``,     writer, paged reader); the Ray runtime (cluster, slots, the one trial
``runtime``    runner, memory limit, system metrics)
``core``       specs, trials and results: the types every layer shares
``verdicts``   the claim language and its statistics (no Ray, no MLflow)
``tasks``      the task SDK and the built-in tasks (no Ray, no MLflow, no Hydra)
=============  =====================================================================
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `orch --help` does not import MLflow and pandas through this package.
    if name == "Client":
        from orchestrator.client import Client

        return Client
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
