"""Units of replication: fine-tuning seeds that share a pre-trained model are pooled per
upstream seed and paired on it, instead of counting as independent replicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.verdicts import evaluate

CLAIM = {
    "id": "FT",
    "test": "compare",
    "metric": "test/acc",
    "mode": "max",
    "axis": "strategy",
    "a": "full",
    "b": "scratch",
    "predict": "a_better",
}
AXES = ["strategy", "pretrain.seed", "seed"]


def _table() -> pd.DataFrame:
    """4 pre-training seeds x 3 fine-tuning seeds; the gain of `full` depends on the
    pre-trained model (1, 0, 1, 0), the fine-tuning seed adds little."""
    rng = np.random.default_rng(0)
    gain = [1.0, 0.0, 1.0, 0.0]
    rows = []
    for u in range(4):
        for s in range(3):
            for arm in ("full", "scratch"):
                value = 0.5 + (gain[u] if arm == "full" else 0.0) + rng.normal(0, 0.01)
                rows.append(
                    {
                        "run_id": f"{arm}-{u}-{s}",
                        "outcome": "finished",
                        "strategy": arm,
                        "pretrain.seed": u,
                        "seed": s,
                        "test/acc": value,
                    }
                )
    return pd.DataFrame(rows)


def test_upstream_unit_pools_and_pairs_on_it() -> None:
    (per_seed,) = evaluate([CLAIM], _table(), axes=AXES)
    (per_upstream,) = evaluate([{**CLAIM, "unit": "upstream_seed"}], _table(), axes=AXES)
    # 12 pairs treated as independent: overconfident; 4 upstream units: not enough evidence.
    assert per_seed.verdict == "confirmed" and per_seed.n_a == 12
    assert per_upstream.verdict == "inconclusive" and per_upstream.n_a == 4
    assert per_upstream.method == "paired t"
    assert per_upstream.effect == pytest.approx(per_seed.effect, abs=1e-9)


def test_unit_needs_its_column_and_no_rate_claims() -> None:
    (v,) = evaluate([{**CLAIM, "unit": "subset_seed"}], _table(), axes=AXES)
    assert v.verdict == "inconclusive" and "data.split_seed" in v.detail
    with pytest.raises(SpecError, match="unit"):
        evaluate(
            [
                {
                    "id": "R",
                    "test": "rate",
                    "axis": "strategy",
                    "a": "full",
                    "b": "scratch",
                    "predict": "a_better",
                    "unit": "upstream_seed",
                }
            ],
            _table(),
        )


def test_longest_first_where_configs_say_how_long() -> None:
    """Trials whose specs give a cost start longest first (ties as planned); when any does
    not say, the planned order is kept."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))  # bench/ is not installed (as in test_bench_smoke)
    import bench.tasks  # noqa: F401 - registers the bench's `work` task (cost = seconds x epochs)
    from orchestrator.config.compose import composer
    from orchestrator.config.plan import plan_sweep
    from orchestrator.runtime.dispatch import longest_first

    plan = plan_sweep(composer(str(root / "bench" / "conf")), "bench_uneven", [])
    assert [t.cost for t in plan.trials] == pytest.approx([0.2 * e for e in range(1, 11)])
    assert [t.config["epochs"] for t in longest_first(plan.trials)] == list(range(10, 0, -1))
    a, b, c = (replace(plan.trials[0], index=i, cost=x) for i, x in enumerate((1.0, 2.0, 1.0)))
    assert [t.index for t in longest_first([a, b, c])] == [1, 0, 2]  # ties as planned
    unknown = [replace(t, cost=None) if t.index == 0 else t for t in plan.trials]
    assert longest_first(unknown) == unknown
