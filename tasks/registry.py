"""The registry of runnable tasks.

Only registered tasks can run: a config names a task by its registered name, never by a
Python path, so a study file cannot execute arbitrary code. Users add tasks through the
``orchestrator.tasks`` entry-point group of their own package, or a module named on the
command line (``orch sweep --tasks mypkg.mytasks``) whose import calls :func:`register`.
A task whose module imports torch can be registered by name instead
(:func:`register_lazy`): the driver then validates its specs without importing torch, and
only a worker, on its first trial, imports the run function.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, cast

from tasks.events import Event
from tasks.spec import StrictModel

ENTRY_POINT_GROUP = "orchestrator.tasks"
BUILTIN_MODULES = ("tasks.builtin", "tasks.hpsearch_spec")


#: ``upstream(spec)`` names the run a trial needs first: ``(task name, config)``, or None.
Upstream = Callable[[Any], "tuple[str, dict[str, Any]] | None"]


@dataclass(frozen=True)
class Task:
    """A task: its name, the spec its config must validate against, and the generator.

    A task with ``upstream`` (fine-tuning needs a pre-trained checkpoint) is called as
    ``run(spec, upstream=artifacts)`` with the upstream run's ``Summary.artifacts``; the
    orchestrator runs each distinct upstream once and reuses it across trials and sweeps.
    A ``run`` that accepts ``resume`` (see :func:`accepts`) can continue from the state of a
    :class:`~tasks.events.Checkpoint` it yielded earlier (contract in ``tasks.events``).
    ``target`` is the generator or its ``"module:name"``, imported by :attr:`run`.
    """

    name: str
    spec: type[StrictModel]
    target: Callable[..., Iterator[Event]] | str
    description: str = ""
    upstream: Upstream | None = None

    @property
    def run(self) -> Callable[..., Iterator[Event]]:
        """The generator; a ``"module:name"`` target is imported here, on first use."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        if not callable(fn):
            raise TypeError(f"task {self.name!r}: {self.target} is not callable")
        return cast(Callable[..., Iterator[Event]], fn)


class PluginError(ImportError):
    """A ``--tasks`` module that cannot be found or fails to import (bad input)."""


_TASKS: dict[str, Task] = {}
_loaded = False


def register(
    name: str,
    spec: type[StrictModel],
    description: str = "",
    upstream: Upstream | None = None,
) -> Callable[[Callable[..., Iterator[Event]]], Callable[..., Iterator[Event]]]:
    """Decorator registering ``fn(spec) -> Iterator[Event]`` as task ``name``."""

    def wrap(fn: Callable[..., Iterator[Event]]) -> Callable[..., Iterator[Event]]:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _TASKS[name] = Task(name, spec, fn, doc, upstream)
        return fn

    return wrap


def register_lazy(
    name: str,
    spec: type[StrictModel],
    target: str,
    description: str = "",
    upstream: Upstream | None = None,
) -> None:
    """Register task ``name`` whose generator is ``target`` (``"module:name"``), imported only
    when a trial runs: the spec's module must not import what the run needs (torch)."""
    if ":" not in target:
        raise ValueError(f"task {name!r}: target must be 'module:name', got {target!r}")
    _TASKS[name] = Task(name, spec, target, description, upstream)


def accepts(fn: Callable[..., object], name: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``name`` (``"dist"``, ``"resume"``, ...), so
    a runner passes optional inputs only to tasks written for them."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return name in params and params[name].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def load_plugins(modules: tuple[str, ...] = ()) -> None:
    """Import the built-in task modules, the entry points, and ``modules`` (idempotent).

    A module is a dotted name, imported as ``python -m`` would (the current directory
    first on the path), or a path to a ``.py`` file. Either failing is a
    :class:`PluginError` naming it.
    """
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            obj = ep.load()
            if isinstance(obj, Task):
                _TASKS[obj.name] = obj
        _loaded = True
    for mod in modules:
        _import(mod)


def resolve_module(module: str) -> str:
    """``module`` as a worker elsewhere on this machine can import it: a file path made
    absolute (a worker's directory is not ours); a dotted name unchanged."""
    return os.path.abspath(module) if _is_path(module) else module


def _is_path(module: str) -> bool:
    return module.endswith(".py") or os.sep in module


def _import(module: str) -> None:
    try:
        if _is_path(module):
            path = os.path.abspath(module)
            if not os.path.isfile(path):
                raise PluginError(f"--tasks: {module!r}: no such file")
            name = f"orch_tasks_{os.path.splitext(os.path.basename(path))[0]}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None  # a .py file always has both
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
            return
        # `python -m` puts the current directory first; `orch` (a console script) does not.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        importlib.import_module(module)
    except PluginError:
        raise
    except ModuleNotFoundError as e:
        where = "" if e.name != module.split(".")[0] else f" (not in {os.getcwd()} or on the path)"
        raise PluginError(f"--tasks: {module!r}: no module named {e.name!r}{where}") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises is bad input
        raise PluginError(
            f"--tasks: {module!r} failed to import: {type(e).__name__}: {e}"
        ) from None


def get(name: str) -> Task:
    """The registered task ``name``; KeyError naming the registered ones otherwise."""
    load_plugins()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(
            f"task {name!r} is not registered; registered: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    load_plugins()
    return sorted(_TASKS)
