"""Search-space conformance with Hydra's Optuna sweeper: one row per form.

Each row: an override, the distribution the sweeper makes of it (or its failure), what
this service makes of it, and the verdict:

- ``same``: the same Optuna distribution;
- ``differs``: a documented difference, with its reason (chiefly: ``range()`` excludes its
  end here, as in Hydra's grid sweeps and Python, where the sweeper includes it);
- ``rejected``: the sweeper accepts it, this service refuses it with a sentence saying why;
- ``extends``: the sweeper fails on it, this service accepts it;
- ``both-reject``: neither accepts it.

Rows come from the sweeper's own tests (``test_create_optuna_distribution_from_override``,
``test_create_params_from_overrides``), its examples, and the grammar's other forms. The
sweeper column is checked against the sweeper's function itself (copied below:
the plugin is not installed here), run on Hydra's parser and Optuna as installed; ours is
checked both as a study file's ``search.space`` entry and as a command-line sweep.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.config import grammar
from orchestrator.config.space import parse_param
from orchestrator.errors import SpecError


# -- the sweeper's function, verbatim but for list[] (hydra_optuna_sweeper/_impl.py) --------
def create_optuna_distribution_from_override(override: Override) -> Any:
    if not override.is_sweep_override():
        return override.get_value_element_as_str()

    value = override.value()
    choices: list[CategoricalChoiceType] = []
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        for x in override.sweep_iterator(transformer=Transformer.encode):
            assert isinstance(x, (str, int, float, bool, type(None))), (
                f"A choice sweep expects str, int, float, bool, or None type. Got {type(x)}."
            )
            choices.append(x)
        return CategoricalDistribution(choices)

    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        assert value.start is not None
        assert value.stop is not None
        if value.shuffle:
            for x in override.sweep_iterator(transformer=Transformer.encode):
                assert isinstance(x, (str, int, float, bool, type(None))), (
                    f"A choice sweep expects str, int, float, bool, or None type. Got {type(x)}."
                )
                choices.append(x)
            return CategoricalDistribution(choices)
        if (
            isinstance(value.start, float)
            or isinstance(value.stop, float)
            or isinstance(value.step, float)
        ):
            return FloatDistribution(
                float(value.start),
                float(value.stop),
                step=float(value.step) if value.step else None,
            )
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))

    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        assert value.start is not None
        assert value.end is not None
        if "log" in value.tags:
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(int(value.start), int(value.end), log=True)
            return FloatDistribution(value.start, value.end, log=True)
        else:
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(value.start, value.end)
            return FloatDistribution(value.start, value.end)

    raise NotImplementedError(f"{override} is not supported by Optuna sweeper.")


# -- the table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Fails:
    """A failure; ``reason`` is a part of its message."""

    reason: str


@dataclass(frozen=True)
class Fixed:
    """The sweeper passes the override on as a fixed value (not a search dimension)."""

    text: str


C, F, I = CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E741 - the table reads as C/F/I
GROUP = "optimizer"
OPTIONS = ["adam", "sgd", "sgd_momentum"]
END = "range() excludes its end here (Hydra grid sweeps, Python); the sweeper includes it"
JSON = (
    "a list/dict choice is stored as its JSON text (the sweeper: Hydra's text); the "
    "config value is the same"
)

# (id, override, sweeper, ours, verdict, why)
ROWS: list[tuple[str, str, Any, Any, str, str]] = [
    # the sweeper's test_create_optuna_distribution_from_override
    ("choice-ints", "k=choice(1,2)", C([1, 2]), C([1, 2]), "same", ""),
    ("choice-bools", "k=choice(true, false)", C([True, False]), C([True, False]), "same", ""),
    (
        "choice-quoted",
        "k=choice('hello', 'world')",
        C(["hello", "world"]),
        C(["hello", "world"]),
        "same",
        "",
    ),
    ("shuffle-range", "k=shuffle(range(1,3))", C((1, 2)), C((1, 2)), "same", ""),
    ("range-int", "k=range(1,3)", I(1, 3), I(1, 2), "differs", END),
    ("interval", "k=interval(1, 5)", F(1, 5), F(1, 5), "same", ""),
    ("int-interval", "k=int(interval(1, 5))", I(1, 5), I(1, 5), "same", ""),
    (
        "log-interval",
        "k=tag(log, interval(1, 5))",
        F(1, 5, log=True),
        F(1, 5, log=True),
        "same",
        "",
    ),
    (
        "log-int-interval",
        "k=tag(log, int(interval(1, 5)))",
        I(1, 5, log=True),
        I(1, 5, log=True),
        "same",
        "",
    ),
    (
        "range-float-step",
        "k=range(0.5, 5.5, step=1)",
        F(0.5, 5.5, step=1),
        F(0.5, 4.5, step=1),
        "differs",
        END,
    ),
    # the sweeper's test_create_params_from_overrides
    (
        "scalar",
        "k=5",
        Fixed("5"),
        Fails("is a single value, not a distribution"),
        "rejected",
        "search.space holds distributions; a fixed value is set outside it",
    ),
    (
        "delete",
        "~k",
        Fixed("null"),
        Fails("is a single value, not a distribution"),
        "rejected",
        "a deletion is not a distribution",
    ),
    # the sweeper's examples
    (
        "example-range",
        "k=range(-5.5, 5.5, step=0.5)",
        F(-5.5, 5.5, step=0.5),
        F(-5.5, 5.0, step=0.5),
        "differs",
        END,
    ),
    ("example-choice", "k=choice(-5 ,0 ,5)", C([-5, 0, 5]), C([-5, 0, 5]), "same", ""),
    ("example-multi-range", "k=range(0, 5, step=1)", I(0, 5), I(0, 4), "differs", END),
    # other forms of the grammar
    ("simple-choice", "k=a,b,c", C(["a", "b", "c"]), C(["a", "b", "c"]), "same", ""),
    ("simple-choice-ints", "k=1,2,3", C([1, 2, 3]), C([1, 2, 3]), "same", ""),
    ("shuffle-choice", "k=shuffle(a,b,c)", C(["a", "b", "c"]), C(["a", "b", "c"]), "same", ""),
    ("sort-choice", "k=sort(choice(3,1,2))", C([1, 2, 3]), C([1, 2, 3]), "same", ""),
    ("int-and-float", "k=choice(1,1.0)", C([1, 1.0]), C([1, 1.0]), "same", ""),
    ("int-cast-float-interval", "k=int(interval(1.5,5.5))", I(1, 5), I(1, 5), "same", ""),
    ("range-end-off-step", "k=range(0,10,3)", I(0, 9, step=3), I(0, 9, step=3), "same", ""),
    (
        "range-float-default-step",
        "k=range(1.0, 3.14)",
        F(1, 3, step=1),
        F(1, 3, step=1),
        "same",
        "",
    ),
    ("range-no-start", "k=range(5)", I(0, 5), I(0, 4), "differs", END),
    (
        "range-float-quarter",
        "k=range(0,1,0.25)",
        F(0, 1, step=0.25),
        F(0, 0.75, step=0.25),
        "differs",
        END,
    ),
    (
        "range-large",
        "k=range(0,100000000)",
        I(0, 100000000),
        I(0, 99999999),
        "differs",
        END + " (and the range is counted, not expanded)",
    ),
    (
        "range-descending",
        "k=range(10,0,-2)",
        Fails("`low <= high` must hold"),
        I(2, 10, step=2),
        "extends",
        "a descending range has the same values as its ascent",
    ),
    (
        "sort-range-reverse",
        "k=sort(range(1,10),reverse=true)",
        Fails("`low <= high`"),
        I(1, 9),
        "extends",
        "the same values, in either order",
    ),
    (
        "sort-range-off-step",
        "k=sort(range(7,0,-3))",
        I(3, 9, step=3),
        I(1, 7, step=3),
        "differs",
        "hydra-core 1.3.8 sorts it to 3,6,9; Hydra's own tests (and ours) say 1,4,7",
    ),
    (
        "range-single",
        "k=range(1,2)",
        I(1, 2),
        Fails("has a single value 1"),
        "rejected",
        "with the end excluded it holds one value: not a search dimension",
    ),
    (
        "interval-empty",
        "k=interval(1,1)",
        F(1, 1),
        Fails("low 1.0 >= high 1.0"),
        "rejected",
        "a single value is not a search dimension",
    ),
    (
        "log-range",
        "k=tag(log, range(1,10))",
        I(1, 10),
        Fails("tag log with range() is not supported"),
        "rejected",
        "the sweeper drops the tag silently",
    ),
    (
        "unknown-tag",
        "k=tag(foo, interval(1,5))",
        F(1, 5),
        Fails("unknown tag(s) ['foo']"),
        "rejected",
        "the sweeper ignores unknown tags, so a typo of log goes unnoticed",
    ),
    (
        "log-choice",
        "k=tag(log, choice(1,2))",
        C([1, 2]),
        Fails("tag log applies to interval() only"),
        "rejected",
        "the sweeper drops the tag silently",
    ),
    ("bool-and-str", "k=choice(true,'True')", C([True, "True"]), C([True, "True"]), "same", ""),
    (
        "repeated",
        "k=a,a",
        C(["a", "a"]),
        Fails("repeats a choice"),
        "rejected",
        "a repeated choice would be drawn twice as often, which is rarely meant",
    ),
    (
        "list-choices",
        "k=[1,2],[3,4]",
        C(["[1,2]", "[3,4]"]),
        C(["[1, 2]", "[3, 4]"]),
        "differs",
        JSON,
    ),
    (
        "list-choices-quoted",
        "k=['a','b'],['c']",
        C(["['a','b']", "['c']"]),
        C(['["a", "b"]', '["c"]']),
        "differs",
        JSON,
    ),
    (
        "dict-choices",
        "k={a:1},{a:2}",
        C(["{a:1}", "{a:2}"]),
        C(['{"a": 1}', '{"a": 2}']),
        "differs",
        JSON,
    ),
    ("quoted-special", "k=choice('a,b','c d')", C(["a,b", "c d"]), C(["a,b", "c d"]), "same", ""),
    (
        "glob-all",
        "optimizer=glob(*)",
        Fails("AssertionError"),
        C(OPTIONS),
        "extends",
        "glob() selects a config group's options (the sweeper has no config loader for it)",
    ),
    (
        "glob-some",
        "optimizer=glob(sgd*)",
        Fails("AssertionError"),
        C(["sgd", "sgd_momentum"]),
        "extends",
        "as glob-all",
    ),
    (
        "glob-nothing",
        "optimizer=glob(nomatch*)",
        Fails("AssertionError"),
        Fails("matches no option of group 'optimizer'"),
        "both-reject",
        "",
    ),
    (
        "glob-value-key",
        "k=glob(*)",
        Fails("AssertionError"),
        Fails("glob() selects options of a config group and 'k' is not one"),
        "both-reject",
        "",
    ),
    (
        "interval-reversed",
        "k=interval(5,1)",
        Fails("`low <= high`"),
        Fails("low 5.0 >= high 1.0"),
        "both-reject",
        "",
    ),
    (
        "log-zero",
        "k=tag(log, interval(0,1))",
        Fails("`low > 0`"),
        Fails("is not > 0"),
        "both-reject",
        "",
    ),
    (
        "range-zero-step",
        "k=range(0,5,0)",
        Fails("`step > 0`"),
        Fails("the step must not be 0"),
        "both-reject",
        "",
    ),
    (
        "float-overflow",
        "k=interval(0,1e999)",
        F(0, float("inf")),
        Fails("beyond the float range"),
        "rejected",
        "1e999 parses as inf: a typo, not a bound",
    ),
    (
        "empty-choice",
        "k=choice()",
        Fails("empty choice is not legal"),
        Fails("empty choice is not legal"),
        "both-reject",
        "",
    ),
    (
        "list-scalar",
        "k=[a,b]",
        Fixed("[a,b]"),
        Fails("is a single value, not a distribution"),
        "rejected",
        "one list is one value (a choice of lists is [a],[b])",
    ),
    (
        "shuffle-huge",
        "k=shuffle(range(0,200000))",
        "skip",
        Fails("has 200,000 values; allowed: at most 100,000"),
        "rejected",
        "a choice is expanded; its size is capped",
    ),
]


def _sweeper(text: str) -> Any:
    try:
        o = OverridesParser.create().parse_overrides([text])[0]
        if o.is_delete():  # create_params_from_overrides keeps it as a fixed override
            return Fixed("null")
        d = create_optuna_distribution_from_override(o)
    except Exception as e:  # noqa: BLE001 - the sweeper's failure is the expectation
        return Fails(f"{type(e).__name__}: {e}")
    return d if isinstance(d, BaseDistribution) else Fixed(d)


def _ours(text: str, via: str) -> Any:
    key, _, value = text.lstrip("~").partition("=")
    group = key == GROUP
    try:
        if via == "file":
            p = parse_param(key, value, group, OPTIONS if group else None)
        else:
            (o,) = grammar.parse([text])
            p = parse_param(key, None, group, OPTIONS if group else None, override=o)
    except SpecError as e:
        return Fails(str(e))
    return p


def _same(a: Any, b: Any, text: str) -> bool:
    if isinstance(a, Fails) and isinstance(b, Fails):
        return b.reason in a.reason
    if (
        isinstance(a, CategoricalDistribution)
        and isinstance(b, CategoricalDistribution)
        and "shuffle" in text
    ):  # shuffle() randomizes the order (as the sweeper's test)
        return Counter(map(repr, a.choices)) == Counter(map(repr, b.choices))
    if isinstance(a, CategoricalDistribution) and isinstance(b, CategoricalDistribution):
        # Optuna compares choices with ==, where True == 1: compare types too.
        return [(type(x), x) for x in a.choices] == [(type(x), x) for x in b.choices]
    return a == b


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_sweeper_column_is_what_the_sweeper_makes(row: tuple) -> None:
    _, text, sweeper, _, _, _ = row
    if sweeper == "skip":
        pytest.skip("the sweeper would build the whole list; nothing to compare")
    assert _same(_sweeper(text), sweeper, text), _sweeper(text)


@pytest.mark.parametrize("via", ["file", "command-line"])
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_ours_column_from_a_study_file_and_the_command_line(row: tuple, via: str) -> None:
    _, text, _, ours, verdict, why = row
    if via == "file" and text.startswith("~"):
        pytest.skip("a deletion exists only on the command line")
    got = _ours(text, via)
    if isinstance(ours, Fails):
        assert isinstance(got, Fails), got
        assert ours.reason in got.reason
        # A command-line sweep that does not parse is named as an override, like any other.
        fields = (f"search.space.{text.lstrip('~').split('=')[0]}: ",) + (
            ("overrides: ",) if via == "command-line" else ()
        )
        assert got.reason.startswith(fields), got.reason
        assert "\n" not in got.reason
    else:
        assert not isinstance(got, Fails), got.reason
        assert _same(got.distribution, ours, text), got.distribution
    assert verdict in ("same", "differs", "rejected", "extends", "both-reject")
    assert bool(why) == (verdict in ("differs", "rejected", "extends")), "a reason per difference"


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r[4] == "same"], ids=[r[0] for r in ROWS if r[4] == "same"]
)
def test_same_rows_agree_with_the_sweeper(row: tuple) -> None:
    _, text, _, _, _, _ = row
    assert _same(_ours(text, "file").distribution, _sweeper(text), text)


@pytest.mark.parametrize(
    "text, value",
    [("k=['a','b'],['c']", ["a", "b"]), ("k={a:1},{a:2}", {"a": 1}), ("k=[1,2],[3,4]", [1, 2])],
)
def test_list_and_dict_labels_decode_to_the_config_value(text: str, value: Any) -> None:
    p = _ours(text, "file")
    assert p.value(json.dumps(value)) == value
    assert p.value(p.distribution.choices[0]) == value


def test_summary() -> None:
    # Changing a row's verdict is a decision: this count (and the module doc) says so.
    assert len(ROWS) == 51
    assert Counter(r[4] for r in ROWS) == {
        "same": 19,
        "differs": 11,
        "rejected": 11,
        "extends": 4,
        "both-reject": 6,
    }
