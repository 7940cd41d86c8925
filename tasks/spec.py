"""Base class for every validated spec: unknown keys are errors, not silently dropped.

Tasks validate their own configuration with these models so that a typo in a study
(``optimizer.lrr=0.1``) fails before anything runs, naming the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
