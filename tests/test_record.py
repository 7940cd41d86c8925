"""``orch record``: the studies' verdict tables are generated from a store, and ``orch claims``
accounts for every id of the catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cli.record import BEGIN, END, catalogue_ids, recorded_results, write_readme

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT.parent / "shared" / "claims.md"


def test_readme_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nkept\n\n{BEGIN}\nold table\n{END}\n\ntail kept\n")
    result = {
        "study": "s",
        "quick": True,
        "sweep_id": "s-1",
        "n_trials": 4,
        "seeds": "0..1",
        "wall_s": 3.0,
        "machine": "m",
        "versions": {"torch": "2"},
        "verdicts": [
            {
                "id": "C-1",
                "statement": "x",
                "verdict": "refuted",
                "effect": -0.5,
                "ci_low": -0.7,
                "ci_high": -0.3,
                "n_a": 2,
                "n_b": 2,
                "method": "paired t",
                "p_value": 0.01,
                "p_adjusted": 0.02,
            }
        ],
    }
    write_readme(readme, [result])
    text = readme.read_text()
    assert "old table" not in text and "kept" in text and "tail kept" in text
    assert "| C-1 x | **refuted** | -0.5 | [-0.7, -0.3] | 2/2 | paired t | 0.01 | 0.02 |" in text
    assert "Sweep `s-1`" in text
    # A claim whose outcome depends on the dataset is named so in the table.
    dependent = {**result["verdicts"][0], "verdict": "dependent", "group_by": "data.name"}
    write_readme(readme, [{**result, "verdicts": [dependent]}])
    assert "| C-1 x | **dataset-dependent** |" in readme.read_text()


def test_recording_one_study_keeps_the_others(tmp_path: Path) -> None:
    for name in ("zeta", "b", "a"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"study": name}))
    got = [r["study"] for r in recorded_results(tmp_path, ["b", "a"])]
    assert got == ["b", "a", "zeta"]  # the composer's order, then any other by name


@pytest.mark.skipif(not CATALOGUE.exists(), reason="no ../shared/claims.md beside the checkout")
def test_every_catalogue_id_is_accounted_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(catalogue_ids(CATALOGUE)) > 40
    assert main(["claims", "--catalog", str(CATALOGUE)]) == 0
    listed = capsys.readouterr().out
    assert all(cid in listed for cid in catalogue_ids(CATALOGUE))


@pytest.mark.slow
def test_record_writes_results_and_tables_from_the_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    readme, results = tmp_path / "README.md", tmp_path / "results"
    assert (
        main(
            [
                "record",
                "--quick",
                "--studies",
                "optimizers",
                "--tracking-uri",
                uri,
                "--readme",
                str(readme),
                "--results",
                str(results),
            ]
        )
        == 0
    )
    recorded = json.loads((results / "optimizers.json").read_text())
    assert recorded["quick"] and recorded["verdicts"]
    text = readme.read_text()
    assert f"Sweep `{recorded['sweep_id']}`" in text
    for v in recorded["verdicts"]:
        assert f"| {v['id']} " in text and f"**{v['verdict']}**" in text
