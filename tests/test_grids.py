"""Named sub-grids: overlapping grids run a shared trial once but count it in each."""

from __future__ import annotations

from orchestrator.config.compose import composer
from orchestrator.config.plan import plan_sweep


def test_overlapping_grids_share_a_trial_with_an_arm_in_each() -> None:
    plan = plan_sweep(composer(None), "lr_schedules", ["sweep.seeds=1"])
    # range: 7 LRs; families: 14 schedules; warmup: 2; each on both datasets (the shared
    # data axis). The warmup grid's no-warmup arm at lr 1.0 is the range grid's lr 1.0
    # trial: one run, two arms, per dataset.
    assert len(plan.trials) == 2 * (7 + 14 + 2 - 1)
    assert len({t.key for t in plan.trials}) == len(plan.trials)
    shared = [t for t in plan.trials if t.also]
    assert sorted(t.arm["data"] for t in shared) == ["digits", "mnist1d"]
    for t in shared:
        assert t.arm["grid"] == "range" and t.arm["optimizer.lr"] == 1.0
        assert [a["grid"] for a in t.also] == ["warmup"]
        assert t.also[0]["scheduler.warmup_epochs"] == 0.0


def test_a_shared_trial_has_a_row_in_each_grid(ray_session, tracking_uri: str) -> None:
    from orchestrator import Client
    from orchestrator.cli import main

    # range keeps lr 1.0 only, on digits; warmup's no-warmup arm is the same config: 2 runs,
    # 3 rows.
    assert (
        main(
            [
                "sweep",
                "lr_schedules",
                "~sweep.grids.families",
                "sweep.grids.range={optimizer.lr: '1.0'}",
                "sweep.seeds=1",
                "train.epochs=1",
                "data=digits",
                "--tracking-uri",
                tracking_uri,
            ]
        )
        == 0
    )
    client = Client(tracking_uri)
    sweep_id = client.sweeps().sweep_id.iloc[0]
    df = client.trials(sweep_id)
    assert df.run_id.nunique() == 2 and len(df) == 3
    assert sorted(df.grid) == ["range", "warmup", "warmup"]
    shared = df[df.run_id.duplicated(keep=False)]
    assert set(shared.grid) == {"range", "warmup"}
    assert (shared[shared.grid == "warmup"]["scheduler.warmup_epochs"] == 0.0).all()
    # The verdicts saw the warmup grid's two arms (LR-6 is not "no trial in arm b").
    lr6 = next(v for v in client.verdicts(sweep_id) if v.id == "LR-6")
    assert "no finished/diverged/failed trial" not in lr6.detail
