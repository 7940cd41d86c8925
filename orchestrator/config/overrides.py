"""Hydra's override grammar, parsed by Hydra's own parser with limits
(:mod:`orchestrator.config.grammar`), and sweep overrides expanded."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.types import Override

from orchestrator.config import grammar, safe_yaml
from orchestrator.config.compose import Composer


def plain_overrides(parsed: list[Override]) -> list[str]:
    return [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line is not None]


def parse_overrides(strings: list[str]) -> list[Override]:
    """Hydra overrides, parsed with limits (:func:`grammar.parse`); no resolver that reads
    outside the config (:mod:`orchestrator.config.safe_yaml`)."""
    for s in strings:
        safe_yaml.check_resolvers(s, f"overrides: {s}")
    return grammar.parse(strings)


def expand(composer: Composer, o: Override) -> list[Any]:
    """A sweep override's values (a group's ``glob()`` against the group's options)."""
    key = o.key_or_group
    return grammar.expand(o, composer.is_group(key), lambda: composer.group_options(key), key)
