"""Base class for every validated spec: unknown keys are errors, not silently dropped.

Tasks validate their own configuration with these models so that a typo in a study
(``optimizer.lrr=0.1``) fails before anything runs, naming the field. A config is set and
read by dotted path (``optimizer.betas.0``) with :func:`set_dotted` and :func:`get_dotted`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def cost(self) -> float | None:
        """How long a trial of this spec runs, relative to others of its task (epochs, say),
        when the config says; None when it does not. The dispatcher starts the longest first:
        a long trial started last would hold the sweep's end while other slots sit idle."""
        return None


class KeyedSpec(StrictModel):
    """A spec that gained fields after trials of it were recorded.

    A trial's key hashes its dumped spec, so a new field in the dump would change the key of
    every run recorded before it (finished runs would be trained again, shared upstreams not
    found). The fields in ``added_fields`` are left out of the dump while at their defaults;
    :meth:`unkeyed_fields` may widen that (a field that means nothing without another).
    """

    added_fields: ClassVar[tuple[str, ...]] = ()

    def unkeyed_fields(self) -> tuple[str, ...]:
        """The fields to leave out of this spec's dump."""
        fields = type(self).model_fields
        return tuple(n for n in self.added_fields if getattr(self, n) == fields[n].default)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        d = handler(self)
        for name in self.unkeyed_fields():
            d.pop(name, None)
        return d


def set_dotted(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``config``'s value at ``path`` (``optimizer.lr``; a number indexes a list),
    making the dicts on the way; the spec then rejects a path it does not have."""
    *parents, last = path.split(".")
    node: Any = config
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def get_dotted(config: dict[str, Any], path: str) -> Any:
    """``config``'s value at ``path`` (a number indexes a list)."""
    node: Any = config
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node
