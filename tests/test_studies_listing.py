"""``orch studies`` kept between runs: the kept listing is the composed one, and any change to
what composing reads composes again (``orchestrator/config/listing.py``).

Every test points ``XDG_CACHE_HOME`` at its own temp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import listing
from orchestrator.config.compose import Composer


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ORCH_ALLOW_RESOLVERS", raising=False)
    return tmp_path / "cache" / "orch"


def _studies(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["studies", *argv])
    return rc, capsys.readouterr().out


def test_the_kept_listing_is_the_composed_one(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    composed = _studies(capsys)
    assert [p.name for p in cache.glob("studies-*.json")]  # kept
    assert _studies(capsys) == composed
    # Each line against a composition of its own, for every built-in study.
    kept = listing.cached(None)
    composer = Composer()
    assert kept is not None and [s.name for s in kept] == composer.studies()
    for line in kept:
        cfg = composer.compose(line.name, [])
        claims = [*cfg.study.claims, *((cfg.get("search") or {}).get("claims") or [])]
        assert line.description == cfg.study.description
        assert line.claims.split(", ") == list(dict.fromkeys(c.id.split("/")[0] for c in claims))


def test_an_edit_a_new_study_or_a_removed_one_composes_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "conf"
    (user / "study").mkdir(parents=True)
    mine = user / "study" / "mine.yaml"
    text = "# @package _global_\nstudy:\n  name: mine\n  description: {}\n"
    mine.write_text(text.format("first"))
    assert "mine           first  claims: -" in _studies(capsys, "--config-dir", str(user))[1]
    mine.write_text(text.format("second"))  # the same size: the stamps still differ
    assert "mine           second  claims: -" in _studies(capsys, "--config-dir", str(user))[1]
    shutil.copy(mine, user / "study" / "other.yaml")
    assert "other " in _studies(capsys, "--config-dir", str(user))[1]
    mine.unlink()
    assert "mine " not in _studies(capsys, "--config-dir", str(user))[1]
    # The built-in listing is kept apart from this folder's (names start a line; a built-in
    # description may well contain the word "other").
    names = [line.split()[0] for line in _studies(capsys)[1].splitlines() if line.strip()]
    assert "mine" not in names and "other" not in names


def test_a_failing_study_is_not_kept(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "conf"
    (user / "study").mkdir(parents=True)
    (user / "study" / "bad.yaml").write_text("# @package _global_\nstudy:\n  name: ${nope}\n")
    assert _studies(capsys, "--config-dir", str(user))[0] == 2
    assert not cache.exists() or not list(cache.glob("studies-*.json"))


def test_nothing_is_kept_where_a_resolver_may_read_the_environment(
    cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_ALLOW_RESOLVERS", "oc.env")
    assert _studies(capsys)[0] == 0
    assert not cache.exists()


def test_the_fingerprint_covers_the_code_and_the_builtin_configs(tmp_path: Path) -> None:
    before = listing.fingerprint(None, [])
    assert listing.fingerprint(None, []) == before
    assert listing.fingerprint(None, [str(tmp_path)]) == before  # an empty folder
    (tmp_path / "x.yaml").write_text("a: 1\n")
    assert listing.fingerprint(None, [str(tmp_path)]) != before
