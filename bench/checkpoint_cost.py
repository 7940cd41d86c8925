"""What task-side checkpoints cost a short trial: none, every epoch, and the default.

Usage::

    python -m bench.checkpoint_cost [--epochs 10] [--repeats 21] [--threads 1]

Runs the ``classify`` task (digits, MLP-d, batch 32) in this process in three modes:
``off`` (``checkpoint_every=0``), ``every_epoch`` (``checkpoint_every=1`` with no minimum
interval) and ``default`` (the TrainSpec defaults), taking turns so that machine noise hits
all alike. Prints one JSON object: per optimizer and mode, the median wall and CPU
(``process_time``: this process only, so other load on a shared machine distorts it less)
time of a whole trial (all events consumed) and the overhead against ``off``; the checkpoint
size; the checkpoints per trial; the median wall time from an epoch's Metrics to its
Checkpoint (building the dict and ``torch.save`` into memory); and the CPU time each
checkpoint adds (the CPU overhead over the checkpoints). Then, for scale, ``large``: the
seconds one checkpoint dict of a ``--large-params`` model with its Adam state takes to
``torch.save`` into memory (what a long trial pays per checkpoint). Only the task side:
shipping the bytes to the driver and storing them is the runner's cost.

The numbers in bench/checkpoint.md come from this script.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from typing import Any

import torch

from tasks.classify import ClassifySpec, run
from tasks.events import Checkpoint, Metrics

#: train.* overrides per mode; ``default`` sets nothing.
MODES: dict[str, dict[str, Any]] = {
    "off": {"checkpoint_every": 0},
    "every_epoch": {"checkpoint_every": 1, "checkpoint_min_interval_s": 0},
    "default": {},
}


def trial(config: dict[str, Any], mode: str) -> tuple[float, float, list[float], int]:
    """Wall and CPU seconds of one trial, the Metrics-to-Checkpoint gaps (wall), and the
    last checkpoint's size."""
    spec = ClassifySpec.model_validate({**config, "train": {**config["train"], **MODES[mode]}})
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
    trial(config, "every_epoch")  # warm-up: dataset cache, allocator, lazy imports
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    gaps: dict[str, list[float]] = {m: [] for m in MODES}
    size = 0
    for _ in range(repeats):
        for mode in MODES:
            w, c, g, s = trial(config, mode)
            wall[mode].append(w)
            cpu[mode].append(c)
            gaps[mode] += g
            size = s or size
    off_wall, off_cpu = statistics.median(wall["off"]), statistics.median(cpu["off"])
    out: dict[str, Any] = {"checkpoint_bytes": size}
    for mode in MODES:
        w, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        n = len(gaps[mode]) / repeats
        out[mode] = {
            "wall_s": w,
            "cpu_s": c,
            "overhead_wall": w / off_wall - 1,
            "overhead_cpu": c / off_cpu - 1,
            "checkpoints_per_trial": n,
            "checkpoint_ms": 1000 * statistics.median(gaps[mode]) if n else None,
            "checkpoint_cpu_ms": 1000 * (c - off_cpu) / n if n else None,
        }
    return out


def large_checkpoint_s(params: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds to serialise a ``params``-parameter model plus its Adam state."""
    width = 2048
    model = torch.nn.Sequential(
        *[torch.nn.Linear(width, width) for _ in range(max(1, params // (width * width)))]
    )
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()  # creates the moment buffers
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf = io.BytesIO()  # as tasks.training does
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
        times.append(time.perf_counter() - t0)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": buf.tell(),
        "seconds": statistics.median(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--large-params", type=int, default=25_000_000)  # ~ResNet-50
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    for name, optimizer, scheduler in (
        ("sgd", {"name": "sgd"}, {"name": "constant"}),
        ("adam", {"name": "adam"}, {"name": "cosine"}),
    ):
        config = {
            "data": {"name": "digits"},
            "model": {"name": "mlp_d"},
            "optimizer": optimizer,
            "scheduler": scheduler,
            "train": {"epochs": args.epochs, "batch_size": 32},
        }
        out[name] = measure(config, args.repeats)
    out["large"] = large_checkpoint_s(args.large_params)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
