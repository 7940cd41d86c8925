"""Per-trial system metrics, sampled in the worker process that runs the trial.

MLflow's own ``SystemMetricsMonitor`` samples the machine of the process that *starts* the
run. Here that is the driver, which only logs: the training happens in a Ray worker
process, possibly on another node. So the worker samples itself while a trial runs and
sends the samples to the driver as :class:`SystemMetrics` events, which the driver logs on
the trial's child run. The node they describe is the run's ``orch.node`` tag.

Names follow MLflow's system metrics (``mlflow/system_metrics/metrics/*.py``) with the same
meaning, so the MLflow UI's "System metrics" tab charts them:

- ``system/cpu_utilization_percentage``: the node's CPU utilization (all processes);
- ``system/system_memory_usage_megabytes`` and ``..._percentage``: the node's used memory;
- ``system/gpu_{i}_memory_usage_megabytes`` / ``..._percentage`` /
  ``system/gpu_{i}_utilization_percentage``: device-wide, like MLflow's NVML monitor.

Several trials can share a node, so node-wide values do not say what one trial uses; the
worker process's own share is added under names MLflow does not use:

- ``system/process_cpu_utilization_percentage`` (100 = one core busy),
- ``system/process_rss_megabytes`` (the worker and its child processes).

GPUs are sampled only once the trial has initialized CUDA itself: asking an idle worker
for GPU memory would create a CUDA context (hundreds of MB of GPU memory) it never needed.
A sample costs tens of microseconds (a few ``/proc`` reads) every ``interval_s``; the
overhead on a trial is within run-to-run noise (see the README).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import psutil

#: Seconds between samples; ``ORCH_SYSMETRICS_INTERVAL_S=0`` turns sampling off.
DEFAULT_INTERVAL_S = 2.0
MB = 1e6  # MLflow's "megabytes" are 10**6 bytes


@dataclass(frozen=True)
class SystemMetrics:
    """One sample of system metrics from the worker running a trial.

    ``step`` counts samples from 0 (as MLflow's monitor does); ``timestamp_ms`` is when the
    sample was taken, so a sample logged late (the driver was busy) keeps its time.
    """

    step: int
    values: dict[str, float]
    timestamp_ms: int


def interval_from_env() -> float:
    """The sampling interval: ``$ORCH_SYSMETRICS_INTERVAL_S``, else 2 s; 0 disables."""
    raw = os.environ.get("ORCH_SYSMETRICS_INTERVAL_S", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


class ProcessTree:
    """A process and its children (data loaders, DDP ranks), for their total RSS.

    Listing children scans every process of the machine (milliseconds on a busy node), so
    the list is refreshed only every ``refresh_s``; reading a known process's RSS is one
    small ``/proc`` read.
    """

    def __init__(self, proc: psutil.Process | None = None, refresh_s: float = 5.0) -> None:
        self.proc = proc or psutil.Process()
        self.refresh_s = refresh_s
        self._children: list[psutil.Process] = []
        self._listed_at = -refresh_s

    def rss(self) -> int:
        """Resident memory in bytes of the process and its live children."""
        now = time.monotonic()
        if now - self._listed_at >= self.refresh_s:
            self._listed_at = now
            try:
                self._children = self.proc.children(recursive=True)
            except psutil.Error:
                self._children = []
        total = self.proc.memory_info().rss
        for child in self._children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue  # ended since it was listed: nothing to count
        return total


class SystemSampler:
    """Samples the current process (and the node) every ``interval_s`` when polled.

    It has no thread of its own: the worker polls it from the loop that already waits for
    the trial's events, so sampling adds no thread and no lock.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        self._proc = psutil.Process()
        self._tree = ProcessTree(self._proc)
        self._step = 0
        self._next = time.monotonic()
        # cpu_percent measures since its previous call: prime both so the first sample is
        # the utilization over the first interval, not since boot.
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)

    def poll(self) -> SystemMetrics | None:
        """A sample if one is due, else None."""
        if self.interval_s <= 0:
            return None
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        sample = SystemMetrics(self._step, self.sample(), int(time.time() * 1000))
        self._step += 1
        return sample

    def sample(self) -> dict[str, float]:
        """The values of one sample (see the module docstring for the names)."""
        vm = psutil.virtual_memory()
        values = {
            "system/cpu_utilization_percentage": psutil.cpu_percent(None),
            "system/system_memory_usage_megabytes": vm.used / MB,
            "system/system_memory_usage_percentage": vm.used / vm.total * 100,
            "system/process_cpu_utilization_percentage": self._proc.cpu_percent(None),
            "system/process_rss_megabytes": self._tree.rss() / MB,
        }
        values.update(_gpu_values())
        return values


def _gpu_values() -> dict[str, float]:
    """Device-wide GPU memory and utilization, if this process already uses CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    values: dict[str, float] = {}
    for i in range(torch.cuda.device_count()):
        try:
            free, total = torch.cuda.mem_get_info(i)
        except RuntimeError:
            continue
        values[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / MB
        values[f"system/gpu_{i}_memory_usage_percentage"] = (total - free) / total * 100
        try:  # needs NVML (pynvml); without it there is no utilization to report
            values[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
        except Exception:  # noqa: BLE001 - ModuleNotFoundError, NVML errors: skip the value
            pass
    return values
