"""Commands that run nothing import only what they need (issue 18).

Each command runs in a fresh interpreter (``orchestrator.cli.main([...])``), which then prints
the heavy packages it loaded. No timings are asserted: what is imported is what costs the
seconds (torch ~1.5 s, Ray ~1 s, MLflow ~3 s on 2 CPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "scipy", "mlflow", "matplotlib")
#: Reported too: what a command that needs no table (pandas) or no ORM (SQLAlchemy) skips.
LIGHT = ("pandas", "sqlalchemy", "alembic", "hydra", "omegaconf")
# Each case starts a fresh interpreter (seconds): not in `make test-fast`.
pytestmark = pytest.mark.slow

PROBE = f"""
import contextlib, io, json, sys
from orchestrator.cli import main
try:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(json.loads(sys.argv[1]))
except SystemExit as e:  # --help exits from argparse
    rc = e.code
print(json.dumps({{"rc": rc, "loaded": [m for m in {HEAVY + LIGHT!r} if m in sys.modules]}}))
"""


def loaded_by(argv: list[str], cwd: Path) -> list[str]:
    """The heavy packages a fresh interpreter holds after ``orch ARGV``; asserts exit 0."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": "",
        "XDG_CACHE_HOME": str(cwd / "cache"),  # kept listings and store templates: here
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, out.stderr
    return result["loaded"]


def test_help_imports_no_heavy_package(tmp_path: Path) -> None:
    assert loaded_by(["--help"], tmp_path) == []


def test_studies_imports_no_heavy_package_and_once_kept_not_hydra(tmp_path: Path) -> None:
    # The first composes every study (and keeps the listing); the next reads it back.
    assert set(loaded_by(["studies"], tmp_path)) <= {"hydra", "omegaconf"}
    assert loaded_by(["studies"], tmp_path) == []


@pytest.mark.parametrize("study", ["optimizers", "hpo"])  # a grid and a search
def test_dry_run_imports_no_torch_ray_or_mlflow(study: str, tmp_path: Path) -> None:
    loaded = set(loaded_by(["sweep", study, "--quick", "--dry-run"], tmp_path))
    assert loaded <= {"hydra", "omegaconf"}


def _sweep_store(path: Path) -> str:
    """A store holding one finished sweep of two trials, written by the real Tracker."""
    from orchestrator.store import schema
    from orchestrator.store.writer import Tracker

    uri = f"sqlite:///{path}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("optimizers")
    sweep = {
        schema.TAG_KIND: schema.KIND_SWEEP,
        schema.TAG_SWEEP: "optimizers-1",
        schema.TAG_STUDY: "optimizers",
    }
    parent = tracker.start_run(exp, "optimizers-1", {**sweep, schema.TAG_AXES: "[]"}, {})
    for i in range(2):
        tags = {schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_SWEEP: "optimizers-1"}
        rid = tracker.start_run(exp, f"t{i}", {**tags, schema.TAG_INDEX: i}, {"seed": i})
        tracker.log_metrics(rid, {"val/acc": 0.5}, 0)
        tracker.end_run(rid, "FINISHED", {schema.TAG_OUTCOME: "finished"})
    tracker.log_text(parent, "[]", schema.VERDICTS_ARTIFACT)  # else show computes them
    tracker.end_run(parent, "FINISHED")
    assert not tracker.close()
    return uri


def test_ls_and_show_on_sqlite_read_the_tables_alone(tmp_path: Path) -> None:
    uri = _sweep_store(tmp_path / "mlflow.db")
    new = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    # The first new store of a cache builds its template with MLflow's migrations, once.
    loaded_by(["ls", "--tracking-uri", f"sqlite:///{tmp_path / 'first.db'}"], tmp_path)
    assert loaded_by(["ls", "--tracking-uri", new], tmp_path) == []
    assert loaded_by(["ls", "--tracking-uri", uri], tmp_path) == []
    # show's trial table is the DataFrame Client.trials builds; no MLflow, no ORM.
    assert loaded_by(["show", "optimizers-1", "--tracking-uri", uri], tmp_path) == ["pandas"]
