"""Base class for every validated spec: unknown keys are errors, not silently dropped.

Tasks validate their own configuration with these models so that a typo in a study
(``optimizer.lrr=0.1``) fails before anything runs, naming the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def cost(self) -> float | None:
        """How long a trial of this spec runs, relative to others of its task (epochs, say),
        when the config says; None when it does not. The dispatcher starts the longest first:
        a long trial started last would hold the sweep's end while other slots sit idle."""
        return None
