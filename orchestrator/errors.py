"""Errors the CLI turns into exit codes.

:class:`SpecError` is bad input: the message names the field, the value and what is
allowed; the CLI prints it and exits 2 before anything is started or written.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or opened (exit 1, not bad input)."""


class SpecError(ValueError):
    """Invalid user input (config, override, study name). Exit code 2."""


def describe_validation_error(err: ValidationError, raw: Any = None, prefix: str = "") -> str:
    """One line per problem: ``field.path: message (got VALUE)``.

    pydantic puts the tag of a discriminated union into the location
    (``optimizer.sgd.lr``); the user knows that field as ``optimizer.lr``, so a location
    part that is the ``name`` of the node it stands in is dropped.
    """
    lines = []
    for e in err.errors(include_url=False):
        parts, node = [], raw
        for part in e["loc"]:
            if isinstance(node, dict) and part not in node and node.get("name") == part:
                continue
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
        field = prefix + ".".join(parts) if parts else prefix.rstrip(".") or "<root>"
        got = e.get("input")
        shown = (
            "" if isinstance(got, (dict, list)) and e["type"] != "missing" else f" (got {got!r})"
        )
        if e["type"] == "missing":
            shown = ""
        lines.append(f"{field}: {e['msg']}{shown}")
    return "\n".join(lines)
