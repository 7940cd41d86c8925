"""What the runner scripts share: the trial list they read and the records they write.

The harness plans a scenario once with orch's own planner and writes the resolved trials
to ``trials.json``; the plain loop and Ray Tune read that file, Hydra recomposes the same
configs from the same overrides, and orch plans them itself. Each runner leaves one record
per trial (the trial's own Summary span) in ``records.json`` or the tracking store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_trials(path: str | Path) -> list[dict[str, Any]]:
    """``[{"index", "task", "config"}, ...]`` as written by the harness."""
    return json.loads(Path(path).read_text())["trials"]


def record(index: int, values: dict[str, float]) -> dict[str, Any]:
    """One trial's record from its Summary values (bench tasks report their own span)."""
    return {"index": index, "start": values.get("time/start"), "end": values.get("time/end")}


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    Path(path).write_text(json.dumps({"records": records}))


def run_trial(task_name: str, config: dict[str, Any]) -> Iterator[Any]:
    """The trial's events, through the same registry and spec validation orch's worker uses."""
    from tasks import registry

    task = registry.get(task_name)
    spec = task.spec.model_validate(config)
    yield from task.run(spec)
