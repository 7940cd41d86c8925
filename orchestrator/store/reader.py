"""Reading sweeps back from the store: every query pages, none is cut at a fixed size.

One place answers "the runs of a sweep", "the finished run with this trial key", "the
parent run of this sweep id" and the one-row-per-trial table that :class:`orchestrator.Client`,
the report, the search's resume and ``orch resume`` all read.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from orchestrator.store import schema
from orchestrator.store.create import open_store

if TYPE_CHECKING:
    import pandas as pd

#: Runs per request. MLflow allows up to 50,000; a page of 5,000 keeps one request's
#: memory and time modest while a 10,000-trial sweep reads in two.
PAGE = 5000


def param_value(text: str) -> Any:
    """A logged param back as a value (params are stored as JSON text where they can be)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class StoreReader:
    """Paged queries over one tracking store (``MlflowClient`` underneath)."""

    def __init__(self, tracking_uri: str | None = None, client: MlflowClient | None = None
                 ) -> None:
        self.uri = schema.resolve_tracking_uri(tracking_uri)
        if client is None:
            open_store(self.uri)  # MLflow would migrate a new file in place, racing others
        self.client = client or MlflowClient(self.uri)

    def experiment_ids(self) -> list[str]:
        ids: list[str] = []
        token = None
        while True:
            page = self.client.search_experiments(view_type=ViewType.ALL, max_results=1000,
                                                  page_token=token)
            ids.extend(e.experiment_id for e in page)
            token = page.token
            if not token:
                return ids

    def runs(self, filter_string: str, experiment_ids: Iterable[str] | None = None,
             order_by: list[str] | None = None) -> Iterator[Run]:
        """Every run matching ``filter_string``, page after page."""
        ids = list(experiment_ids) if experiment_ids is not None else self.experiment_ids()
        token = None
        while ids:
            page = self.client.search_runs(ids, filter_string=filter_string, max_results=PAGE,
                                           page_token=token, order_by=order_by)
            yield from page
            token = page.token
            if not token:
                return

    # -- sweeps ---------------------------------------------------------------------------
    def sweeps(self) -> list[Run]:
        """Every sweep's parent run, oldest first."""
        return list(self.runs(f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'",
                              order_by=["attributes.start_time ASC"]))

    def sweep_run(self, sweep_id: str, prefix: bool = True) -> Run:
        """The parent run of a sweep, by id or (``prefix``) a unique prefix of it.

        Raises:
            KeyError: No such sweep, or the prefix matches several.
        """
        op = f"LIKE '{sweep_id}%'" if prefix else f"= '{sweep_id}'"
        runs = list(self.runs(f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}' and "
                              f"tags.`{schema.TAG_SWEEP}` {op}"))
        exact = [r for r in runs if r.data.tags[schema.TAG_SWEEP] == sweep_id]
        if exact:
            return exact[0]
        if len(runs) == 1:
            return runs[0]
        if not runs:
            raise KeyError(f"no sweep {sweep_id!r} in {self.uri}")
        raise KeyError(f"{sweep_id!r} matches {len(runs)} sweeps; give more of the id")

    def sweep_runs(self, experiment_id: str, sweep_id: str, kind: str = schema.KIND_TRIAL
                   ) -> list[Run]:
        """The child runs of one kind of a sweep, every attempt, oldest first."""
        return list(self.runs(f"tags.`{schema.TAG_SWEEP}` = '{sweep_id}' and "
                              f"tags.`{schema.TAG_KIND}` = '{kind}'", [experiment_id],
                              order_by=["attributes.start_time ASC"]))

    def done_runs(self, experiment_id: str, keys: set[str], kind: str = schema.KIND_TRIAL
                  ) -> dict[str, Run]:
        """Runs of the experiment, any sweep, whose trial key is in ``keys`` and whose outcome
        counts as done (not themselves reuses): what a new sweep need not train again."""
        done: dict[str, Run] = {}
        if not keys:
            return done
        for run in self.runs(f"tags.`{schema.TAG_KIND}` = '{kind}'", [experiment_id]):
            tags = run.data.tags
            key = tags.get(schema.TAG_KEY)
            if key in keys and key not in done and schema.TAG_REUSED not in tags \
                    and tags.get(schema.TAG_OUTCOME) in schema.DONE_OUTCOMES:
                done[key] = run
        return done

    # -- trials ---------------------------------------------------------------------------
    def trials(self, sweep_id: str) -> pd.DataFrame:
        """One row per trial of a sweep: outcome, axes, params (dotted) and final metrics.

        Attempts that were retried are left out: the row is the trial's last attempt. A
        trial that overlapping sub-grids share ran once and has a row per grid (same
        ``run_id``), so each grid's claims see it.
        """
        import pandas as pd

        parent = self.sweep_run(sweep_id)
        sid = parent.data.tags[schema.TAG_SWEEP]
        rows = []
        for r in self.sweep_runs(parent.info.experiment_id, sid):
            t = r.data.tags
            if t.get(schema.TAG_OUTCOME) == schema.RETRIED:
                continue
            row: dict[str, Any] = {
                "run_id": r.info.run_id, "trial_index": int(t.get(schema.TAG_INDEX, -1)),
                "trial_key": t.get(schema.TAG_KEY), "outcome": t.get(schema.TAG_OUTCOME, "running"),
                "status": r.info.status, "error": t.get(schema.TAG_ERROR, ""),
                "node": t.get(schema.TAG_NODE, ""), "reused_from": t.get(schema.TAG_REUSED),
                "attempt": int(t.get(schema.TAG_ATTEMPT, 1)), "start_time": r.info.start_time,
            }
            row.update(json.loads(t.get(schema.TAG_ARM, "{}")))
            row["_also"] = t.get(schema.TAG_ALSO)
            row.update({k: param_value(v) for k, v in r.data.params.items()})
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

    def history(self, run_id: str, metric: str, source: str | None = None
                ) -> list[tuple[int, float, int]]:
        """A metric's ``(step, value, timestamp)`` points of one trial; a reused run's
        history is its source run's (pass ``source`` when already known)."""
        if source is None:
            source = self.client.get_run(run_id).data.tags.get(schema.TAG_REUSED, run_id)
        return [(p.step, p.value, p.timestamp)
                for p in self.client.get_metric_history(source, metric)]

    # -- artifacts ------------------------------------------------------------------------
    def has_artifact(self, run_id: str, path: str) -> bool:
        folder = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in self.client.list_artifacts(run_id, folder))

    def read_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()

    def read_files(self, run_id: str, folder: str) -> dict[str, bytes]:
        """The files directly under ``folder`` of a run's artifacts, as bytes."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.client.download_artifacts(run_id, folder, tmp))
            return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}

    def download(self, run_id: str, folder: str, dest: str | Path) -> Path:
        """A run's artifact folder copied under ``dest``; its local path."""
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, folder, str(dest)))
