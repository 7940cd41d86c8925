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
print(json.dumps({{"rc": rc, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def loaded_by(argv: list[str], cwd: Path) -> list[str]:
    """The heavy packages a fresh interpreter holds after ``orch ARGV``; asserts exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""}
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


@pytest.mark.parametrize("argv", [["--help"], ["studies"]])
def test_listing_commands_import_no_heavy_package(argv: list[str], tmp_path: Path) -> None:
    assert loaded_by(argv, tmp_path) == []


def test_dry_run_imports_no_torch_ray_or_mlflow(tmp_path: Path) -> None:
    assert loaded_by(["sweep", "optimizers", "--quick", "--dry-run"], tmp_path) == []


def test_ls_imports_no_torch_or_ray(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MLflow itself imports scipy (mlflow.models.utils), so ls, which reads the store, has it.
    assert set(loaded_by(["ls", "--tracking-uri", uri], tmp_path)) <= {"mlflow", "scipy"}
