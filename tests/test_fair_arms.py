"""Arms that a claim compares get the same budget (issue 13); each check reads the real
configs and plans, so editing one arm alone fails here, not silently in a verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep

OPT = Path(__file__).resolve().parent.parent / "conf" / "optimizer"


def _opt(name: str) -> dict:
    return yaml.safe_load((OPT / f"{name}.yaml").read_text())


def _effective(cfg: dict) -> float:
    """The step a constant gradient settles to, per unit gradient: lr/(1-m) for heavy-ball
    momentum buffers that sum (torch's SGD and RMSprop), lr for Adam (its average)."""
    return cfg["lr"] / (1 - cfg.get("momentum", 0.0))


@pytest.mark.parametrize(
    "a,b",
    [
        ("sgd_momentum_matched", "sgd"),  # OPT-1
        ("nesterov", "sgd_momentum"),  # OPT-2
        ("rmsprop_momentum", "adam"),
    ],
)  # OPT-5
def test_compared_optimizers_take_the_same_effective_step(a: str, b: str) -> None:
    assert _effective(_opt(a)) == pytest.approx(_effective(_opt(b)))


def test_bn_sync_arms_take_the_same_number_of_optimizer_steps() -> None:
    # k workers at per-worker batch b step once per k*b examples: k x the epochs (BN-2).
    plan = plan_sweep(composer(None), "bn_sync", [], quick=False)
    steps = {}
    for t in plan.trials:
        k, b = t.workers, t.config["train"]["batch_size"]
        steps.setdefault(b, set()).add(t.config["train"]["epochs"] / (k * b))
    assert {b: len(s) for b, s in steps.items()} == {2: 1, 8: 1, 32: 1}
