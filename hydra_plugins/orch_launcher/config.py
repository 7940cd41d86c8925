"""The launcher's options, registered as ``hydra/launcher=orch`` in Hydra's ConfigStore.

Hydra imports every public module under ``hydra_plugins`` when an app starts, so this module
and ``orch_launcher`` import Hydra only; Ray, MLflow and torch load when a multirun launches.
"""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types, and
# Hydra's plugin scanner runs this module before it is in sys.modules.
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class OrchResourcesConf:
    """What one job holds while it runs (as orch's ``resources``)."""

    cpus: float = 1.0
    gpus: float = 0.0
    #: A job whose worker goes over this is failed (orch's memory watchdog); null: no limit.
    memory_mb: int | None = None


@dataclass
class OrchLauncherConf:
    _target_: str = "hydra_plugins.orch_launcher.orch_launcher.OrchLauncher"
    #: Ray address of an existing cluster; null starts a local one in-process.
    address: str | None = None
    #: MLflow store; null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the original cwd.
    tracking_uri: str | None = None
    #: MLflow experiment; null: the app's job name (hydra.job.name).
    experiment: str | None = None
    resources: OrchResourcesConf = field(default_factory=OrchResourcesConf)
    #: At most this many jobs at once; null: as many as the cluster's resources allow.
    max_concurrent: int | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="orch", node=OrchLauncherConf, provider="orch_launcher"
)
