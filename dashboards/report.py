"""A sweep's report: one self-contained HTML page plus its figures as PNG files.

:func:`build_report` takes plain inputs (a :class:`SweepInfo`, the trial table as
:meth:`orchestrator.Client.trials` returns it, the verdicts, per-run metric histories) and
writes ``report.html`` with every figure embedded as base64 PNG (so the page can be mailed
or opened from MLflow's artifact view) and also saved beside it. It reads no store: the
MLflow side lives in :mod:`orchestrator.report.build`.

The learning curves compare arms: one axis per metric with one line per arm (the mean
over seeds and a min-max band), so arms are read against one y scale. Past ``MAX_LINES``
arms the axis is split into panels by the axis with the fewest values, all on the same y
scale, colours the same in every panel. A metric with one value per trial (``test/acc``)
is drawn as points: the seeds and their mean with a t-interval, per arm.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes / CI; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from scipy import stats

from orchestrator.verdicts import ArmStats, Verdict

#: metric -> run_id -> DataFrame with columns ``step`` and ``value``.
Histories = Mapping[str, Mapping[str, pd.DataFrame]]

MAX_PANELS = 24  # beyond this a panel per value is no longer a glance
MAX_LINES = 12  # arms on one axis before it is split into panels (same y scale)
_COLOURS = {
    "confirmed": "#1a7f37",
    "refuted": "#cf222e",
    "inconclusive": "#9a6700",
    "dependent": "#8250df",
}


@dataclass(frozen=True)
class SweepInfo:
    """What the report says about the sweep besides its trials.

    Args:
        sweep_id: The sweep's id.
        study: The study's name.
        description: The study's description.
        metric: The sweep's metric (the final-metric table and first curve).
        mode: ``max`` or ``min``.
        experiment_id: MLflow experiment, for links to the runs.
        parent_run_id: The sweep's parent run.
        tracking_uri: The store, shown in the header.
        ui_base: Prefix of run links (an MLflow UI address); empty gives relative links
            ``#/experiments/ID/runs/RUN`` that work when the page is served by the UI.
    """

    sweep_id: str
    study: str
    description: str = ""
    metric: str = "val/acc"
    mode: str = "max"
    experiment_id: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""
    ui_base: str = ""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, fmt: str = "{:.4g}") -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"


def _run_link(sweep: SweepInfo, run_id: str, text: str) -> str:
    href = f"{sweep.ui_base}#/experiments/{sweep.experiment_id}/runs/{run_id}"
    return f'<a href="{_e(href)}" target="_top">{_e(text)}</a>'


def _arm_columns(trials: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The axes that vary in this table (seed excluded): they name an arm."""
    cols = [a for a in axes if a != "seed" and a in trials.columns]
    return [c for c in cols if trials[c].dropna().astype(str).nunique() > 1] or [c for c in cols][
        :1
    ]


def _arm_label(row: Mapping[str, object], cols: Sequence[str]) -> str:
    # pd.isna of a list-valued arm (model.hidden=[128, 64]) is an array, not a bool.
    parts = [
        f"{c}={row[c]}" for c in cols if not pd.api.types.is_scalar(row[c]) or not pd.isna(row[c])
    ]
    return " ".join(parts) or "all"


# -- figures --------------------------------------------------------------------------------
def _curve(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean, min and max across runs at each step (runs may stop at different steps)."""
    data = pd.concat([f[["step", "value"]] for f in frames], ignore_index=True)
    data = data[np.isfinite(data["value"].to_numpy(float))]
    return data.groupby("step")["value"].agg(["mean", "min", "max", "count"]).reset_index()


def _curves_figure(
    metric: str, trials: pd.DataFrame, runs: Mapping[str, pd.DataFrame], cols: list[str]
) -> plt.Figure | None:
    """All arms on one axis (mean over seeds, min-max band); a metric with one value per
    run is drawn as points with intervals instead. Past ``MAX_LINES`` arms, one panel per
    value of the axis with the fewest values, every panel on the same y scale."""
    fin = trials[(trials["outcome"] == "finished") & trials["run_id"].isin(list(runs))]
    fin = fin[[len(runs[r]) > 0 for r in fin["run_id"]]]
    if fin.empty:
        return None
    if all(len(runs[r]) <= 1 for r in fin["run_id"]):
        return _points_figure(metric, fin, runs, cols)
    labels = [_arm_label(r, cols) for r in fin.to_dict("records")]
    panel_col = None
    if len(set(labels)) > MAX_LINES:
        counts = {c: fin[c].dropna().astype(str).nunique() for c in cols}
        panel_col = min(
            (c for c in cols if 2 <= counts[c] <= MAX_PANELS), key=lambda c: counts[c], default=None
        )
    line_cols = [c for c in cols if c != panel_col]
    panels = list(dict.fromkeys(fin[panel_col].astype(str))) if panel_col else ["all"]
    fin = fin.assign(
        _line=[_arm_label(r, line_cols) for r in fin.to_dict("records")],
        _panel=fin[panel_col].astype(str) if panel_col else "all",
    )
    lines = list(dict.fromkeys(fin["_line"]))
    cmap = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    colour = {name: cmap(i % cmap.N) for i, name in enumerate(lines)}
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    legend_cols = max(1, math.ceil(len(lines) / 24))
    fig, axs = plt.subplots(
        nrows,
        ncols,
        figsize=(5.0 * ncols + 2.2 * legend_cols, 3.6 * nrows + 0.6),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    positive = True
    for ax, panel in zip(axs.flat, panels):
        part = fin[fin["_panel"] == panel]
        for name, group in part.groupby("_line", sort=False):
            c = _curve([runs[r] for r in group["run_id"]])
            positive &= bool((c["min"] > 0).all())
            ax.plot(
                c["step"],
                c["mean"],
                color=colour[name],
                lw=1.6,
                marker="o" if len(c) == 1 else None,
                ms=3,
                label=name,
            )
            if (c["count"] > 1).any():
                ax.fill_between(c["step"], c["min"], c["max"], color=colour[name], alpha=0.15, lw=0)
        if panel_col:  # one axis: the figure's title names the metric
            ax.set_title(f"{panel_col}={panel}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8, labelleft=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are epochs
    for ax in list(axs.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axs[-1]:
        ax.set_xlabel("step (epoch)", fontsize=8)
    for ax in axs[:, 0]:
        ax.set_ylabel(metric, fontsize=8)
    if positive and "loss" in metric:
        # Losses of a sweep span orders of magnitude (an LR range test); a log axis keeps
        # the good arms from being flattened against zero.
        lo = np.nanmin([ln.get_ydata().min() for ax in axs.flat for ln in ax.get_lines()] or [1])
        hi = np.nanmax([ln.get_ydata().max() for ax in axs.flat for ln in ax.get_lines()] or [1])
        if lo > 0 and hi / lo > 100:
            for ax in axs.flat:
                ax.set_yscale("log")
    handles = [plt.Line2D([], [], color=colour[n], lw=2) for n in lines]
    fig.suptitle(f"{metric}: mean over finished seeds, band = min-max", fontsize=10)
    if len(lines) > 1 or line_cols:
        fig.legend(
            handles,
            lines,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=7,
            ncols=legend_cols,
            frameon=False,
        )
    fig.tight_layout()
    return fig


def _points_figure(
    metric: str,
    fin: pd.DataFrame,
    runs: Mapping[str, pd.DataFrame],
    cols: list[str],
    confidence: float = 0.95,
) -> plt.Figure:
    """One value per run (``test/acc``): per arm its seeds as dots and their mean with a
    t-interval, the arms on one axis, in plan order."""
    values = fin.assign(
        _arm=[_arm_label(r, cols) for r in fin.to_dict("records")],
        _v=[float(runs[r]["value"].iloc[-1]) for r in fin["run_id"]],
    )
    arms = list(dict.fromkeys(values["_arm"]))
    n = values.groupby("_arm", sort=False)["_v"].count()
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.38 * len(arms)))
    rng = np.random.default_rng(0)  # a fixed jitter: the same report twice is the same PNG
    for i, arm in enumerate(arms):
        v = values.loc[values["_arm"] == arm, "_v"].to_numpy(float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        ax.scatter(v, i + rng.uniform(-0.12, 0.12, len(v)), s=12, color="#8c959f", zorder=2)
        mean = float(v.mean())
        lo = hi = mean
        if len(v) > 1 and v.std(ddof=1) > 0:
            lo, hi = stats.t.interval(
                confidence, len(v) - 1, loc=mean, scale=v.std(ddof=1) / math.sqrt(len(v))
            )
        ax.errorbar(
            [mean],
            [i],
            xerr=[[mean - lo], [hi - mean]],
            fmt="o",
            color="#0969da",
            ms=6,
            capsize=3,
            lw=1.6,
            zorder=3,
        )
    ax.set_yticks(range(len(arms)), [f"{a} (n={n[a]})" for a in arms], fontsize=8)
    ax.invert_yaxis()  # the first arm at the top, as in the tables
    ax.set_xlabel(metric, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"{metric}: one value per trial; dots = seeds, bar = mean and {confidence:.0%} t-interval",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _save(fig: plt.Figure, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- tables ---------------------------------------------------------------------------------
def arm_table(
    trials: pd.DataFrame, cols: Sequence[str], metric: str, mode: str, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per arm: trial counts by outcome and the metric's mean, std, CI (finished).

    Args:
        trials: The trial table.
        cols: The arm columns.
        metric: The metric summarised (finished trials only).
        mode: ``max`` or ``min``: the rows are sorted best first.
        confidence: Level of the t-interval of the mean.

    Returns:
        A DataFrame with the arm columns, ``n``, ``finished``, ``failed``, ``diverged``,
        ``other``, ``mean``, ``std``, ``ci_low``, ``ci_high``.
    """
    rows = []
    keyed = trials.assign(_arm=[_arm_label(r, cols) for r in trials.to_dict("records")])
    for _, g in keyed.groupby("_arm", sort=False):
        out = g["outcome"]
        fin = g[out == "finished"]
        v = (
            pd.to_numeric(fin[metric], errors="coerce").dropna().to_numpy(float)
            if metric in g
            else np.array([])
        )
        mean = float(v.mean()) if len(v) else math.nan
        std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        lo = hi = math.nan
        if len(v) > 1 and std > 0:
            lo, hi = stats.t.interval(
                confidence, len(v) - 1, loc=mean, scale=std / math.sqrt(len(v))
            )
        elif len(v) > 1:
            lo = hi = mean
        rows.append(
            {
                **{c: g[c].iloc[0] for c in cols},
                "n": len(g),
                "finished": int((out == "finished").sum()),
                "failed": int((out == "failed").sum()),
                "diverged": int((out == "diverged").sum()),
                "other": int((~out.isin(["finished", "failed", "diverged"])).sum()),
                "mean": mean,
                "std": std,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("mean", ascending=mode == "min", na_position="last")
    return df.reset_index(drop=True)


def _arms_html(arms: Sequence[ArmStats]) -> str:
    if not arms:
        return ""
    df = pd.DataFrame(
        [
            {
                "arm": a.label,
                "n": a.n,
                "mean": a.mean,
                "std": a.std,
                "ci_low": a.ci_low,
                "ci_high": a.ci_high,
                "finished": a.n_finished,
                "failed": a.n_failed,
                "diverged": a.n_diverged,
                "other": a.n_other,
            }
            for a in arms
        ]
    )
    for c in ("mean", "std", "ci_low", "ci_high"):  # None (no value) -> NaN -> blank cell
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.to_html(
        index=False,
        escape=True,
        na_rep="",
        float_format=lambda x: f"{x:.4g}",
        classes="arms",
        border=0,
    )


def _sanity_first(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Claims whose arms did not learn lead: their other numbers mean nothing."""
    return sorted(verdicts, key=lambda v: " did not learn (" not in v.detail)


def _verdict_html(v: Verdict) -> str:
    colour = _COLOURS.get(v.verdict, "#57606a")
    ci = f"[{_num(v.ci_low)}, {_num(v.ci_high)}]" if v.ci_low is not None else ""
    what = " ".join(
        x
        for x in (
            f"test {v.test}",
            f"metric {v.metric}" if v.metric else "",
            f"axis {v.axis}",
            f"predict {v.predict}" if v.predict else "",
            f"per {v.group_by}" if v.group_by else "",
        )
        if x
    )
    cells = [
        ("effect", _num(v.effect, "{:+.4g}")),
        (f"{v.confidence:.0%} CI", ci),
        ("min_effect", _num(v.min_effect, "{:g}")),
        ("n a / b", f"{v.n_a} / {v.n_b}"),
        ("method", v.method),
        ("p (one-sided, raw)", _num(v.p_value, "{:.3g}")),
        ("p (Holm over the claims)", _num(v.p_adjusted, "{:.3g}")),
    ]
    numbers = "".join(f"<th>{_e(k)}</th>" for k, _ in cells)
    values = "".join(f"<td>{_e(x)}</td>" for _, x in cells)
    groups = ""
    if v.groups:
        items = "".join(
            f'<li><span class="badge" style="background:{_COLOURS.get(g.verdict, "#57606a")}">'
            f"{_e(g.verdict)}</span> {_e(g.group)}: {_e(g.detail)}</li>"
            for g in v.groups
        )
        groups = f"<ul class=groups>{items}</ul>"
    return (
        f'<div class="verdict" style="border-left-color:{colour}">'
        f'<h3><span class="badge" style="background:{colour}">'
        f"{_e(v.label)}</span> "
        f"{_e(v.id)} <small>{_e(v.source)}</small></h3>"
        f"<p class=statement>{_e(v.statement)}</p><p class=what>{_e(what)}</p>"
        f"<table class=numbers><tr>{numbers}</tr><tr>{values}</tr></table>"
        f"<p class=detail>{_e(v.detail)}</p>{groups}"
        f"<details><summary>per arm</summary>{_arms_html(v.arms)}</details></div>"
    )


def _axis_values(trials: pd.DataFrame, axis: str) -> list[str] | None:
    """The values ``axis`` took; a config group's choice is its ``.name`` column
    (optimizer=adam -> optimizer.name). None when no column holds it."""
    col = next((c for c in (axis, f"{axis}.name") if c in trials.columns), None)
    return sorted({str(x) for x in trials[col].dropna()}) if col else None


def _pinned(v: Verdict, trials: pd.DataFrame, axes: Sequence[str]) -> bool:
    """A claim over one axis the sweep did not vary: there is nothing to compare."""
    if not v.axis or v.groups or v.axis in axes or "," in v.axis:  # "a, b": search params
        return False
    return len(_axis_values(trials, v.axis) or []) <= 1


def _untestable_html(v: Verdict, trials: pd.DataFrame) -> str:
    """One line saying why the claim cannot be tested here (its axis was pinned)."""
    colour = _COLOURS.get(v.verdict, "#57606a")
    values = _axis_values(trials, v.axis)
    why = f"was pinned to {values[0]}" if values else "did not vary"
    return (
        f'<p class="verdict" style="border-left-color:{colour}">'
        f'<span class="badge" style="background:{colour}">not testable</span> '
        f"<b>{_e(v.id)}</b> {_e(v.statement)}: the axis <code>{_e(v.axis)}</code> "
        f"{_e(why)} in this sweep, so its arms cannot be compared (make "
        f"<code>{_e(v.axis)}</code> a sweep axis to test it).</p>"
    )


def _trials_html(trials: pd.DataFrame, cols: Sequence[str], sweep: SweepInfo) -> str:
    shown = [
        c for c in ("trial_index", *cols, "seed", "outcome", sweep.metric) if c in trials.columns
    ]
    head = "".join(f"<th>{_e(c)}</th>" for c in [*shown, "error", "run"])
    body = []
    ordered = trials.sort_values("trial_index") if "trial_index" in trials else trials
    for r in ordered.to_dict("records"):
        cells = []
        for c in shown:
            x = r.get(c)
            text = _num(x) if isinstance(x, float) else ("" if x is None else str(x))
            cells.append(f"<td>{_e(text)}</td>")
        err = str(r.get("error") or "")
        cells.append(f'<td class=err title="{_e(err)}">{_e(err[:120])}</td>')
        cells.append(f"<td>{_run_link(sweep, str(r['run_id']), str(r['run_id'])[:8])}</td>")
        body.append(f'<tr class="{_e(r.get("outcome", ""))}">{"".join(cells)}</tr>')
    return (
        f"<details><summary>All {len(trials)} trials</summary><table class=trials>"
        f"<tr>{head}</tr>{''.join(body)}</table></details>"
    )


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1f2328;
  padding:0 16px}
h1{font-size:22px;margin-bottom:4px}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left}
th{background:#f6f8fa}
.verdict{border-left:6px solid;padding:4px 12px;margin:14px 0;background:#fbfbfc}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:12px;text-transform:uppercase}
.verdict h3{margin:6px 0;font-size:16px}
.statement{font-style:italic;margin:2px 0}
.what,.detail{margin:4px 0}
.what{color:#57606a;font-size:12px}
small{color:#57606a;font-weight:normal}
.counts span{margin-right:14px}
img{max-width:100%;border:1px solid #eee;margin:8px 0}
tr.failed td,tr.diverged td{background:#fff5f5}
td.err{max-width:380px;overflow:hidden;white-space:nowrap}
"""


def _search_html(search: object, out: Path) -> tuple[str, list[Path]]:
    """The section of a search sweep: best trial, fANOVA importances, Optuna's plots.

    ``search`` is an :class:`orchestrator.search.SearchSummary` (figures as local paths);
    its PNGs are copied beside the report and embedded.
    """
    best = getattr(search, "best", {}) or {}
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(_num(v) if isinstance(v, float) else v)}</td></tr>"
        for k, v in (best.get("params") or {}).items()
    )
    head = ""
    if best:
        values = ", ".join(
            f"{_e(m)} = {_num(v)}" for m, v in zip(best.get("metrics", []), best.get("values", []))
        )
        head = f"<p>best trial <b>{_e(best.get('number'))}</b>: {values}</p>"
    imps = ""
    for branch, imp in (getattr(search, "importances", {}) or {}).items():
        cells = "".join(f"<tr><td>{_e(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items())
        imps += (
            f"<h3>fANOVA importances <small>{_e(branch)}</small></h3>"
            f"<table><tr><th>parameter</th><th>importance</th></tr>{cells}</table>"
        )
    pngs: list[Path] = []
    figs = ""
    for name, path in (getattr(search, "figures", {}) or {}).items():
        src = Path(path)
        if not src.exists():
            continue
        dest = out / f"search_{_slug(name)}.png"
        dest.write_bytes(src.read_bytes())
        pngs.append(dest)
        b64 = base64.b64encode(dest.read_bytes()).decode()
        figs += f'<h3>{_e(name)}</h3><img alt="{_e(name)}" src="data:image/png;base64,{b64}">'
    notes = "".join(f"<li>{_e(n)}</li>" for n in getattr(search, "notes", []) or [])
    html_ = (
        f"<h2>Search</h2>{head}<table><tr><th>parameter</th><th>best</th></tr>{rows}"
        f"</table>{imps}{figs}" + (f"<ul class=what>{notes}</ul>" if notes else "")
    )
    return html_, pngs


def build_report(
    out_dir: str | Path,
    sweep: SweepInfo,
    trials: pd.DataFrame,
    verdicts: Sequence[Verdict],
    histories: Histories,
    axes: Sequence[str],
    search: object | None = None,
) -> list[Path]:
    """Write ``report.html`` and one ``curves_<metric>.png`` per metric into ``out_dir``.

    Args:
        out_dir: Created if missing.
        sweep: The sweep's identity and settings.
        trials: The trial table (:meth:`orchestrator.Client.trials`).
        verdicts: From :func:`orchestrator.verdicts.evaluate`.
        histories: metric -> run_id -> ``[step, value]``: one curve figure per metric, in
            this order (runs without a history are skipped).
        axes: The sweep's axes (the parent run's ``orch.axes``); those that vary name arms.
        search: A search sweep's :class:`orchestrator.search.SearchSummary`: adds a section
            with its best trial, importances and plots (their PNGs are written too).

    Returns:
        The written files: ``report.html`` first, then the PNGs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = trials if not trials.empty else pd.DataFrame(columns=["run_id", "outcome"])
    cols = _arm_columns(trials, axes)
    pngs: list[Path] = []
    figures = []
    for metric, runs in histories.items():
        fig = _curves_figure(metric, trials, runs, cols)
        if fig is None:
            continue
        path = out / f"curves_{_slug(metric)}.png"
        figures.append((metric, _save(fig, path)))
        pngs.append(path)

    search_html, search_pngs = _search_html(search, out) if search is not None else ("", [])
    pngs += search_pngs
    counts = trials["outcome"].value_counts().to_dict() if len(trials) else {}
    count_html = "".join(f"<span><b>{_e(n)}</b> {_e(k)}</span>" for k, n in counts.items())
    verdict_counts = pd.Series([v.label for v in verdicts]).value_counts().to_dict()
    summary = ", ".join(f"{n} {k}" for k, n in verdict_counts.items()) or "no claims"
    arms = arm_table(trials, cols, sweep.metric, sweep.mode) if len(trials) else pd.DataFrame()
    arms_html = (
        arms.to_html(
            index=False, escape=True, na_rep="", border=0, float_format=lambda x: f"{x:.4g}"
        )
        if len(arms)
        else "<p>none</p>"
    )
    parent = (
        _run_link(sweep, sweep.parent_run_id, sweep.parent_run_id) if sweep.parent_run_id else ""
    )
    figs_html = (
        "".join(
            f'<h3>{_e(m)}</h3><img alt="{_e(m)} learning curves" src="data:image/png;base64,{b64}">'
            for m, b64 in figures
        )
        or "<p>no per-epoch history was recorded for finished trials</p>"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(sweep.study)} - {_e(sweep.sweep_id)}</title>
<style>{_CSS}</style></head><body>
<h1>Study {_e(sweep.study)}</h1>
<p>{_e(sweep.description)}</p>
<p>sweep <code>{_e(sweep.sweep_id)}</code> &middot; parent run {parent} &middot; metric
<code>{_e(sweep.metric)}</code> ({_e(sweep.mode)}) &middot; store <code>{
        _e(sweep.tracking_uri)
    }</code>
&middot; generated {_e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>
<p class=counts><b>{len(trials)}</b> trials: {count_html}</p>
<h2>Verdicts <small>{_e(summary)}</small></h2>
{
        "".join(
            _untestable_html(v, trials) if _pinned(v, trials, axes) else _verdict_html(v)
            for v in _sanity_first(verdicts)
        )
        or "<p>the study states no claims</p>"
    }
{search_html}
<h2>Learning curves</h2>
{figs_html}
<h2>Final {_e(sweep.metric)} per arm <small>finished trials; t-interval 95%</small></h2>
{arms_html}
<h2>Trials</h2>
{_trials_html(trials, cols, sweep)}
</body></html>
"""
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    return [report, *pngs]
