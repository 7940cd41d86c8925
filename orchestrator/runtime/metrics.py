"""Service metrics of the sweep driver, exported to Prometheus through Ray's metrics API.

The driver is a Ray worker process once it has connected (``ray.init``), so metrics made
with :mod:`ray.util.metrics` go to the node's metrics agent and are served on that node's
metrics export port (``ray start --metrics-export-port``), next to Ray's own ``ray_node_*``
series. No second HTTP endpoint is needed and Prometheus finds every node through Ray's
service discovery file.

Ray puts ``ray_`` in front of every custom metric name, and Prometheus counters carry a
``_total`` suffix, so what Prometheus (and the Grafana dashboards in
``dashboards/grafana``) see is :data:`EXPORTED`: ``ray_orch_trials_running``,
``ray_orch_trials_total`` and ``ray_orch_trial_queue_wait_seconds_{bucket,sum,count}``.

Metrics never decide a sweep's fate: if recording fails (a Ray build without the metrics
agent, an exporter error) the failure is logged once and the sweep goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: Names as given to ``ray.util.metrics`` (Ray prefixes ``ray_`` on export).
TRIALS_RUNNING = "orch_trials_running"
TRIALS = "orch_trials"  # a counter: exported with Prometheus' "_total" suffix
QUEUE_WAIT = "orch_trial_queue_wait_seconds"

#: What Prometheus scrapes, per metric: the series names the dashboards query.
EXPORTED: dict[str, tuple[str, ...]] = {
    TRIALS_RUNNING: ("ray_orch_trials_running",),
    TRIALS: ("ray_orch_trials_total",),
    QUEUE_WAIT: (
        "ray_orch_trial_queue_wait_seconds_bucket",
        "ray_orch_trial_queue_wait_seconds_sum",
        "ray_orch_trial_queue_wait_seconds_count",
    ),
}

#: Outcomes counted in ``orch_trials_total{outcome}``: a trial's final outcomes
#: (orchestrator.store.writer.STATUS) plus "retried", one attempt of a trial whose worker died.
OUTCOMES = ("finished", "failed", "diverged", "pruned", "killed", "retried")

#: Queue wait spans a free slot being taken at once (ms) to trials queued behind a long
#: sweep (hours), so the buckets grow geometrically.
QUEUE_WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400]

_TAGS = ("study", "sweep", "kind")
_instruments: dict[str, Any] = {}
_warned = False


def _metric(name: str) -> Any:
    """The process-wide instrument ``name``, created on first use.

    Created lazily because ``ray.util.metrics`` needs a connected Ray worker, and once per
    process because Ray registers each name once.
    """
    if name not in _instruments:
        from ray.util import metrics as rm

        if name == TRIALS_RUNNING:
            _instruments[name] = rm.Gauge(name, "Trials of a sweep running now", tag_keys=_TAGS)
        elif name == TRIALS:
            _instruments[name] = rm.Counter(
                name, "Trials ended, by outcome", tag_keys=(*_TAGS, "outcome")
            )
        else:
            _instruments[name] = rm.Histogram(
                name,
                "Seconds a trial waited for a free slot before it started",
                boundaries=QUEUE_WAIT_BUCKETS,
                tag_keys=_TAGS,
            )
    return _instruments[name]


def _safely(fn: Any, *args: Any, **kwargs: Any) -> None:
    global _warned
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - metrics must not fail a sweep
        if not _warned:
            _warned = True
            log.warning("service metrics disabled: %s", e)


class SweepMetrics:
    """The metrics of one sweep's trials (one per ``_Recorder``), tagged study/sweep/kind.

    The sweep id is a tag so that two sweeps driven at once (two processes) write two
    gauge series instead of overwriting one; dashboards sum over it.
    """

    def __init__(
        self, study: str, sweep_id: str, kind: str = "trial", clock: Any = time.monotonic
    ) -> None:
        self.tags = {"study": study, "sweep": sweep_id, "kind": kind}
        self._clock = clock
        self._created = clock()
        self._queued_at: dict[int, float] = {}  # trial index -> when it was (re)queued
        self.running = 0

    def queued(self, index: int) -> None:
        """Trial ``index`` (re)entered the queue now; trials not marked wait from creation."""
        self._queued_at[index] = self._clock()

    def started(self, index: int) -> float:
        """Trial ``index`` started: records its queue wait (returned) and one more running."""
        wait = max(0.0, self._clock() - self._queued_at.pop(index, self._created))
        self.running += 1
        _safely(lambda: _metric(QUEUE_WAIT).observe(wait, tags=self.tags))
        _safely(lambda: _metric(TRIALS_RUNNING).set(self.running, tags=self.tags))
        return wait

    def ended(self, index: int, outcome: str) -> None:
        """An attempt of trial ``index`` ended with ``outcome``; "retried" queues it again."""
        self.running = max(0, self.running - 1)
        if outcome == "retried":
            self.queued(index)
        _safely(lambda: _metric(TRIALS).inc(1, tags={**self.tags, "outcome": outcome}))
        _safely(lambda: _metric(TRIALS_RUNNING).set(self.running, tags=self.tags))
