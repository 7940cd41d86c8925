"""Compose a study's configuration with Hydra's compose machinery.

The search path is: the user's ``--config-dir`` (if any), then the built-in ``conf/``, so a
user's study or option of the same name shadows a built-in one. Hydra's own override
grammar is used throughout, so a Hydra user needs no new syntax.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.object_type import ObjectType
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import safe_yaml
from orchestrator.config.paths import PRIMARY_CONFIG, builtin_config_dir
from orchestrator.errors import SpecError


def config_dict(cfg: DictConfig, resolve: bool = True) -> dict[str, Any]:
    """A composed config as a plain dict (a study always composes to a mapping)."""
    out = OmegaConf.to_container(cfg, resolve=resolve)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


class Composer:
    """Composes configs from the search path ``[config_dir, builtin conf/]``."""

    def __init__(self, config_dir: str | Path | None = None) -> None:
        from hydra.core.config_search_path import SearchPathQuery

        builtin = builtin_config_dir()
        search_path = create_config_search_path(f"file://{builtin}")
        if config_dir is not None:
            user = Path(config_dir).resolve()
            if not user.is_dir():
                raise SpecError(f"--config-dir: {str(config_dir)!r} is not a directory")
            safe_yaml.check_config_dir(user)  # before Hydra expands any alias in it
            search_path.prepend(
                "orch-user", f"file://{user}", anchor=SearchPathQuery(provider="main")
            )
        self.config_dir = config_dir
        self._loader = ConfigLoaderImpl(config_search_path=search_path)

    def group_options(self, group: str) -> list[str]:
        """Option names of a config group (e.g. ``optimizer`` -> ``adam, sgd, ...``)."""
        return sorted(self._loader.get_group_options(group, results_filter=ObjectType.CONFIG))

    def is_group(self, key: str) -> bool:
        return self._loader.repository.group_exists(key)

    def studies(self) -> list[str]:
        return self.group_options("study")

    def search_dirs(self) -> list[str]:
        """The folders the search path reads configs from: its ``file://`` entries and the
        packages of its ``pkg://`` ones (Hydra's own, or a plugin's)."""
        dirs = []
        for source in self._loader.repository.sources:
            if source.scheme() == "file":
                dirs.append(source.path)
            elif source.scheme() == "pkg":
                spec = importlib.util.find_spec(source.path)
                dirs += list(spec.submodule_search_locations or []) if spec else []
        return dirs

    def compose(self, study: str, overrides: list[str]) -> DictConfig:
        """The composed config of ``study`` with Hydra ``overrides`` applied."""
        if study not in self.studies():
            raise SpecError(
                f"study: {study!r} is not a known study; known: {', '.join(self.studies())}"
            )
        return self._compose(study, tuple(overrides))

    def _compose(self, study: str, overrides: tuple[str, ...]) -> DictConfig:
        for o in overrides:  # a group choice's interpolation is resolved inside Hydra
            safe_yaml.check_resolvers(o, f"overrides: {o}")
        try:
            cfg = self._loader.load_configuration(
                PRIMARY_CONFIG, overrides=[f"study={study}", *overrides], run_mode=RunMode.RUN
            )
        except (HydraException, OmegaConfBaseException) as e:
            raise SpecError(f"config: {_one_line(e)}") from None
        except yaml.YAMLError as e:  # a malformed YAML file of the user's: bad input too
            raise SpecError(f"config: not valid YAML: {_one_line(e)}") from None
        with open_dict(cfg):
            cfg.pop("hydra", None)
        # Nothing has resolved the user's values yet; every later reader would.
        safe_yaml.check_tree(OmegaConf.to_container(cfg, resolve=False))
        try:  # every reader resolves: a missing or cyclic interpolation is bad input here
            OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            raise SpecError(f"config: {_one_line(e)}") from None
        return cfg

    def __repr__(self) -> str:
        return f"Composer(config_dir={self.config_dir!r})"


def _one_line(e: Exception) -> str:
    """Hydra's and PyYAML's messages span lines (hints, marks); bad input is one line."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


@lru_cache(maxsize=4)
def composer(config_dir: str | None = None) -> Composer:
    """A cached :class:`Composer` (building the search path costs tens of ms)."""
    return Composer(config_dir)
