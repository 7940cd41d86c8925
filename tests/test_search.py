"""Optuna searches: the space grammar, pruning, a killed driver resumed, the sampler's memory.

Real components throughout: Hydra's parser, Optuna's RDB storage (sqlite files in the test's
folder), Ray (the shared ``ray_session``) and an MLflow sqlite store. The task is
``tests/plugins/quadratic.py``, whose metric is a known function of its parameter ``x``
(best at x = 0.7), so what a sampler or pruner should do is known in advance.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from orchestrator import Client
from orchestrator.cli import EXIT_BAD_INPUT, main
from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep
from orchestrator.config.space import parse_param
from orchestrator.core.specs import SearchClaimSpec, SearchSpec
from orchestrator.errors import SpecError
from orchestrator.search import (
    ATTR_OUTCOME,
    ATTR_RERUN,
    ATTR_RUN,
    OptunaSource,
    RecordedRun,
    analyse,
    open_study,
    resolve_storage,
    search_verdicts,
)
from tasks import registry

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "tests/data/search_conf")
PLUGIN = "tests.plugins.quadratic"
QUAD = ["--config-dir", CONF, "--tasks", PLUGIN]


@pytest.fixture(autouse=True)
def _plugin() -> None:
    registry.load_plugins((PLUGIN,))


def _plan(overrides: list[str], study: str = "quad", config_dir: str | None = CONF):
    return plan_sweep(composer(config_dir), study, overrides)


def _study(uri: str, sweep_id: str) -> optuna.Study:
    db = Path(uri.removeprefix("sqlite:///")).with_name("optuna.db")
    return optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{db}")


# -- the space ------------------------------------------------------------------------------
def test_space_grammar_becomes_optuna_distributions() -> None:
    def dist(text: str, group: bool = False, options: list[str] | None = None):
        return parse_param("k", text, group, options).distribution

    assert dist("interval(1e-4, 1e-1)") == FloatDistribution(1e-4, 1e-1)
    assert dist("tag(log, interval(1e-4, 1e-1))") == FloatDistribution(1e-4, 1e-1, log=True)
    assert dist("int(interval(8, 128))") == IntDistribution(8, 128)
    assert dist("tag(log, int(interval(8, 1024)))") == IntDistribution(8, 1024, log=True)
    # range() excludes its end, as Hydra's grid sweeps (and Python) do.
    assert dist("range(1, 5)") == IntDistribution(1, 4)
    assert dist("range(0, 1, 0.25)") == FloatDistribution(0.0, 0.75, step=0.25)
    assert dist("a,b,c") == CategoricalDistribution(["a", "b", "c"])
    assert dist(
        "sgd_momentum,adam", True, ["adam", "sgd", "sgd_momentum"]
    ) == CategoricalDistribution(["sgd_momentum", "adam"])
    # A choice of lists is stored as JSON text and decoded into the config.
    p = parse_param("model.channels", "[8,16],[16,32]", False)
    assert p.distribution == CategoricalDistribution(["[8, 16]", "[16, 32]"])
    assert p.value("[16, 32]") == [16, 32]


@pytest.mark.parametrize(
    "text, message",
    [
        ("interval(1, 0)", "low 1.0 >= high 0.0; allowed: interval(low, high) with low < high"),
        ("tag(log, interval(0, 1))", "is not > 0; allowed: low > 0"),
        ("choice()", "empty choice is not legal"),
        ("range(5, 1)", "is empty"),
        ("0.5", "is a single value, not a distribution; allowed: interval(lo, hi)"),
        (
            "tag(exp, interval(0, 1))",
            "unknown tag(s) ['exp'] in 'tag(exp, interval(0, 1))'; allowed: log",
        ),
        ("a,a", "repeats a choice"),
    ],
)
def test_bad_space_entries_name_the_key_and_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_param("optimizer.lr", text, False)
    assert str(e.value).startswith("search.space.optimizer.lr: ")
    assert message in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["search.sampler=bogus"],
            "search.sampler: Input should be 'tpe', 'random', 'cmaes', 'grid' or 'nsga2'",
        ),
        (["x=interval(1, 0)"], "search.space.x: 'interval(1, 0)' has low 1.0 >= high 0.0"),
        (
            ["x=choice()"],
            "'x=choice()' ValueError while evaluating 'choice()': empty choice is not legal",
        ),
        (["nope=interval(0, 1)"], "search.space.nope: no such key in the composed config"),
        (["search.pruner=bogus"], "search.pruner.name: Input should be 'none', 'median'"),
        (["search.sampler=grid"], "search.space.x: sampler 'grid' needs a choice or range()"),
        (
            ["search.metrics=[score,final]", "search.directions=[max,min]"],
            "pruner: 'median' cannot prune a multi-objective search (2 metrics); allowed: none",
        ),
        (
            ["+search.conditions.x={nope: 1}"],
            "search.conditions.x.nope: 'nope' is not a parameter of search.space",
        ),
        (
            ["x=interval(0, 2)", "y_weight=-1"],
            "y_weight: Input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_search_input_exits_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["sweep", "quad", *QUAD, "--tracking-uri", uri, "search.pruner=median", *overrides])
    assert code == EXIT_BAD_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Optuna storage


def test_corners_the_task_rejects_fail_at_plan_time() -> None:
    # CNN-d's dropout must stay below 1: the space's high end is caught before any run.
    with pytest.raises(SpecError, match=r"model\.dropout.*less than 1"):
        _plan(["model.dropout=interval(0, 1)"], "hpo", None)


def test_resume_accepts_only_a_new_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", "any-sweep", "optimizer=adam"]) == EXIT_BAD_INPUT
    assert "allowed: search.n_trials=N" in capsys.readouterr().err


def test_storage_beside_sqlite_store_and_explicit_for_a_server(tmp_path: Path) -> None:
    spec = SearchSpec(space={"x": "interval(0, 1)"})
    assert (
        resolve_storage(spec, "sqlite:////data/runs/mlflow.db") == "sqlite:////data/runs/optuna.db"
    )
    with pytest.raises(SpecError, match=r"^search\.storage: .*postgresql://"):
        resolve_storage(spec, "http://mlflow:5000")
    pg = "postgresql://orch@db/optuna"
    assert resolve_storage(spec.model_copy(update={"storage": pg}), "http://mlflow:5000") == pg


def test_conditional_space_composes_group_choices_per_trial() -> None:
    """The hpo study's space: momentum only with SGD+momentum, betas/eps only with Adam,
    and the trial config is the one Hydra composes for the chosen optimizer."""
    plan = _plan([], "hpo", None)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    source = OptunaSource(plan.search, study, n_trials=12)
    seen, trials = set(), []
    for _ in range(12):
        trial = source.next_trial()
        trials.append(trial)
        assert trial is not None
        params, opt = study.trials[trial.index].params, trial.config["optimizer"]
        seen.add(params["optimizer"])
        if params["optimizer"] == "adam":
            assert opt["name"] == "adam" and "optimizer.momentum" not in params
            assert opt["betas"] == [params["optimizer.betas.0"], params["optimizer.betas.1"]]
            assert opt["eps"] == params["optimizer.eps"]
        else:
            assert opt["name"] == "sgd" and "optimizer.betas.0" not in params
            assert opt["momentum"] == params["optimizer.momentum"]
        assert opt["lr"] == params["optimizer.lr"]
        assert trial.config["train"]["batch_size"] == params["train.batch_size"]
        assert trial.config["model"]["name"] == "cnn_d"
        assert 1e-3 <= opt["lr"] <= 1e-2
    assert seen == {"adam", "sgd_momentum"}
    assert source.next_trial() is None  # the budget is spent while all 12 run
    # A killed trial does not use up the budget (resume runs it again); a failed one does.
    source.finish(trials[0], "killed", None)
    assert study.trials[trials[0].index].state == TrialState.FAIL
    assert source.next_trial() is not None and source.settled == 0
    source.finish(trials[1], "failed", None)
    assert source.next_trial() is None and source.settled == 1


# -- after the search -----------------------------------------------------------------------
def _fake_study(plan, objective) -> optuna.Study:
    """A study with 40 complete trials on the quad space (x, y), values from ``objective``."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    dists = {p.key: p.distribution for p in plan.search.space.params}
    for _ in range(40):
        t = study.ask(dists)
        study.tell(t, objective(t.params["x"], t.params["y"]))
    return study


def test_importances_plots_and_hp_verdicts(tmp_path: Path) -> None:
    plan = _plan(["y=interval(0, 1)", "y_weight=0.01"])
    study = _fake_study(plan, lambda x, y: -((x - 0.7) ** 2) - 0.01 * (y - 0.7) ** 2)
    summary = analyse(study, plan.search, tmp_path)
    imp = summary.importances["all"]
    assert list(imp) == ["x", "y"] and imp["x"] > 0.8
    for name in ("history", "importances", "parallel", "slice"):
        assert (tmp_path / summary.figures[name]).stat().st_size > 1000
    claims = [
        SearchClaimSpec(id="order", test="importance", first=["x"], last=["y"]),
        SearchClaimSpec(id="wrong-order", test="importance", first=["y"], last=["x"]),
        SearchClaimSpec(id="inside", test="inside", ranges={"x": (0.5, 0.9)}),
        SearchClaimSpec(id="outside", test="inside", ranges={"x": (0.0, 0.5)}),
        SearchClaimSpec(id="few", test="importance", first=["x"], min_trials=100),
    ]
    got = {
        v.id: v.verdict for v in search_verdicts(claims, study, plan.search, summary.importances)
    }
    assert got == {
        "order": "confirmed",
        "wrong-order": "refuted",
        "inside": "confirmed",
        "outside": "refuted",
        "few": "inconclusive",
    }
    # A best trial pinned against the space's edge says the optimum may lie beyond it.
    rising = _fake_study(plan, lambda x, y: x)
    (edge,) = search_verdicts(
        [SearchClaimSpec(id="edge", test="inside", ranges={"x": (0.0, 1.0)}, margin=0.05)],
        rising,
        plan.search,
        {},
    )
    assert edge.verdict == "refuted" and "pinned against the space's edge 1" in edge.detail


# -- end to end on Ray ----------------------------------------------------------------------
def test_pruned_trial_stops_early_and_is_recorded_pruned(ray_session, tracking_uri: str) -> None:
    steps = 8
    code = main(
        [
            "sweep",
            "quad",
            *QUAD,
            "--tracking-uri",
            tracking_uri,
            "search.sampler=random",
            "search.n_trials=8",
            "search.pruner.name=median",
            "search.pruner.n_startup_trials=2",
            "search.pruner.n_warmup_steps=0",
            f"steps={steps}",
            "step_s=0.15",
        ]
    )
    assert code == 0
    client = Client(tracking_uri)
    sweep_id = client.sweeps().sweep_id.iloc[0]
    df = client.trials(sweep_id)
    study = _study(tracking_uri, sweep_id)
    pruned = df[df.outcome == "pruned"]
    assert len(pruned) >= 1
    for row in pruned.itertuples():
        assert row.status == "KILLED"
        history = client.history(row.run_id, "score")
        assert 1 <= len(history) < steps  # stopped within a step of the pruner's call
        ot = study.trials[int(row.trial_index)]
        assert ot.state == TrialState.PRUNED and ot.user_attrs[ATTR_RUN] == row.run_id
        assert MlflowClient(tracking_uri).get_run(row.run_id).data.tags["orch.optuna_trial"] == str(
            ot.number
        )
    finished = df[df.outcome == "finished"]
    assert len(finished) + len(pruned) == 8
    assert all(len(client.history(r, "score")) == steps for r in finished.run_id)
    # Pruned trials are the worse ones: the best finished trial beats every pruned one.
    assert finished.score.max() > pruned.score.max()
    parent = client.sweep_run(sweep_id)
    assert parent.data.metrics["trials/pruned"] == len(pruned)
    assert parent.data.metrics["importance/x"] == pytest.approx(1.0)


def test_killed_driver_resumes_the_same_study_without_rerunning(
    ray_session, tracking_uri: str
) -> None:
    n = 8
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            "quad",
            *QUAD,
            "--tracking-uri",
            tracking_uri,
            f"search.n_trials={n}",
            "steps=6",
            "step_s=0.4",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(tracking_uri)
    deadline = time.monotonic() + 240
    sweep_id = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            sweeps = client.sweeps()
            if len(sweeps):
                sweep_id = sweeps.sweep_id.iloc[0]
                df = client.trials(sweep_id)
                if (df.outcome == "finished").sum() >= 3 and (df.outcome == "running").any():
                    break
        except Exception:  # noqa: BLE001 - the store is being created
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert sweep_id is not None
    before = _study(tracking_uri, sweep_id).trials
    done_before = {t.number for t in before if t.state == TrialState.COMPLETE}
    running_before = {t.number: t.params for t in before if t.state == TrialState.RUNNING}
    # MLflow had 3 finished runs; a kill between a run's end and Optuna's tell leaves one of
    # them RUNNING in the study (resume tells it from the run: see the test below).
    assert len(done_before) >= 2 and running_before and len(done_before) < n

    assert main(["resume", sweep_id, "--tracking-uri", tracking_uri]) == 0

    trials = _study(tracking_uri, sweep_id).trials
    settled = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(settled) == n
    # The interrupted trials failed, and each was re-run once with its own parameters; one
    # whose run had finished in MLflow is told that result instead, and not run again.
    for number, params in running_before.items():
        if trials[number].state == TrialState.COMPLETE:
            assert not [t for t in trials if t.user_attrs.get(ATTR_RERUN) == number]
            continue
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs[ATTR_OUTCOME] == "interrupted"
        reruns = [t for t in trials if t.user_attrs.get(ATTR_RERUN) == number]
        assert len(reruns) == 1 and reruns[0].params == params
        assert reruns[0].state == TrialState.COMPLETE
    # Nothing that had finished ran again, and no trial number has two settled runs.
    assert not any(t.user_attrs.get(ATTR_RERUN) in done_before for t in trials)
    runs = MlflowClient(tracking_uri).search_runs(
        [client.sweep_run(sweep_id).info.experiment_id],
        f"tags.`orch.sweep_id` = '{sweep_id}' and tags.`orch.kind` = 'trial'",
    )
    numbers = [
        r.data.tags["orch.optuna_trial"]
        for r in runs
        if r.data.tags.get("orch.outcome") in ("finished", "pruned")
    ]
    assert len(numbers) == n == len(set(numbers))
    assert {int(k) for k in numbers} == {t.number for t in settled}
    for t in settled:
        assert MlflowClient(tracking_uri).get_run(t.user_attrs[ATTR_RUN]).data.tags[
            "orch.optuna_trial"
        ] == str(t.number)
    interrupted = [r for r in runs if r.data.tags.get("orch.outcome") == "interrupted"]
    assert len(interrupted) == len(running_before)
    assert len(client.sweeps()) == 1 and client.sweep_run(sweep_id).info.status == "FINISHED"


def test_resume_tells_a_running_trial_the_result_its_run_recorded(tmp_path: Path) -> None:
    """The driver writes a trial's run FINISHED, then tells Optuna: killed in between, the
    trial is RUNNING in the study but done in the store. Resuming tells the study that result
    (and a pruned run's), and enqueues a re-run only for the trial that really was cut off."""
    plan = _plan([], "quad")
    assert plan.search is not None
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study, _ = open_study(plan.search, storage, "s", resume=False)
    asked = [study.ask({"x": FloatDistribution(0, 1)}) for _ in range(3)]
    recorded = {
        asked[0].number: RecordedRun("run-a", "finished", {"score": -0.25, "other": 1.0}),
        asked[1].number: RecordedRun("run-b", "pruned", {}),
        # asked[2]: no settled run, the driver died while it trained
    }
    study, settled = open_study(plan.search, storage, "s", resume=True, recorded=recorded)
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE and trials[0].values == [-0.25]
    assert trials[0].user_attrs[ATTR_RUN] == "run-a"
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs[ATTR_RUN] == "run-b"
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs[ATTR_OUTCOME] == "interrupted"
    reruns = [t for t in trials if ATTR_RERUN in t.user_attrs]
    assert [t.user_attrs[ATTR_RERUN] for t in reruns] == [trials[2].number]
    assert settled == 2


def test_resumed_search_keeps_the_samplers_history(ray_session, tracking_uri: str) -> None:
    """TPE continued on resume (``search.n_trials`` raised) concentrates near the optimum."""
    assert (
        main(
            [
                "sweep",
                "quad",
                *QUAD,
                "--tracking-uri",
                tracking_uri,
                "search.n_trials=8",
                "search.n_startup_trials=6",
                "steps=1",
                "step_s=0.0",
                # One trial at a time: with two, what TPE is asked depends on which trial
                # ends first (constant liar), i.e. on how busy the machine is.
                "sweep.max_concurrent=1",
            ]
        )
        == 0
    )
    sweep_id = Client(tracking_uri).sweeps().sweep_id.iloc[0]
    # The resumed sweep keeps its overrides, max_concurrent included.
    assert main(["resume", sweep_id, "--tracking-uri", tracking_uri, "search.n_trials=24"]) == 0
    trials = sorted(_study(tracking_uri, sweep_id).trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 24
    xs = [t.params["x"] for t in trials]
    assert len(set(xs)) == 24  # the resumed sampler did not replay its seeded start
    near = [abs(x - 0.7) < 0.15 for x in xs[12:]]
    # Uniform sampling puts 30% of trials within 0.15 of 0.7, and half of 12 in 12% of runs;
    # sequential TPE reseeded after 8 trials did so for 200 of 200 seeds (plain Optuna).
    assert sum(near) >= 0.5 * len(near)
    parent = Client(tracking_uri).sweep_run(sweep_id)
    assert parent.data.tags["orch.n_trials"] == "24"
    assert "search.n_trials=24" in parent.data.tags["orch.overrides"]
    assert "sweep.max_concurrent=1" in parent.data.tags["orch.overrides"]
