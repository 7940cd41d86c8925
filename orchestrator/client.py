"""Query sweeps and trials from Python.

>>> from orchestrator import Client
>>> c = Client()                      # $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
>>> c.sweeps()                        # one row per sweep
>>> df = c.trials("optimizers-2026...")   # one row per trial: params and final metrics
>>> c.history(df.run_id[0], "val/acc")
>>> c.best("optimizers-2026...")
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from orchestrator import tracking as tr

if TYPE_CHECKING:
    from orchestrator.verdicts import Verdict


def _param(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class Client:
    """Read access to the sweeps in a tracking store."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tr.resolve_tracking_uri(tracking_uri)
        self.mlflow = MlflowClient(self.tracking_uri)

    # -- sweeps ---------------------------------------------------------------------------
    def _experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.mlflow.search_experiments(view_type=ViewType.ALL)]

    def _search(self, filter_string: str, experiment_ids: list[str] | None = None) -> list[Run]:
        ids = experiment_ids or self._experiment_ids()
        runs: list[Run] = []
        token = None
        while ids:
            page = self.mlflow.search_runs(ids, filter_string=filter_string, max_results=1000,
                                           page_token=token, order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs

    def sweep_run(self, sweep_id: str) -> Run:
        """The parent run of a sweep, by id or unique prefix of it."""
        runs = self._search(f"tags.`{tr.TAG_KIND}` = 'sweep' and "
                            f"tags.`{tr.TAG_SWEEP}` LIKE '{sweep_id}%'")
        exact = [r for r in runs if r.data.tags[tr.TAG_SWEEP] == sweep_id]
        if exact:
            return exact[0]
        if len(runs) == 1:
            return runs[0]
        if not runs:
            raise KeyError(f"no sweep {sweep_id!r} in {self.tracking_uri}")
        raise KeyError(f"{sweep_id!r} matches {len(runs)} sweeps; give more of the id")

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep, oldest first."""
        rows = []
        for r in self._search(f"tags.`{tr.TAG_KIND}` = 'sweep'"):
            t, m = r.data.tags, r.data.metrics
            rows.append({
                "sweep_id": t.get(tr.TAG_SWEEP), "study": t.get(tr.TAG_STUDY),
                "status": r.info.status, "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
                "n_trials": int(t.get("orch.n_trials", 0)),
                "finished": int(m.get("trials/finished", 0)), "failed": int(m.get("trials/failed", 0)),
                "metric": t.get("orch.metric"), "best": m.get(f"best/{t.get('orch.metric')}"),
                "run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
            })
        return pd.DataFrame(rows, columns=["sweep_id", "study", "status", "start_time", "n_trials",
                                           "finished", "failed", "metric", "best", "run_id",
                                           "experiment_id"])

    # -- trials ---------------------------------------------------------------------------
    def trials(self, sweep_id: str) -> pd.DataFrame:
        """One row per trial of a sweep: outcome, axes, params (dotted) and final metrics.

        Attempts that were retried after a worker died are left out: the row is the
        trial's last attempt. A trial that overlapping sub-grids share ran once and has a
        row per grid (same ``run_id``), so each grid's claims see it.
        """
        parent = self.sweep_run(sweep_id)
        sid = parent.data.tags[tr.TAG_SWEEP]
        runs = self._search(f"tags.`{tr.TAG_SWEEP}` = '{sid}' and tags.`{tr.TAG_KIND}` = 'trial'",
                            [parent.info.experiment_id])
        rows = []
        for r in runs:
            t = r.data.tags
            if t.get(tr.TAG_OUTCOME) == "retried":
                continue
            row: dict[str, Any] = {
                "run_id": r.info.run_id, "trial_index": int(t.get(tr.TAG_INDEX, -1)),
                "trial_key": t.get(tr.TAG_KEY), "outcome": t.get(tr.TAG_OUTCOME, "running"),
                "status": r.info.status, "error": t.get(tr.TAG_ERROR, ""),
                "node": t.get(tr.TAG_NODE, ""), "reused_from": t.get(tr.TAG_REUSED),
                "attempt": int(t.get(tr.TAG_ATTEMPT, 1)), "start_time": r.info.start_time,
            }
            row.update(json.loads(t.get(tr.TAG_ARM, "{}")))
            row["_also"] = t.get(tr.TAG_ALSO)
            row.update({k: _param(v) for k, v in r.data.params.items()})
            row.update(r.data.metrics)
            rows.append(row)
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        # A row per trial: a later attempt (a retry, or a resumed sweep's re-run) replaces
        # the earlier one.
        df = df.sort_values(["trial_index", "start_time"]).drop_duplicates("trial_index",
                                                                          keep="last")
        # A trial shared by overlapping sub-grids ran once; it gets a row in each grid.
        extra = [{**row, **arm} for row in df.to_dict("records")
                 if isinstance(row["_also"], str) for arm in json.loads(row["_also"])]
        if extra:
            df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
        return df.drop(columns="_also").reset_index(drop=True)

    def history(self, run_id: str, metric: str) -> pd.DataFrame:
        """A metric's per-step values of one trial (follows reused runs to their source)."""
        source = self.mlflow.get_run(run_id).data.tags.get(tr.TAG_REUSED, run_id)
        points = self.mlflow.get_metric_history(source, metric)
        return pd.DataFrame([{"step": p.step, "value": p.value, "timestamp": p.timestamp}
                             for p in points], columns=["step", "value", "timestamp"])

    def verdicts(self, sweep_id: str) -> list["Verdict"]:
        """The verdicts on the study's claims: the parent run's ``verdicts.json``, written
        at the end of the sweep (or by ``orch report``); recomputed, not written, if absent."""
        from orchestrator.reporting import VERDICTS_ARTIFACT, compute_verdicts
        from orchestrator.verdicts import verdicts_from_json

        parent = self.sweep_run(sweep_id)
        if any(a.path == VERDICTS_ARTIFACT for a in self.mlflow.list_artifacts(parent.info.run_id)):
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                local = self.mlflow.download_artifacts(parent.info.run_id, VERDICTS_ARTIFACT, tmp)
                return verdicts_from_json(Path(local).read_text())
        return compute_verdicts(self, sweep_id)

    def best(self, sweep_id: str) -> pd.Series:
        """The finished trial with the best value of the sweep's metric."""
        parent = self.sweep_run(sweep_id)
        metric = parent.data.tags.get("orch.metric", "val/acc")
        mode = parent.data.tags.get("orch.mode", "max")
        df = self.trials(sweep_id)
        df = df[(df.outcome == "finished") & df.get(metric, pd.Series(dtype=float)).notna()]
        if df.empty:
            raise ValueError(f"sweep {sweep_id!r} has no finished trial with {metric!r}")
        return df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
