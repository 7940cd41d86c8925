"""Task hpsearch (HP-3): its spec refuses bad input naming the field; a staged search fixes
the keys it is not searching at the best-so-far trial's values; a search is deterministic;
the reported test accuracy is the best-by-val trial's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tasks.events import Metrics, Summary
from tasks.hpsearch_spec import HPSearchSpec

SPACE = {
    "optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True},
    "train.batch_size": {"low": 16, "high": 64, "log": True, "int": True},
    "model.hidden": {"choices": [[32], [32, 32], [32, 32, 32]]},
}


def raw(**search: Any) -> dict[str, Any]:
    """A tiny search on digits: 1-epoch trials, budget 4 = stage 1 (lr, batch) 2 + depth 2."""
    return {
        "data": {"name": "digits"},
        "model": {"name": "mlp_d", "hidden": [32, 32]},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "scheduler": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "checkpoint_every": 0, "device": "cpu"},
        "seed": 3,
        "hpsearch": {
            "strategy": "staged",
            "budget": 4,
            "stages": [["optimizer.lr", "train.batch_size"], ["model.hidden"]],
            "stage_trials": [2, 2],
            "n_startup_trials": 1,
            "space": SPACE,
        }
        | search,
    }


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "search,needle",
    [
        ({"stage_trials": [2, 3]}, "hpsearch.stage_trials"),
        ({"stage_trials": [4]}, "hpsearch.stage_trials"),
        ({"stages": [["optimizer.lr", "train.batch_size"], ["model.depth"]]}, "model.depth"),
        (
            {"stages": [["optimizer.lr", "train.batch_size"]], "stage_trials": [4]},
            "model.hidden",  # in the space, in no stage
        ),
        (
            {
                "space": SPACE | {"optimizer.lrr": {"low": 0.1, "high": 1.0}},
                "stages": [["optimizer.lr", "train.batch_size", "optimizer.lrr"], ["model.hidden"]],
                "stage_trials": [2, 2],
            },
            "optimizer.lrr",
        ),
        (
            {"space": SPACE | {"train.batch_size": {"low": 64, "high": 16, "int": True}}},
            "low",
        ),
        ({"space": SPACE | {"model.dropout": {"low": 0.0, "high": 1.5}}}, "model.dropout"),
        ({"space": SPACE | {"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log"),
        ({"space": SPACE | {"model.hidden": {"choices": [[32], [0]]}}}, "model.hidden"),
        ({"strategy": "greedy"}, "strategy"),
        ({"budgte": 4}, "budgte"),
    ],
)
def test_spec_refuses_bad_input_naming_the_field(search: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        HPSearchSpec.model_validate(raw(**search))
    assert needle in str(e.value)


def test_int_range_low_above_high_names_the_key() -> None:
    bad = SPACE | {"train.batch_size": {"low": 64, "high": 16, "int": True}}
    with pytest.raises(ValidationError) as e:
        HPSearchSpec.model_validate(raw(space=bad))
    errors = e.value.errors()
    assert any("train.batch_size" in ".".join(map(str, err["loc"])) for err in errors)


def test_spec_round_trips_through_its_dump() -> None:
    spec = HPSearchSpec.model_validate(raw())
    dumped = spec.model_dump(mode="json")
    assert dumped["hpsearch"]["space"]["train.batch_size"]["int"] is True
    assert HPSearchSpec.model_validate(dumped) == spec
    assert spec.cost() == 4.0


def search(**overrides: Any) -> tuple[list[Metrics], Summary, list[dict[str, Any]]]:
    from tasks.hpsearch import run

    events = list(run(HPSearchSpec.model_validate(raw(**overrides))))
    metrics = [e for e in events if isinstance(e, Metrics)]
    (summary,) = [e for e in events if isinstance(e, Summary)]
    return metrics, summary, json.loads(summary.artifacts["trials.json"])


def test_staged_fixes_the_other_keys_at_the_best_so_far_values() -> None:
    metrics, summary, trials = search()
    assert [t["stage"] for t in trials] == [0, 0, 1, 1]
    stage1, stage2 = trials[:2], trials[2:]
    # Stage 1 searches lr and batch size at the base depth.
    assert all(t["params"]["model.hidden"] == [32, 32] for t in stage1)
    best1 = max(stage1, key=lambda t: t["val"])  # the first of equals, as the search keeps
    best1 = next(t for t in stage1 if t["val"] == best1["val"])
    for t in stage2:
        assert t["params"]["optimizer.lr"] == best1["params"]["optimizer.lr"]
        assert t["params"]["train.batch_size"] == best1["params"]["train.batch_size"]
    assert len({json.dumps(t["params"]["optimizer.lr"]) for t in stage1}) == 2
    assert [m.step for m in metrics] == [0, 1, 2, 3]
    assert set(summary.values) >= {
        "hpsearch/best_val",
        "hpsearch/best_test",
        "hpsearch/curve_test",
        "hpsearch/best_test_at_2",
        "hpsearch/best_test_at_4",
        "hpsearch/best/optimizer.lr",
        "hpsearch/best/train.batch_size",
    }


def test_joint_searches_every_key_from_the_start() -> None:
    _, summary, trials = search(strategy="joint", n_startup_trials=4)
    assert all(t["stage"] == 0 for t in trials)
    assert len({json.dumps(t["params"]["model.hidden"]) for t in trials}) > 1 or len(
        {t["params"]["optimizer.lr"] for t in trials}
    ) == len(trials)
    # Same stage ends as staged, so the two compare at the same n.
    assert "hpsearch/best_test_at_2" in summary.values


@pytest.mark.parametrize("strategy", ["joint", "staged"])
def test_search_is_deterministic(strategy: str) -> None:
    first, summary1, trials1 = search(strategy=strategy)
    second, summary2, trials2 = search(strategy=strategy)
    assert [m.values for m in first] == [m.values for m in second]
    assert summary1.values == summary2.values
    assert trials1 == trials2
    # Replicate k of both strategies trains inner trial i with the same seed.
    assert [t["seed"] for t in trials1] == [3000 + i for i in range(4)]


def test_best_test_is_the_best_by_val_trials_test_accuracy() -> None:
    metrics, summary, trials = search(strategy="joint")
    for i, m in enumerate(metrics):
        seen = trials[: i + 1]
        best = next(t for t in seen if t["val"] == max(s["val"] for s in seen))
        assert m.values["hpsearch/best_val"] == best["val"]
        assert m.values["hpsearch/best_test"] == best["test"]
        assert m.values["hpsearch/val"] == trials[i]["val"]
    curve = [m.values["hpsearch/best_test"] for m in metrics]
    assert summary.values["hpsearch/best_test"] == curve[-1]
    assert summary.values["hpsearch/curve_test"] == pytest.approx(sum(curve) / len(curve))
    assert summary.values["hpsearch/best_test_at_2"] == curve[1]


def test_best_by_val_not_by_test_and_a_diverged_trial_scores_zero() -> None:
    """With a stub training: val and test disagree, and one trial diverges."""
    from tasks.hpsearch import run

    scores = iter([(0.5, 0.9, "finished"), (0.7, 0.2, "finished"), (0.9, 0.9, "diverged")])

    def train(spec: Any) -> Iterator[Any]:
        val, test, outcome = next(scores)
        yield Metrics(0, {"val/acc": val})
        yield Summary({"test/acc": test}, outcome=outcome)

    spec = HPSearchSpec.model_validate(
        raw(strategy="joint", budget=3, stages=[list(SPACE)], stage_trials=[3])
    )
    events = list(run(spec, train=train))
    curve = [e.values["hpsearch/best_test"] for e in events if isinstance(e, Metrics)]
    assert curve == [0.9, 0.2, 0.2]  # trial 1 is better on val; trial 2 diverged (val 0)
    summary = events[-1]
    assert isinstance(summary, Summary)
    assert summary.values["hpsearch/diverged"] == 1.0
    assert summary.values["hpsearch/best_trial"] == 1.0


@pytest.mark.parametrize(
    "entry,kind", [({"low": 0.1}, "range"), ({"choices": [1, 1], "low": 0.0}, "choices")]
)
def test_a_malformed_space_entry_is_judged_as_the_kind_it_names(
    entry: dict[str, Any], kind: str
) -> None:
    # A mapping with `choices` is a choice, any other a range: only that kind's problems.
    with pytest.raises(ValidationError) as e:
        HPSearchSpec.model_validate(raw(space=SPACE | {"optimizer.lr": entry}))
    locs = [".".join(map(str, err["loc"])) for err in e.value.errors()]
    assert locs and all(f"optimizer.lr.{kind}" in loc for loc in locs), locs
