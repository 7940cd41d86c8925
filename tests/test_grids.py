"""Named sub-grids: overlapping grids run a shared trial once but count it in each."""

from __future__ import annotations

from orchestrator.compose import composer
from orchestrator.plan import plan_sweep


def test_overlapping_grids_share_a_trial_with_an_arm_in_each() -> None:
    plan = plan_sweep(composer(None), "lr_schedules", ["sweep.seeds=1"])
    # range: 7 LRs; families: 14 schedules; warmup: 2. The warmup grid's no-warmup arm at
    # lr 1.0 is the range grid's lr 1.0 trial: one run, two arms.
    assert len(plan.trials) == 7 + 14 + 2 - 1
    assert len({t.key for t in plan.trials}) == len(plan.trials)
    shared = [t for t in plan.trials if t.also]
    assert len(shared) == 1
    (t,) = shared
    assert t.arm["grid"] == "range" and t.arm["optimizer.lr"] == 1.0
    assert [a["grid"] for a in t.also] == ["warmup"]
    assert t.also[0]["scheduler.warmup_epochs"] == 0.0
