"""Task family ``hpsearch``: one whole small hyperparameter search per trial (HP-3).

The spec (``HPSearchSpec``) and the registration live in ``tasks.hpsearch_spec``, without
torch. Each inner trial is a ``classify`` training run in-process
(``tasks.classify.run``); the search sees its validation accuracy only (``val/acc`` of the
last epoch) and records its test accuracy beside it. The sampler is Optuna's TPE, seeded by
the spec's seed, on in-memory storage: a staged search runs one Optuna study per stage (the
other keys fixed), a joint search one study over every key.

After inner trial ``i`` the task yields ``Metrics(i)`` with the best-so-far validation
accuracy, the test accuracy of the best-so-far trial (chosen by validation, never by test)
and this trial's validation accuracy; then a Summary with the final values, the mean of the
best-so-far test curve (``hpsearch/curve_test``, the area under it over the budget), the
curve's value at the end of every stage (``hpsearch/best_test_at_<n>``) and the best trial's
numeric values; its artifact ``trials.json`` lists every inner trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from tasks import classify
from tasks.builtin import ClassifySpec
from tasks.events import Event, Metrics, Summary
from tasks.hpsearch_spec import ChoiceParam, HPSearchSpec, RangeParam
from tasks.spec import get_dotted

Train = Callable[[ClassifySpec], Iterator[Event]]


@dataclass
class InnerTrial:
    index: int
    stage: int
    params: dict[str, Any]  # every space key: sampled in this stage, or fixed
    seed: int
    val: float  # 0 when the training diverged
    test: float
    outcome: str


def run(spec: HPSearchSpec, train: Train = classify.run) -> Iterator[Event]:
    """Run the search; ``train`` runs one inner trial (a test may pass a stub)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = spec.hpsearch
    base = spec.base()
    trials: list[InnerTrial] = []
    best: InnerTrial | None = None
    curve: list[float] = []  # best-so-far test accuracy after each inner trial
    for stage, (keys, n_trials) in enumerate(settings.plan()):
        # Every key not searched now: the best trial's value, the base config's before any.
        fixed = {
            key: best.params[key] if best is not None else get_dotted(base, key)
            for key in settings.space
            if key not in keys
        }
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed * 1000 + stage,
            n_startup_trials=min(settings.n_startup_trials, n_trials),
        )
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for _ in range(n_trials):
            trial = study.ask()
            params = {key: suggest(trial, key, settings.space[key]) for key in keys}
            i = len(trials)
            seed = spec.seed * 1000 + i  # replicate k of both strategies: same seeds
            val, test, outcome = evaluate(train, spec.inner(params | fixed, seed))
            study.tell(trial, val)
            inner = InnerTrial(i, stage, params | fixed, seed, val, test, outcome)
            trials.append(inner)
            if best is None or inner.val > best.val:
                best = inner
            curve.append(best.test)
            yield Metrics(
                i,
                {
                    "hpsearch/best_val": best.val,
                    "hpsearch/best_test": best.test,
                    "hpsearch/val": val,
                },
            )
    assert best is not None  # budget >= 1
    values = {
        "hpsearch/best_val": best.val,
        "hpsearch/best_test": best.test,
        "hpsearch/curve_test": sum(curve) / len(curve),
        "hpsearch/best_trial": float(best.index),
        "hpsearch/diverged": float(sum(t.outcome != "finished" for t in trials)),
    }
    for n in settings.stage_ends():
        values[f"hpsearch/best_test_at_{n}"] = curve[n - 1]
    for key, value in best.params.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[f"hpsearch/best/{key}"] = float(value)
    log = json.dumps([asdict(t) for t in trials], indent=1).encode()
    yield Summary(values, artifacts={"trials.json": log})


def suggest(trial: optuna.Trial, key: str, param: RangeParam | ChoiceParam) -> Any:
    """Sample ``key``'s value; a choice goes to Optuna as its JSON text."""
    if isinstance(param, ChoiceParam):
        label = trial.suggest_categorical(key, param.labels())
        return param.choices[param.labels().index(label)]
    if param.is_int:
        return trial.suggest_int(key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(key, param.low, param.high, log=param.log)


def evaluate(train: Train, spec: ClassifySpec) -> tuple[float, float, str]:
    """Train one inner trial: (last epoch's val/acc, test/acc, outcome); a diverged trial
    scores 0 on both (it has no final model)."""
    val = 0.0
    for event in train(spec):
        if isinstance(event, Metrics):
            val = event.values["val/acc"]
        elif isinstance(event, Summary):
            if event.outcome != "finished":
                return 0.0, 0.0, event.outcome
            return val, event.values["test/acc"], event.outcome
    raise RuntimeError("the inner trial ended without a Summary")
