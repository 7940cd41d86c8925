"""Fixed cost of a data-parallel trial: Ray Train's TorchTrainer vs a reused actor gang.

Usage::

    python -m bench.ddp_overhead [--workers 2] [--trials 5] [--no-trainer]

Prints one JSON object (seconds):

* ``trainer_fit_s``: wall time of each ``TorchTrainer.fit()`` whose train loop does one
  all-reduce and returns: what Ray Train adds per trial (worker group, placement group,
  process group, session), the first including worker start-up;
* ``gang_boot_s``: a :class:`orchestrator.runtime.group.GroupSlot` from nothing to a formed process
  group (paid once per slot);
* ``gang_trial_s``: each empty trial (same one all-reduce) on that booted gang, driver to
  end of stream (paid per trial);
* ``pg_reinit_s``: tearing down and re-forming the process group inside the booted
  workers (what re-initialising per trial would add).

The numbers in bench/ddp.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import ray

from tasks.events import Event, Summary
from tasks.registry import register
from tasks.spec import StrictModel


class EmptySpec(StrictModel):
    seed: int = 0


@register("ddp_empty", EmptySpec)
def empty(spec: EmptySpec, dist: object = None) -> Iterator[Event]:
    """One all-reduce over the gang, then a summary: the smallest data-parallel trial."""
    import torch
    import torch.distributed as torch_dist

    t = torch.ones(1)
    if dist is not None:
        torch_dist.all_reduce(t)
    yield Summary({"sum": float(t.item())})


def _trainer_loop(config: dict) -> None:
    import torch
    import torch.distributed as torch_dist

    t = torch.ones(1)
    torch_dist.all_reduce(t)


def trainer_fit(workers: int, trials: int, storage: str) -> list[float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    times = []
    for i in range(trials):
        t0 = time.perf_counter()
        TorchTrainer(
            _trainer_loop,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 0.5}
            ),
            run_config=RunConfig(name=f"overhead-{i}", storage_path=storage),
        ).fit()
        times.append(time.perf_counter() - t0)
    return times


def gang(workers: int, trials: int) -> dict[str, list[float]]:
    from orchestrator.core.specs import Resources
    from orchestrator.runtime.slots import GroupSlot

    t0 = time.perf_counter()
    slot = GroupSlot(Resources(cpus=0.5, workers=workers), workers, ("bench.ddp_overhead",))
    ray.get(slot.info())
    boot = time.perf_counter() - t0
    per_trial = []
    for i in range(trials):
        t0 = time.perf_counter()
        for ref in slot.launch(i, "ddp_empty", {"seed": i}, None):
            ray.get(ref)
        assert slot.settle(False) is None
        per_trial.append(time.perf_counter() - t0)
    slot.kill()
    return {"gang_boot_s": [boot], "gang_trial_s": per_trial}


@ray.remote(num_cpus=0.5)
class _PG:
    """A bare process-group member, to time re-forming the group in live processes."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.store = None

    def open(self) -> tuple[str, int]:
        from tasks import distributed

        self.store, port = distributed.open_store("127.0.0.1")
        return "127.0.0.1", port

    def form(self, address: tuple[str, int]) -> float:
        import torch
        import torch.distributed as torch_dist

        from tasks import distributed

        t0 = time.perf_counter()
        distributed.join(address[0], address[1], self.rank, self.world, "gloo", store=self.store)
        torch_dist.all_reduce(torch.ones(1))
        return time.perf_counter() - t0

    def leave(self) -> None:
        from tasks import distributed

        distributed.leave()
        self.store = None


def pg_reinit(workers: int, trials: int) -> list[float]:
    actors = [_PG.remote(r, workers) for r in range(workers)]
    times = []
    for _ in range(trials + 1):
        t0 = time.perf_counter()
        address = actors[0].open.remote()
        ray.get([a.form.remote(address) for a in actors])
        times.append(time.perf_counter() - t0)
        ray.get([a.leave.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    return times[1:]  # the first includes the actors' start-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--no-trainer", action="store_true", help="skip the TorchTrainer part")
    p.add_argument("--storage", default="/tmp/orch-bench-train")
    args = p.parse_args()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    out: dict[str, object] = {"workers": args.workers}
    out.update(gang(args.workers, args.trials))
    out["pg_reinit_s"] = pg_reinit(args.workers, args.trials)
    if not args.no_trainer:
        out["trainer_fit_s"] = trainer_fit(args.workers, args.trials, args.storage)
    print(
        json.dumps(
            {k: [round(x, 4) for x in v] if isinstance(v, list) else v for k, v in out.items()}
        )
    )


if __name__ == "__main__":
    main()
