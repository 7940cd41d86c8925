"""conf/claims.yaml accounts for every claim of the catalogue (shared/claims.md), and every
place it names exists: a claim of a study file, or a test function."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLAIM_ID = re.compile(
    r"^\|\s*((?:OPT|LR|FT|BN|HP|INIT|ACT|REG|ARCH|BNW|ERR)-\d+)\s*\|", re.MULTILINE
)
KINDS = ("study", "test", "out_of_scope", "pending")


def _catalogue() -> Path | None:
    """shared/claims.md: $ORCH_CLAIMS_CATALOG, else the nearest shared/ above the checkout
    (the catalogue is shared between checkouts, not part of the repository)."""
    if env := os.environ.get("ORCH_CLAIMS_CATALOG"):
        return Path(env)
    for d in (ROOT, *ROOT.parents):
        if (d / "shared" / "claims.md").is_file():
            return d / "shared" / "claims.md"
    return None


def _map() -> dict[str, list[dict[str, str]]]:
    return yaml.safe_load((ROOT / "conf" / "claims.yaml").read_text())


def _study_claims(name: str) -> set[str]:
    cfg = yaml.safe_load((ROOT / "conf" / "study" / f"{name}.yaml").read_text())
    claims = (cfg.get("study") or {}).get("claims") or []
    claims += (cfg.get("search") or {}).get("claims") or []
    return {c["id"] for c in claims}


def _test_functions(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")
    }


def test_every_catalogue_id_is_accounted_for_and_nothing_else() -> None:
    path = _catalogue()
    if path is None:
        pytest.skip("shared/claims.md not found above the checkout; set ORCH_CLAIMS_CATALOG")
    ids = CLAIM_ID.findall(path.read_text())
    assert ids and len(ids) == len(set(ids)), "no claim rows found, or an id repeated"
    mapped = _map()
    assert sorted(set(ids) - set(mapped)) == [], "claims with no entry in conf/claims.yaml"
    assert sorted(set(mapped) - set(ids)) == [], "entries for ids the catalogue does not have"


def test_every_mapped_place_exists() -> None:
    problems = []
    for cid, places in _map().items():
        if not isinstance(places, list) or not places:
            problems.append(f"{cid}: needs a non-empty list of places")
            continue
        for place in places:
            kinds = [k for k in KINDS if k in place]
            if len(kinds) != 1 or set(place) - {*KINDS, "claim"}:
                problems.append(f"{cid}: {place} must be one of {KINDS}")
            elif "study" in place:
                study = ROOT / "conf" / "study" / f"{place['study']}.yaml"
                if not study.is_file():
                    problems.append(f"{cid}: no study {place['study']}")
                elif place.get("claim") not in _study_claims(place["study"]):
                    problems.append(
                        f"{cid}: study {place['study']} has no claim {place.get('claim')}"
                    )
            elif "test" in place:
                file, _, fn = place["test"].partition("::")
                if not (ROOT / file).is_file() or fn not in _test_functions(ROOT / file):
                    problems.append(f"{cid}: no test {place['test']}")
            elif not str(place[kinds[0]]).strip():
                problems.append(f"{cid}: {kinds[0]} needs a reason")
    assert problems == []
