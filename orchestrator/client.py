"""Query sweeps and trials from Python.

>>> from orchestrator import Client
>>> c = Client()                      # $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
>>> c.sweeps()                        # one row per sweep
>>> df = c.trials("optimizers-2026...")   # one row per trial: params and final metrics
>>> c.history(df.run_id[0], "val/acc")
>>> c.best("optimizers-2026...")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from mlflow.entities import Run

from orchestrator.store import schema
from orchestrator.store.reader import StoreReader
from orchestrator.verdicts import Verdict, verdicts_from_json

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class Client:
    """Read access to the sweeps in a tracking store."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.reader = StoreReader(tracking_uri)
        self.tracking_uri = self.reader.uri

    @property
    def mlflow(self) -> MlflowClient:
        """The underlying ``MlflowClient``, for anything this class does not answer."""
        return self.reader.client

    # -- sweeps ---------------------------------------------------------------------------
    def sweep_run(self, sweep_id: str) -> Run:
        """The parent run of a sweep, by id or unique prefix of it."""
        return self.reader.sweep_run(sweep_id)

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep, oldest first."""
        rows = []
        for r in self.reader.sweeps():
            t, m = r.data.tags, r.data.metrics
            metric = t.get(schema.TAG_METRIC)
            rows.append(
                {
                    "sweep_id": t.get(schema.TAG_SWEEP),
                    "study": t.get(schema.TAG_STUDY),
                    "status": r.info.status,
                    "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
                    "n_trials": int(t.get(schema.TAG_N_TRIALS, 0)),
                    "finished": int(m.get("trials/finished", 0)),
                    "failed": int(m.get("trials/failed", 0)),
                    "metric": metric,
                    "best": m.get(f"best/{metric}"),
                    "run_id": r.info.run_id,
                    "experiment_id": r.info.experiment_id,
                }
            )
        return pd.DataFrame(
            rows,
            columns=[
                "sweep_id",
                "study",
                "status",
                "start_time",
                "n_trials",
                "finished",
                "failed",
                "metric",
                "best",
                "run_id",
                "experiment_id",
            ],
        )

    # -- trials ---------------------------------------------------------------------------
    def trials(self, sweep_id: str) -> pd.DataFrame:
        """One row per trial of a sweep: outcome, axes, params (dotted) and final metrics.

        Attempts that were retried after a worker died are left out: the row is the
        trial's last attempt; ``resumed_from_step`` is the checkpoint step that attempt
        continued from (None: it ran from the start). A trial that overlapping sub-grids
        share ran once and has a row per grid (same ``run_id``), so each grid's claims see it.
        """
        return self.reader.trials(sweep_id)

    def history(self, run_id: str, metric: str) -> pd.DataFrame:
        """A metric's per-step values of one trial (follows reused runs to their source)."""
        return pd.DataFrame(
            self.reader.history(run_id, metric), columns=["step", "value", "timestamp"]
        )

    def verdicts(self, sweep_id: str) -> list[Verdict]:
        """The verdicts on the study's claims: the parent run's ``verdicts.json``, written
        at the end of the sweep (or by ``orch report``); recomputed, not written, if absent."""
        parent = self.sweep_run(sweep_id)
        if self.reader.has_artifact(parent.info.run_id, schema.VERDICTS_ARTIFACT):
            return verdicts_from_json(
                self.reader.read_text(parent.info.run_id, schema.VERDICTS_ARTIFACT)
            )
        from orchestrator.report import compute_verdicts  # plots and statistics: on use only

        return compute_verdicts(self.tracking_uri, sweep_id)

    def best(self, sweep_id: str) -> pd.Series:
        """The finished trial with the best value of the sweep's metric."""
        parent = self.sweep_run(sweep_id)
        metric = parent.data.tags.get(schema.TAG_METRIC, "val/acc")
        mode = parent.data.tags.get(schema.TAG_MODE, "max")
        df = self.trials(sweep_id)
        df = df[(df.outcome == "finished") & df.get(metric, pd.Series(dtype=float)).notna()]
        if df.empty:
            raise ValueError(f"sweep {sweep_id!r} has no finished trial with {metric!r}")
        return df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
