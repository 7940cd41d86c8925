"""What MLflow's UI shows of a sweep, and where to find it.

MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it is
model training, and its runs table shows no metric until one is added. So a sweep tags its
experiment as model development (unless the user chose a kind), writes a short summary as
the parent run's description (the first thing its page shows), keeps the parent's
``trials/*`` metrics current while it runs, and the CLI ends by printing the URLs.
"""

from __future__ import annotations

import contextlib
import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from orchestrator.config.plan import SweepPlan
from orchestrator.core.results import TrialResult
from orchestrator.store import schema, writer

#: MLflow 3's experiment type (the UI's "experiment kind" selector) and the value for
#: model training, as in mlflow/server/js (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
#: A run's description in MLflow's UI (markdown).
NOTE_TAG = "mlflow.note.content"
UI_PORT = 5000


def start(
    tracker: writer.Tracker, experiment_id: str, parent: str, plan: SweepPlan, sweep_id: str
) -> Callable[[dict[str, float]], None]:
    """Tag the experiment and the parent's description; returns the publisher of the
    parent's live trial counts (for :class:`~orchestrator.sweep.progress.SweepProgress`)."""
    try:
        with _quick(tracker):
            exp = tracker.client.get_experiment(experiment_id)
            if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind the user set in the UI stays
                tracker.client.set_experiment_tag(
                    experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )
    except Exception:  # noqa: BLE001 - a label for the UI; the sweep must not fail on it
        pass
    spec = plan.spec
    planned = f"{len(plan.trials)} trials" if plan.search is None else "an Optuna search"
    axes = ", ".join(k for k in plan.axes if k != "seed") or "none"
    tracker.set_tags(
        parent,
        {
            NOTE_TAG: (
                f"**{spec.study.name}** sweep `{sweep_id}`, running: {planned} (axes: {axes}), "
                f"metric `{spec.sweep.metric}` ({spec.sweep.mode}). "
                f"Live counts: metrics `trials/*`; "
                f"the trials are this run's child runs."
            )
        },
    )

    def publish(counts: dict[str, float]) -> None:
        # Step 0, as the final counts: the latest value (the one the table shows) is the
        # newest by timestamp.
        tracker.log_metrics(parent, counts, step=0)

    return publish


def finish(
    tracker: writer.Tracker,
    parent: str,
    sweep_id: str,
    plan: SweepPlan,
    results: Sequence[TrialResult],
    cancelled: bool,
) -> None:
    """The parent's description at the end: trials, best, verdicts, where the report is.

    Not when the store already lost writes: another one would only wait out the outage
    again (``orch resume`` ends the sweep properly later)."""
    if tracker.unwritten:
        return
    spec = plan.spec
    metric, mode = spec.sweep.metric, spec.sweep.mode
    counts = {
        o: sum(r.outcome == o for r in results)
        for o in ("finished", "failed", "diverged", "pruned", "killed")
    }
    shown = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    lines = [
        f"**{spec.study.name}** sweep `{sweep_id}`"
        f"{' (cancelled)' if cancelled else ''}: {len(results)} trials: {shown or 'none'}."
    ]
    done = [
        r
        for r in results
        if r.outcome == "finished" and math.isfinite(r.metrics.get(metric, math.nan))
    ]
    if done:
        best = (max if mode == "max" else min)(done, key=lambda r: r.metrics[metric])
        arm = " ".join(f"{k}={v}" for k, v in best.trial.arm.items())
        lines.append(
            f"Best `{metric}` = {best.metrics[metric]:.4g} ({arm} seed={best.trial.seed})."
        )
    try:  # the verdict tags the report wrote
        with _quick(tracker):
            tags = tracker.client.get_run(parent).data.tags
    except Exception:  # noqa: BLE001 - the store went away: a description without verdicts
        tags = {}
    verdicts = [
        f"{k[len(schema.TAG_VERDICT) :]} {v}"
        for k, v in sorted(tags.items())
        if k.startswith(schema.TAG_VERDICT)
    ]
    if verdicts:
        lines.append("Verdicts: " + ", ".join(verdicts) + ".")
    if not cancelled:
        lines.append(f"Report: Artifacts, `{schema.REPORT_FOLDER}/report.html`.")
    tracker.set_tags(parent, {NOTE_TAG: "\n\n".join(lines)})
    tracker.log_metrics(parent, {"trials/running": 0.0, "trials/done": float(len(results))}, step=0)


def _quick(tracker: writer.Tracker) -> contextlib.AbstractContextManager[None]:
    """A server's request fails in seconds, not after MLflow's minutes of retries."""
    return writer.fast_http() if schema.is_server(tracker.uri) else contextlib.nullcontext()


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The UI's page of a run (``artifact``: that artifact opened in its Artifacts tab)."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{url}/artifacts/{artifact}" if artifact else url


def where_to_look(
    tracking_uri: str, experiment_id: str, run_id: str, artifact_uri: str | None = None
) -> list[str]:
    """Lines telling the user where the sweep is in MLflow's UI (and its report on disk).

    A server is its own UI; a database or file store needs ``mlflow ui`` started on it.
    """
    report = f"{schema.REPORT_FOLDER}/report.html"
    lines = []
    if schema.is_server(tracking_uri):
        base = tracking_uri
    else:
        base = f"http://127.0.0.1:{UI_PORT}"
        lines.append(
            f"MLflow UI: mlflow ui --backend-store-uri {shlex.quote(_absolute(tracking_uri))}"
            f" --port {UI_PORT}"
        )
    lines.append(f"parent run: {run_url(base, experiment_id, run_id)}")
    lines.append(f"report:     {run_url(base, experiment_id, run_id, report)}")
    if artifact_uri and artifact_uri.startswith("file:"):
        local = Path(unquote(urlparse(artifact_uri).path)) / report
        if local.exists():
            lines.append(f"report file: {local}")
    return lines


def _absolute(uri: str) -> str:
    """``sqlite:///mlflow.db`` as an absolute URI, so the command works from any folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:  # a bare path: MLflow's file store
        return str(Path(uri).resolve())
    return uri
