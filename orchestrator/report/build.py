"""Verdicts and the HTML report of a sweep, read from and written to its MLflow parent run.

:func:`report_sweep` is what the end of :func:`orchestrator.sweep.run.run_sweep` and
``orch report`` call: it loads the trials (:class:`orchestrator.Client`), the per-epoch
histories (following ``orch.reused_from`` like :meth:`Client.history`), the study's claims
(the parent run's ``config.yaml``, ``study.claims``), evaluates them and logs
``verdicts.json``, ``report/report.html`` and the PNGs on the parent run, with one tag
``orch.verdict.<claim id>`` per claim.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import Run, RunTag
from rich.markup import escape

from dashboards.report import SweepInfo, build_report
from orchestrator.search import load_search_summary, summary_verdicts
from orchestrator.store import schema
from orchestrator.store.reader import StoreReader
from orchestrator.verdicts import ClaimSpec, Verdict, evaluate, parse_claims, verdicts_to_json
from orchestrator.verdicts.sequential import ClaimState, looks, sequential_verdicts

#: Parent-run artifact of an adaptive-seeds sweep: per claim, the look and seeds it stopped at.
ADAPTIVE_ARTIFACT = "adaptive.json"


def _config(reader: StoreReader, parent_id: str) -> dict[str, Any]:
    """The sweep's composed config, as the parent run stored it."""
    return yaml.safe_load(reader.read_text(parent_id, schema.CONFIG_ARTIFACT)) or {}


def _claims(config: dict[str, Any]) -> list[ClaimSpec]:
    return parse_claims((config.get("study") or {}).get("claims") or [])


def _learned(config: dict[str, Any]) -> dict[str, Any] | None:
    """The study-wide sanity gate (``study.learned``), if the study states one."""
    return (config.get("study") or {}).get("learned") or None


class _Histories:
    """``history(run_id, metric)`` over one store; a reused run reads its source's.

    The first call for a metric reads that metric's history of every trial in one bulk
    query (:meth:`StoreReader.histories`), not one query per trial: the report draws every
    finished trial's curve and the claims compare them all.
    """

    def __init__(self, reader: StoreReader, trials: pd.DataFrame) -> None:
        self.reader = reader
        self.source: dict[str, str] = {}
        if not trials.empty:
            reused = (
                trials["reused_from"] if "reused_from" in trials else pd.Series(None, trials.index)
            )
            self.source = {
                str(r): str(s) if isinstance(s, str) and s else str(r)
                for r, s in zip(trials["run_id"], reused)
            }
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}
        self._loaded: set[str] = set()

    def __call__(self, run_id: str, metric: str) -> pd.DataFrame:
        key = (run_id, metric)
        if key not in self._cache and metric not in self._loaded and run_id in self.source:
            self._loaded.add(metric)
            points = self.reader.histories(set(self.source.values()), metric)
            for rid, src in self.source.items():
                self._cache[(rid, metric)] = _frame(points[src])
        if key not in self._cache:  # a run outside the sweep's table
            self._cache[key] = _frame(self.reader.history(run_id, metric))
        return self._cache[key]


def _frame(points: list[tuple[int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame([(s, v) for s, v, _ in points], columns=["step", "value"])


def _evaluate(
    config: dict[str, Any], trials: pd.DataFrame, history: _Histories, axes: list[str]
) -> tuple[list[Verdict], list[ClaimState]]:
    """The claims' verdicts; with adaptive seeds (``sweep.seeds: {min, max}``) the replay of
    the planned looks that decided them (``orchestrator.verdicts.sequential``)."""
    seeds = (config.get("sweep") or {}).get("seeds")
    if isinstance(seeds, dict) and len(trials):
        return sequential_verdicts(
            _claims(config),
            trials,
            looks(seeds["min"], seeds["max"]),
            history,
            axes,
            _learned(config),
        )
    return evaluate(_claims(config), trials, history, axes, _learned(config)), []


def _axes(parent: Run) -> list[str]:
    return list(json.loads(parent.data.tags.get(schema.TAG_AXES, "[]")))


def compute_verdicts(tracking_uri: str | None, sweep_id: str) -> list[Verdict]:
    """Evaluate a sweep's claims from the store without writing anything.

    Raises:
        KeyError: No such sweep.
        SpecError: The stored claims are malformed (a study edited after the sweep ran).
    """
    reader = StoreReader(tracking_uri)
    parent = reader.sweep_run(sweep_id)
    trials = reader.trials(sweep_id)
    config = _config(reader, parent.info.run_id)
    return _evaluate(config, trials, _Histories(reader, trials), _axes(parent))[0]


def curve_metrics(metric: str) -> list[str]:
    """The metrics drawn as learning curves: the sweep's, its per-epoch validation twin when
    the sweep's is final-only (``test/acc`` -> ``val/acc``), and ``train/loss``."""
    out = [metric]
    if metric.startswith("test/"):
        out.append("val/" + metric.split("/", 1)[1])
    out.append("train/loss")
    return list(dict.fromkeys(out))


def report_sweep(
    tracking_uri: str | None, sweep_id: str, out_dir: str | Path | None = None
) -> tuple[list[Verdict], list[str]]:
    """Evaluate a sweep's claims, build its report and log both on its parent run.

    Args:
        tracking_uri: The store (``None``: the usual resolution).
        sweep_id: The sweep, by id or unique prefix.
        out_dir: Keep a local copy of the report files here (default: a temporary folder).

    Returns:
        The verdicts and the artifact paths logged on the parent run.

    Raises:
        KeyError: No such sweep.
        SpecError: The stored claims are malformed.
    """
    reader = StoreReader(tracking_uri)
    parent = reader.sweep_run(sweep_id)
    pid, tags = parent.info.run_id, parent.data.tags
    trials = reader.trials(sweep_id)
    history = _Histories(reader, trials)
    axes = _axes(parent)
    config = _config(reader, pid)
    verdicts, looked = _evaluate(config, trials, history, axes)
    study = config.get("study") or {}
    metric = tags.get(schema.TAG_METRIC, "val/acc")
    info = SweepInfo(
        sweep_id=tags[schema.TAG_SWEEP],
        study=tags.get(schema.TAG_STUDY, ""),
        description=str(study.get("description", "")),
        metric=metric,
        mode=tags.get(schema.TAG_MODE, "max"),
        experiment_id=parent.info.experiment_id,
        parent_run_id=pid,
        tracking_uri=reader.uri,
    )
    finished = trials[trials["outcome"] == "finished"]["run_id"] if len(trials) else []
    histories = {m: {r: history(r, m) for r in finished} for m in curve_metrics(metric)}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        # A search's importances, plots and HP verdicts (orchestrator.search), if any.
        search = load_search_summary(reader, tags[schema.TAG_SWEEP], Path(tmp) / "search-artifacts")
        verdicts = [*verdicts, *summary_verdicts(search)]
        files = build_report(folder, info, trials, verdicts, histories, axes, search=search)
        reader.client.log_text(pid, verdicts_to_json(verdicts), schema.VERDICTS_ARTIFACT)
        if looked:  # adaptive seeds: each claim's seeds used and why it stopped
            reader.client.log_text(
                pid, json.dumps([asdict(c) for c in looked], indent=2), ADAPTIVE_ARTIFACT
            )
        for f in files:
            reader.client.log_artifact(pid, str(f), schema.REPORT_FOLDER)
    if verdicts:
        reader.client.log_batch(
            pid, tags=[RunTag(schema.verdict_tag(v.id), v.verdict) for v in verdicts]
        )
    return verdicts, [
        schema.VERDICTS_ARTIFACT,
        *(f"{schema.REPORT_FOLDER}/{f.name}" for f in files),
    ]


def report_at_end(tracking_uri: str, sweep_id: str, console: Any) -> list[Verdict]:
    """:func:`report_sweep` for the end of a sweep: an error is a printed warning only,
    because the trials are recorded already and ``orch report`` can rebuild the report."""
    try:
        verdicts, _ = report_sweep(tracking_uri, sweep_id)
    except Exception as e:  # noqa: BLE001 - a report must never fail the sweep
        console.print(
            f"[yellow]warning:[/] no report for {sweep_id}: "
            f"{escape(f'{type(e).__name__}: {e}')} "
            f"(rebuild it with: orch report {sweep_id})",
            highlight=False,
        )
        return []
    if verdicts:  # ids may hold brackets, which rich would read as markup
        console.print(
            escape("verdicts: " + ", ".join(f"{v.id} {v.label}" for v in verdicts)),
            highlight=False,
        )
    return verdicts
