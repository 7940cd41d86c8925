"""Verdicts: a study's claims checked against its trials, never written by hand.

A study states claims in data (``study.claims`` of ``conf/study/*.yaml``); each is a
:class:`ClaimSpec`, validated at plan time like the rest of the config (a malformed claim is
exit 2 before anything runs). :func:`evaluate` turns the claims and a sweep's trial table
(exactly as :meth:`orchestrator.Client.trials` returns it) into :class:`Verdict` objects:
``confirmed``, ``refuted`` or ``inconclusive`` (``replicated``, ``not replicated`` or
``inconclusive`` for replication claims; ``dependent`` for ``groups: each`` when the groups
disagree, shown by :func:`verdict_label` as "dataset-dependent" on the data column), each
with an effect size, a confidence interval,
the raw and Holm-adjusted p of its decisive test and one readable sentence with the numbers.

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

Sanity gate (``learned``).
    A claim's ``learned: {metric, above}`` (or the study-wide default passed to
    :func:`evaluate`, for claims that state none) is checked before any test: every arm in
    play (a and b for compare, every arm for best, the arm for replicate; per group with
    ``group_by``) whose mean ``metric`` over its finished trials is not above ``above`` makes
    the claim inconclusive, with a detail starting "arm X did not learn (...)". Rate claims
    never take it: a diverged arm is their evidence, not a broken experiment.

Effect and estimate.
    Every effect is oriented so that a *positive* effect supports the prediction's "a" side
    (``compare``: a is better under ``mode``; ``rate``: a has fewer events; trends: the
    rate moves in the predicted direction). ``compare`` and ``best`` take the difference of
    means with a t distribution: *paired* (one-sample t on the per-pair differences) when
    both arms hold exactly the same pairing keys, once each (the seed, plus every other arm
    column: ``model`` when two models were swept), else Welch's unequal-variance t. Rate
    differences use Newcombe's hybrid score interval built from each arm's Wilson interval
    (its p-values by inverting it: the level at which its bound reaches the threshold).

Decisions: two one-sided tests (``m`` = ``min_effect`` >= 0, ``alpha`` = (1 - confidence)/2).
    Each claim has a *confirming* and a *refuting* one-sided test; confirmed when the first
    is significant (p < its level), refuted when the second is, else inconclusive. The two
    cannot both hold. ``a_better``: confirming H1 "effect > m", refuting H1 "effect < m";
    at a true effect exactly ``m`` each fires with probability <= alpha, so "confirmed"
    means "the effect is at least the margin" with that error (the former rule "estimate
    >= m and lower bound > 0" confirmed 22% of the time at the margin). With ``m = 0`` this
    is "a significantly better" / "b significantly better". ``b_better`` and
    ``b_not_worse`` are the mirrors (the same on ``-effect``). ``a_not_worse``: "effect >
    -m" / "effect < -m". ``equal`` (``m > 0``) is TOST: confirmed when both "effect > -m" and
    "effect < m" are significant (p = the larger), refuted when either "effect > m" or
    "effect < -m" is (p = the smaller). The interval shown is the two-sided
    ``1 - 2 * level`` interval, so confirmed <=> its lower bound (both bounds for equal) is
    past the threshold. ``Verdict.p_confirm``/``p_refute`` are the two p's and
    ``Verdict.p_value`` the smaller: the raw one-sided p of the decisive test.

``best``.
    Per-arm means over the finished seeds; arms with fewer than ``min_seeds`` are left out
    (and named). The predicted arm is the best arm inside ``predict_in``; it is compared with
    *every* eligible arm outside it (``d_j`` = predicted minus arm j). Confirmed when every
    ``d_j > m`` is significant at ``level / #inside`` (all must hold, an intersection-union
    test needing no correction over the outside arms; the Bonferroni factor pays for having
    picked the best of the inside arms); refuted when some ``d_j < m`` is significant at
    ``level / #outside`` (Bonferroni over the outside arms: with 6 equal arms the former
    "best outside beats best inside" rule refuted 11.5% of the time). The numbers shown are
    those of the comparison that decided it (the strongest rival when refuted, else the
    closest arm).

``rate`` with ``a``/``b`` ("Fisher exact").
    For ``a_better``/``b_better`` the two tests are Fisher's exact one-sided tests (with
    ``m > 0`` confirming also needs the Newcombe test of "reduction > m", the p being the
    larger, and refuting is the Newcombe test of "reduction < m"). ``equal`` and
    ``*_not_worse`` use the Newcombe p's with the rules above.

``rate`` with ``increasing``/``decreasing`` ("Spearman trend").
    Spearman's rank correlation between the numeric axis value and the event indicator over
    all evidence trials (ranks make it indifferent to a log-spaced axis), one-sided. The
    effect is the change of the event rate from the lowest to the highest axis value
    (negated for ``decreasing``), with its Newcombe interval. With ``m = 0`` the tests are
    the trend in / against the predicted direction. With ``m > 0`` confirming needs the
    trend and "change > m" (p = the larger); refuting takes the reversed trend or "change <
    m" (*flat with enough samples*), p = twice the smaller (Bonferroni over the two).

``replicate``.
    One arm (``where``, plus ``axis``/``a`` when given) against a published number:
    one-sample t on the arm's finished values. "replicated" when the interval of the mean lies
    within ``published +- tolerance`` (TOST, as ``equal``), "not replicated" when it lies
    entirely outside, else inconclusive.

Units (``unit``).
    A claim's unit of replication: ``seed`` (each trial is one), ``upstream_seed`` (the
    pre-training run's seed, column ``pretrain.seed``) or ``subset_seed`` (the seed that
    draws the few-shot subset, ``data.split_seed``). With another unit than ``seed`` the
    metric claims (compare, best, replicate) first average each arm's finished values per
    unit value (pooling the fine-tuning seeds that share one pre-trained model), then test
    as above with the unit in place of the seed: pairs on the unit, ``min_seeds`` counts
    units. Trials sharing an upstream are not independent replicates of the upstream's
    effect; counting them as such understates the spread. Rate claims count trials and take
    only ``seed``.

``group_by`` (``groups: all | any | each``).
    The claim is evaluated once per value of the column (sub-verdicts in ``Verdict.groups``).
    ``all`` (default, "holds in every group"): confirmed when every group is confirmed, each
    at the claim's level (intersection-union); refuted when some group is refuted at
    ``level / #groups`` (a union over groups, Bonferroni); claim p's: max of the confirming,
    ``#groups x`` min of the refuting. ``any`` ("holds in some group") is the mirror:
    confirmed when some group is confirmed at ``level / #groups``, refuted when every group
    is refuted at the level. The overall numbers are those of the group that decided it (the
    first refuted, or the weakest confirmed, or the first inconclusive), and the detail says
    which; a group whose arm did not learn leads the detail.
    ``each`` ("does the outcome depend on the group?"): every group is decided in both
    directions at ``level / #groups`` (Bonferroni over the groups). Every group confirmed ->
    confirmed; every group refuted -> refuted; at least one confirmed and one refuted ->
    ``dependent`` (the outcome depends on the column: "dataset-dependent" for ``data`` /
    ``data.name``); anything else inconclusive, the detail listing every group's verdict
    ("confirmed on digits; inconclusive on mnist1d"). Claim p's: ``p_confirm = #groups x``
    max of the groups' confirming p's, ``p_refute`` likewise, and ``p_value`` (the p carried
    into Holm) the smallest level at which the claim is decided at all: the least of those two
    and ``#groups x max(min confirming p, min refuting p)``, the level at which some group
    confirms and another refutes (a group cannot do both at a level below 0.5, so the three
    outcomes exclude each other). When the truth is the same in every group, ``dependent``
    needs a wrong decision in some group in one direction, each at ``level / #groups``: it
    comes from noise with probability at most ``level``, like a wrong confirmation.

Multiplicity across claims (Holm).
    :func:`evaluate` takes the raw p (``Verdict.p_value``) of every claim that reached a test
    (a claim inconclusive for want of data or learning makes no error and is not counted:
    ``k`` tested claims) and Holm-adjusts them: sorted ascending, ``p_adj(r) =
    max_{j <= r} min(1, (k - j) p(j))`` (0-based ``r``), in ``Verdict.p_adjusted``. The claim
    of rank ``r`` is then decided with its tests at one-sided level ``alpha / (k - r)``
    (its interval shown at ``1 - 2 alpha / (k - r)``), and it is decided only when ``p_adj
    < alpha``, i.e. when every claim with a smaller p was decided too (Holm's step-down);
    otherwise it is inconclusive and the detail says so. This keeps, for each direction, the
    chance that *any* claim of the call is wrongly confirmed (or wrongly refuted) at about
    ``alpha``. Claims should share one ``confidence``; each is compared with its own alpha.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import compress
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt, ValidationError, model_validator

from orchestrator.errors import SpecError, describe_validation_error
from tasks.spec import StrictModel

if TYPE_CHECKING:  # imported where used: the claim types load without them (orch's dry runs)
    import numpy as np
    import pandas as pd


def _stats() -> Any:
    """``scipy.stats``, imported on first use: it costs ~1 s, and every ``orch`` command
    imports this module (claims are validated at plan time) while only verdicts need it."""
    from scipy import stats

    return stats


def _special() -> Any:
    """``scipy.special``, imported on first use (see :func:`_stats`)."""
    from scipy import special

    return special


# The t and normal functions below are the ufuncs that ``scipy.stats.t``/``norm`` evaluate
# (``t.sf(x, df)`` is ``stdtr(df, -x)``, ``t.ppf`` is ``stdtrit``, ``norm.sf`` is ``ndtr(-x)``,
# ``norm.ppf`` is ``ndtri``), so the numbers are identical; called directly they skip the
# distribution objects' argument checks, ~0.1 ms a call, which were a fifth of a verdict's
# cost (bench/verdict_error_rates.py runs hundreds of thousands).
def _t_sf(x: float, df: float) -> float:
    return float(_special().stdtr(df, -x))


def _t_cdf(x: float, df: float) -> float:
    return float(_special().stdtr(df, x))


def _t_ppf(q: float, df: float) -> float:
    return float(_special().stdtrit(df, q))


def _norm_sf(x: float) -> float:
    return float(_special().ndtr(-x))


def _norm_ppf(q: float) -> float:
    return float(_special().ndtri(q))


#: A value of an axis as a config states it.
Scalar = bool | int | float | str
#: ``history(run_id, metric)`` -> DataFrame with columns ``step`` and ``value``.
History = Callable[[str, str], "pd.DataFrame"]

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
#: ``groups: each``: confirmed in some group and refuted in another.
DEPENDENT = "dependent"
#: Columns that hold the dataset: a claim that depends on them is "dataset-dependent".
DATA_COLUMNS = ("data", "data.name")
#: The verdicts of ``test: replicate`` (confirmed / refuted under other names).
REPLICATED, NOT_REPLICATED = "replicated", "not replicated"
PAIR_PREDICTS = ("a_better", "b_better", "equal", "a_not_worse", "b_not_worse")
TREND_PREDICTS = ("increasing", "decreasing")
#: Outcomes that are evidence about an arm; of those, EVENTS count as events for rate claims.
EVIDENCE = ("finished", "diverged", "failed")
EVENTS = ("diverged", "failed")
#: A claim's unit of replication -> the trial-table column that holds it.
UNIT_COLUMNS = {"seed": "seed", "upstream_seed": "pretrain.seed", "subset_seed": "data.split_seed"}
#: Columns of Client.trials that describe a run, not its configuration (never pairing keys).
META_COLUMNS = frozenset(
    {
        "run_id",
        "trial_index",
        "trial_key",
        "outcome",
        "status",
        "error",
        "node",
        "reused_from",
        "attempt",
        "start_time",
    }
)


class LearnedSpec(StrictModel):
    """The sanity gate: every arm's mean ``metric`` must be above ``above`` (chance + margin)."""

    metric: str = Field(min_length=1)
    above: float


class ClaimSpec(StrictModel):
    """One claim of a study, checked by :func:`evaluate`.

    Args:
        id: Unique within the study (``OPT-8/end``); becomes the tag ``orch.verdict.<id>``.
        source: Where the notes say it (``002:L1099``).
        statement: The claim in words.
        test: ``compare`` (arm a vs arm b on a metric), ``best`` (the best arm lies in
            ``predict_in``), ``rate`` (diverged/failed fraction, between two arms or as a
            trend along a numeric axis) or ``replicate`` (one arm's mean vs a published
            number).
        metric: The metric (``test/acc``); required for compare and best, absent for rate.
        mode: ``max`` or ``min``: which direction of the metric is better.
        axis: The trial-table column that holds the arms (``optimizer``, ``optimizer.lr``);
            optional for replicate (the arm is then ``where`` alone).
        a: Arm a's value on ``axis`` (for replicate: the arm, when ``axis`` is given).
        b: Arm b's value on ``axis``.
        predict: ``a_better``, ``b_better``, ``equal``, ``a_not_worse``, ``b_not_worse``;
            ``increasing``/``decreasing`` for rate trends; omitted for best.
        predict_in: For best: the axis values among which the best arm is predicted.
        group_by: Optional column: one sub-verdict per value, combined (module docstring).
        groups: With group_by: ``all`` (the claim holds in every group), ``any`` (in some
            group) or ``each`` (every group decided; groups that disagree give
            ``dependent``).
        min_effect: Smallest effect that counts, in metric units (event-rate units for
            rate claims); for ``equal`` the equivalence margin, which must be above 0.
        where: Column -> value (or list of values) filter applied before anything else.
        at_step: Use the metric's value at this step of its per-epoch history.
        min_seeds: Fewer usable trials (units) in an arm make the verdict inconclusive.
        unit: The unit of replication (``UNIT_COLUMNS``): ``seed`` (default), or
            ``upstream_seed`` / ``subset_seed``, whose trials are averaged per unit value
            and paired on it (module docstring, "Units").
        confidence: Confidence level of the intervals and tests (before corrections).
        learned: The sanity gate (overrides the study-wide default of :func:`evaluate`).
        published: For replicate: the published value of the metric.
        tolerance: For replicate: how far from ``published`` still replicates (> 0).
    """

    id: str = Field(min_length=1)
    source: str = ""
    statement: str = ""
    test: Literal["compare", "best", "rate", "replicate"]
    metric: str | None = Field(None, min_length=1)
    mode: Literal["min", "max"] | None = None
    axis: str | None = Field(None, min_length=1)
    a: Scalar | None = None
    b: Scalar | None = None
    predict: (
        Literal[
            "a_better",
            "b_better",
            "equal",
            "a_not_worse",
            "b_not_worse",
            "increasing",
            "decreasing",
        ]
        | None
    ) = None
    predict_in: list[Scalar] | None = None
    group_by: str | None = Field(None, min_length=1)
    groups: Literal["all", "any", "each"] = "all"
    min_effect: float = Field(0.0, ge=0)
    where: dict[str, Scalar | list[Scalar]] = {}
    at_step: NonNegativeInt | None = None
    min_seeds: int = Field(3, ge=2)
    unit: Literal["seed", "upstream_seed", "subset_seed"] = "seed"
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    learned: LearnedSpec | None = None
    published: float | None = None
    tolerance: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fits_test(self) -> ClaimSpec:
        # Each message names the field and what is allowed, like every SpecError.
        def need(name: str) -> None:
            if getattr(self, name) in (None, []):
                raise ValueError(f"claim {self.id!r}: {name} is required for test {self.test!r}")

        def forbid(name: str, why: str) -> None:
            if getattr(self, name) is not None:
                raise ValueError(
                    f"claim {self.id!r}: {name} is not used by test {self.test!r} ({why})"
                )

        if self.test != "replicate":
            need("axis")
            forbid("published", "it belongs to test 'replicate'")
            forbid("tolerance", "it belongs to test 'replicate'")
        if self.test == "compare":
            for name in ("metric", "mode", "a", "b", "predict"):
                need(name)
            if self.predict not in PAIR_PREDICTS:
                raise ValueError(
                    f"claim {self.id!r}: predict {self.predict!r} does not fit "
                    f"test 'compare'; allowed: {', '.join(PAIR_PREDICTS)}"
                )
            forbid("predict_in", "it belongs to test 'best'")
        elif self.test == "best":
            for name in ("metric", "mode", "predict_in"):
                need(name)
            forbid("a", "best compares every arm")
            forbid("b", "best compares every arm")
            forbid("predict", "the prediction is predict_in")
        elif self.test == "replicate":
            for name in ("metric", "published", "tolerance", "source"):
                if getattr(self, name) in (None, ""):
                    raise ValueError(f"claim {self.id!r}: {name} is required for test 'replicate'")
            for name in ("mode", "b", "predict", "predict_in"):
                forbid(name, "replicate compares one arm with a published value")
            if (self.axis is None) != (self.a is None):
                raise ValueError(
                    f"claim {self.id!r}: test 'replicate' takes axis and a "
                    f"together (the arm) or neither (the arm is where)"
                )
        else:  # rate
            if self.unit != "seed":
                raise ValueError(
                    f"claim {self.id!r}: unit {self.unit!r} is not used by test "
                    f"'rate' (it counts trials' outcomes); allowed: seed"
                )
            forbid("learned", "rate claims count outcomes; a diverged arm is their evidence")
            forbid("metric", "rate claims count diverged/failed outcomes")
            forbid("mode", "rate claims count diverged/failed outcomes")
            forbid("at_step", "rate claims count diverged/failed outcomes")
            forbid("predict_in", "it belongs to test 'best'")
            need("predict")
            if self.predict in TREND_PREDICTS:
                forbid("a", f"predict {self.predict!r} is a trend along the axis")
                forbid("b", f"predict {self.predict!r} is a trend along the axis")
            elif self.a is None or self.b is None:
                raise ValueError(
                    f"claim {self.id!r}: test 'rate' needs either a and b "
                    f"(predict: {', '.join(PAIR_PREDICTS)}) or predict "
                    f"increasing/decreasing"
                )
        if self.a is not None and self.b is not None and values_match(self.a, self.b):
            raise ValueError(f"claim {self.id!r}: a and b are the same arm ({self.a!r})")
        if self.predict == "equal" and self.min_effect <= 0:
            raise ValueError(
                f"claim {self.id!r}: min_effect must be > 0 for predict 'equal' "
                f"(it is the equivalence margin)"
            )
        if self.group_by is None and self.groups != "all":
            raise ValueError(f"claim {self.id!r}: groups is used only with group_by")
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
    verdict: str  # confirmed | refuted | inconclusive | dependent (replicate: module docstring)
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    min_effect: float
    n_a: int
    n_b: int
    method: str
    detail: str
    arms: tuple[ArmStats, ...] = ()
    groups: tuple[Verdict, ...] = ()
    metric: str | None = None
    axis: str = ""
    predict: str | None = None
    p_value: float | None = None  # raw one-sided p of the decisive test
    confidence: float = 0.95  # the level of the interval shown
    group: str | None = None  # the group_by value of a sub-verdict
    p_adjusted: float | None = None  # p_value, Holm-adjusted over the claims of one evaluate
    p_confirm: float | None = None  # one-sided p of the confirming test
    p_refute: float | None = None  # one-sided p of the refuting test
    seeds_used: int | None = None  # adaptive seeds: seeds per arm at the stopping look
    stopped: str | None = None  # adaptive seeds: why the sequence stopped (sequential.py)
    group_by: str | None = None  # the claim's group_by column (names a dependent verdict)

    @property
    def label(self) -> str:
        """The verdict as shown (:func:`verdict_label`): "dataset-dependent", not "dependent"."""
        return verdict_label(self.verdict, self.group_by)


# -- value matching -------------------------------------------------------------------------
def _norm(value: Any) -> tuple[str, Any] | None:
    """A comparable form of a table or config value; ``None`` for missing values."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        f = float(value)
        return None if math.isnan(f) else ("num", f)
    if not isinstance(value, str):
        # A table's value (numpy's scalars, pandas' NA); a claim's own values, checked when
        # every plan validates its spec, are plain Python and need neither package.
        import numpy as np
        import pandas as pd

        if value is pd.NA:
            return None
        if isinstance(value, np.bool_):
            return ("bool", bool(value))
        if isinstance(value, (np.integer, np.floating)):
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
    return _norms_match(_norm(x), _norm(target))


def _norms_match(nx: tuple[str, Any] | None, nt: tuple[str, Any] | None) -> bool:
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


# The row masks below are plain loops over ``tolist()`` returning numpy arrays: on a study's
# few dozen rows, ``Series.map`` and a boolean Series cost more in pandas machinery than the
# loop itself.
def _norms(column: pd.Series) -> list[tuple[str, Any] | None]:
    """``_norm`` of every value of the column, in row order."""
    return [_norm(v) for v in column.tolist()]


def _is(keys: list[tuple[str, Any] | None], key: Any) -> np.ndarray:
    """Rows whose normalised key is ``key`` (``keys`` from :func:`_norms`), each compared
    as one value (a Series of tuples would compare element-wise)."""
    import numpy as np

    return np.array([k == key for k in keys], dtype=bool)


def _mask(column: pd.Series, target: Any) -> np.ndarray:
    import numpy as np

    targets = [_norm(t) for t in (target if isinstance(target, list) else [target])]
    return np.array(
        [any(_norms_match(_norm(v), t) for t in targets) for v in column.tolist()], dtype=bool
    )


# -- statistics -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Levels:
    """One-sided significance levels of a claim's two decisive tests, after corrections."""

    confirm: float
    refute: float

    @property
    def confidence(self) -> float:
        """The two-sided level of the interval shown: its lower bound is the confirming test."""
        return 1.0 - 2.0 * self.confirm


def _alpha(claim: ClaimSpec) -> float:
    return (1.0 - claim.confidence) / 2.0


@dataclass(frozen=True)
class _Shift:
    """An estimate ``effect`` with a t (or normal, ``df = inf``) sampling distribution."""

    effect: float
    se: float
    df: float
    method: str
    n_pairs: int = 0

    def p_gt(self, thr: float) -> float:
        """One-sided p of "the true effect is above ``thr``"."""
        if self.se <= 0:
            return 0.0 if self.effect > thr else 1.0
        return _t_sf((self.effect - thr) / self.se, self.df)

    def p_lt(self, thr: float) -> float:
        if self.se <= 0:
            return 0.0 if self.effect < thr else 1.0
        return _t_cdf((self.effect - thr) / self.se, self.df)

    def ci(self, confidence: float) -> tuple[float, float]:
        if self.se <= 0:
            return self.effect, self.effect
        h = _t_ppf(0.5 + confidence / 2, self.df) * self.se
        return self.effect - h, self.effect + h

    def flip(self) -> _Shift:
        return replace(self, effect=-self.effect)


def _wilson_z(k: int, n: int, z: float) -> tuple[float, float]:
    # Closed form, so that p-values can be found by bisection on z without scipy calls.
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class _RateDiff:
    """Rate b minus rate a with Newcombe's hybrid score interval; p-values by inverting it."""

    k_a: int
    n_a: int
    k_b: int
    n_b: int
    sign: float = 1.0

    @property
    def effect(self) -> float:
        return self.sign * (self.k_b / self.n_b - self.k_a / self.n_a)

    def _bounds(self, z: float) -> tuple[float, float]:
        pa, pb = self.k_a / self.n_a, self.k_b / self.n_b
        la, ua = _wilson_z(self.k_a, self.n_a, z)
        lb, ub = _wilson_z(self.k_b, self.n_b, z)
        d = pb - pa
        lo, hi = d - math.hypot(pb - lb, ua - pa), d + math.hypot(ub - pb, pa - la)
        return (lo, hi) if self.sign > 0 else (-hi, -lo)

    def ci(self, confidence: float) -> tuple[float, float]:
        return self._bounds(_norm_ppf(0.5 + confidence / 2))

    def _p(self, thr: float, lower: bool) -> float:
        """One-sided p of "above thr" (``lower``) or "below thr": the level at which the
        interval's bound just reaches ``thr`` (bounds widen monotonically with z)."""
        e = self.effect
        if e == thr:
            return 0.5
        if (e < thr) if lower else (e > thr):
            return 1.0 - self._p(thr, not lower)

        def beyond(z: float) -> bool:
            lo, hi = self._bounds(z)
            return lo > thr if lower else hi < thr

        z_in, z_out = 0.0, 40.0
        if beyond(z_out):
            return 0.0
        for _ in range(50):
            mid = (z_in + z_out) / 2
            z_in, z_out = (mid, z_out) if beyond(mid) else (z_in, mid)
        return _norm_sf(z_in)

    def p_gt(self, thr: float) -> float:
        return self._p(thr, lower=True)

    def p_lt(self, thr: float) -> float:
        return self._p(thr, lower=False)

    def flip(self) -> _RateDiff:
        return replace(self, sign=-self.sign)


Estimate = _Shift | _RateDiff


def _mean_ci(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    import numpy as np

    if len(values) < 2:
        return None, None
    sd = float(np.std(values, ddof=1))
    mean = float(np.mean(values))
    if sd == 0.0:
        return mean, mean
    # As scipy.stats.t.interval(confidence, df, loc=mean, scale=se) computes it.
    df, se = len(values) - 1, sd / math.sqrt(len(values))
    lo = _t_ppf((1.0 - confidence) / 2, df) * se + mean
    hi = _t_ppf((1.0 + confidence) / 2, df) * se + mean
    return lo, hi


def _pair_keys(rows: pd.DataFrame, cols: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(map(_norm, r)) for r in zip(*(rows[c].tolist() for c in cols))]


def _no_spread(x: np.ndarray) -> bool:
    # Rounding leaves ~1e-17 of spread in "identical" values; a t-statistic on it is
    # meaningless, so such spread counts as none.
    import numpy as np

    return len(x) < 2 or float(np.std(x, ddof=1)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def _difference(
    a: pd.DataFrame, b: pd.DataFrame, sign: float, pair_cols: list[str]
) -> _Shift | None:
    """``sign * (mean a - mean b)``, paired or Welch; ``None`` with fewer than 2 values."""
    import numpy as np

    if len(a) < 2 or len(b) < 2:
        return None
    if pair_cols:
        ka, kb = _pair_keys(a, pair_cols), _pair_keys(b, pair_cols)
        if len(set(ka)) == len(ka) and len(set(kb)) == len(kb) and set(ka) == set(kb):
            vb = dict(zip(kb, b["value"]))
            d = sign * (a["value"].to_numpy(float) - np.array([vb[k] for k in ka], float))
            se = 0.0 if _no_spread(d) else float(np.std(d, ddof=1)) / math.sqrt(len(d))
            return _Shift(float(d.mean()), se, len(d) - 1, "paired t", len(d))
    x, y = sign * a["value"].to_numpy(float), sign * b["value"].to_numpy(float)
    effect = float(x.mean() - y.mean())
    if _no_spread(x) and _no_spread(y):
        return _Shift(effect, 0.0, math.inf, "Welch t")
    vx, vy = float(np.var(x, ddof=1)) / len(x), float(np.var(y, ddof=1)) / len(y)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return _Shift(effect, math.sqrt(vx + vy), df, "Welch t")


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    return _wilson_z(k, n, _norm_ppf(0.5 + confidence / 2))


def _p_values(predict: str, est: Estimate, m: float) -> tuple[float, float]:
    """(p of the confirming test, p of the refuting test), both one-sided (module docstring).
    ``est`` is oriented so that a positive effect favours a (or the predicted trend)."""
    if predict in ("b_better", "b_not_worse"):
        est, predict = est.flip(), "a_" + predict[2:]
    if predict == "a_not_worse":
        return est.p_gt(-m), est.p_lt(-m)
    if predict in ("equal", "replicate"):
        return max(est.p_gt(-m), est.p_lt(m)), min(est.p_gt(m), est.p_lt(-m))
    return est.p_gt(m), est.p_lt(m)  # a_better, trends, best


_REASONS = {
    "a_better": (
        "the effect is above min_effect",
        "the effect is below min_effect",
        "min_effect lies inside the interval",
    ),
    "a_not_worse": (
        "the effect is above -min_effect",
        "the effect is below -min_effect",
        "-min_effect lies inside the interval",
    ),
    "equal": (
        "the interval lies inside +-min_effect",
        "the interval lies outside +-min_effect",
        "the interval crosses +-min_effect",
    ),
    "replicate": (
        "the interval lies inside published +- tolerance",
        "the interval lies outside published +- tolerance",
        "the interval crosses published +- tolerance",
    ),
}


def _decide(predict: str, p_c: float | None, p_r: float | None, lv: _Levels) -> tuple[str, str]:
    """Confirmed when the confirming test is significant at ``lv.confirm``, refuted when the
    refuting one is at ``lv.refute``; returns (verdict, the reason in words)."""
    if p_c is None or p_r is None:
        return INCONCLUSIVE, "no interval could be computed"
    key = predict.replace("b_", "a_") if predict.startswith("b_") else predict
    yes, no, neither = _REASONS.get(key, _REASONS["a_better"])
    if p_c < lv.confirm:
        return CONFIRMED, f"{yes}: one-sided p={p_c:.3g} < {lv.confirm:.3g}"
    if p_r < lv.refute:
        return REFUTED, f"{no}: one-sided p={p_r:.3g} < {lv.refute:.3g}"
    return INCONCLUSIVE, f"{neither}: p={p_c:.3g} for, {p_r:.3g} against"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


# -- evidence -------------------------------------------------------------------------------
def _outcome_counts(rows: pd.DataFrame, mask: np.ndarray | None = None) -> dict[str, int]:
    """Trials per outcome (missing outcomes not counted, as ``value_counts()``) among the
    rows ``mask`` keeps (all of them without one): counting through the mask spares the
    copy of every column that ``rows[mask]`` would make."""
    import numpy as np
    import pandas as pd

    keep = np.ones(len(rows), dtype=bool) if mask is None else mask
    if "outcome" not in rows:
        n = int(keep.sum())
        return {"finished": n} if n else {}
    out = compress(rows["outcome"].tolist(), keep)
    return dict(Counter(o for o in out if not pd.isna(o)))


def _keep(rows: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """``rows[mask]``, or ``rows`` itself when the mask keeps every row (the usual case of
    the filters below, and a selection copies every column)."""
    return rows if mask.all() else rows[mask]


def _arm_stats(
    label: str, counts: Mapping[str, int], values: np.ndarray, confidence: float
) -> ArmStats:
    """``counts`` from :func:`_outcome_counts` of the arm's rows."""
    mean = float(values.mean()) if len(values) else None
    std = float(values.std(ddof=1)) if len(values) >= 2 else None
    lo, hi = _mean_ci(values, confidence)
    return ArmStats(
        label,
        len(values),
        mean,
        std,
        lo,
        hi,
        counts.get("finished", 0),
        counts.get("failed", 0),
        counts.get("diverged", 0),
        sum(v for k, v in counts.items() if k not in ("finished", "failed", "diverged")),
    )


def _rate_stats(label: str, rows: pd.DataFrame, confidence: float) -> ArmStats:
    c = _outcome_counts(rows)
    n = sum(c.get(k, 0) for k in EVIDENCE)
    events = sum(c.get(k, 0) for k in EVENTS)
    lo, hi = _wilson(events, n, confidence) if n else (None, None)
    return ArmStats(
        label,
        n,
        events / n if n else None,
        None,
        lo,
        hi,
        c.get("finished", 0),
        c.get("failed", 0),
        c.get("diverged", 0),
        sum(v for k, v in c.items() if k not in EVIDENCE),
    )


class _Context:
    """What a test needs besides the claim: the history source, the pairing columns and the
    study-wide ``learned`` default."""

    def __init__(
        self,
        history: History | None,
        axes: Sequence[str] | None,
        learned: LearnedSpec | None = None,
    ) -> None:
        self.history, self.axes, self.learned = history, axes, learned
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}

    def at_step(self, run_id: str, metric: str, step: int) -> float:
        key = (run_id, metric)
        if key not in self._cache:
            self._cache[key] = self.history(run_id, metric)  # type: ignore[misc]
        h = self._cache[key]
        hit = h[h["step"] == step] if len(h) else h
        return float(hit["value"].iloc[-1]) if len(hit) else math.nan


def _with_values(
    claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context
) -> tuple[pd.DataFrame, int, str]:
    """Finished rows with a finite ``value`` column; the count without one; a problem."""
    import numpy as np
    import pandas as pd

    if "outcome" in rows:
        fin = _keep(rows, (rows["outcome"] == "finished").to_numpy(dtype=bool, na_value=False))
    else:
        fin = rows
    if claim.at_step is not None:
        if ctx.history is None:
            return fin.iloc[0:0].assign(value=[]), 0, "at_step needs a history source"
        values = [ctx.at_step(str(r), claim.metric or "", claim.at_step) for r in fin["run_id"]]
    elif claim.metric in fin.columns:
        values = pd.to_numeric(fin[claim.metric], errors="coerce").tolist()
    else:
        values = [math.nan] * len(fin)
    fin = fin.assign(value=np.asarray(values, dtype=float))
    ok = _keep(fin, np.isfinite(fin["value"].to_numpy(float)))
    if claim.unit == "seed":
        return ok, len(fin) - len(ok), ""
    pooled, problem = _pool(claim, ok, ctx)
    return pooled, len(fin) - len(ok), problem


def _pool(claim: ClaimSpec, ok: pd.DataFrame, ctx: _Context) -> tuple[pd.DataFrame, str]:
    """One row per arm and unit value, its value the mean over the unit's trials, with
    ``seed`` set to the unit value so that pairing and ``min_seeds`` count units."""
    col = UNIT_COLUMNS[claim.unit]
    if col not in ok.columns:
        return ok.iloc[0:0], (
            f"unit {claim.unit} needs the column {col} in the trial table (sweep it as an axis)"
        )
    keys = [
        c
        for c in dict.fromkeys([claim.axis, claim.group_by, *(ctx.axes or ()), col])
        if c is not None and c != "seed" and c in ok.columns
    ]
    groups = [str(k) for k in _pair_keys(ok, keys)]
    agg = {c: "first" for c in ok.columns if c != "value"} | {"value": "mean"}
    pooled = ok.groupby(groups, sort=False).agg(agg).reset_index(drop=True)
    return pooled.assign(seed=pooled[col]), ""


def _pair_columns(
    claim: ClaimSpec,
    rows: pd.DataFrame,
    a: pd.DataFrame,
    b: pd.DataFrame,
    axes: Sequence[str] | None,
) -> list[str]:
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


def _not_learned(spec: LearnedSpec, arms: Mapping[str, pd.DataFrame]) -> str:
    """ "arm X did not learn (...)" for every arm whose mean ``spec.metric`` over its finished
    trials is not above ``spec.above``; arms without such trials are left to the test."""
    import numpy as np
    import pandas as pd

    bad = []
    for label, rows in arms.items():
        fin = rows[rows["outcome"] == "finished"] if "outcome" in rows else rows
        if spec.metric not in fin.columns:
            continue
        v = pd.to_numeric(fin[spec.metric], errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) and float(v.mean()) <= spec.above:
            bad.append(
                f"arm {label} did not learn (mean {spec.metric} {float(v.mean()):.4g} "
                f"<= {spec.above:g} over {len(v)} finished trials)"
            )
    return "; ".join(bad)


# -- the tests ------------------------------------------------------------------------------
def _base(claim: ClaimSpec, **kw: Any) -> Verdict:
    fields: dict[str, Any] = dict(
        id=claim.id,
        statement=claim.statement,
        source=claim.source,
        test=claim.test,
        verdict=INCONCLUSIVE,
        effect=None,
        ci_low=None,
        ci_high=None,
        min_effect=claim.min_effect,
        n_a=0,
        n_b=0,
        method="",
        detail="",
        metric=claim.metric,
        axis=claim.axis or "",
        predict=claim.predict,
        confidence=claim.confidence,
        group_by=claim.group_by,
    )
    fields.update(kw)
    return Verdict(**fields)


def _decided(
    claim: ClaimSpec, lv: _Levels, p_c: float | None, p_r: float | None, predict: str
) -> dict[str, Any]:
    """The Verdict fields of a decision: verdict, p's and the interval's level."""
    verdict, reason = _decide(predict, p_c, p_r, lv)
    p = None if p_c is None or p_r is None else min(p_c, p_r)
    return {
        "verdict": verdict,
        "p_value": p,
        "p_confirm": p_c,
        "p_refute": p_r,
        "confidence": lv.confidence,
        "reason": reason,
    }


def _metric_name(claim: ClaimSpec) -> str:
    at = f" at step {claim.at_step}" if claim.at_step is not None else ""
    better = "higher" if claim.mode == "max" else "lower"
    return f"{claim.metric}{at} ({better} is better)"


def _compare(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    ok, missing, problem = _with_values(claim, rows, ctx)
    if problem:
        return _base(claim, detail=problem)
    axis = claim.axis or ""
    in_a, in_b = _mask(rows[axis], claim.a), _mask(rows[axis], claim.b)
    a, b = ok[_mask(ok[axis], claim.a)], ok[_mask(ok[axis], claim.b)]
    la, lb = _label(claim.a), _label(claim.b)
    arms = (
        _arm_stats(la, _outcome_counts(rows, in_a), a["value"].to_numpy(float), claim.confidence),
        _arm_stats(lb, _outcome_counts(rows, in_b), b["value"].to_numpy(float), claim.confidence),
    )
    pair = _pair_columns(claim, rows, a, b, ctx.axes)
    d = _difference(a, b, 1.0 if claim.mode == "max" else -1.0, pair)
    lo, hi = d.ci(lv.confidence) if d else (None, None)
    effect = d.effect if d else None
    method = d.method if d else "t (too few values)"
    note = _excluded_note(
        _outcome_counts(rows, in_a | in_b),
        missing,
        f"a value of {claim.metric}"
        + (f" at step {claim.at_step}" if claim.at_step is not None else ""),
    )
    head = f"{axis}={la} vs {lb} on {_metric_name(claim)}: "
    level = f"{lv.confidence:.3g}"
    if len(a) < claim.min_seeds or len(b) < claim.min_seeds or d is None:
        numbers = f"effect {_signed(effect)}, {level} CI [{_fmt(lo)}, {_fmt(hi)}]; " if d else ""
        detail = (
            f"{head}{numbers}too few finished seeds: a has {len(a)}, b has {len(b)}, "
            f"min_seeds is {claim.min_seeds}{note}."
        )
        return _base(
            claim,
            effect=effect,
            ci_low=lo,
            ci_high=hi,
            n_a=len(a),
            n_b=len(b),
            method=method,
            detail=detail,
            arms=arms,
        )
    p_c, p_r = _p_values(claim.predict or "", d, claim.min_effect)
    dec = _decided(claim, lv, p_c, p_r, claim.predict or "")
    paired = f", {d.n_pairs} pairs on {'+'.join(pair)}" if d.method == "paired t" else ""
    detail = (
        f"{head}mean {_fmt(arms[0].mean)} vs {_fmt(arms[1].mean)}, effect "
        f"{_signed(effect)} (a minus b, positive = a better), {level} CI "
        f"[{_fmt(lo)}, {_fmt(hi)}], min_effect {claim.min_effect:g}, "
        f"{d.method}{paired}, n={len(a)}/{len(b)}{note}; predicted {claim.predict}: "
        f"{dec['verdict']} ({dec.pop('reason')})."
    )
    return _base(
        claim,
        effect=effect,
        ci_low=lo,
        ci_high=hi,
        n_a=len(a),
        n_b=len(b),
        method=d.method,
        detail=detail,
        arms=arms,
        **dec,
    )


def _best(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    ok, missing, problem = _with_values(claim, rows, ctx)
    if problem:
        return _base(claim, detail=problem)
    axis = claim.axis or ""
    sign = 1.0 if claim.mode == "max" else -1.0
    keys = _norms(rows[axis])
    # Each arm (by normalised key, in table order) -> its first value as the table holds it.
    first: dict[Any, Any] = {}
    for k, v in zip(keys, rows[axis].tolist()):
        if k is not None:
            first.setdefault(k, v)
    ok_keys = _norms(ok[axis])
    values = {k: ok[_is(ok_keys, k)] for k in first}
    arms = tuple(
        _arm_stats(
            _label(v),
            _outcome_counts(rows, _is(keys, k)),
            values[k]["value"].to_numpy(float),
            claim.confidence,
        )
        for k, v in first.items()
    )
    inside_keys = {
        k for k, v in first.items() if any(values_match(v, p) for p in claim.predict_in or [])
    }
    eligible = {k for k in first if len(values[k]) >= claim.min_seeds}
    left_out = [_label(first[k]) for k in first if k not in eligible]
    never = [
        _label(p)
        for p in claim.predict_in or []
        if not any(values_match(v, p) for v in first.values())
    ]
    notes = ""
    if left_out:
        notes += (
            f"; arms with fewer than {claim.min_seeds} finished seeds left out: "
            f"{', '.join(left_out)}"
        )
    if never:
        notes += f"; predicted arms not in the trials: {', '.join(never)}"
    notes += _excluded_note(_outcome_counts(rows), missing, f"a value of {claim.metric}")
    inside = [k for k in first if k in inside_keys and k in eligible]
    outside = [k for k in first if k not in inside_keys and k in eligible]
    head = f"best {axis} on {_metric_name(claim)}: "
    if not inside or not outside:
        side = "inside predict_in" if not inside else "outside predict_in"
        return _base(
            claim, arms=arms, method="best arm", detail=f"{head}no eligible arm {side}{notes}."
        )

    means = {k: sign * float(values[k]["value"].mean()) for k in eligible}

    def mean(k: Any) -> float:
        return means[k]

    def label(k: Any) -> str:
        return _label(first[k])

    # The predicted arm vs every eligible outside arm (module docstring: confirming needs
    # all of them, at alpha / #inside; refuting needs one, at alpha / #outside).
    best_in = max(inside, key=mean)
    diffs = {
        k: _difference(
            values[best_in],
            values[k],
            sign,
            _pair_columns(claim, rows, values[best_in], values[k], ctx.axes),
        )
        for k in outside
    }
    if any(d is None for d in diffs.values()):
        return _base(
            claim,
            arms=arms,
            method="best arm",
            detail=f"{head}an arm has fewer than 2 values{notes}.",
        )
    m = claim.min_effect
    p_each = {k: (d.p_gt(m), d.p_lt(m)) for k, d in diffs.items() if d is not None}
    p_c = min(1.0, len(inside) * max(p for p, _ in p_each.values()))
    weakest = max(outside, key=lambda k: (p_each[k][0], -diffs[k].effect))  # type: ignore[union-attr]
    strongest_rival = min(outside, key=lambda k: (p_each[k][1], diffs[k].effect))  # type: ignore[union-attr]
    p_r = min(1.0, len(outside) * p_each[strongest_rival][1])
    dec = _decided(claim, lv, p_c, p_r, "a_better")
    shown = strongest_rival if dec["verdict"] == REFUTED else weakest
    d = diffs[shown]
    assert d is not None
    level = 1 - 2 * (lv.confirm / len(inside))  # the level one comparison is held to
    lo, hi = d.ci(level)
    reason = dec.pop("reason")
    why = (
        f"{label(shown)} beats the predicted arm; {reason}" if dec["verdict"] == REFUTED else reason
    )
    detail = (
        f"{head}predicted {label(best_in)} (mean {_fmt(sign * mean(best_in))}) vs each of "
        f"{len(outside)} other arm(s); closest {label(shown)} (mean "
        f"{_fmt(sign * mean(shown))}): effect {_signed(d.effect)}, {level:.3g} CI "
        f"[{_fmt(lo)}, {_fmt(hi)}], min_effect {m:g}, {d.method}, "
        f"n={len(values[best_in])}/{len(values[shown])}; p for={p_c:.3g} (x{len(inside)} "
        f"inside), against={p_r:.3g} (x{len(outside)} outside){notes}; "
        f"{dec['verdict']} ({why})."
    )
    return _base(
        claim,
        effect=d.effect,
        ci_low=lo,
        ci_high=hi,
        n_a=len(values[best_in]),
        n_b=len(values[shown]),
        method=d.method,
        detail=detail,
        arms=arms,
        **dec,
    )


def _events(rows: pd.DataFrame) -> tuple[int, int]:
    out = rows["outcome"]
    return int(out.isin(EVENTS).sum()), int(out.isin(EVIDENCE).sum())


def _rate_pair(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    axis = claim.axis or ""
    ra, rb = rows[_mask(rows[axis], claim.a)], rows[_mask(rows[axis], claim.b)]
    la, lb = _label(claim.a), _label(claim.b)
    arms = (_rate_stats(la, ra, claim.confidence), _rate_stats(lb, rb, claim.confidence))
    (ka, na), (kb, nb) = _events(ra), _events(rb)
    head = f"diverged/failed rate, {axis}={la} vs {lb}: "
    if na == 0 or nb == 0:
        return _base(
            claim,
            n_a=na,
            n_b=nb,
            method="Fisher exact",
            arms=arms,
            detail=f"{head}no finished/diverged/failed trial in arm {'a' if na == 0 else 'b'}.",
        )
    table = [[ka, na - ka], [kb, nb - kb]]
    est = _RateDiff(ka, na, kb, nb)  # rate b minus rate a: positive = a has fewer events
    lo, hi = est.ci(lv.confidence)
    rates = f"{ka}/{na} = {ka / na:.0%} vs {kb}/{nb} = {kb / nb:.0%}"
    numbers = (
        f"{rates}; effect {_signed(est.effect)} (rate b minus rate a, positive = a has "
        f"fewer events), {lv.confidence:.3g} CI [{_fmt(lo)}, {_fmt(hi)}]"
    )
    if na < claim.min_seeds or nb < claim.min_seeds:
        return _base(
            claim,
            effect=est.effect,
            ci_low=lo,
            ci_high=hi,
            n_a=na,
            n_b=nb,
            method="Fisher exact",
            arms=arms,
            detail=f"{head}{numbers}; too few trials: a has {na}, b has {nb}, "
            f"min_seeds is {claim.min_seeds}.",
        )
    predict = claim.predict or ""
    p_c, p_r = _p_values(predict, est, claim.min_effect)
    if predict in ("a_better", "b_better"):
        # "less": arm a has lower odds of an event than arm b (a is better). Fisher is exact
        # where Newcombe is approximate; with a margin, confirming needs both.
        fewer = float(_stats().fisher_exact(table, alternative="less").pvalue)
        more = float(_stats().fisher_exact(table, alternative="greater").pvalue)
        f_c, f_r = (fewer, more) if predict == "a_better" else (more, fewer)
        p_c, p_r = (f_c, f_r) if claim.min_effect == 0 else (max(f_c, p_c), p_r)
    dec = _decided(claim, lv, p_c, p_r, predict)
    return _base(
        claim,
        effect=est.effect,
        ci_low=lo,
        ci_high=hi,
        n_a=na,
        n_b=nb,
        method="Fisher exact",
        arms=arms,
        detail=f"{head}{numbers}, min_effect {claim.min_effect:g}; predicted "
        f"{predict}: {dec['verdict']} ({dec.pop('reason')}).",
        **dec,
    )


def _rate_trend(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    axis = claim.axis or ""
    ev = rows[rows["outcome"].isin(EVIDENCE)]
    keys = ev[axis].map(_norm)
    head = f"diverged/failed rate along {axis}: "
    if any(k is not None and k[0] != "num" for k in keys):
        return _base(
            claim,
            method="Spearman trend",
            detail=f"{head}the axis is not numeric, so no trend can be tested.",
        )
    ev = ev[keys.notna()]
    x_all = ev[axis].map(lambda v: _norm(v)[1]).astype(float)  # type: ignore[index]
    arms_by_x = {x: ev[x_all == x] for x in sorted(set(x_all))}
    arms = tuple(
        _rate_stats(
            f"{x:g}", rows[rows[axis].map(lambda v, x=x: values_match(v, x))], claim.confidence
        )
        for x in arms_by_x
    )
    eligible = [x for x, r in arms_by_x.items() if len(r) >= claim.min_seeds]
    left_out = [f"{x:g}" for x in arms_by_x if x not in eligible]
    note = (
        f"; arms with fewer than {claim.min_seeds} trials left out: {', '.join(left_out)}"
        if left_out
        else ""
    )
    if len(eligible) < 2:
        return _base(
            claim,
            method="Spearman trend",
            arms=arms,
            detail=f"{head}{len(eligible)} axis value(s) with at least "
            f"{claim.min_seeds} trials; a trend needs 2 or more{note}.",
        )
    use = ev[x_all.isin(eligible)]
    x = use[axis].map(lambda v: _norm(v)[1]).astype(float).to_numpy()  # type: ignore[index]
    y = use["outcome"].isin(EVENTS).to_numpy(float)
    up = claim.predict == "increasing"
    if y.min() == y.max():  # no variation in events: Spearman is undefined, nothing is significant
        rho, p_up, p_down = math.nan, 1.0, 1.0
    else:
        rho = float(_stats().spearmanr(x, y).statistic)
        p_up = float(_stats().spearmanr(x, y, alternative="greater").pvalue)
        p_down = float(_stats().spearmanr(x, y, alternative="less").pvalue)
    (k_lo, n_lo), (k_hi, n_hi) = _events(arms_by_x[eligible[0]]), _events(arms_by_x[eligible[-1]])
    est = _RateDiff(k_lo, n_lo, k_hi, n_hi, 1.0 if up else -1.0)  # oriented end-to-end change
    lo, hi = est.ci(lv.confidence)
    p_for, p_against = (p_up, p_down) if up else (p_down, p_up)
    m = claim.min_effect
    if m == 0:
        p_c, p_r = p_for, p_against
    else:
        # Confirming needs the trend and an end-to-end change above the margin (both);
        # refuting takes either a reversed trend or a change confidently below the margin,
        # so that union is Bonferroni-corrected (x2).
        p_c = max(p_for, est.p_gt(m))
        p_r = min(1.0, 2 * min(p_against, est.p_lt(m)))
    dec = _decided(claim, lv, p_c, p_r, "a_better")
    rates = ", ".join(
        f"{xv:g}: {_events(arms_by_x[xv])[0]}/{len(arms_by_x[xv])}" for xv in eligible
    )
    detail = (
        f"{head}events per value {rates}; Spearman rho "
        f"{'undefined (no variation in events)' if math.isnan(rho) else f'{rho:+.3f}'}, "
        f"one-sided p={p_for:.3g} ({claim.predict}); end-to-end change "
        f"{_signed(est.effect)} (oriented: positive = {claim.predict}), "
        f"{lv.confidence:.3g} CI [{_fmt(lo)}, {_fmt(hi)}], min_effect {m:g}{note}; "
        f"{dec['verdict']} ({dec.pop('reason')})."
    )
    return _base(
        claim,
        effect=est.effect,
        ci_low=lo,
        ci_high=hi,
        n_a=n_hi,
        n_b=n_lo,
        method="Spearman trend",
        detail=detail,
        arms=arms,
        **dec,
    )


def _replicate(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    import numpy as np

    ok, missing, problem = _with_values(claim, rows, ctx)
    if problem:
        return _base(claim, detail=problem)
    label = _arm_label(claim)
    v = ok["value"].to_numpy(float)
    arm = _arm_stats(label, _outcome_counts(rows), v, lv.confidence)
    pub, tol = float(claim.published or 0.0), float(claim.tolerance or 0.0)
    head = (
        f"{label} on {claim.metric}{'' if claim.at_step is None else f' at step {claim.at_step}'}"
        f" vs published {pub:g} +- {tol:g} ({claim.source}): "
    )
    note = _excluded_note(_outcome_counts(rows), missing, f"a value of {claim.metric}")
    if len(v) < claim.min_seeds:
        return _base(
            claim,
            n_a=len(v),
            method="one-sample t",
            arms=(arm,),
            detail=f"{head}too few finished seeds: {len(v)}, min_seeds is {claim.min_seeds}{note}.",
        )
    se = 0.0 if _no_spread(v) else float(np.std(v, ddof=1)) / math.sqrt(len(v))
    est = _Shift(float(v.mean()) - pub, se, len(v) - 1, "one-sample t")
    lo, hi = est.ci(lv.confidence)
    p_c, p_r = _p_values("replicate", est, tol)
    dec = _decided(claim, lv, p_c, p_r, "replicate")
    detail = (
        f"{head}mean {_fmt(float(v.mean()))}, {lv.confidence:.3g} CI "
        f"[{_fmt(pub + lo)}, {_fmt(pub + hi)}], n={len(v)}{note}; "
        f"{_RENAME[dec['verdict']]} ({dec.pop('reason')})."
    )
    return _base(
        claim,
        effect=est.effect,
        ci_low=lo,
        ci_high=hi,
        n_a=len(v),
        method="one-sample t",
        detail=detail,
        arms=(arm,),
        **dec,
    )


#: The verdict words of replication claims (the engine decides in confirmed/refuted).
_RENAME = {
    CONFIRMED: REPLICATED,
    REFUTED: NOT_REPLICATED,
    INCONCLUSIVE: INCONCLUSIVE,
    DEPENDENT: DEPENDENT,
}


def _arm_label(claim: ClaimSpec) -> str:
    parts = [f"{claim.axis}={_label(claim.a)}"] if claim.axis else []
    parts += [f"{k}={v if isinstance(v, list) else _label(v)}" for k, v in claim.where.items()]
    return ", ".join(parts) or "every trial"


def _gate(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context) -> str:
    """The sanity gate: "arm X did not learn (...)", or "" when every arm in play learned."""
    spec = claim.learned or (ctx.learned if claim.test != "rate" else None)
    if spec is None:
        return ""
    if claim.test == "replicate":
        return _not_learned(spec, {_arm_label(claim): rows})
    axis = claim.axis or ""
    keys = _norms(rows[axis])
    in_play = list(dict.fromkeys(keys))
    if claim.test == "compare":
        in_play = [k for k in in_play if k in (_norm(claim.a), _norm(claim.b))]
    arms = {}
    for k in in_play:
        part = rows[_is(keys, k)]
        arms[_label(part[axis].iloc[0])] = part
    return _not_learned(spec, arms)


def _run_test(claim: ClaimSpec, rows: pd.DataFrame, ctx: _Context, lv: _Levels) -> Verdict:
    problem = _gate(claim, rows, ctx)
    if problem:
        return _base(claim, detail=f"{problem}.")
    if claim.test == "compare":
        return _compare(claim, rows, ctx, lv)
    if claim.test == "best":
        return _best(claim, rows, ctx, lv)
    if claim.test == "replicate":
        return _replicate(claim, rows, ctx, lv)
    if claim.predict in TREND_PREDICTS:
        return _rate_trend(claim, rows, ctx, lv)
    return _rate_pair(claim, rows, ctx, lv)


def _combine(claim: ClaimSpec, subs: list[Verdict]) -> Verdict:
    """``groups: all``: any refuted -> refuted, all confirmed -> confirmed; ``any``: any
    confirmed -> confirmed, all refuted -> refuted. p's follow (module docstring)."""
    if claim.groups == "each":
        return _combine_each(claim, subs)
    label = {s.group: s.verdict for s in subs}
    summary = ", ".join(f"{claim.group_by}={g}: {v}" for g, v in label.items())
    n = len(subs)
    tested = all(s.p_confirm is not None and s.p_refute is not None for s in subs)
    pcs = [s.p_confirm if s.p_confirm is not None else 1.0 for s in subs]
    prs = [s.p_refute if s.p_refute is not None else 1.0 for s in subs]
    refuted = [s for s in subs if s.verdict == REFUTED]
    confirmed = [s for s in subs if s.verdict == CONFIRMED]
    inconclusive = [s for s in subs if s.verdict == INCONCLUSIVE]
    if claim.groups == "all":
        p_c, p_r = max(pcs), min(1.0, n * min(prs))
        if refuted:
            decider, verdict = refuted[0], REFUTED
            why = f"refuted in {claim.group_by}={decider.group}"
        elif len(confirmed) == n:
            decider = max(subs, key=lambda s: s.p_confirm or 0.0)
            verdict, why = (
                CONFIRMED,
                f"confirmed in every group; weakest {claim.group_by}={decider.group}",
            )
        else:
            decider, verdict = inconclusive[0], INCONCLUSIVE
            why = f"inconclusive in {claim.group_by}={decider.group}"
    else:
        p_c, p_r = min(1.0, n * min(pcs)), max(prs)
        if confirmed:
            decider = min(confirmed, key=lambda s: s.p_confirm or 0.0)
            verdict, why = CONFIRMED, f"confirmed in {claim.group_by}={decider.group}"
        elif len(refuted) == n:
            decider = max(subs, key=lambda s: s.p_refute or 0.0)
            verdict, why = (
                REFUTED,
                f"refuted in every group; weakest {claim.group_by}={decider.group}",
            )
        else:
            decider, verdict = inconclusive[0], INCONCLUSIVE
            why = f"confirmed in no group, inconclusive in {claim.group_by}={decider.group}"
    return _group_verdict(
        claim,
        subs,
        decider,
        verdict,
        (min(p_c, p_r), p_c, p_r) if tested else None,
        f"per {claim.group_by} ({claim.groups} must hold): {summary}; "
        f"overall {verdict} ({why}; numbers from that group).",
    )


def _group_verdict(
    claim: ClaimSpec,
    subs: list[Verdict],
    decider: Verdict,
    verdict: str,
    ps: tuple[float, float, float] | None,
    detail: str,
) -> Verdict:
    """A grouped claim's verdict with the numbers of the group that decided it; ``ps`` is
    (p_value, p_confirm, p_refute), None when some group reached no test."""
    lead = ""
    if verdict == INCONCLUSIVE and " did not learn (" in decider.detail:
        # The sanity failure leads, so that a report reader sees it before any number.
        lead = f"{decider.detail.rstrip('.')} in {claim.group_by}={decider.group}; "
    p_value, p_confirm, p_refute = ps if ps is not None else (None, None, None)
    return _base(
        claim,
        verdict=verdict,
        effect=decider.effect,
        ci_low=decider.ci_low,
        ci_high=decider.ci_high,
        n_a=sum(s.n_a for s in subs),
        n_b=sum(s.n_b for s in subs),
        method=decider.method,
        arms=decider.arms,
        groups=tuple(subs),
        p_value=p_value,
        p_confirm=p_confirm,
        p_refute=p_refute,
        confidence=decider.confidence,
        detail=lead + detail,
    )


def _combine_each(claim: ClaimSpec, subs: list[Verdict]) -> Verdict:
    """``groups: each``: all confirmed -> confirmed, all refuted -> refuted, some of each ->
    dependent, else inconclusive; p's as the module docstring says."""
    n = len(subs)
    confirmed = [s for s in subs if s.verdict == CONFIRMED]
    refuted = [s for s in subs if s.verdict == REFUTED]
    tested = all(s.p_confirm is not None and s.p_refute is not None for s in subs)
    pcs = [s.p_confirm if s.p_confirm is not None else 1.0 for s in subs]
    prs = [s.p_refute if s.p_refute is not None else 1.0 for s in subs]
    p_c, p_r = min(1.0, n * max(pcs)), min(1.0, n * max(prs))
    p_dep = min(1.0, n * max(min(pcs), min(prs)))
    by = claim.group_by
    if len(confirmed) == n:
        decider = max(subs, key=lambda s: s.p_confirm or 0.0)
        verdict, why = CONFIRMED, f"confirmed in every group; weakest {by}={decider.group}"
    elif len(refuted) == n:
        decider = max(subs, key=lambda s: s.p_refute or 0.0)
        verdict, why = REFUTED, f"refuted in every group; weakest {by}={decider.group}"
    elif confirmed and refuted:
        decider, verdict = confirmed[0], DEPENDENT
        why = (
            f"{verdict_label(DEPENDENT, by)}: confirmed in {by}="
            f"{', '.join(str(s.group) for s in confirmed)}, refuted in {by}="
            f"{', '.join(str(s.group) for s in refuted)}"
        )
    else:
        decider = next(s for s in subs if s.verdict not in (CONFIRMED, REFUTED))
        verdict, why = INCONCLUSIVE, f"inconclusive in {by}={decider.group}"
    summary = "; ".join(f"{s.verdict} on {s.group}" for s in subs)
    return _group_verdict(
        claim,
        subs,
        decider,
        verdict,
        (min(p_c, p_r, p_dep), p_c, p_r) if tested else None,
        # The deciding group's own sentence follows: its numbers, or why it is undecided.
        f"per {by} (each decided at level / {n}): {summary}; "
        f"overall {verdict} ({why}). Numbers from {by}={decider.group}: {decider.detail}",
    )


def verdict_label(verdict: str, group_by: str | None = None) -> str:
    """How a verdict is shown: ``dependent`` names its column ("dataset-dependent" for the
    data columns, else "<column>-dependent"); every other verdict is its value."""
    if verdict != DEPENDENT:
        return verdict
    if group_by in DATA_COLUMNS:
        return "dataset-dependent"
    return f"{group_by or 'group'}-dependent"


def _select(claim: ClaimSpec, trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    import numpy as np
    import pandas as pd

    if trials is None or trials.empty:
        return pd.DataFrame(), "the sweep has no trials"
    needed = [
        *([claim.axis] if claim.axis else []),
        *claim.where,
        *([claim.group_by] if claim.group_by else []),
        "outcome",
    ]
    missing = [c for c in dict.fromkeys(needed) if c not in trials.columns]
    if missing:
        return pd.DataFrame(), (
            f"column(s) {', '.join(map(repr, missing))} not in the trials "
            f"table (has: {', '.join(map(str, trials.columns))})"
        )
    rows = trials
    for col, value in claim.where.items():
        rows = _keep(rows, _mask(rows[col], value))
    if claim.axis:
        rows = _keep(rows, np.array([k is not None for k in _norms(rows[claim.axis])], dtype=bool))
        if claim.test == "replicate":
            rows = rows[_mask(rows[claim.axis], claim.a)]
    if rows.empty:
        return rows, f"no trial matches where={claim.where} with a value of {claim.axis}"
    return rows, ""


def _evaluate_one(
    claim: ClaimSpec, selected: tuple[pd.DataFrame, str], ctx: _Context, alpha: float
) -> Verdict:
    """One claim, decided at the one-sided level ``alpha`` (before group corrections), on
    its rows and problem as :func:`_select` gives them."""
    v = _evaluate_raw(claim, selected, ctx, alpha)
    if claim.test != "replicate":
        return v
    return replace(
        v,
        verdict=_RENAME[v.verdict],
        groups=tuple(replace(g, verdict=_RENAME[g.verdict]) for g in v.groups),
    )


def _evaluate_raw(
    claim: ClaimSpec, selected: tuple[pd.DataFrame, str], ctx: _Context, alpha: float
) -> Verdict:
    rows, problem = selected
    if problem:
        return _base(claim, detail=f"{problem}.")
    if claim.group_by is None:
        return _run_test(claim, rows, ctx, _Levels(alpha, alpha))
    gkeys = _norms(rows[claim.group_by])
    groups = list(dict.fromkeys(k for k in gkeys if k is not None))
    if not groups:
        return _base(claim, detail=f"no trial has a value of {claim.group_by}.")
    n = len(groups)
    # all: intersection-union for confirming (each group at alpha), a union for refuting
    # (Bonferroni); any: the other way round; each: Bonferroni both ways, since a group's
    # decision in either direction can make the claim dependent.
    lv = {
        "all": _Levels(alpha, alpha / n),
        "any": _Levels(alpha / n, alpha),
        "each": _Levels(alpha / n, alpha / n),
    }[claim.groups]
    subs = []
    for k in groups:
        part = rows[_is(gkeys, k)]
        g = _label(part[claim.group_by].iloc[0])
        sub = _run_test(claim, part, ctx, lv)
        subs.append(replace(sub, id=f"{claim.id}[{claim.group_by}={g}]", group=g))
    return _combine(claim, subs)


def _holm(ps: Sequence[float | None]) -> tuple[list[float | None], list[int], int]:
    """Holm-adjusted p's (``None`` stays ``None``), each claim's rank among the tested ones
    (0 = smallest p) and their number."""
    order = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])  # type: ignore[arg-type, return-value]
    k = len(order)
    adjusted: list[float | None] = [None] * len(ps)
    ranks = [-1] * len(ps)
    running = 0.0
    for r, i in enumerate(order):
        running = max(running, min(1.0, (k - r) * float(ps[i])))  # type: ignore[arg-type]
        adjusted[i], ranks[i] = running, r
    return adjusted, ranks, k


def parse_claims(
    raw: Sequence[ClaimSpec | Mapping[str, Any]], where: str = "study.claims"
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


def evaluate(
    claims: Sequence[ClaimSpec | Mapping[str, Any]],
    trials: pd.DataFrame,
    history: History | None = None,
    axes: Sequence[str] | None = None,
    learned: LearnedSpec | Mapping[str, Any] | None = None,
) -> list[Verdict]:
    """Check each claim against a sweep's trials, Holm-corrected across the claims.

    Args:
        claims: :class:`ClaimSpec` objects or their mappings (validated here).
        trials: The trial table as :meth:`orchestrator.Client.trials` returns it.
        history: ``history(run_id, metric)`` -> DataFrame ``[step, value]``; needed by
            claims with ``at_step`` (a claim without it is then inconclusive).
        axes: The sweep's arm columns (the parent run's ``orch.axes``), used as pairing
            keys besides ``seed``; inferred from the table when not given.
        learned: The study-wide sanity gate, for every claim that states none (rate claims
            excepted).

    Returns:
        One :class:`Verdict` per claim, in order.

    Raises:
        SpecError: A claim (or ``learned``) given as a mapping is malformed.
    """
    if learned is not None and not isinstance(learned, LearnedSpec):
        try:
            learned = LearnedSpec.model_validate(dict(learned))
        except ValidationError as e:
            raise SpecError(
                describe_validation_error(e, dict(learned), prefix="study.learned.")
            ) from None
    specs = parse_claims(claims)
    ctx = _Context(history, axes, learned)
    # Each claim's rows, selected once: Holm's second pass below reuses them.
    selected = [_select(c, trials) for c in specs]
    first = [_evaluate_one(c, sel, ctx, _alpha(c)) for c, sel in zip(specs, selected)]
    adjusted, ranks, k = _holm([v.p_value for v in first])
    out = []
    for c, sel, v, p_adj, r in zip(specs, selected, first, adjusted, ranks):
        if p_adj is None:
            out.append(v)
            continue
        # Holm's step-down: the claim with the r-th smallest p is held to alpha / (k - r);
        # it is decided only if every claim with a smaller p was (then p_adj < alpha).
        level = _alpha(c) / (k - r)
        w = v if k - r == 1 else _evaluate_one(c, sel, ctx, level)
        note = f" Holm over {k} claims: p={v.p_value:.3g}, adjusted p={p_adj:.3g}"
        if w.verdict != INCONCLUSIVE and p_adj >= _alpha(c):
            w = replace(w, verdict=INCONCLUSIVE)
            note += (
                "; a claim with a smaller p was not decided, so this one is not either: "
                "inconclusive."
            )
        else:
            note += f"; decided at one-sided level {level:.3g}."
        out.append(replace(w, p_adjusted=p_adj, detail=w.detail + (note if k > 1 else "")))
    return out


# -- JSON -----------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def verdict_rows(verdicts: Sequence[Verdict]) -> list[tuple[str, ...]]:
    """Rows for a terminal table: id, test, verdict, effect, CI, n a/b, method."""

    def num(x: float | None, fmt: str = "{:.4g}") -> str:
        return "" if x is None else fmt.format(x)

    return [
        (
            v.id,
            v.test,
            v.label,
            num(v.effect, "{:+.4g}"),
            f"[{num(v.ci_low)}, {num(v.ci_high)}]" if v.ci_low is not None else "",
            f"{v.n_a}/{v.n_b}",
            v.method + (f"; {v.stopped}" if v.stopped else ""),
        )
        for v in verdicts
    ]


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


__all__ = [
    "CONFIRMED",
    "DEPENDENT",
    "INCONCLUSIVE",
    "NOT_REPLICATED",
    "REFUTED",
    "REPLICATED",
    "ArmStats",
    "ClaimSpec",
    "History",
    "LearnedSpec",
    "Verdict",
    "evaluate",
    "parse_claims",
    "values_match",
    "verdict_label",
    "verdicts_from_json",
    "verdict_rows",
    "verdicts_to_json",
]
