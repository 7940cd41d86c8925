"""A sweep's trial checkpoints in the store: save, prune, find the latest, copy history.

Where the state flows. A task yields ``Checkpoint(K, state)`` right after ``Metrics(K)``;
the worker streams it to the driver like any event; the :class:`~orchestrator.sweep.recorder.
Recorder` hands it to :meth:`TrialCheckpoints.save`, which stores it as an artifact of the
attempt's run and keeps its bytes in memory. When the dispatcher launches an attempt it asks
:meth:`TrialCheckpoints.resume_state`: after a lost worker that is the bytes in memory;
after ``orch resume`` (the driver died) it is the one :meth:`find_interrupted` located in
the store, read then. Every rank of a data-parallel attempt gets the same bytes.

Atomicity. A checkpoint is recorded in three writes, in this order: the run's buffered
metrics (steps <= K, which a resume copies), the artifact ``checkpoints/step-K.pt``, then
the run tag ``orch.checkpoint_step=K``, the pointer. Only the pointer's artifact is ever
read, so a driver killed mid-write leaves the previous checkpoint in use and a partial
newer artifact ignored. Older artifacts beyond ``sweep.checkpoints_keep`` are deleted
after the pointer moved.

History. The resumed attempt's run gets the earlier run's metric history for steps <= K
(one batched write, original steps and timestamps), and the task reports K+1 onwards, so
each step is in the run once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from orchestrator.store import schema, writer
from orchestrator.store.reader import StoreReader
from tasks.events import Checkpoint

log = logging.getLogger(__name__)

#: Metrics a worker samples on its own clock (``sysmetrics``): their steps are sample
#: numbers, not the task's, so a resumed run does not inherit them.
SYSTEM_PREFIX = "system/"


@dataclass(frozen=True)
class Resume:
    """Where an attempt resumes from: the run holding the checkpoint, and the checkpoint."""

    run_id: str
    checkpoint: Checkpoint


class TrialCheckpoints:
    """The latest usable checkpoint of each trial of a sweep, by trial key.

    Args:
        tracker: The sweep's writer (the driver is the only writer).
        keep: How many of an attempt's latest checkpoints stay in its run.
    """

    def __init__(self, tracker: writer.Tracker, keep: int) -> None:
        self.tracker, self.keep = tracker, keep
        self._latest: dict[str, Resume] = {}
        #: Found in the store by :meth:`find_interrupted`; bytes read when the trial starts.
        self._stored: dict[str, tuple[str, int]] = {}
        #: Why a trial's next attempt starts over (its checkpoint was unusable).
        self._restart: dict[str, str] = {}
        self._repos: dict[str, Any] = {}

    # -- writing --------------------------------------------------------------------------
    def save(self, key: str, run_id: str, ckpt: Checkpoint) -> bool:
        """Store ``ckpt`` for the trial ``key`` in ``run_id`` and point the run at it; False
        (the previous checkpoint stays the latest) when the store did not take every write."""
        if not ckpt.state:  # ranks > 0 carry no state
            return False
        # The run's metrics up to step K first: a resume copies them from the store.
        if not self.tracker.flush():
            return False
        try:
            with self._http():
                repo = self._repo(run_id)
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / schema.checkpoint_name(ckpt.step)
                    path.write_bytes(ckpt.state)
                    repo.log_artifact(str(path), schema.CHECKPOINTS_FOLDER)
                self.tracker.client.set_tag(run_id, schema.TAG_CHECKPOINT_STEP, str(ckpt.step))
        except Exception as e:  # noqa: BLE001 - a lost checkpoint costs work, not the sweep
            log.warning("checkpoint at step %d of run %s not stored: %s", ckpt.step, run_id, e)
            return False
        self._latest[key] = Resume(run_id, ckpt)
        self._stored.pop(key, None)
        self._restart.pop(key, None)
        self._prune(run_id, ckpt.step)
        return True

    def _prune(self, run_id: str, step: int) -> None:
        """Delete the run's checkpoints older than its latest ``keep`` (up to ``step``)."""
        try:
            with self._http():
                repo = self._repo(run_id)
                steps = sorted(
                    s
                    for f in repo.list_artifacts(schema.CHECKPOINTS_FOLDER)
                    if (s := schema.checkpoint_step(Path(f.path).name)) is not None and s <= step
                )
                for old in steps[: -self.keep]:
                    repo.delete_artifacts(schema.checkpoint_path(old))
        except Exception as e:  # noqa: BLE001 - old checkpoints only cost space
            log.warning("old checkpoints of run %s not deleted: %s", run_id, e)

    def copy_history(self, source_run: str, run_id: str, step: int) -> None:
        """Copy ``source_run``'s metric history up to ``step`` into ``run_id`` (one batch)."""
        client = self.tracker.client
        for name in client.get_run(source_run).data.metrics:
            if name.startswith(SYSTEM_PREFIX):
                continue
            for m in client.get_metric_history(source_run, name):
                if m.step <= step:
                    self.tracker.log_metrics(run_id, {name: m.value}, m.step, m.timestamp)
        self.tracker.flush()

    # -- reading --------------------------------------------------------------------------
    def find_interrupted(
        self, reader: StoreReader, experiment_id: str, sweep_id: str, keys: set[str]
    ) -> None:
        """For ``orch resume``: the latest checkpoint of each trial in ``keys`` among the
        sweep's earlier attempts, newest attempt first, not looking past an attempt that
        started over because its checkpoint was unusable."""
        attempts: dict[str, list[Any]] = {}
        for run in reader.sweep_runs(experiment_id, sweep_id):
            key = run.data.tags.get(schema.TAG_KEY)
            if key in keys:
                attempts.setdefault(key, []).append(run)
        for key, runs in attempts.items():
            for run in reversed(runs):  # oldest first from the reader
                tags = run.data.tags
                if schema.TAG_CHECKPOINT_STEP in tags:
                    self._stored[key] = (run.info.run_id, int(tags[schema.TAG_CHECKPOINT_STEP]))
                    break
                if schema.TAG_RESTARTED in tags:
                    break

    def resume_state(self, key: str) -> Resume | None:
        """What the trial's next attempt resumes from, or None to start it from scratch."""
        if key in self._latest:
            return self._latest[key]
        if key not in self._stored:
            return None
        run_id, step = self._stored.pop(key)
        try:
            with self._http(), tempfile.TemporaryDirectory() as tmp:
                path = self.tracker.client.download_artifacts(
                    run_id, schema.checkpoint_path(step), tmp
                )
                state = Path(path).read_bytes()
        except Exception as e:  # noqa: BLE001 - unreadable: the trial starts over
            log.warning(
                "checkpoint at step %d of run %s not readable, the trial starts over: %s",
                step,
                run_id,
                e,
            )
            return None
        self._latest[key] = Resume(run_id, Checkpoint(step, state))
        return self._latest[key]

    def unusable(self, key: str, error: str) -> None:
        """The task could not resume from the trial's checkpoint: its next attempt starts
        from scratch (once: it has no checkpoint until it stores one of its own)."""
        self._latest.pop(key, None)
        self._stored.pop(key, None)
        self._restart[key] = error

    def restart_reason(self, key: str) -> str | None:
        """Why the trial's attempt starting now starts over, if it does so after an
        unusable checkpoint."""
        return self._restart.pop(key, None)

    def forget(self, key: str) -> None:
        """The trial is settled: drop what the driver held for it (states can be large)."""
        self._latest.pop(key, None)
        self._stored.pop(key, None)
        self._restart.pop(key, None)

    # -- helpers --------------------------------------------------------------------------
    def _repo(self, run_id: str) -> Any:
        if run_id not in self._repos:
            uri = self.tracker.client.get_run(run_id).info.artifact_uri
            self._repos[run_id] = get_artifact_repository(uri, tracking_uri=self.tracker.uri)
        return self._repos[run_id]

    def _http(self) -> contextlib.AbstractContextManager[None]:
        # A server that is away fails these writes in seconds; the next checkpoint retries.
        return (
            writer.fast_http(retries=2, timeout_s=30)
            if schema.is_server(self.tracker.uri)
            else contextlib.nullcontext()
        )
