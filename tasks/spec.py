"""Base class for every validated spec: unknown keys are errors, not silently dropped.

Tasks validate their own configuration with these models so that a typo in a study
(``optimizer.lrr=0.1``) fails before anything runs, naming the field.
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
