"""The Hydra ``Launcher`` of orch: the driver side lives in ``_core`` (imported on launch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OrchLauncher(Launcher):
    """Runs a multirun's jobs on orch's reusable Ray actors; one MLflow child run per job."""

    def __init__(
        self,
        address: str | None = None,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        resources: Any = None,
        max_concurrent: int | None = None,
    ) -> None:
        # Hydra imports every plugin to discover them: Ray, MLflow and torch load only here.
        from hydra_plugins.orch_launcher._core import LauncherOptions

        self.options = LauncherOptions.from_config(
            address, tracking_uri, experiment, resources, max_concurrent
        )
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        #: The multirun's state across ``launch`` calls (a sweeper may launch several
        #: batches): one parent run for all of them.
        self.session: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.orch_launcher._core import launch  # see __init__: loaded on use

        return launch(self, job_overrides, initial_job_idx)
