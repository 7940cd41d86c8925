"""``orch sweep --task NAME key=a,b``: sweep a registered task with no study file.

Hydra multirun users sweep a task from the command line alone. orch plans from a study,
so one is written for them: study ``NAME`` whose task option is the task's own
``task/NAME.yaml`` when the search path has one, else one holding the spec's defaults.
It is written to a folder named by its content under the user's cache (``orch resume``
composes it again from there), beside the user's ``--config-dir``, whose files it links.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

STUDY_DESCRIPTION = "task {name} swept from the command line (orch sweep --task)"


def cache_root() -> Path:
    """Where generated studies live: ``$XDG_CACHE_HOME/orch/adhoc`` (``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orch" / "adhoc"


def task_study(task: str, config_dir: str | None) -> str:
    """A config dir holding study ``task`` (and the task's option if it has none);
    the user's ``config_dir`` files are linked in, so their options still apply."""
    # Hydra and the task modules only when --task is given (the CLI's start stays light).
    from orchestrator.config.compose import composer
    from tasks import registry

    spec = registry.get(task).spec  # KeyError naming the registered tasks: exit 2
    files: dict[str, str] = {}
    if config_dir is not None:
        user = Path(config_dir).resolve()
        if not user.is_dir():
            raise SpecError(f"--config-dir: {config_dir!r} is not a directory")
        if (user / "study" / f"{task}.yaml").exists():
            raise SpecError(
                f"--task {task}: --config-dir has a study of that name; "
                f"allowed: orch sweep {task} (the study), or another task"
            )
    if task not in composer(config_dir).group_options("task"):
        files[f"task/{task}.yaml"] = _yaml({"task": {"name": task}, **_defaults(spec)})
    files[f"study/{task}.yaml"] = _yaml(
        {
            "defaults": [{"override /task": task}],
            "study": {"name": task, "description": STUDY_DESCRIPTION.format(name=task)},
        }
    )
    key = hashlib.sha256(
        repr((sorted(files.items()), config_dir and str(Path(config_dir).resolve()))).encode()
    )
    root = cache_root() / f"{task}-{key.hexdigest()[:12]}"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if config_dir is not None:
        _link_tree(Path(config_dir).resolve(), root)
    return str(root)


def _defaults(spec: type) -> dict[str, Any]:
    """The spec's default values; none when a field has no default (the user sets it)."""
    try:
        return dict(spec().model_dump(mode="json"))
    except Exception:  # noqa: BLE001 - pydantic's ValidationError: a required field
        return {}


def _link_tree(src: Path, dst: Path) -> None:
    """Symlink every file of ``src`` into ``dst`` (same relative path), keeping ours."""
    for path in src.rglob("*"):
        if path.is_dir():
            continue
        target = dst / path.relative_to(src)
        if target.exists() and not target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.symlink_to(path)


def _yaml(tree: dict[str, Any]) -> str:
    return "# @package _global_\n" + yaml.safe_dump(tree, sort_keys=False)
