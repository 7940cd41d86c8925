"""The floor for one slot: the trials in a sequential loop, one process, no tracking.

Usage: ``python bench/plain_loop.py TRIALS_JSON RECORDS_JSON``. Torch gets one thread, the
same as one orch slot (``resources.cpus=1``), so the comparison is per slot.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    from pathlib import Path

    # Run as a script: its folder bench/ (which holds tasks.py) must not shadow the project's
    # `tasks` package, here or in Ray workers (they inherit the driver's sys.path).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import load_trials, record, run_trial, write_records
from tasks.events import Summary


def main(argv: list[str]) -> int:
    trials_path, records_path = argv
    import torch

    import bench.tasks  # noqa: F401 - registers the benchmark tasks

    torch.set_num_threads(1)
    records = []
    for t in load_trials(trials_path):
        summary: dict[str, float] = {}
        for event in run_trial(t["task"], t["config"]):
            if isinstance(event, Summary):
                summary = event.values
        records.append(record(t["index"], summary))
    write_records(records_path, records)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
