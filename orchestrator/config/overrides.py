"""Hydra's override grammar, parsed by Hydra's own parser, and sweep overrides expanded."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from orchestrator.config.compose import Composer
from orchestrator.errors import SpecError

_PARSER = OverridesParser.create()


def plain_overrides(parsed: list[Override]) -> list[str]:
    return [o.input_line for o in parsed
            if not o.is_sweep_override() and o.input_line is not None]


def parse_overrides(strings: list[str]) -> list[Override]:
    try:
        return _PARSER.parse_overrides(strings)
    except HydraException as e:
        raise SpecError(f"overrides: {e}") from None


def expand(composer: Composer, o: Override) -> list[Any]:
    o.config_loader = composer.loader  # glob() asks the loader for a group's options
    try:
        return list(o.sweep_iterator())
    except HydraException as e:
        raise SpecError(f"{o.key_or_group}: {e}") from None
