"""The package's shape: layers (import-linter), no private names across modules, few lazy
imports each with its reason, and a wheel that ships the config tree."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "tasks", "dashboards", "hydra_plugins")
#: Modules whose in-function imports are one documented rule rather than a comment each.
LAZY_BY_RULE = {
    # Each command imports the layers it needs when it runs (module docstring).
    Path("orchestrator/cli/main.py"),
    Path("orchestrator/cli/record.py"),
}


def _modules() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for pkg in PACKAGES
        if (ROOT / pkg).exists()
        for p in (ROOT / pkg).rglob("*.py")
    )


def _is_project(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in PACKAGES


def test_no_module_imports_a_private_name_of_another() -> None:
    bad = []
    for rel in _modules():
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and _is_project(node.module):
                bad += [
                    f"{rel}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
                # A package's own modules may use its private ones (Optuna's _optimize.py);
                # nobody outside the package may.
                parts = (node.module or "").split(".")
                private = [
                    i
                    for i, part in enumerate(parts)
                    if part.startswith("_") and not part.startswith("__")
                ]
                own = ".".join(rel.with_suffix("").parts[:-1])
                if private and ".".join(parts[: private[0]]) != own:
                    bad.append(f"{rel}:{node.lineno} {node.module}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_in_function_imports_of_the_project_say_why() -> None:
    """An import of our own modules inside a function (to keep torch out of the driver, or
    the CLI fast) carries a comment on its line or just above it."""
    silent = []
    for rel in _modules():
        if rel in LAZY_BY_RULE:
            continue
        text = (ROOT / rel).read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                project = (isinstance(node, ast.ImportFrom) and _is_project(node.module)) or (
                    isinstance(node, ast.Import) and any(_is_project(a.name) for a in node.names)
                )
                if project:
                    window = lines[max(0, node.lineno - 4) : node.lineno]
                    if not any("#" in line for line in window):
                        silent.append(f"{rel}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not silent, "in-function imports without a reason:\n" + "\n".join(silent)


def test_the_layering_contract_holds() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[lint]')")
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]


@pytest.mark.slow
def test_a_built_wheel_ships_conf_and_composes_from_it(tmp_path: Path) -> None:
    """``pip install .`` (non-editable) must carry the config tree: build the wheel from a
    copy of the sources (a build writes build/ and *.egg-info beside them), unpack it
    away from the checkout and compose a built-in study from it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in (*PACKAGES, "conf"):
        if (ROOT / pkg).exists():
            shutil.copytree(
                ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = wheels.glob("orchestrator-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "orchestrator/builtin_conf/config.yaml" in names
        assert "orchestrator/builtin_conf/study/optimizers.yaml" in names
        site = tmp_path / "site"
        z.extractall(site)
    probe = (
        "from orchestrator.config.compose import builtin_config_dir, composer\n"
        "print(builtin_config_dir())\n"
        "print(composer().compose('optimizers', []).study.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    conf_dir, study = out.stdout.split()
    assert Path(conf_dir).is_relative_to(site) and study == "optimizers"
