"""The benchmark harness runs end to end on its tiniest scenario and writes a well-formed table.

Only the shape is checked: timings on a shared CI machine mean nothing, so no assertion here
looks at a number's size. The tiny scenario runs the plain loop and orch (the real CLI), which
need only the runtime dependencies; Ray Tune and Hydra multirun (the ``bench`` extra) are
left to ``make bench``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ is not an installed package: import it from the checkout (as `python -m bench` does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness


@pytest.mark.slow
def test_tiny_scenario_writes_table(tmp_path: Path) -> None:
    assert (
        harness.main(
            [
                "--scenario",
                "tiny",
                "--repeats",
                "1",
                "--runners",
                "orch",
                "plain",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )

    result = json.loads((tmp_path / "bench.json").read_text())
    assert {"date", "machine", "command", "rows", "checks", "figures", "skipped"} <= set(result)
    assert result["machine"]["cpus"] >= 1
    walls = {r["runner"]: r for r in result["rows"] if r["metric"] == "wall"}
    assert set(walls) == {"orch", "plain"}
    for row in walls.values():
        assert row["scenario"] == "tiny" and row["case"] == "2 trials" and row["unit"] == "s"
        assert len(row["values"]) == 1 and row["median"] is not None and row["median"] > 0
    assert walls["orch"]["vs_orch"] == pytest.approx(1.0)
    assert walls["plain"]["vs_orch"] > 0
    assert not [r for r in result["rows"] if r["metric"] == "failed_runs"]

    md = (tmp_path / "bench.md").read_text()
    assert "| scenario | case | runner | metric | median | unit | runs | vs orch |" in md
    assert "| tiny | 2 trials | plain | wall |" in md


def test_slot_metrics() -> None:
    """Busy fraction and the order bound on hand-made spans (no runs)."""
    # Two slots: [0,1] and [0,2] then [1,2]: every slot busy the whole span.
    full = [
        {"index": 0, "start": 0.0, "end": 1.0},
        {"index": 1, "start": 0.0, "end": 2.0},
        {"index": 2, "start": 1.0, "end": 2.0},
    ]
    assert harness.busy_fraction(full, 2) == pytest.approx(1.0)
    assert harness.order_bound(full, 2) == pytest.approx(1.0)
    # A 0.5 s gap before the last trial: busy 4 s of 2 x 2.5 s; a gapless dispatcher gets 1.0.
    gap = [*full[:2], {"index": 2, "start": 1.5, "end": 2.5}]
    assert harness.busy_fraction(gap, 2) == pytest.approx(4 / 5)
    assert harness.order_bound(gap, 2) == pytest.approx(1.0)
