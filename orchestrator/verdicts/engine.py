"""Verdicts: a study's claims checked against its trials, never written by hand.

A study states claims in data (``study.claims`` of ``conf/study/*.yaml``); each is a
:class:`ClaimSpec`, validated at plan time like the rest of the config (a malformed claim is
exit 2 before anything runs). :func:`evaluate` turns the claims and a sweep's trial table
(exactly as :meth:`orchestrator.Client.trials` returns it) into :class:`Verdict` objects:
``confirmed``, ``refuted`` or ``inconclusive``, each with an effect size, a confidence
interval and one readable sentence with the numbers.

Rules
-----
Selection.
    ``where`` keeps the rows whose column equals the value (a list means any of them);
    ``axis`` picks the arms. Values are compared robustly: numbers by value whatever their
    type (``2.0`` in YAML matches ``2``, ``"2.0"`` or ``2.0`` in the table), booleans as
    booleans (``true``/``"True"``), everything else as stripped strings. A column missing
    from the table makes the claim inconclusive and says which.

Evidence.
    Metric claims (``compare``, ``best``) use finished trials only, with the metric's final
    value, or with its value at ``at_step`` of the per-epoch history when given. Failed,
    diverged and other trials are counted and named in the detail, never averaged in.
    ``rate`` claims use the outcome itself: of the trials that finished, diverged or failed,
    an *event* is diverged or failed (killed, pruned and interrupted trials say nothing
    about the arm and are left out). An arm with fewer than ``min_seeds`` such trials makes
    the verdict inconclusive (the numbers are still reported when they can be computed).

Effect and interval.
    Every effect is oriented so that a *positive* effect supports the prediction's "a" side
    (``compare``: a is better under ``mode``; ``rate``: a has fewer events; trends: the
    rate moves in the predicted direction). ``compare`` and ``best`` take the difference of
    means with a t-interval at ``confidence``: *paired* (one-sample t on the per-pair
    differences) when both arms hold exactly the same pairing keys, once each (the seed,
    plus every other arm column: ``model`` when two models were swept), else Welch's
    unequal-variance t. Rate differences use Newcombe's hybrid score interval built from
    each arm's Wilson interval; their significance comes from an exact test (below).

Decisions (``m`` = ``min_effect`` >= 0, ``[lo, hi]`` the interval, ``e`` the effect).
    ``a_better``: confirmed if ``lo > 0`` and ``e >= m``; refuted if ``hi < m`` (the
    advantage is confidently smaller than the smallest one that counts; with ``m = 0`` this
    is "b is significantly better"); else inconclusive. ``b_better`` is the mirror
    (the same rules on ``-e``, ``[-hi, -lo]``). ``a_not_worse``: confirmed if ``lo > -m``,
    refuted if ``hi < -m``; ``b_not_worse`` the mirror. ``equal`` (needs ``m > 0``, the
    equivalence margin): confirmed if ``[lo, hi]`` lies inside ``[-m, m]``, refuted if it
    lies entirely outside (``lo > m`` or ``hi < -m``). Confirmation and refutation are
    disjoint by construction.

``best``.
    Per-arm means over the finished seeds; arms with fewer than ``min_seeds`` are left out
    (and named). Confirmed when the best arm inside ``predict_in`` beats the best arm
    outside it with an interval above 0 and an effect ``>= min_effect``; refuted when the
    best outside arm beats *every* eligible inside arm with an interval above 0; else
    inconclusive. The reported effect is best inside minus best outside.

``rate`` with ``a``/``b`` ("Fisher exact").
    Fisher's exact test on the 2x2 table of events. For ``a_better``/``b_better`` the
    "interval above/below 0" of the rules is replaced by the one-sided exact p-value at
    ``(1 - confidence) / 2`` (the level of one bound of a two-sided interval); refuted also
    when the exact test is significant the other way, or when the Newcombe interval of the
    predicted reduction lies below ``min_effect``. ``equal`` and ``*_not_worse`` use the
    Newcombe interval with the rules above.

``rate`` with ``increasing``/``decreasing`` ("Spearman trend").
    Spearman's rank correlation between the numeric axis value and the event indicator over
    all evidence trials (ranks make it indifferent to a log-spaced axis), one-sided at
    ``(1 - confidence) / 2``. The effect is the change of the event rate from the lowest to
    the highest axis value (negated for ``decreasing``), with its Newcombe interval.
    Confirmed when the trend is significant in the predicted direction and the effect is
    ``>= min_effect``; refuted when it is significant the other way, or when the rates are
    *flat with enough samples*: the interval of the end-to-end change lies entirely below
    ``min_effect`` (only possible with ``min_effect > 0``, and only once the arms hold enough
    seeds for the interval to be that narrow); else inconclusive.

``group_by``.
    The claim is evaluated once per value of the column (one sub-verdict each, in
    ``Verdict.groups``) and is read as "holds in every group": refuted if any group is
    refuted, confirmed if every group is confirmed, else inconclusive. The overall numbers
    are those of the group that decided it (the first refuted group; when all are
    confirmed, the one with the weakest evidence, i.e. the lowest ``ci_low``; otherwise the
    first inconclusive group), and the detail says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, NonNegativeInt, ValidationError, model_validator

from orchestrator.errors import SpecError, describe_validation_error
from tasks.spec import StrictModel


def _stats() -> Any:
    """``scipy.stats``, imported on first use: it costs ~1 s, and every ``orch`` command
    imports this module (claims are validated at plan time) while only verdicts need it."""
    from scipy import stats

    return stats

#: A value of an axis as a config states it.
Scalar = bool | int | float | str
#: ``history(run_id, metric)`` -> DataFrame with columns ``step`` and ``value``.
History = Callable[[str, str], pd.DataFrame]

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
PAIR_PREDICTS = ("a_better", "b_better", "equal", "a_not_worse", "b_not_worse")
TREND_PREDICTS = ("increasing", "decreasing")
#: Outcomes that are evidence about an arm; of those, EVENTS count as events for rate claims.
EVIDENCE = ("finished", "diverged", "failed")
EVENTS = ("diverged", "failed")
#: Columns of Client.trials that describe a run, not its configuration (never pairing keys).
META_COLUMNS = frozenset({"run_id", "trial_index", "trial_key", "outcome", "status", "error",
                          "node", "reused_from", "attempt", "start_time"})


class ClaimSpec(StrictModel):
    """One claim of a study, checked by :func:`evaluate`.

    Args:
        id: Unique within the study (``OPT-8/end``); becomes the tag ``orch.verdict.<id>``.
        source: Where the notes say it (``002:L1099``).
        statement: The claim in words.
        test: ``compare`` (arm a vs arm b on a metric), ``best`` (the best arm lies in
            ``predict_in``) or ``rate`` (diverged/failed fraction, between two arms or as a
            trend along a numeric axis).
        metric: The metric (``test/acc``); required for compare and best, absent for rate.
        mode: ``max`` or ``min``: which direction of the metric is better.
        axis: The trial-table column that holds the arms (``optimizer``, ``optimizer.lr``).
        a: Arm a's value on ``axis``.
        b: Arm b's value on ``axis``.
        predict: ``a_better``, ``b_better``, ``equal``, ``a_not_worse``, ``b_not_worse``;
            ``increasing``/``decreasing`` for rate trends; omitted for best.
        predict_in: For best: the axis values among which the best arm is predicted.
        group_by: Optional column: one sub-verdict per value, combined (module docstring).
        min_effect: Smallest effect that counts, in metric units (event-rate units for
            rate claims); for ``equal`` the equivalence margin, which must be above 0.
        where: Column -> value (or list of values) filter applied before anything else.
        at_step: Use the metric's value at this step of its per-epoch history.
        min_seeds: Fewer usable trials in an arm make the verdict inconclusive.
        confidence: Confidence level of the intervals and tests.
    """

    id: str = Field(min_length=1)
    source: str = ""
    statement: str = ""
    test: Literal["compare", "best", "rate"]
    metric: str | None = Field(None, min_length=1)
    mode: Literal["min", "max"] | None = None
    axis: str = Field(min_length=1)
    a: Scalar | None = None
    b: Scalar | None = None
    predict: Literal["a_better", "b_better", "equal", "a_not_worse", "b_not_worse",
                     "increasing", "decreasing"] | None = None
    predict_in: list[Scalar] | None = None
    group_by: str | None = Field(None, min_length=1)
    min_effect: float = Field(0.0, ge=0)
    where: dict[str, Scalar | list[Scalar]] = {}
    at_step: NonNegativeInt | None = None
    min_seeds: int = Field(3, ge=2)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _fits_test(self) -> "ClaimSpec":
        # Each message names the field and what is allowed, like every SpecError.
        def need(name: str) -> None:
            if getattr(self, name) in (None, []):
                raise ValueError(f"claim {self.id!r}: {name} is required for test {self.test!r}")

        def forbid(name: str, why: str) -> None:
            if getattr(self, name) is not None:
                raise ValueError(f"claim {self.id!r}: {name} is not used by test "
                                 f"{self.test!r} ({why})")

        if self.test == "compare":
            for name in ("metric", "mode", "a", "b", "predict"):
                need(name)
            if self.predict not in PAIR_PREDICTS:
                raise ValueError(f"claim {self.id!r}: predict {self.predict!r} does not fit "
                                 f"test 'compare'; allowed: {', '.join(PAIR_PREDICTS)}")
            forbid("predict_in", "it belongs to test 'best'")
        elif self.test == "best":
            for name in ("metric", "mode", "predict_in"):
                need(name)
            forbid("a", "best compares every arm")
            forbid("b", "best compares every arm")
            forbid("predict", "the prediction is predict_in")
        else:  # rate
            forbid("metric", "rate claims count diverged/failed outcomes")
            forbid("mode", "rate claims count diverged/failed outcomes")
            forbid("at_step", "rate claims count diverged/failed outcomes")
            forbid("predict_in", "it belongs to test 'best'")
            need("predict")
            if self.predict in TREND_PREDICTS:
                forbid("a", f"predict {self.predict!r} is a trend along the axis")
                forbid("b", f"predict {self.predict!r} is a trend along the axis")
            elif self.a is None or self.b is None:
                raise ValueError(f"claim {self.id!r}: test 'rate' needs either a and b "
                                 f"(predict: {', '.join(PAIR_PREDICTS)}) or predict "
                                 f"increasing/decreasing")
        if self.a is not None and self.b is not None and values_match(self.a, self.b):
            raise ValueError(f"claim {self.id!r}: a and b are the same arm ({self.a!r})")
        if self.predict == "equal" and self.min_effect <= 0:
            raise ValueError(f"claim {self.id!r}: min_effect must be > 0 for predict 'equal' "
                             f"(it is the equivalence margin)")
        if self.group_by is not None and self.group_by == self.axis:
            raise ValueError(f"claim {self.id!r}: group_by must differ from axis {self.axis!r}")
        return self


@dataclass(frozen=True)
class ArmStats:
    """One arm's numbers, for the verdict's detail and the report.

    ``n`` is the number of usable trials: finished ones with a value for metric claims,
    finished/diverged/failed ones for rate claims (then ``mean`` is the event rate and
    the interval its Wilson interval).
    """

    label: str
    n: int
    mean: float | None = None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_finished: int = 0
    n_failed: int = 0
    n_diverged: int = 0
    n_other: int = 0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim; see the module docstring for the rules."""

    id: str
    statement: str
    source: str
    test: str
    verdict: str                 # confirmed | refuted | inconclusive
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    min_effect: float
    n_a: int
    n_b: int
    method: str
    detail: str
    arms: tuple[ArmStats, ...] = ()
    groups: tuple["Verdict", ...] = ()
    metric: str | None = None
    axis: str = ""
    predict: str | None = None
    p_value: float | None = None
    confidence: float = 0.95
    group: str | None = None     # the group_by value of a sub-verdict


# -- value matching -------------------------------------------------------------------------
def _norm(value: Any) -> tuple[str, Any] | None:
    """A comparable form of a table or config value; ``None`` for missing values."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        f = float(value)
        return None if math.isnan(f) else ("num", f)
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return ("bool", text.lower() == "true")
    try:
        f = float(text)
    except ValueError:
        return ("str", text)
    return None if math.isnan(f) else ("num", f)


def values_match(x: Any, target: Any) -> bool:
    """Whether a table value equals a config value (numbers by value, whatever the type)."""
    nx, nt = _norm(x), _norm(target)
    if nx is None or nt is None or nx[0] != nt[0]:
        return False
    if nx[0] == "num":
        return math.isclose(nx[1], nt[1], rel_tol=1e-9, abs_tol=1e-12)
    return nx[1] == nt[1]


def _label(value: Any) -> str:
    n = _norm(value)
    if n is None:
        return "-"
    if n[0] == "num":
        return f"{n[1]:g}"
    return str(n[1]).lower() if n[0] == "bool" else str(n[1])


def _is(keys: pd.Series, key: Any) -> pd.Series:
    """Rows whose normalised key is ``key``. Keys are tuples, which ``keys == key`` would
    compare element-wise (or fail to broadcast) instead of as one value."""
    return keys.map(lambda k: k == key).astype(bool)


def _mask(column: pd.Series, target: Any) -> pd.Series:
    targets = target if isinstance(target, list) else [target]
    return column.map(lambda v: any(values_match(v, t) for t in targets)).astype(bool)


# -- statistics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Diff:
    effect: float | None
    lo: float | None
    hi: float | None
    p: float | None
    method: str
    n_pairs: int = 0


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _mean_ci(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    sd = float(np.std(values, ddof=1))
    mean = float(np.mean(values))
    if sd == 0.0:
        return mean, mean
    lo, hi = _stats().t.interval(confidence, len(values) - 1, loc=mean,
                              scale=sd / math.sqrt(len(values)))
    return float(lo), float(hi)


def _pair_keys(rows: pd.DataFrame, cols: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(_norm(v) for v in r) for r in rows[cols].itertuples(index=False, name=None)]


def _no_spread(x: np.ndarray) -> bool:
    # Rounding leaves ~1e-17 of spread in "identical" values; scipy then reports a
    # meaningless interval with a precision warning, so such spread counts as none.
    return float(np.std(x, ddof=1)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def _difference(a: pd.DataFrame, b: pd.DataFrame, sign: float, pair_cols: list[str],
                confidence: float) -> _Diff:
    """``sign * (mean a - mean b)`` with a paired or Welch t-interval."""
    if len(a) < 2 or len(b) < 2:
        return _Diff(None, None, None, None, "t (too few values)")
    if pair_cols:
        ka, kb = _pair_keys(a, pair_cols), _pair_keys(b, pair_cols)
        if len(set(ka)) == len(ka) and len(set(kb)) == len(kb) and set(ka) == set(kb):
            vb = dict(zip(kb, b["value"]))
            d = sign * (a["value"].to_numpy(float) - np.array([vb[k] for k in ka], float))
            effect = float(d.mean())
            if _no_spread(d):  # deterministic: scipy's t is undefined
                return _Diff(effect, effect, effect, 0.0 if effect else 1.0, "paired t", len(d))
            res = _stats().ttest_1samp(d, 0.0)
            ci = res.confidence_interval(confidence)
            return _Diff(effect, float(ci.low), float(ci.high), float(res.pvalue), "paired t",
                         len(d))
    x, y = sign * a["value"].to_numpy(float), sign * b["value"].to_numpy(float)
    effect = float(x.mean() - y.mean())
    if _no_spread(x) and _no_spread(y):
        return _Diff(effect, effect, effect, 0.0 if effect else 1.0, "Welch t")
    res = _stats().ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(confidence)
    return _Diff(effect, float(ci.low), float(ci.high), float(res.pvalue), "Welch t")


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    ci = _stats().binomtest(k, n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _newcombe(k_a: int, n_a: int, k_b: int, n_b: int, confidence: float
              ) -> tuple[float, float, float]:
    """Rate b minus rate a with Newcombe's hybrid score interval (from Wilson intervals)."""
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = _wilson(k_a, n_a, confidence)
    lb, ub = _wilson(k_b, n_b, confidence)
    d = pb - pa
    return d, d - math.hypot(pb - lb, ua - pa), d + math.hypot(ub - pb, pa - la)


def _decide(predict: str, e: float | None, lo: float | None, hi: float | None, m: float,
            sig_pos: bool | None = None, sig_neg: bool | None = None) -> tuple[str, str]:
    """Apply the module's decision rules; returns (verdict, the reason in words).

    ``sig_pos``/``sig_neg`` replace "interval above 0"/"below 0" where an exact test
    decides significance (rate claims).
    """
    if e is None or lo is None or hi is None:
        return INCONCLUSIVE, "no interval could be computed"
    if predict in ("b_better", "b_not_worse"):
        e, lo, hi = -e, -hi, -lo
        sig_pos, sig_neg = sig_neg, sig_pos
        predict = "a_" + predict[2:]
    pos = lo > 0 if sig_pos is None else sig_pos
    neg = hi < 0 if sig_neg is None else sig_neg
    if predict in ("a_better", "increasing", "decreasing"):
        if pos and e >= m:
            return CONFIRMED, "significantly better and at least min_effect"
        if neg:
            return REFUTED, "significantly worse"
        if hi < m:
            return REFUTED, "the interval lies below min_effect"
        if pos:
            return INCONCLUSIVE, "significant but the effect is below min_effect"
        return INCONCLUSIVE, "the interval includes 0"
    if predict == "a_not_worse":
        if lo > -m:
            return CONFIRMED, "the interval lies above -min_effect"
        if hi < -m:
            return REFUTED, "the interval lies below -min_effect"
        return INCONCLUSIVE, "the interval straddles -min_effect"
    # equal
    if -m <= lo and hi <= m:
        return CONFIRMED, "the interval lies inside +-min_effect"
    if lo > m or hi < -m:
        return REFUTED, "the interval lies outside +-min_effect"
    return INCONCLUSIVE, "the interval crosses +-min_effect"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


# -- evidence -------------------------------------------------------------------------------
def _outcome_counts(rows: pd.DataFrame) -> dict[str, int]:
    out = rows["outcome"] if "outcome" in rows else pd.Series(["finished"] * len(rows))
    counts = out.value_counts()
    return {k: int(v) for k, v in counts.items()}


def _arm_stats(label: str, rows: pd.DataFrame, values: np.ndarray, confidence: float
               ) -> ArmStats:
    c = _outcome_counts(rows)
    mean = float(values.mean()) if len(values) else None
    std = float(values.std(ddof=1)) if len(values) >= 2 else None
    lo, hi = _mean_ci(values, confidence)
    return ArmStats(label, len(values), mean, std, lo, hi, c.get("finished", 0),
                    c.get("failed", 0), c.get("diverged", 0),
                    sum(v for k, v in c.items() if k not in ("finished", "failed", "diverged")))


def _rate_stats(label: str, rows: pd.DataFrame, confidence: float) -> ArmStats:
    c = _outcome_counts(rows)
    n = sum(c.get(k, 0) for k in EVIDENCE)
    events = sum(c.get(k, 0) for k in EVENTS)
    lo, hi = _wilson(events, n, confidence) if n else (None, None)
    return ArmStats(label, n, events / n if n else None, None, lo, hi, c.get("finished", 0),
                    c.get("failed", 0), c.get("diverged", 0),
                    sum(v for k, v in c.items() if k not in EVIDENCE))


class _Context:
    """What a test needs besides the claim: the history source and the pairing columns."""

    def __init__(self, history: History | None, axes: Sequence[str] | None) -> None:
        self.history, self.axes = history, axes
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}

    def at_step(self, run_id: str, metric: str, step: int) -> float:
        key = (run_id, metric)
        if key not in self._cache:
            self._cache[key] = self.history(run_id, metric)  # type: ignore[misc]
        h = self._cache[key]
        hit = h[h["step"] == step] if len(h) else h
        return float(hit["value"].iloc[-1]) if len(hit) else math.nan


def _with_values(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context
                 ) -> tuple[pd.DataFrame, int, str]:
    """Finished rows with a finite ``value`` column; the count without one; a problem."""
    fin = rows[rows["outcome"] == "finished"] if "outcome" in rows else rows
    if claim.at_step is not None:
        if ctx.history is None:
            return fin.iloc[0:0].assign(value=[]), 0, "at_step needs a history source"
        values = [ctx.at_step(str(r), claim.metric or "", claim.at_step) for r in fin["run_id"]]
    elif claim.metric in fin.columns:
        values = pd.to_numeric(fin[claim.metric], errors="coerce").tolist()
    else:
        values = [math.nan] * len(fin)
    fin = fin.assign(value=np.asarray(values, dtype=float))
    ok = fin[np.isfinite(fin["value"].to_numpy(float))]
    return ok, len(fin) - len(ok), ""


def _pair_columns(claim: ClaimSpec, rows: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame,
                  axes: Sequence[str] | None) -> list[str]:
    """Seed plus the other arm columns: the conditions both arms must share to be paired."""
    if "seed" not in rows.columns:
        return []
    skip = {claim.axis, "seed", claim.group_by, *claim.where}
    if axes is not None:
        others = [c for c in axes if c not in skip and c in rows.columns]
    else:
        # Without the sweep's axes, a column counts as an arm column when both arms hold the
        # same set of several values (model: {mlp_d, cnn_d}); columns that follow the arm
        # itself (the optimizer's lr) differ between arms and are left out.
        others = []
        for c in rows.columns:
            if c in skip or c in META_COLUMNS or "/" in str(c):
                continue
            sa = {_norm(v) for v in a[c]}
            if len(sa) > 1 and sa == {_norm(v) for v in b[c]}:
                others.append(c)
    return ["seed", *others]


def _excluded_note(counts: Mapping[str, int], missing: int, what: str) -> str:
    parts = [f"{v} {k}" for k, v in sorted(counts.items()) if k != "finished" and v]
    if missing:
        parts.append(f"{missing} finished without {what}")
    return f" (not counted: {', '.join(parts)})" if parts else ""


# -- the tests ------------------------------------------------------------------------------
def _base(claim: ClaimSpec, **kw: Any) -> Verdict:
    fields: dict[str, Any] = dict(
        id=claim.id, statement=claim.statement, source=claim.source, test=claim.test,
        verdict=INCONCLUSIVE, effect=None, ci_low=None, ci_high=None,
        min_effect=claim.min_effect, n_a=0, n_b=0, method="", detail="", metric=claim.metric,
        axis=claim.axis, predict=claim.predict, confidence=claim.confidence)
    fields.update(kw)
    return Verdict(**fields)


def _metric_name(claim: ClaimSpec) -> str:
    at = f" at step {claim.at_step}" if claim.at_step is not None else ""
    better = "higher" if claim.mode == "max" else "lower"
    return f"{claim.metric}{at} ({better} is better)"


def _compare(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> Verdict:
    ok, missing, problem = _with_values(claim, rows, ctx)
    if problem:
        return _base(claim, detail=problem)
    in_a, in_b = _mask(rows[claim.axis], claim.a), _mask(rows[claim.axis], claim.b)
    a, b = ok[_mask(ok[claim.axis], claim.a)], ok[_mask(ok[claim.axis], claim.b)]
    la, lb = _label(claim.a), _label(claim.b)
    arms = (_arm_stats(la, rows[in_a], a["value"].to_numpy(float), claim.confidence),
            _arm_stats(lb, rows[in_b], b["value"].to_numpy(float), claim.confidence))
    pair = _pair_columns(claim, rows, a, b, ctx.axes)
    d = _difference(a, b, 1.0 if claim.mode == "max" else -1.0, pair, claim.confidence)
    note = _excluded_note(_outcome_counts(rows[in_a | in_b]), missing,
                          f"a value of {claim.metric}" + (f" at step {claim.at_step}"
                                                           if claim.at_step is not None else ""))
    head = (f"{claim.axis}={la} vs {lb} on {_metric_name(claim)}: ")
    if len(a) < claim.min_seeds or len(b) < claim.min_seeds:
        numbers = (f"effect {_signed(d.effect)}, {claim.confidence:.0%} CI "
                   f"[{_fmt(d.lo)}, {_fmt(d.hi)}]; " if d.effect is not None else "")
        detail = (f"{head}{numbers}too few finished seeds: a has {len(a)}, b has {len(b)}, "
                  f"min_seeds is {claim.min_seeds}{note}.")
        return _base(claim, effect=d.effect, ci_low=d.lo, ci_high=d.hi, n_a=len(a),
                     n_b=len(b), method=d.method, detail=detail, arms=arms, p_value=d.p)
    verdict, reason = _decide(claim.predict or "", d.effect, d.lo, d.hi, claim.min_effect)
    paired = f", {d.n_pairs} pairs on {'+'.join(pair)}" if d.method == "paired t" else ""
    detail = (f"{head}mean {_fmt(arms[0].mean)} vs {_fmt(arms[1].mean)}, effect "
              f"{_signed(d.effect)} (a minus b, positive = a better), {claim.confidence:.0%} "
              f"CI [{_fmt(d.lo)}, {_fmt(d.hi)}], min_effect {claim.min_effect:g}, "
              f"{d.method}{paired}, n={len(a)}/{len(b)}{note}; predicted {claim.predict}: "
              f"{verdict} ({reason}).")
    return _base(claim, verdict=verdict, effect=d.effect, ci_low=d.lo, ci_high=d.hi,
                 n_a=len(a), n_b=len(b), method=d.method, detail=detail, arms=arms,
                 p_value=d.p)


def _best(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> Verdict:
    ok, missing, problem = _with_values(claim, rows, ctx)
    if problem:
        return _base(claim, detail=problem)
    sign = 1.0 if claim.mode == "max" else -1.0
    keys = rows[claim.axis].map(_norm)
    arm_rows: dict[Any, pd.DataFrame] = {}
    for k in dict.fromkeys(k for k in keys if k is not None):
        arm_rows[k] = rows[_is(keys, k)]
    ok_keys = ok[claim.axis].map(_norm)
    values = {k: ok[_is(ok_keys, k)] for k in arm_rows}
    arms = tuple(_arm_stats(_label(r[claim.axis].iloc[0]), r,
                            values[k]["value"].to_numpy(float), claim.confidence)
                 for k, r in arm_rows.items())
    inside_keys = {k for k, r in arm_rows.items()
                   if any(values_match(r[claim.axis].iloc[0], p) for p in claim.predict_in or [])}
    eligible = {k for k in arm_rows if len(values[k]) >= claim.min_seeds}
    left_out = [_label(arm_rows[k][claim.axis].iloc[0]) for k in arm_rows if k not in eligible]
    never = [_label(p) for p in claim.predict_in or []
             if not any(values_match(r[claim.axis].iloc[0], p) for r in arm_rows.values())]
    notes = ""
    if left_out:
        notes += (f"; arms with fewer than {claim.min_seeds} finished seeds left out: "
                  f"{', '.join(left_out)}")
    if never:
        notes += f"; predicted arms not in the trials: {', '.join(never)}"
    notes += _excluded_note(_outcome_counts(rows), missing, f"a value of {claim.metric}")
    inside = [k for k in arm_rows if k in inside_keys and k in eligible]
    outside = [k for k in arm_rows if k not in inside_keys and k in eligible]
    head = f"best {claim.axis} on {_metric_name(claim)}: "
    if not inside or not outside:
        side = "inside predict_in" if not inside else "outside predict_in"
        return _base(claim, arms=arms, method="best arm",
                     detail=f"{head}no eligible arm {side}{notes}.")

    def mean(k: Any) -> float:
        return sign * float(values[k]["value"].mean())

    best_in, best_out = max(inside, key=mean), max(outside, key=mean)
    pair = _pair_columns(claim, rows, values[best_in], values[best_out], ctx.axes)
    d = _difference(values[best_in], values[best_out], sign, pair, claim.confidence)
    lin = _label(arm_rows[best_in][claim.axis].iloc[0])
    lout = _label(arm_rows[best_out][claim.axis].iloc[0])
    verdict, reason = INCONCLUSIVE, "neither side wins with an interval excluding 0"
    if d.lo is not None and d.lo > 0 and d.effect is not None and d.effect >= claim.min_effect:
        verdict, reason = CONFIRMED, "the best predicted arm wins with the interval above 0"
    else:
        beaten = [_difference(values[best_out], values[k], sign,
                              _pair_columns(claim, rows, values[best_out], values[k], ctx.axes),
                              claim.confidence) for k in inside]
        if all(x.lo is not None and x.lo > 0 for x in beaten):
            verdict, reason = REFUTED, f"{lout} beats every predicted arm with intervals above 0"
        elif d.lo is not None and d.lo > 0:
            reason = "the best predicted arm wins but by less than min_effect"
    detail = (f"{head}best predicted {lin} (mean {_fmt(sign * mean(best_in))}) vs best other "
              f"{lout} (mean {_fmt(sign * mean(best_out))}): effect {_signed(d.effect)}, "
              f"{claim.confidence:.0%} CI [{_fmt(d.lo)}, {_fmt(d.hi)}], min_effect "
              f"{claim.min_effect:g}, {d.method}, n={len(values[best_in])}/"
              f"{len(values[best_out])}{notes}; {verdict} ({reason}).")
    return _base(claim, verdict=verdict, effect=d.effect, ci_low=d.lo, ci_high=d.hi,
                 n_a=len(values[best_in]), n_b=len(values[best_out]), method=d.method,
                 detail=detail, arms=arms, p_value=d.p)


def _events(rows: pd.DataFrame) -> tuple[int, int]:
    out = rows["outcome"]
    return int(out.isin(EVENTS).sum()), int(out.isin(EVIDENCE).sum())


def _rate_pair(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> Verdict:
    ra, rb = rows[_mask(rows[claim.axis], claim.a)], rows[_mask(rows[claim.axis], claim.b)]
    la, lb = _label(claim.a), _label(claim.b)
    arms = (_rate_stats(la, ra, claim.confidence), _rate_stats(lb, rb, claim.confidence))
    (ka, na), (kb, nb) = _events(ra), _events(rb)
    head = f"diverged/failed rate, {claim.axis}={la} vs {lb}: "
    if na == 0 or nb == 0:
        return _base(claim, n_a=na, n_b=nb, method="Fisher exact", arms=arms,
                     detail=f"{head}no finished/diverged/failed trial in arm "
                            f"{'a' if na == 0 else 'b'}.")
    table = [[ka, na - ka], [kb, nb - kb]]
    # "less": arm a has lower odds of an event than arm b (a is better).
    p_a_fewer = float(_stats().fisher_exact(table, alternative="less").pvalue)
    p_a_more = float(_stats().fisher_exact(table, alternative="greater").pvalue)
    p_two = float(_stats().fisher_exact(table).pvalue)
    effect, lo, hi = _newcombe(ka, na, kb, nb, claim.confidence)
    rates = f"{ka}/{na} = {ka / na:.0%} vs {kb}/{nb} = {kb / nb:.0%}"
    numbers = (f"{rates}; effect {_signed(effect)} (rate b minus rate a, positive = a has "
               f"fewer events), {claim.confidence:.0%} CI [{_fmt(lo)}, {_fmt(hi)}], "
               f"Fisher exact p={p_two:.3g}")
    if na < claim.min_seeds or nb < claim.min_seeds:
        return _base(claim, effect=effect, ci_low=lo, ci_high=hi, n_a=na, n_b=nb,
                     method="Fisher exact", arms=arms, p_value=p_two,
                     detail=f"{head}{numbers}; too few trials: a has {na}, b has {nb}, "
                            f"min_seeds is {claim.min_seeds}.")
    alpha = (1 - claim.confidence) / 2
    sig = {}
    if claim.predict in ("a_better", "b_better"):
        sig = dict(sig_pos=p_a_fewer < alpha, sig_neg=p_a_more < alpha)
    verdict, reason = _decide(claim.predict or "", effect, lo, hi, claim.min_effect, **sig)
    return _base(claim, verdict=verdict, effect=effect, ci_low=lo, ci_high=hi, n_a=na,
                 n_b=nb, method="Fisher exact", arms=arms, p_value=p_two,
                 detail=f"{head}{numbers}, min_effect {claim.min_effect:g}; predicted "
                        f"{claim.predict}: {verdict} ({reason}).")


def _rate_trend(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> Verdict:
    ev = rows[rows["outcome"].isin(EVIDENCE)]
    keys = ev[claim.axis].map(_norm)
    head = f"diverged/failed rate along {claim.axis}: "
    if any(k is not None and k[0] != "num" for k in keys):
        return _base(claim, method="Spearman trend",
                     detail=f"{head}the axis is not numeric, so no trend can be tested.")
    ev = ev[keys.notna()]
    x_all = ev[claim.axis].map(lambda v: _norm(v)[1]).astype(float)  # type: ignore[index]
    arms_by_x = {x: ev[x_all == x] for x in sorted(set(x_all))}
    arms = tuple(_rate_stats(f"{x:g}", rows[rows[claim.axis].map(
        lambda v, x=x: values_match(v, x))], claim.confidence) for x in arms_by_x)
    eligible = [x for x, r in arms_by_x.items() if len(r) >= claim.min_seeds]
    left_out = [f"{x:g}" for x in arms_by_x if x not in eligible]
    note = (f"; arms with fewer than {claim.min_seeds} trials left out: {', '.join(left_out)}"
            if left_out else "")
    if len(eligible) < 2:
        return _base(claim, method="Spearman trend", arms=arms,
                     detail=f"{head}{len(eligible)} axis value(s) with at least "
                            f"{claim.min_seeds} trials; a trend needs 2 or more{note}.")
    use = ev[x_all.isin(eligible)]
    x = use[claim.axis].map(lambda v: _norm(v)[1]).astype(float).to_numpy()  # type: ignore[index]
    y = use["outcome"].isin(EVENTS).to_numpy(float)
    sign = 1.0 if claim.predict == "increasing" else -1.0
    if y.min() == y.max():  # no variation in events: Spearman is undefined, nothing is significant
        rho, p_up, p_down, p_two = math.nan, 1.0, 1.0, 1.0
    else:
        rho = float(_stats().spearmanr(x, y).statistic)
        p_two = float(_stats().spearmanr(x, y).pvalue)
        p_up = float(_stats().spearmanr(x, y, alternative="greater").pvalue)
        p_down = float(_stats().spearmanr(x, y, alternative="less").pvalue)
    (k_lo, n_lo), (k_hi, n_hi) = _events(arms_by_x[eligible[0]]), _events(arms_by_x[eligible[-1]])
    d, lo, hi = _newcombe(k_lo, n_lo, k_hi, n_hi, claim.confidence)  # rate(high x) - rate(low x)
    effect, lo, hi = (d, lo, hi) if sign > 0 else (-d, -hi, -lo)
    alpha = (1 - claim.confidence) / 2
    p_for, p_against = (p_up, p_down) if sign > 0 else (p_down, p_up)
    verdict, reason = _decide(claim.predict or "", effect, lo, hi, claim.min_effect,
                              sig_pos=p_for < alpha, sig_neg=p_against < alpha)
    rates = ", ".join(f"{xv:g}: {_events(arms_by_x[xv])[0]}/{len(arms_by_x[xv])}"
                      for xv in eligible)
    detail = (f"{head}events per value {rates}; Spearman rho "
              f"{'undefined (no variation in events)' if math.isnan(rho) else f'{rho:+.3f}'}, "
              f"one-sided p={p_for:.3g} ({claim.predict}); end-to-end change {_signed(effect)} "
              f"(oriented: positive = {claim.predict}), {claim.confidence:.0%} CI "
              f"[{_fmt(lo)}, {_fmt(hi)}], min_effect {claim.min_effect:g}{note}; "
              f"{verdict} ({reason}).")
    return _base(claim, verdict=verdict, effect=effect, ci_low=lo, ci_high=hi, n_a=n_hi,
                 n_b=n_lo, method="Spearman trend", detail=detail, arms=arms,
                 p_value=_clean(p_two))


def _run_test(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> Verdict:
    if claim.test == "compare":
        return _compare(claim, rows, ctx)
    if claim.test == "best":
        return _best(claim, rows, ctx)
    if claim.predict in TREND_PREDICTS:
        return _rate_trend(claim, rows, ctx)
    return _rate_pair(claim, rows, ctx)


def _combine(claim: ClaimSpec, subs: list[Verdict]) -> Verdict:
    """"Holds in every group": any refuted -> refuted, all confirmed -> confirmed."""
    label = {s.group: s.verdict for s in subs}
    summary = ", ".join(f"{claim.group_by}={g}: {v}" for g, v in label.items())
    refuted = [s for s in subs if s.verdict == REFUTED]
    if refuted:
        decider, verdict, why = refuted[0], REFUTED, f"refuted in {claim.group_by}={refuted[0].group}"
    elif all(s.verdict == CONFIRMED for s in subs):
        decider = min(subs, key=lambda s: s.ci_low if s.ci_low is not None else math.inf)
        verdict, why = CONFIRMED, (f"confirmed in every group; weakest "
                                   f"{claim.group_by}={decider.group}")
    else:
        decider = next(s for s in subs if s.verdict == INCONCLUSIVE)
        verdict, why = INCONCLUSIVE, f"inconclusive in {claim.group_by}={decider.group}"
    return _base(claim, verdict=verdict, effect=decider.effect, ci_low=decider.ci_low,
                 ci_high=decider.ci_high, n_a=sum(s.n_a for s in subs),
                 n_b=sum(s.n_b for s in subs), method=decider.method, arms=decider.arms,
                 groups=tuple(subs), p_value=decider.p_value,
                 detail=f"per {claim.group_by}: {summary}; overall {verdict} ({why}; numbers "
                        f"from that group).")


def _select(claim: ClaimSpec, trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if trials is None or trials.empty:
        return pd.DataFrame(), "the sweep has no trials"
    needed = [claim.axis, *claim.where, *([claim.group_by] if claim.group_by else []), "outcome"]
    missing = [c for c in dict.fromkeys(needed) if c not in trials.columns]
    if missing:
        return pd.DataFrame(), (f"column(s) {', '.join(map(repr, missing))} not in the trials "
                                f"table (has: {', '.join(map(str, trials.columns))})")
    rows = trials
    for col, value in claim.where.items():
        rows = rows[_mask(rows[col], value)]
    rows = rows[rows[claim.axis].map(_norm).notna()]
    if rows.empty:
        return rows, f"no trial matches where={claim.where} with a value of {claim.axis}"
    return rows, ""


def _evaluate_one(claim: ClaimSpec, trials: pd.DataFrame, ctx: _Context) -> Verdict:
    rows, problem = _select(claim, trials)
    if problem:
        return _base(claim, detail=f"{problem}.")
    if claim.group_by is None:
        return _run_test(claim, rows, ctx)
    gkeys = rows[claim.group_by].map(_norm)
    subs = []
    for k in dict.fromkeys(k for k in gkeys if k is not None):
        part = rows[_is(gkeys, k)]
        g = _label(part[claim.group_by].iloc[0])
        sub = _run_test(claim, part, ctx)
        subs.append(replace(sub, id=f"{claim.id}[{claim.group_by}={g}]", group=g))
    if not subs:
        return _base(claim, detail=f"no trial has a value of {claim.group_by}.")
    return _combine(claim, subs)


def parse_claims(raw: Sequence[ClaimSpec | Mapping[str, Any]], where: str = "study.claims"
                 ) -> list[ClaimSpec]:
    """Validate claims given as mappings (a config's ``study.claims``).

    Raises:
        SpecError: naming the claim's index and field, and what is allowed.
    """
    out = []
    for i, c in enumerate(raw):
        if isinstance(c, ClaimSpec):
            out.append(c)
            continue
        try:
            out.append(ClaimSpec.model_validate(dict(c)))
        except ValidationError as e:
            raise SpecError(describe_validation_error(e, dict(c), prefix=f"{where}.{i}.")) from None
    return out


def evaluate(claims: Sequence[ClaimSpec | Mapping[str, Any]], trials: pd.DataFrame,
             history: History | None = None, axes: Sequence[str] | None = None
             ) -> list[Verdict]:
    """Check each claim against a sweep's trials.

    Args:
        claims: :class:`ClaimSpec` objects or their mappings (validated here).
        trials: The trial table as :meth:`orchestrator.Client.trials` returns it.
        history: ``history(run_id, metric)`` -> DataFrame ``[step, value]``; needed by
            claims with ``at_step`` (a claim without it is then inconclusive).
        axes: The sweep's arm columns (the parent run's ``orch.axes``), used as pairing
            keys besides ``seed``; inferred from the table when not given.

    Returns:
        One :class:`Verdict` per claim, in order.

    Raises:
        SpecError: A claim given as a mapping is malformed.
    """
    ctx = _Context(history, axes)
    return [_evaluate_one(c, trials, ctx) for c in parse_claims(claims)]


# -- JSON -----------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def verdicts_to_json(verdicts: Sequence[Verdict]) -> str:
    """Verdicts as a JSON document (a list of objects; non-finite numbers become null)."""
    return json.dumps([_jsonable(asdict(v)) for v in verdicts], indent=2)


def _verdict_from_dict(d: Mapping[str, Any]) -> Verdict:
    d = dict(d)
    d["arms"] = tuple(ArmStats(**a) for a in d.get("arms", ()))
    d["groups"] = tuple(_verdict_from_dict(g) for g in d.get("groups", ()))
    return Verdict(**d)


def verdicts_from_json(text: str) -> list[Verdict]:
    """The inverse of :func:`verdicts_to_json`."""
    return [_verdict_from_dict(d) for d in json.loads(text)]


__all__ = ["ArmStats", "ClaimSpec", "History", "Verdict", "evaluate", "parse_claims",
           "values_match", "verdicts_from_json", "verdicts_to_json", "CONFIRMED", "REFUTED",
           "INCONCLUSIVE"]
