"""Hydra's override grammar, parsed by Hydra's own parser, with limits and one fix.

Everything a user types goes through :func:`parse`, which turns every way Hydra's parser
can fail (its own errors, ``ValueError`` for an integer literal past Python's digit limit,
``RecursionError`` for deep nesting) into a one-line :class:`SpecError`, and rejects what
parses but cannot be used: a float literal that overflows to ``inf``, a ``range()`` with a
zero or non-finite step. Sweeps are counted (:func:`sweep_size`) before they are expanded
(:func:`expand`), so a huge ``range()`` is refused in constant time and memory.

The fix: hydra-core 1.3.8's ``sort()`` of a ``range()`` whose stop is not on the step
(``sort(range(7,0,-3))``) gives 3,6,9; Hydra's own tests expect 1,4,7. The parser here
registers a ``sort`` that reverses a range from its real first and last element.

No ``from __future__ import annotations`` here, and ``typing`` unions in the registered
functions: Hydra checks function arguments against their annotations at call time, and
its checker knows ``typing.Union``, not strings or ``X | Y``.
"""

import decimal
import math
import re
import sys
from collections.abc import Callable
from copy import copy
from typing import Any, List, Optional, Union  # noqa: UP035 - see the module doc

from hydra._internal.grammar import grammar_functions
from hydra.core.override_parser.overrides_parser import (
    OverridesParser,
    create_functions,
)
from hydra.core.override_parser.types import (
    ChoiceSweep,
    ElementType,
    Glob,
    IntervalSweep,
    Override,
    QuotedString,
    RangeSweep,
)
from hydra.errors import HydraException

from orchestrator.errors import SpecError

#: Longest override accepted: Hydra's ANTLR parser is linear, but a megabyte of input is a
#: mistake, not a sweep.
MAX_OVERRIDE_CHARS = 10_000
#: Deepest nesting of brackets/parentheses (Hydra's visitor recurses per level).
MAX_NESTING = 32
#: Most values one sweep may expand to (choices, range() elements, glob matches).
MAX_EXPANSION = 100_000

_GRAMMAR_HELP = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def _range(
    start: int | float,
    stop: Optional[Union[int, float]] = None,  # noqa: UP007, UP045
    step: int | float = 1,
) -> RangeSweep:
    # Hydra's FloatRange with step 0 yields None forever; a non-finite bound never ends.
    for name, x in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"range(): {name} {x} is not a finite number")
    if step == 0:
        raise ValueError(
            "range(): the step must not be 0; allowed: a positive step (up) or "
            "a negative one (down)"
        )
    return grammar_functions.range(start, stop, step)


def _sort(
    *args: Union[ElementType, ChoiceSweep, RangeSweep],  # noqa: UP007
    sweep: Optional[Union[ChoiceSweep, RangeSweep]] = None,  # noqa: UP007, UP045
    list: Optional[List[Any]] = None,  # noqa: UP006, UP045 - Hydra's keyword
    reverse: bool = False,
) -> Any:
    target = sweep if sweep is not None else (args[0] if len(args) == 1 else None)
    if isinstance(target, RangeSweep):
        return sorted_range(target, reverse)
    return grammar_functions.sort(*args, sweep=sweep, list=list, reverse=reverse)


def sorted_range(sweep: RangeSweep, reverse: bool) -> RangeSweep:
    """``sweep`` in ascending (or, with ``reverse``, descending) order, tags kept: the same
    elements, from the real last element back to the first (upstream Hydra's fix)."""
    out = copy(sweep)
    n, first, last = range_bounds(sweep)
    if n > 1 and (sweep.step > 0) == reverse:
        if _is_int_range(sweep):
            out.start, out.step = last, -sweep.step
            out.stop = first + out.step
        else:
            step = decimal.Decimal(sweep.step)
            out.start, out.step = last, float(-step)
            out.stop = float(decimal.Decimal(first) - step / 2)
    return out


def create_parser() -> OverridesParser:
    """Hydra's parser with the checked ``range`` and the fixed ``sort``."""
    functions = create_functions()
    for name, func in (("range", _range), ("sort", _sort)):
        del functions.definitions[name], functions.functions[name]
        functions.register(name=name, func=func)
    return OverridesParser(functions=functions)


_PARSER = create_parser()


def _digit_limit() -> int:
    return sys.get_int_max_str_digits() or 4300


def _nesting(text: str) -> int:
    """Bracket depth outside quotes (Hydra's quotes are ' and ", escaped with \\)."""
    depth = deepest = 0
    quote, escaped = "", False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _reason(e: BaseException) -> str:
    """Hydra's parse error on one line, less its link to the docs."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    return " ".join(ln for ln in lines if ln and ln != "^" and not ln.startswith("See https"))


def parse(strings: list[str], field: str = "overrides") -> list[Override]:
    """Parse Hydra overrides; any problem is one :class:`SpecError` line naming ``field``.

    Raises:
        SpecError: Too long, nested too deeply, bad grammar, an integer literal beyond
            Python's digit limit, an overflowing float literal, a bad ``range()``.
    """
    out = []
    for s in strings:
        shown = s if len(s) <= 80 else s[:77] + "..."
        if len(s) > MAX_OVERRIDE_CHARS:
            raise SpecError(
                f"{field}: {shown!r} is {len(s)} characters long; allowed: up to "
                f"{MAX_OVERRIDE_CHARS}"
            )
        if _nesting(s) > MAX_NESTING:
            raise SpecError(
                f"{field}: {shown!r} nests brackets {_nesting(s)} deep; allowed: up "
                f"to {MAX_NESTING}"
            )
        try:
            (o,) = _PARSER.parse_overrides([s])
        except HydraException as e:
            raise SpecError(f"{field}: {_reason(e)} (see {_GRAMMAR_HELP})") from None
        except ValueError as e:  # int(text) past sys.get_int_max_str_digits()
            if "digits" in str(e):
                raise SpecError(
                    f"{field}: {shown!r} has an integer literal longer than "
                    f"{_digit_limit()} digits; allowed: integers of up to "
                    f"{_digit_limit()} digits"
                ) from None
            raise SpecError(f"{field}: {shown!r}: {e}") from None
        except RecursionError:
            raise SpecError(f"{field}: {shown!r} is nested too deeply to parse") from None
        _check_numbers(o, shown, field)
        out.append(o)
    return out


def _check_numbers(o: Override, shown: str, field: str) -> None:
    """A float literal too large for a float parses as ``inf``; only ``inf`` may mean inf."""
    if o.is_delete():
        return
    written_inf = re.search(r"inf", o.input_line or "", re.IGNORECASE) is not None
    for x in _numbers(o.value()):
        if isinstance(x, float) and math.isinf(x) and not written_inf:
            raise SpecError(
                f"{field}: {shown!r} has a number beyond the float range "
                f"(±{sys.float_info.max:.4g}); allowed: finite numbers, or inf "
                f"written as inf"
            )


def _numbers(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _numbers(item)]
    if isinstance(v, dict):
        return [x for item in v.values() for x in _numbers(item)]
    if isinstance(v, ChoiceSweep):
        return _numbers(v.list)
    if isinstance(v, RangeSweep):
        return [v.start, v.stop, v.step]
    if isinstance(v, IntervalSweep):
        return [v.start, v.end]
    return [v]


def _is_int_range(v: RangeSweep) -> bool:
    return all(isinstance(x, int) for x in (v.start, v.stop, v.step))


def range_bounds(v: RangeSweep) -> tuple[int, Any, Any]:
    """``(count, first, last)`` of a ``range()`` sweep, without expanding it; first and
    last are None when it is empty. Counts as Hydra iterates (exact decimal steps)."""
    first, end, inc = v.start, v.stop, v.step
    assert first is not None and end is not None and inc is not None  # as parsed: all set
    if isinstance(first, int) and isinstance(end, int) and isinstance(inc, int):
        n = max(0, -((first - end) // inc)) if inc > 0 else max(0, -((end - first) // -inc))
        return (n, first, first + (n - 1) * inc) if n else (0, None, None)
    start, stop, step = (decimal.Decimal(x) for x in (first, end, inc))
    if step == 0 or (step > 0 and start >= stop) or (step < 0 and start <= stop):
        return 0, None, None
    # Exact: a float has at most ~770 significant digits and a quotient at most ~630
    # (1.8e308 / 5e-324); the default 28 digits would raise DivisionImpossible.
    with decimal.localcontext() as ctx:
        ctx.prec = 2000
        q, r = divmod(abs(stop - start), abs(step))
        n = int(q) + (1 if r else 0)
        return n, float(start), float(start + (n - 1) * step)


def count_text(n: int) -> str:
    """``n`` for a message: Python refuses to print an int of over 4,300 digits, and nobody
    reads 30."""
    return f"{n:,}" if n < 10**30 else f"about 10^{int(n.bit_length() * math.log10(2))}"


def sweep_size(o: Override, group_options: Callable[[], list[str]]) -> int:
    """How many values the sweep override ``o`` expands to (1 for a plain value), counted
    without expanding a range."""
    if not o.is_sweep_override():
        return 1
    v = o.value()
    if isinstance(v, RangeSweep):
        return range_bounds(v)[0]
    if isinstance(v, ChoiceSweep):
        return len(v.list)
    if isinstance(v, Glob):
        return len(v.filter(group_options()))
    return len(v) if isinstance(v, list) else 1


def expand(
    o: Override, is_group: bool, group_options: Callable[[], list[str]], where: str
) -> list[Any]:
    """The values of the sweep ``o`` (choice, range, glob), at most :data:`MAX_EXPANSION`.

    Raises:
        SpecError: A glob on a key that is not a config group, or too many values.
    """
    v = o.value()
    if isinstance(v, Glob):
        if not is_group:
            raise SpecError(
                f"{where}: glob() selects options of a config group and "
                f"{o.key_or_group!r} is not one; allowed: a,b,c or range(...)"
            )
        return v.filter(group_options())
    n = sweep_size(o, group_options)
    if n > MAX_EXPANSION:
        raise SpecError(
            f"{where}: {_text(o)!r} has {count_text(n)} values; allowed: at most {MAX_EXPANSION:,}"
        )
    try:
        return [plain(x) for x in o.sweep_iterator()]
    except (HydraException, ValueError, TypeError) as e:
        raise SpecError(f"{where}: {_text(o)!r}: {_reason(e)}") from None


def plain(x: Any) -> Any:
    """A parsed element as a config value: Hydra leaves quoted strings nested in lists and
    dicts as ``QuotedString`` objects."""
    if isinstance(x, QuotedString):
        return x.text
    if isinstance(x, list):
        return [plain(i) for i in x]
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    return x


def _text(o: Override) -> str:
    """The value part of an override as written (``interval(0, 1)``)."""
    return o.input_line.split("=", 1)[1] if o.input_line else str(o.value())
