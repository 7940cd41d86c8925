"""The dispatcher's listener on the driver: child runs in the store, progress, results."""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.config.plan import SweepPlan
from orchestrator.core.results import Failure, NodeInfo, TrialResult
from orchestrator.core.specs import Trial
from orchestrator.runtime.dispatch import TrialSource
from orchestrator.runtime.metrics import SweepMetrics
from orchestrator.runtime.signals import SIGNALS
from orchestrator.runtime.sysmetrics import SystemMetrics
from orchestrator.store import schema, writer
from orchestrator.store.lease import Claim, Leases, heartbeat_s
from orchestrator.sweep.checkpoints import Resume, TrialCheckpoints
from orchestrator.sweep.progress import SweepProgress
from tasks import registry
from tasks.events import Checkpoint, CheckpointError, Metrics, Summary

#: The error type of a task that could not resume from its checkpoint (tasks.events).
CHECKPOINT_ERROR = CheckpointError.__name__
#: Seconds between two looks at the parent run for ``orch cancel``.
CANCEL_CHECK_S = 2.0


class Recorder:
    """Writes each trial attempt as a child run of the sweep's parent run.

    Args:
        source: The trial source, asked for its own tags, told each run id, and asked for
            the values it tracked (an Optuna objective) when a trial ends.
        kind: ``trial``, or ``upstream`` for runs other trials need first.
    """

    def __init__(
        self,
        tracker: writer.Tracker,
        plan: SweepPlan,
        experiment_id: str,
        parent: str,
        sweep_id: str,
        progress: SweepProgress,
        kind: str = schema.KIND_TRIAL,
        source: TrialSource | None = None,
    ) -> None:
        self.tracker, self.plan, self.experiment_id = tracker, plan, experiment_id
        self.parent, self.sweep_id, self.progress = parent, sweep_id, progress
        self.kind, self.source = kind, source
        self.outputs: dict[str, dict[str, bytes]] = {}  # trial key -> Summary.artifacts
        self.run_ids: dict[int, str] = {}
        self.last_step: dict[int, int] = {}
        self.results: list[TrialResult] = []
        self.checkpoints = TrialCheckpoints(tracker, plan.spec.sweep.checkpoints_keep)
        self._resuming: dict[int, Resume] = {}  # trial index -> what its new attempt resumes
        #: Trials whose run is RUNNING in the store: what a forced exit marks killed.
        self.open: dict[int, Trial] = {}
        #: Claims on trial keys (a grid's trials, see ``sweep/leased.py``); None: no claims.
        self.leases: Leases | None = None
        self._claimed: dict[int, str] = {}  # trial index -> its claim's run, not yet started
        self._last_beat = time.monotonic()
        self.commit = writer.git_commit()
        self._last_cancel_check = time.monotonic()
        # Prometheus series through Ray's metrics agent (orchestrator/runtime/metrics.py).
        self.metrics = SweepMetrics(plan.spec.study.name, sweep_id, kind)

    def trial_tags(self, trial: Trial) -> dict[str, Any]:
        tags = {
            schema.TAG_PARENT: self.parent,
            schema.TAG_KIND: self.kind,
            schema.TAG_SWEEP: self.sweep_id,
            schema.TAG_STUDY: self.plan.spec.study.name,
            schema.TAG_KEY: trial.key,
            schema.TAG_INDEX: trial.index,
            schema.TAG_ARM: json.dumps(trial.arm, sort_keys=True),
        }
        if trial.also:
            tags[schema.TAG_ALSO] = json.dumps(list(trial.also), sort_keys=True)
        if trial.upstream is not None:
            tags[schema.TAG_UPSTREAM] = trial.upstream.key
        if self.commit:
            tags[schema.TAG_GIT] = self.commit
        if self.source is not None:
            tags.update(self.source.trial_tags(trial))
        return tags

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        # The world size is not in the task's config; record it where it matters.
        world = {"resources.workers": trial.workers} if trial.workers > 1 else {}
        return {"task": trial.task, **writer.flatten(trial.config), **world}

    def resume_state(self, trial: Trial) -> Checkpoint | None:
        """The checkpoint the trial's attempt about to start resumes from, if any."""
        found = self.checkpoints.resume_state(trial.key)
        if found is None:
            self._resuming.pop(trial.index, None)
            return None
        self._resuming[trial.index] = found
        return found.checkpoint

    def trial_checkpoint(self, trial: Trial, event: Checkpoint) -> None:
        # A task that yields checkpoints but takes no ``resume`` would start over from one,
        # and the history copied up to it would repeat its steps: not stored.
        if registry.accepts(registry.get(trial.task).run, "resume"):
            self.checkpoints.save(trial.key, self.run_ids[trial.index], event)

    def trial_started(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        with SIGNALS.shielded():  # a forced exit must know the run it has to mark
            self._start(trial, attempt, node)

    def claim(self, trial: Trial) -> Claim:
        """Create the trial's run as its claim, before it trains, unless another sweep
        holds its key (``store/lease.py``)."""
        assert self.leases is not None
        with SIGNALS.shielded():  # a claim made is a run a forced exit must mark
            claim = self.leases.claim(trial.key, lambda: self._create(trial, {}))
            if claim.run_id is not None:
                self._claimed[trial.index] = self.run_ids[trial.index] = claim.run_id
                self.open[trial.index] = trial
        return claim

    def _create(self, trial: Trial, tags: dict[str, Any]) -> str:
        name = (f"{trial.index:04d}-" if trial.index >= 0 else "") + "-".join(
            str(v) for v in trial.arm.values()
        )
        return self.tracker.start_run(
            self.experiment_id,
            f"{name}-s{trial.seed}",
            {**self.trial_tags(trial), **tags},
            self.trial_params(trial),
            {"task": trial.task, **trial.config},
        )

    def _start(self, trial: Trial, attempt: int, node: NodeInfo) -> None:
        tags: dict[str, Any] = {
            schema.TAG_ATTEMPT: attempt,
            schema.TAG_NODE: node.hostname,
            schema.TAG_NODE_ID: node.node_id,
            schema.TAG_PID: node.pid,
        }
        resumed = self._resuming.pop(trial.index, None)
        if resumed is not None:
            tags[schema.TAG_RESUMED_STEP] = resumed.checkpoint.step
            tags[schema.TAG_RESUMED_RUN] = resumed.run_id
        restarted = self.checkpoints.restart_reason(trial.key)
        if restarted is not None:
            tags[schema.TAG_RESTARTED] = restarted[:5000]
        claimed = self._claimed.pop(trial.index, None)
        if claimed is not None:
            self.tracker.set_tags(claimed, tags)
        else:
            self.run_ids[trial.index] = self._create(trial, tags)
        run_id = self.run_ids[trial.index]
        self.open[trial.index] = trial
        if resumed is not None:
            # Steps up to K come from the earlier run; the task reports K+1 onwards.
            self.checkpoints.copy_history(resumed.run_id, run_id, resumed.checkpoint.step)
            self.last_step[trial.index] = resumed.checkpoint.step
        if self.source is not None:
            self.source.started(trial, run_id)
        self.progress.started()
        self.metrics.started(trial.index)

    def trial_metrics(self, trial: Trial, event: Metrics) -> bool:
        self.tracker.log_metrics(self.run_ids[trial.index], event.values, event.step)
        self.last_step[trial.index] = event.step
        return False

    def trial_system_metrics(self, trial: Trial, event: SystemMetrics) -> None:
        """The worker's CPU/memory/GPU sample, on the trial's run (see ``sysmetrics``)."""
        self.tracker.log_metrics(
            self.run_ids[trial.index], event.values, event.step, event.timestamp_ms
        )

    def trial_retrying(self, trial: Trial, attempt: int, failure: Failure) -> None:
        if failure.error_type == CHECKPOINT_ERROR:
            self.checkpoints.unusable(trial.key, f"{failure.error_type}: {failure.message}")
        with SIGNALS.shielded():
            self._close(trial, "failed", None, failure, final=False)

    def trial_ended(
        self, trial: Trial, outcome: str, summary: Summary | None, failure: Failure | None
    ) -> None:
        # Metrics, outcome and status are one record: a forced exit waits for all three.
        with SIGNALS.shielded():
            self._close(trial, outcome, summary, failure, final=True)

    def kill_open(self, reason: str) -> None:
        """End every run still RUNNING as killed (a forced exit, after the ended trials)."""
        with SIGNALS.shielded():
            for trial in list(self.open.values()):
                self._close(trial, "killed", None, Failure("Cancelled", reason, ""), final=True)

    def _close(
        self,
        trial: Trial,
        outcome: str,
        summary: Summary | None,
        failure: Failure | None,
        final: bool,
    ) -> None:
        run_id = self.run_ids[trial.index]
        self.open.pop(trial.index, None)
        metrics = dict(summary.values) if summary else {}
        if metrics:
            # At the last step, so MLflow's "latest value" of a metric is the final one.
            self.tracker.log_metrics(run_id, metrics, step=self.last_step.pop(trial.index, 0))
        if summary is not None and summary.artifacts:
            self.tracker.log_files(run_id, summary.artifacts, schema.OUTPUTS_FOLDER)
            self.outputs[trial.key] = summary.artifacts
        tags: dict[str, Any] = {schema.TAG_OUTCOME: outcome if final else schema.RETRIED}
        error = ""
        if failure is not None:
            error = f"{failure.error_type}: {failure.message}"
            tags[schema.TAG_ERROR] = error[:5000]
            if failure.traceback:
                self.tracker.log_text(run_id, failure.traceback, schema.TRACEBACK_ARTIFACT)
        elif summary is not None and summary.reason:
            error = summary.reason
            tags[schema.TAG_ERROR] = summary.reason[:5000]
        self.tracker.end_run(run_id, schema.STATUS[outcome], tags)
        self.metrics.ended(trial.index, outcome if final else schema.RETRIED)
        if not final:  # a retry ends this attempt only; the trial runs again
            self.progress.running -= 1
            return
        self.checkpoints.forget(trial.key)  # its state in memory is needed no more
        if summary is not None and self.source is not None:
            # A per-step objective (val/acc) is already in the run as its last step's value;
            # the result gets it too (the table, best/<metric>), without logging it twice.
            metrics = {**self.source.final_values(trial, summary), **metrics}
        self.results.append(TrialResult(trial, run_id, outcome, metrics, error))
        label = " ".join(f"{k}={v}" for k, v in trial.arm.items()) + f" seed={trial.seed}"
        self.progress.ended(label, outcome, metrics.get(self.plan.spec.sweep.metric))

    def tick(self) -> bool:
        self.progress.tick()  # the parent's live trial counts, every few seconds
        self.tracker.maybe_flush()
        if SIGNALS.requested:  # SIGINT, SIGTERM, SIGHUP: cancel at this turn, writes whole
            return True
        if (
            self.leases is not None
            and self.open
            and time.monotonic() - self._last_beat > heartbeat_s(self.leases.timeout_s)
        ):
            self._last_beat = time.monotonic()
            self.leases.beat([self.run_ids[i] for i in self.open])
        if time.monotonic() - self._last_cancel_check > CANCEL_CHECK_S:
            self._last_cancel_check = time.monotonic()
            return self.tracker.cancel_requested(self.parent)
        return False
