"""Bad input: exit code 2, a message naming the field and what is allowed, nothing written,
and Ray not started. The cases live in ``tests/data/bad_inputs.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main

CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "bad_inputs.yaml").read_text())
LOCAL = [c for c in CORPUS if not c.get("needs_cluster")]
CLUSTER = [c for c in CORPUS if c.get("needs_cluster")]


def _run_case(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> None:
    """Run the case through ``orch sweep``; check exit 2, the message, and no store."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default store (mlflow.db, mlruns/) would appear here
    argv = ["sweep", *case["argv"]]
    if case.get("files"):
        conf = tmp_path / "conf"
        for rel, text in case["files"].items():
            (conf / rel).parent.mkdir(parents=True, exist_ok=True)
            (conf / rel).write_text(text)
        argv += ["--config-dir", str(conf)]
    db = tmp_path / "mlflow.db"
    code = main([*argv, "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 2, err
    flat = " ".join(err.split())  # rich wraps long lines
    for needle in case["expect"]:
        assert " ".join(needle.split()) in flat, f"{needle!r} not in: {err}"
    assert not db.exists()
    assert sorted(p.name for p in work.iterdir()) == []


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [c["id"] for c in CORPUS]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert all(c["expect"] for c in CORPUS)


@pytest.mark.parametrize("case", LOCAL, ids=[c["id"] for c in LOCAL])
def test_bad_input_exits_2_before_ray(case: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import ray

    ray_was_up = ray.is_initialized()  # another test file's session may already run
    _run_case(case, tmp_path, monkeypatch, capsys)
    if not ray_was_up:
        assert not ray.is_initialized(), "Ray was started for bad input"


@pytest.mark.parametrize("case", CLUSTER, ids=[c["id"] for c in CLUSTER])
def test_bad_input_found_against_the_cluster_exits_2(ray_session, case: dict[str, Any],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    _run_case(case, tmp_path, monkeypatch, capsys)
