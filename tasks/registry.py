"""The registry of runnable tasks.

Only registered tasks can run: a config names a task by its registered name, never by a
Python path, so a study file cannot execute arbitrary code. Users add tasks through the
``orchestrator.tasks`` entry-point group of their own package, or a module named on the
command line (``orch sweep --tasks mypkg.mytasks``) whose import calls :func:`register`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from tasks.events import Event
from tasks.spec import StrictModel

ENTRY_POINT_GROUP = "orchestrator.tasks"
BUILTIN_MODULES = ("tasks.classify", "tasks.finetune")


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
    """

    name: str
    spec: type[StrictModel]
    run: Callable[..., Iterator[Event]]
    description: str = ""
    upstream: Upstream | None = None


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
