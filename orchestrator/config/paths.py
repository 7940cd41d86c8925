"""Where the built-in configs are: importable without Hydra (``orch studies`` may not need it)."""

from __future__ import annotations

from pathlib import Path

PRIMARY_CONFIG = "config"


def builtin_config_dir() -> Path:
    """The built-in ``conf/`` tree (repo checkout or installed package data)."""
    package = Path(__file__).resolve().parent.parent  # orchestrator/
    # A checkout (or an editable install) has conf/ beside the package; a wheel ships it
    # as orchestrator/builtin_conf (pyproject's package-dir).
    for candidate in (package.parent / "conf", package / "builtin_conf"):
        if (candidate / f"{PRIMARY_CONFIG}.yaml").exists():
            return candidate
    raise FileNotFoundError("the built-in conf/ directory is missing from this installation")
