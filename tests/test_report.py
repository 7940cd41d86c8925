"""The HTML report (synthetic inputs) and the end-to-end path: a real sweep on Ray into a real
sqlite MLflow store ends with verdicts, a report and verdict tags on its parent run."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from dashboards.report import SweepInfo, arm_table, build_report
from orchestrator import Client
from orchestrator.cli import main
from orchestrator.report import report_sweep
from orchestrator.verdicts import evaluate, verdicts_from_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _big_sweep() -> tuple[pd.DataFrame, dict]:
    """200 trials: 2 grids x (10 LRs | 10 schedulers) x 10 seeds, some diverged/failed."""
    rows, curves = [], {"val/acc": {}, "train/loss": {}}
    i = 0
    for grid, axis, values in (
        ("range", "optimizer.lr", [10.0**e for e in range(-5, 5)]),
        ("families", "scheduler", [f"s<{k}>" for k in range(10)]),
    ):
        for j, v in enumerate(values):
            for seed in range(10):
                outcome = (
                    "diverged"
                    if grid == "range" and j >= 8
                    else ("failed" if (i % 37) == 5 else "finished")
                )
                acc = 0.5 + 0.04 * j + 0.001 * seed if outcome == "finished" else float("nan")
                rid = f"run{i:03d}"
                rows.append(
                    {
                        "run_id": rid,
                        "trial_index": i,
                        "outcome": outcome,
                        "seed": seed,
                        "grid": grid,
                        axis: v,
                        "test/acc": acc,
                        "error": "boom <script>" if outcome == "failed" else "",
                    }
                )
                steps = list(range(5))
                curves["val/acc"][rid] = pd.DataFrame(
                    {"step": steps, "value": [acc * (s + 1) / 5 for s in steps]}
                )
                curves["train/loss"][rid] = pd.DataFrame(
                    {"step": steps, "value": [2.0 / (s + 1 + j) for s in steps]}
                )
                i += 1
    return pd.DataFrame(rows), curves


def test_build_report_reads_well_for_200_trials(tmp_path: Path) -> None:
    trials, curves = _big_sweep()
    claims = [
        {
            "id": "LR-1/u<shape>",
            "statement": "best LR is <mid> & not the edge",
            "test": "best",
            "metric": "test/acc",
            "mode": "max",
            "axis": "optimizer.lr",
            "predict_in": [1e-3, 1e-2],
            "where": {"grid": "range"},
        },
        {
            "id": "R",
            "test": "rate",
            "axis": "optimizer.lr",
            "predict": "increasing",
            "where": {"grid": "range"},
        },
    ]
    verdicts = evaluate(claims, trials, axes=["grid", "optimizer.lr", "scheduler", "seed"])
    assert [v.verdict for v in verdicts] == ["refuted", "confirmed"]
    info = SweepInfo(
        "lr-2026",
        "lr_schedules",
        "a <b>study</b>",
        "test/acc",
        "max",
        "7",
        "parentid",
        "sqlite:///x.db",
    )
    files = build_report(
        tmp_path / "out",
        info,
        trials,
        verdicts,
        curves,
        ["grid", "optimizer.lr", "scheduler", "seed"],
    )
    page_path, *pngs = files
    assert page_path.name == "report.html"
    assert sorted(p.name for p in pngs) == ["curves_train_loss.png", "curves_val_acc.png"]
    for p in pngs:
        assert p.read_bytes().startswith(PNG_MAGIC)
    page = page_path.read_text()
    # Self-contained: each PNG embedded as base64 and identical to the file.
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 2
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}
    # Escaped: no raw markup from names, statements or errors.
    assert "<script>" not in page and "<b>study</b>" not in page and "s<3>" not in page
    assert html.escape("boom <script>") in page and html.escape("LR-1/u<shape>") in page
    # Verdicts colour-coded with their numbers; per-trial links to MLflow's UI.
    assert page.count('class="verdict"') == 2
    assert "#cf222e" in page and "#1a7f37" in page  # refuted red, confirmed green
    assert verdicts[0].method in page and "Spearman trend" in page
    assert page.count('href="#/experiments/7/runs/run') == 200
    assert "<details><summary>All 200 trials</summary>" in page
    # The per-arm table: 20 arms, counts by outcome.
    arms = arm_table(trials, ["grid", "optimizer.lr", "scheduler"], "test/acc", "max")
    assert len(arms) == 20 and arms["n"].sum() == 200
    assert arms.loc[arms["optimizer.lr"] == 1e3, "diverged"].item() == 10
    assert arms["mean"].iloc[0] == arms["mean"].max()  # best first


def test_build_report_with_no_trials_or_histories(tmp_path: Path) -> None:
    files = build_report(tmp_path, SweepInfo("s", "st"), pd.DataFrame(), [], {}, [])
    assert [f.name for f in files] == ["report.html"]
    assert "the study states no claims" in files[0].read_text()


SWEEP = ["sweep", "optimizers", "--quick", "optimizer=sgd_momentum,adam", "train.epochs=2"]


def test_sweep_ends_with_verdicts_report_and_tags(
    ray_session, tracking_uri: str, tmp_path: Path, capsys
) -> None:
    assert main([*SWEEP, "--tracking-uri", tracking_uri]) == 0
    client = Client(tracking_uri)
    sweep = client.sweeps().iloc[0]
    assert sweep.status == "FINISHED" and sweep.n_trials == 6
    ml = MlflowClient(tracking_uri)
    pid = sweep.run_id
    top = {a.path for a in ml.list_artifacts(pid)}
    assert {"verdicts.json", "config.yaml", "report"} <= top
    report = {a.path for a in ml.list_artifacts(pid, "report")}
    assert "report/report.html" in report
    assert {
        "report/curves_test_acc.png",
        "report/curves_val_acc.png",
        "report/curves_train_loss.png",
    } <= report

    stored = verdicts_from_json(
        Path(ml.download_artifacts(pid, "verdicts.json", str(tmp_path))).read_text()
    )
    ids = [v.id for v in stored]
    assert ids == [
        "OPT-1",
        "OPT-2",
        "OPT-5",
        "OPT-7/early",
        "OPT-7/late",
        "OPT-8/early",
        "OPT-8/end",
        "OPT-8/gap",
    ]
    by_id = {v.id: v for v in stored}
    # Arms the command line left out, or a step past the 2 epochs: inconclusive, said why.
    assert by_id["OPT-1"].verdict == "inconclusive" and "b has 0" in by_id["OPT-1"].detail
    for cid in ("OPT-2", "OPT-5", "OPT-7/early", "OPT-7/late"):  # their arms were not run
        assert by_id[cid].verdict == "inconclusive"
    for cid in ("OPT-8/early", "OPT-8/end", "OPT-8/gap"):
        v = by_id[cid]
        assert v.n_a == v.n_b == 3 and v.method == "paired t", v.detail
        assert v.ci_low <= v.effect <= v.ci_high
    tags = ml.get_run(pid).data.tags
    assert {k: tags[f"orch.verdict.{k}"] for k in ids} == {v.id: v.verdict for v in stored}

    assert client.verdicts(sweep.sweep_id) == stored
    page = Path(ml.download_artifacts(pid, "report/report.html", str(tmp_path))).read_text()
    assert "OPT-8/end" in page and f"#/experiments/{sweep.experiment_id}/runs/" in page

    capsys.readouterr()
    assert main(["show", sweep.sweep_id, "--tracking-uri", tracking_uri]) == 0
    shown = capsys.readouterr().out
    assert "verdicts" in shown and "OPT-8/gap" in shown and "paired t" in shown

    # orch report rebuilds everything; a local copy when asked.
    ml.delete_tag(pid, "orch.verdict.OPT-5")
    out = tmp_path / "local"
    assert (
        main(["report", sweep.sweep_id[:-2], "--tracking-uri", tracking_uri, "--out", str(out)])
        == 0
    )
    assert ml.get_run(pid).data.tags["orch.verdict.OPT-5"] == by_id["OPT-5"].verdict
    assert (out / "report.html").exists() and (out / "curves_train_loss.png").exists()
    again, paths = report_sweep(tracking_uri, sweep.sweep_id)
    assert [v.verdict for v in again] == [v.verdict for v in stored]
    assert paths[:2] == ["verdicts.json", "report/report.html"]
    assert (
        json.loads(
            Path(ml.download_artifacts(pid, "verdicts.json", str(tmp_path / "x"))).read_text()
        )[5]["id"]
        == "OPT-8/early"
    )


def _small_sweep() -> tuple[pd.DataFrame, dict]:
    """3 optimizers x 3 seeds: per-epoch val/acc, one test/acc value per trial."""
    rows, curves = [], {"val/acc": {}, "test/acc": {}}
    for i, (opt, seed) in enumerate((o, s) for o in ("sgd", "adam", "rmsprop") for s in range(3)):
        acc = {"sgd": 0.3, "adam": 0.8, "rmsprop": 0.85}[opt] + 0.01 * seed
        rid = f"run{i}"
        rows.append(
            {
                "run_id": rid,
                "trial_index": i,
                "outcome": "finished",
                "seed": seed,
                "optimizer": opt,
                "optimizer.name": opt,
                "test/acc": acc,
                "error": "",
            }
        )
        curves["val/acc"][rid] = pd.DataFrame(
            {"step": range(4), "value": [acc * (s + 1) / 4 for s in range(4)]}
        )
        curves["test/acc"][rid] = pd.DataFrame({"step": [3], "value": [acc]})
    return pd.DataFrame(rows), curves


def test_curves_overlay_arms_and_one_value_metrics_are_points(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from dashboards.report import _curves_figure

    trials, curves = _small_sweep()
    fig = _curves_figure("val/acc", trials, curves["val/acc"], ["optimizer"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 1 and len(visible[0].get_lines()) == 3  # one axis, a line per arm
    plt.close(fig)
    fig = _curves_figure("test/acc", trials, curves["test/acc"], ["optimizer"])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "optimizer=sgd (n=3)",
        "optimizer=adam (n=3)",
        "optimizer=rmsprop (n=3)",
    ]
    assert len(ax.collections) >= 3  # each arm's seeds as dots (plus its interval bars)
    plt.close(fig)
    # The 200-trial sweep has 20 arms: panels by its 2-valued axis, on one y scale.
    big, big_curves = _big_sweep()
    fig = _curves_figure(
        "val/acc", big, big_curves["val/acc"], ["grid", "optimizer.lr", "scheduler"]
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 and visible[0].get_ylim() == visible[1].get_ylim()
    plt.close(fig)


def test_a_claim_on_a_pinned_axis_is_one_line(tmp_path: Path) -> None:
    trials, curves = _small_sweep()
    pinned = trials[trials["optimizer"] == "adam"].drop(columns=["optimizer"])
    claims = [
        {
            "id": "OPT-1",
            "statement": "momentum helps",
            "test": "compare",
            "metric": "test/acc",
            "mode": "max",
            "axis": "optimizer",
            "a": "sgd",
            "b": "adam",
            "predict": "a_better",
            "min_effect": 0.01,
        }
    ]
    verdicts = evaluate(claims, pinned, axes=["seed"])
    (page, *_) = build_report(
        tmp_path, SweepInfo("s", "optimizers"), pinned, verdicts, curves, ["seed"]
    )
    text = page.read_text()
    assert "the axis <code>optimizer</code> was pinned to adam in this sweep" in text
    assert "not in the trials table" not in text  # not the list of every column


def test_a_dataset_dependent_claim_is_shown_by_name(tmp_path: Path) -> None:
    """A ``groups: each`` claim confirmed on one dataset and refuted on the other reads
    "dataset-dependent" (its own colour), with every dataset's verdict listed."""
    rows = []
    for data, (x, y) in {"digits": (0.9, 0.8), "mnist1d": (0.6, 0.7)}.items():
        for arm, mean in (("x", x), ("y", y)):
            for seed in range(5):
                rows.append(
                    {
                        "run_id": f"{data}-{arm}-{seed}",
                        "trial_index": len(rows),
                        "outcome": "finished",
                        "seed": seed,
                        "optimizer": arm,
                        "data": data,
                        "data.name": data,
                        "test/acc": mean + 0.001 * seed,
                    }
                )
    trials = pd.DataFrame(rows)
    claim = {
        "id": "OPT-X",
        "test": "compare",
        "metric": "test/acc",
        "mode": "max",
        "axis": "optimizer",
        "a": "x",
        "b": "y",
        "predict": "a_better",
        "group_by": "data.name",
        "groups": "each",
    }
    (v,) = evaluate([claim], trials, axes=["optimizer", "data"])
    assert v.verdict == "dependent"
    (page, *_) = build_report(
        tmp_path, SweepInfo("s", "optimizers"), trials, [v], {}, ["optimizer", "data"]
    )
    text = page.read_text()
    assert "dataset-dependent</span> OPT-X" in text and "#8250df" in text
    assert "confirmed on digits; refuted on mnist1d" in text
    assert "1 dataset-dependent" in text  # the summary's counts


def test_a_list_valued_axis_labels_its_curves(tmp_path: Path) -> None:
    # A search or grid over model.hidden gives arms whose value is a list: a missing-value
    # check that reads it as an array raised while the report was built.
    rows, curves = [], {}
    for i, hidden in enumerate([[64], [128, 64], [64], [128, 64]]):
        rid = f"run{i}"
        rows.append(
            {
                "run_id": rid,
                "trial_index": i,
                "outcome": "finished",
                "seed": i // 2,
                "model.hidden": hidden,
                "val/acc": 0.5 + 0.1 * len(hidden),
            }
        )
        curves[rid] = pd.DataFrame({"step": [0, 1], "value": [0.3, 0.5 + 0.1 * len(hidden)]})
    trials = pd.DataFrame(rows)
    files = build_report(
        tmp_path, SweepInfo("s", "st"), trials, [], {"val/acc": curves}, ["model.hidden"]
    )
    assert [f.name for f in files if f.name.startswith("curves_")] == ["curves_val_acc.png"]
    assert "[128, 64]" in (tmp_path / "report.html").read_text()
