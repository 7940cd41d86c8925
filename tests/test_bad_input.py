"""Bad input: exit code 2, a message naming the field and what is allowed, nothing written,
and Ray not started. The cases live in ``tests/data/bad_inputs.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.types import RangeSweep

from orchestrator.cli import main
from orchestrator.config import grammar
from orchestrator.errors import SpecError

CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "bad_inputs.yaml").read_text()
)
LOCAL = [c for c in CORPUS if not c.get("needs_cluster")]
CLUSTER = [c for c in CORPUS if c.get("needs_cluster")]


def _run_case(
    case: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run the case through ``orch sweep``; check exit 2, the message, and no store."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default store (mlflow.db, mlruns/) would appear here
    argv = ["sweep", *case["argv"]]
    if case.get("files"):
        conf = tmp_path / "conf"
        for rel, text in case["files"].items():
            (conf / rel).parent.mkdir(parents=True, exist_ok=True)
            (conf / rel).write_text(text)
        argv += ["--config-dir", str(conf)]
    db = tmp_path / "mlflow.db"
    code = main([*argv, "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 2, err
    flat = " ".join(err.split())  # rich wraps long lines
    for needle in case["expect"]:
        assert " ".join(needle.split()) in flat, f"{needle!r} not in: {err}"
    assert not db.exists()
    assert sorted(p.name for p in work.iterdir()) == []


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [c["id"] for c in CORPUS]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert all(c["expect"] for c in CORPUS)


@pytest.mark.parametrize("case", LOCAL, ids=[c["id"] for c in LOCAL])
def test_bad_input_exits_2_before_ray(
    case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import ray

    ray_was_up = ray.is_initialized()  # another test file's session may already run
    _run_case(case, tmp_path, monkeypatch, capsys)
    if not ray_was_up:
        assert not ray.is_initialized(), "Ray was started for bad input"


@pytest.mark.parametrize("case", CLUSTER, ids=[c["id"] for c in CLUSTER])
def test_bad_input_found_against_the_cluster_exits_2(
    ray_session, case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _run_case(case, tmp_path, monkeypatch, capsys)


# -- Hydra's grammar as Hydra's own tests state it ---------------------------------------------
# hydra-core 1.3.8 sorts a range whose stop is off the step wrongly (sort(range(7,0,-3)) is
# 3,6,9); orchestrator.config.grammar registers upstream Hydra's fix. Rows copied from Hydra's
# tests/test_overrides_parser.py: test_range, test_sort (its range rows) and
# test_sort_range_materializes_to_sorted_values.
HYDRA_RANGE = [
    ("range(10,11)", RangeSweep(start=10, stop=11, step=1)),
    ("range (10,11)", RangeSweep(start=10, stop=11, step=1)),
    ("range(1,10,2)", RangeSweep(start=1, stop=10, step=2)),
    ("range(start=1,stop=10,step=2)", RangeSweep(start=1, stop=10, step=2)),
    ("range(1.0, 3.14)", RangeSweep(start=1.0, stop=3.14, step=1)),
    ("range(1.0, 3.14, 0.1)", RangeSweep(start=1.0, stop=3.14, step=0.1)),
    ("range(10)", RangeSweep(start=0, stop=10, step=1)),
    ("range(-10)", RangeSweep(start=0, stop=-10, step=1)),
    ("range(-10, step=-1)", RangeSweep(start=0, stop=-10, step=-1)),
    ("range(5.5)", RangeSweep(start=0, stop=5.5, step=1)),
    ("range(5.5, step=0.5)", RangeSweep(start=0, stop=5.5, step=0.5)),
    ("sort(range(1, 10))", RangeSweep(start=1, stop=10, step=1)),
    ("sort(range(9,0,-1))", RangeSweep(start=1, stop=10, step=1)),
    ("sort(range(1,10),reverse=True)", RangeSweep(start=9, stop=0, step=-1)),
    ("sort(sort(range(1, 10),reverse=true))", RangeSweep(start=1, stop=10, step=1)),
    ("sort(range(0,2,0.5))", RangeSweep(start=0, stop=2, step=0.5)),
    ("sort(range(1.5,-0.5,-0.5))", RangeSweep(start=0.0, stop=1.75, step=0.5)),
    ("sort(range(0,2,0.5),reverse=true)", RangeSweep(start=1.5, stop=-0.25, step=-0.5)),
    ("sort(range(0,5,2),reverse=True)", RangeSweep(start=4, stop=-2, step=-2)),
    ("sort(range(4,-1,-2))", RangeSweep(start=0, stop=6, step=2)),
    ("sort(range(7,0,-3))", RangeSweep(start=1, stop=10, step=3)),
    ("shuffle(range(1, 10))", RangeSweep(start=1, stop=10, step=1, shuffle=True)),
]


@pytest.mark.parametrize("text, expected", HYDRA_RANGE, ids=[t for t, _ in HYDRA_RANGE])
def test_range_and_sort_parse_as_hydras_tests_expect(text: str, expected: RangeSweep) -> None:
    (o,) = grammar.parse([f"x={text}"])
    assert o.value() == expected


@pytest.mark.parametrize(
    "start, stop, step",
    [
        (0, 5, 2),
        (4, -1, -2),
        (7, 0, -3),
        (1, 10, 1),
        (0, 1, 1),
        (0, 0, 1),
        (1, 0, 1),
        (0, 2, 0.5),
        (0, 1.3, 0.5),
        (1.3, 0, -0.5),
        (0, 1, 0.1),
        (0, 1, 0.2),
        (0, 0.3, 0.1),
        (1, 0, -0.1),
    ],
)
def test_sorted_range_has_the_ranges_values_sorted(start: float, stop: float, step: float) -> None:
    (o,) = grammar.parse([f"x=range({start},{stop},{step})"])
    original = list(o.value().range())
    assert grammar.range_bounds(o.value())[0] == len(original)  # counted as iterated
    for reverse in (False, True):
        (s,) = grammar.parse([f"x=sort(range({start},{stop},{step}),reverse={reverse})"])
        assert list(s.value().range()) == pytest.approx(sorted(original, reverse=reverse))


def test_sorted_range_sweeps_the_seeds_hydra_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "sweep",
                "optimizers",
                "--dry-run",
                "optimizer=sgd",
                "model=mlp_d",
                "data=digits",
                "seed=sort(range(7,0,-3))",
            ]
        )
        == 0
    )
    seeds = [line.rsplit("seed=", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert seeds == ["1", "4", "7"]
    assert list(tmp_path.iterdir()) == []


# -- secrets: user configs cannot read the environment ----------------------------------------
SECRET = "s3cr3t-value-7f1c"


def _dump(plan: Any) -> str:
    import json

    return json.dumps([plan.config, *(t.config for t in plan.trials)], default=str)


@pytest.mark.parametrize("where", ["override", "study file", "option file"])
def test_env_resolver_is_refused_and_the_value_never_shown(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("ORCH_TEST_SECRET", SECRET)
    monkeypatch.delenv("ORCH_ALLOW_RESOLVERS", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    (conf / "study").mkdir(parents=True)
    (conf / "optimizer").mkdir()
    argv = ["sweep", "optimizers", "--dry-run", "--config-dir", str(conf)]
    if where == "override":
        argv.append("study.description=${oc.env:ORCH_TEST_SECRET}")
    elif where == "study file":
        (conf / "study" / "leak.yaml").write_text(
            "# @package _global_\nstudy: {name: leak, description: '${oc.env:ORCH_TEST_SECRET}'}\n"
        )
        argv[1] = "leak"
    else:  # a file the study does not even use is refused: it is the user's config dir
        (conf / "optimizer" / "leak.yaml").write_text("lr: ${oc.env:ORCH_TEST_SECRET}\n")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "resolver 'oc.env'" in err and len(err.strip().splitlines()) == 1
    assert SECRET not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_allow_list_admits_one_variable_and_the_plan_holds_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.config.compose import composer
    from orchestrator.config.plan import plan_sweep

    monkeypatch.setenv("ORCH_TEST_SECRET", SECRET)
    monkeypatch.setenv("ORCH_TEST_EPOCHS", "3")
    monkeypatch.setenv("ORCH_ALLOW_RESOLVERS", "oc.env:ORCH_TEST_EPOCHS")
    plan = plan_sweep(
        composer(None),
        "optimizers",
        ["optimizer=sgd", "model=mlp_d", "train.epochs=${oc.env:ORCH_TEST_EPOCHS}"],
    )
    assert {t.config["train"]["epochs"] for t in plan.trials} == {3}
    assert SECRET not in _dump(plan)
    # The allow-list names one variable: another is still refused.
    with pytest.raises(SpecError, match=r"resolver 'oc.env'.*oc.env:ORCH_TEST_SECRET"):
        plan_sweep(
            composer(None),
            "optimizers",
            ["optimizer=sgd", "study.description=${oc.env:ORCH_TEST_SECRET}"],
        )
    monkeypatch.setenv("ORCH_ALLOW_RESOLVERS", "oc.env")  # the operator allows them all
    plan = plan_sweep(
        composer(None),
        "optimizers",
        ["optimizer=sgd", "model=mlp_d", "study.description=${oc.env:ORCH_TEST_SECRET}"],
    )
    assert SECRET in _dump(plan)  # the check above could fail: this is where it would show


def test_builtin_studies_write_no_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.config.compose import composer
    from orchestrator.config.plan import plan_sweep

    monkeypatch.setenv("ORCH_TEST_SECRET", SECRET)
    monkeypatch.setenv("ORCH_ALLOW_RESOLVERS", "oc.env")  # even where an operator allows it
    c = composer(None)
    for study in c.studies():
        assert SECRET not in _dump(plan_sweep(c, study, [], quick=True)), study


def test_config_dir_with_too_many_yaml_files_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from orchestrator.config import safe_yaml

    conf = tmp_path / "conf" / "optimizer"
    conf.mkdir(parents=True)
    for i in range(safe_yaml.MAX_FILES + 1):  # e.g. --config-dir ~ by mistake
        (conf / f"o{i}.yaml").write_text("lr: 0.1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "optimizers", "--dry-run", "--config-dir", str(tmp_path / "conf")]) == 2
    assert "holds more than 1,000 YAML files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
