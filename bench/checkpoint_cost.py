"""What task-side checkpoints cost a short trial: ``train.checkpoint_every`` 1 vs 0.

Usage::

    python -m bench.checkpoint_cost [--epochs 10] [--repeats 21] [--threads 1]

Runs the ``classify`` task (digits, MLP-d, batch 32) in this process with every epoch
checkpointed and with none, alternating the two so that machine noise hits both alike, and
prints one JSON object: per optimizer, the median wall and CPU (``process_time``: this
process only, so other load on a shared machine distorts it less) time of a whole trial (all
events consumed), the relative overheads, the checkpoint size and the median time from an
epoch's Metrics to its Checkpoint (building the dict and ``torch.save`` into memory). Only
the task side: shipping the bytes to the driver and storing them is the runner's cost.

The numbers in bench/checkpoint.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from tasks.classify import ClassifySpec, run
from tasks.events import Checkpoint, Metrics


def trial(config: dict[str, Any], every: int) -> tuple[float, float, list[float], int]:
    """Wall and CPU seconds of one trial, the Metrics-to-Checkpoint gaps (wall), and the
    last checkpoint's size."""
    spec = ClassifySpec.model_validate({**config, "train": {**config["train"],
                                                            "checkpoint_every": every}})
    gaps: list[float] = []
    size = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    last = t0
    for event in run(spec):
        now = time.perf_counter()
        if isinstance(event, Checkpoint):
            gaps.append(now - last)
            size = len(event.state)
        elif isinstance(event, Metrics):
            last = now
    return time.perf_counter() - t0, time.process_time() - cpu0, gaps, size


def measure(config: dict[str, Any], repeats: int) -> dict[str, Any]:
    trial(config, 1)  # warm-up: dataset cache, allocator, lazy imports
    wall: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    gaps: list[float] = []
    size = 0
    for _ in range(repeats):
        for every in (0, 1):
            w, c, g, s = trial(config, every)
            wall[every].append(w)
            cpu[every].append(c)
            gaps += g
            size = s or size
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in (0, 1)}
    per_checkpoint = statistics.median(gaps)
    return {"wall_s": {"off": med[0][0], "every_epoch": med[1][0]},
            "cpu_s": {"off": med[0][1], "every_epoch": med[1][1]},
            "overhead_wall": med[1][0] / med[0][0] - 1,
            "overhead_cpu": med[1][1] / med[0][1] - 1,
            "checkpoint_ms": 1000 * per_checkpoint,
            # The checkpoints' own time over the trial's: robust where the totals are noisy.
            "overhead_from_checkpoint_ms": len(gaps) / repeats * per_checkpoint / med[0][0],
            "checkpoint_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"epochs": args.epochs, "repeats": args.repeats,
                           "threads": args.threads, "torch": torch.__version__}
    for name, optimizer, scheduler in (("sgd", {"name": "sgd"}, {"name": "constant"}),
                                       ("adam", {"name": "adam"}, {"name": "cosine"})):
        config = {"data": {"name": "digits"}, "model": {"name": "mlp_d"},
                  "optimizer": optimizer, "scheduler": scheduler,
                  "train": {"epochs": args.epochs, "batch_size": 32}}
        out[name] = measure(config, args.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
