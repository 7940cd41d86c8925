"""Slots of the dispatcher: one reusable actor, or a gang of k actors for a data-parallel trial.

Choice: an actor gang under the existing asynchronous dispatcher, not Ray Train's
``TorchTrainer``. A ``TorchTrainer.fit()`` builds a fresh worker group per call (actors,
placement group, process group, a train session with its storage/checkpoint machinery) and
reports through Ray Train's own result path, so it would bring back per trial the fixed
costs this service avoids by reusing actors (Ray Tune, built on the same machinery, cost ~3x
actor reuse here). Measured with ``python -m bench.ddp_overhead --workers 2 --trials 3`` on
the shared 2-core dev machine (load average ~15, so absolute numbers are inflated; the
ratio is the point, bench/ddp.md): ``TorchTrainer.fit()`` of a 2-worker loop doing one
all-reduce took 24.6-29.5 s per trial; the same one-all-reduce trial on a booted gang took
4-9 ms, driver to end of stream; booting the gang (two fresh workers importing torch,
process group formed) took 13.4 s, paid once per slot, not per trial.

How a gang works. A :class:`GroupSlot` reserves ``k`` bundles of ``{CPU: cpus, GPU: gpus}``
in one placement group (PACK: on one node when it fits, spread otherwise; STRICT_PACK would
refuse k workers that only fit across nodes), starts one :class:`GroupWorker` per bundle and
forms a ``torch.distributed`` group through a TCP store on rank 0's node at a port the OS
picks (gloo on CPU, NCCL when the workers hold GPUs). The process group lives as long as the
gang and is reused by every trial of that slot: all of them have the same world size, since
the sweep runs trials in phases by world size. Re-forming it per trial (destroy, new TCP
store, ``init_process_group``, first all-reduce, in live workers) was measured at 9-19 ms
for k=2 through Ray and 4-50 ms for k=2..4 in bare processes: small next to a trial, but
reuse costs nothing and keeps one failure mode (a half-formed group) out of the per-trial
path.

Every rank runs the trial's task with a ``dist`` context (``tasks.distributed``); only rank
0's events are streamed to the driver (one MLflow child run, one metric series). After
every event all ranks all-reduce a stop flag, so a prune stops every rank at the same step
(a rank that stopped alone would leave the others blocked in a collective). Cancellation
kills the gang's actors and removes the placement group. A rank that dies fails the trial's
attempt like a dead single worker (retried up to ``sweep.retries``); a rank that raises on
its own while the others wait in a collective is detected by :meth:`GroupSlot.poll` and
fails the trial with that rank's error. After any failed attempt the gang is replaced, since
its process group may be left mid-collective.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.core.results import Failure
from orchestrator.core.specs import Resources
from orchestrator.runtime.worker import GroupWorkerActor

#: How long the other ranks may take to end once rank 0's stream has ended (they run the
#: same final collectives, so normally milliseconds).
SETTLE_S = 30.0
#: How long rank 0 may keep running after another rank ended with an error before the gang
#: is killed (rank 0 usually raises at its next collective by itself).
GRACE_S = 5.0


class ActorSlot:
    """A slot of one :class:`~orchestrator.runtime.worker.TrialWorker` (the single-worker case)."""

    workers = 1
    broken = False

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def info(self) -> Any:
        return self.actor.info.remote()

    def launch(
        self, trial_index: int, task: str, config: dict, upstream: Any, resume: Any = None
    ) -> Any:
        return self.actor.run.options(num_returns="streaming").remote(
            trial_index, task, config, upstream, resume
        )

    def stop(self, trial_index: int) -> None:
        self.actor.stop.remote(trial_index)

    def poll(self) -> tuple[str, Any] | None:
        return None

    def settle(self, failed: bool) -> Exception | None:
        return None

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


class GroupSlot:
    """A slot of ``k`` :class:`GroupWorker` ranks in one placement group and process group.

    Creating one does not wait: the placement group, the actors and the rendezvous are all
    chained on object refs, so gangs boot while the driver sets up tracking.
    """

    def __init__(
        self, resources: Resources, workers: int, task_modules: tuple[str, ...] = ()
    ) -> None:
        self.workers = workers
        self.broken = False
        bundle: dict[str, float] = {"CPU": resources.cpus}
        if resources.gpus:
            bundle["GPU"] = resources.gpus
        if resources.memory_mb:
            bundle["memory"] = resources.memory_mb * 2**20
        self.pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
        threads = max(1, int(resources.cpus))
        self.actors = [
            GroupWorkerActor.options(
                num_cpus=resources.cpus,
                num_gpus=resources.gpus,
                memory=bundle.get("memory"),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=rank
                ),
            ).remote(rank, workers, threads, resources.gpus, task_modules, resources.memory_mb)
            for rank in range(workers)
        ]
        address = self.actors[0].open_store.remote()
        joined = [a.join.remote(address) for a in self.actors]
        self._ready = self.actors[0].node.remote(*joined)
        self._rank_refs: list[Any] = []
        self._rank_error_at: float | None = None

    def info(self) -> Any:
        """Rank 0's node, ready once the whole gang has joined the process group."""
        return self._ready

    def launch(
        self, trial_index: int, task: str, config: dict, upstream: Any, resume: Any = None
    ) -> Any:
        """Start the trial on every rank; ``resume`` (rank 0's checkpoint state, an object
        ref) goes to every rank, which all continue from the same replicated state."""
        self._rank_refs = [
            a.run_rank.remote(trial_index, task, config, upstream, resume) for a in self.actors[1:]
        ]
        self._rank_error_at = None
        return (
            self.actors[0]
            .run.options(num_returns="streaming")
            .remote(trial_index, task, config, upstream, resume)
        )

    def stop(self, trial_index: int) -> None:
        for a in self.actors:
            a.stop.remote(trial_index)

    def poll(self) -> tuple[str, Any] | None:
        """While rank 0 runs: ``("died", error)`` when another rank's process is gone,
        ``("failed", Failure)`` when one raised and rank 0 has not ended within
        :data:`GRACE_S`; None otherwise."""
        if not self._rank_refs:
            return None
        ready, _ = ray.wait(self._rank_refs, num_returns=len(self._rank_refs), timeout=0)
        for ref in ready:
            try:
                result = ray.get(ref)
            except RayActorError as e:
                self.broken = True
                return "died", e
            if isinstance(result, Failure):
                now = time.monotonic()
                self._rank_error_at = self._rank_error_at or now
                if now - self._rank_error_at > GRACE_S:
                    self.broken = True
                    return "failed", result
        return None

    def settle(self, failed: bool) -> Exception | None:
        """Rank 0's stream ended: wait for the other ranks. The error of a rank that died,
        else None; the gang is marked broken after any failure or a rank that did not end."""
        refs, self._rank_refs = self._rank_refs, []
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=SETTLE_S)
        died: Exception | None = None
        for ref in ready:
            try:
                if isinstance(ray.get(ref), Failure):
                    failed = True
            except RayActorError as e:
                died = died or e
        if failed or pending or died is not None:
            self.broken = True
        return died

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)


def new_slot(
    actor_factory: Any, resources: Resources, workers: int, task_modules: tuple[str, ...] = ()
) -> ActorSlot | GroupSlot:
    """A slot for trials of ``workers`` ranks: one actor from ``actor_factory()`` or a gang."""
    if workers == 1:
        return ActorSlot(actor_factory())
    return GroupSlot(resources, workers, task_modules)
