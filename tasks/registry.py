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
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, cast

from tasks.events import Event
from tasks.spec import StrictModel

ENTRY_POINT_GROUP = "orchestrator.tasks"
BUILTIN_MODULES = ("tasks.builtin",)


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


_TASKS: dict[str, Task] = {}
_loaded = False


def register(name: str, spec: type[StrictModel], description: str = "",
             upstream: Upstream | None = None,
             ) -> Callable[[Callable[..., Iterator[Event]]], Callable[..., Iterator[Event]]]:
    """Decorator registering ``fn(spec) -> Iterator[Event]`` as task ``name``."""

    def wrap(fn: Callable[..., Iterator[Event]]) -> Callable[..., Iterator[Event]]:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _TASKS[name] = Task(name, spec, fn, doc, upstream)
        return fn

    return wrap


def register_lazy(name: str, spec: type[StrictModel], target: str, description: str = "",
                  upstream: Upstream | None = None) -> None:
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
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def load_plugins(modules: tuple[str, ...] = ()) -> None:
    """Import the built-in task modules, the entry points, and ``modules`` (idempotent)."""
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
        importlib.import_module(mod)


def get(name: str) -> Task:
    """The registered task ``name``; KeyError naming the registered ones otherwise."""
    load_plugins()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"task {name!r} is not registered; registered: {', '.join(names())}") from None


def names() -> list[str]:
    load_plugins()
    return sorted(_TASKS)
