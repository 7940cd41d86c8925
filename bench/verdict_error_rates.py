"""How often each verdict rule says confirmed / refuted (/ dependent) when the truth is known.

Simulated studies go through the real engine (:func:`orchestrator.verdicts.evaluate`) with
trial tables shaped like ``Client.trials``: per-seed metrics drawn from a normal law (seed
effects shared by the arms, so pairing by seed is what a real sweep gets), or Bernoulli
diverged outcomes for rate claims. For each rule and truth (null, exactly at the margin, a
clear effect) the table gives the fraction of N studies that ended confirmed and refuted,
and for ``groups: each`` claims dependent (the groups disagree).

    python -m bench.verdict_error_rates --n 10000 --family-n 1000 --jobs 2 \
        --out docs/verdict_error_rates.md

Each row draws from its own generator (seed ``--seed`` + the row's index), so the table is the
same whatever ``--jobs``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.verdicts import CONFIRMED, DEPENDENT, REFUTED, evaluate

SD = 0.02  # per-seed sd of every arm's metric
SEEDS = 5  # seeds per arm
MARGIN = 0.01  # min_effect of the metric rules
ALPHA = 0.025  # nominal one-sided level (confidence 0.95)


def metric_table(
    means: dict[str, float],
    rng: np.random.Generator,
    seeds: int = SEEDS,
    sd: float = SD,
    axis: str = "arm",
    prefix: str = "",
) -> pd.DataFrame:
    """One row per (arm, seed); a seed effect shared by every arm plus independent noise of
    the same size, so each arm's sd is ``sd`` and paired differences have sd ``sd``."""
    seed_effect = rng.normal(0.0, sd / np.sqrt(2), seeds)
    arms = list(means)
    # Built by column, the noise in one draw (the same numbers as one draw per row, arm by
    # arm): a DataFrame from a list of row dicts cost as much as the verdict itself.
    noise = rng.normal(0.0, sd / np.sqrt(2), (len(arms), seeds))
    mu = np.array([means[arm] for arm in arms], dtype=float)[:, None]
    return pd.DataFrame(
        {
            "run_id": [f"{prefix}{arm}-{s}" for arm in arms for s in range(seeds)],
            "outcome": ["finished"] * (len(arms) * seeds),
            "seed": list(range(seeds)) * len(arms),
            axis: [arm for arm in arms for _ in range(seeds)],
            "test/acc": (0.8 + mu + seed_effect + noise).ravel(),
        }
    )


def by_dataset(effects: dict[str, float], rng: np.random.Generator) -> pd.DataFrame:
    """:func:`metric_table` per dataset (column ``data.name``), arm a ahead by its effect."""
    return pd.concat(
        [
            metric_table({"a": e, "b": 0.0}, rng, prefix=f"{name}-").assign(**{"data.name": name})
            for name, e in effects.items()
        ],
        ignore_index=True,
    )


def rate_table(rates: dict[str, float], rng: np.random.Generator, n: int) -> pd.DataFrame:
    arms = list(rates)
    p = np.array([rates[arm] for arm in arms])[:, None]
    diverged = (rng.random((len(arms), n)) < p).ravel()
    return pd.DataFrame(
        {
            "run_id": [f"{arm}-{s}" for arm in arms for s in range(n)],
            "seed": list(range(n)) * len(arms),
            "arm": [arm for arm in arms for _ in range(n)],
            "outcome": np.where(diverged, "diverged", "finished").tolist(),
        }
    )


def compare(predict: str, m: float, claim_id: str = "C", axis: str = "arm") -> dict[str, Any]:
    return {
        "id": claim_id,
        "test": "compare",
        "metric": "test/acc",
        "mode": "max",
        "axis": axis,
        "a": "a",
        "b": "b",
        "predict": predict,
        "min_effect": m,
    }


@dataclass(frozen=True)
class Case:
    """One row of the table: a rule, a truth, and what an error is under that truth."""

    rule: str
    truth: str
    simulate: Callable[[np.random.Generator], list[str]]  # one study -> its verdicts
    bounded: tuple[str, ...]  # the rates (keys of run_case) that should be <= ALPHA
    note: str = ""

    @property
    def nominal(self) -> str:
        """What the rates should respect, in words."""
        bounds = ", ".join(f"{b.replace('_', ' ')} <= {ALPHA:.1%}" for b in self.bounded)
        if bounds and self.note:
            return f"{bounds} ({self.note})"
        return bounds or self.note


def _one(
    claim: dict[str, Any], table: Callable[[np.random.Generator], pd.DataFrame]
) -> Callable[[np.random.Generator], list[str]]:
    return lambda rng: [v.verdict for v in evaluate([claim], table(rng))]


def _holm_family(delta: float, holm: bool) -> Callable[[np.random.Generator], list[str]]:
    """Ten a_better claims (m = 0) on ten independent pairs of arms, all with effect delta;
    with Holm they are evaluated in one call, without it one call per claim."""
    claims = [compare("a_better", 0.0, f"C{i}", axis=f"pair{i}") for i in range(10)]

    def run(rng: np.random.Generator) -> list[str]:
        tables = [
            metric_table({"a": delta, "b": 0.0}, rng, axis=f"pair{i}", prefix=f"p{i}")
            for i in range(10)
        ]
        if holm:
            return [v.verdict for v in evaluate(claims, pd.concat(tables, ignore_index=True))]
        return [evaluate([c], t)[0].verdict for c, t in zip(claims, tables)]

    return run


def cases() -> list[Case]:
    m, six = MARGIN, [f"arm{i}" for i in range(6)]
    best = {
        "id": "B",
        "test": "best",
        "metric": "test/acc",
        "mode": "max",
        "axis": "arm",
        "predict_in": ["arm0"],
        "min_effect": 0.0,
    }
    out = [
        Case(
            "compare a_better, m=0.01",
            "null (effect 0)",
            _one(compare("a_better", m), lambda r: metric_table({"a": 0, "b": 0}, r)),
            ("confirmed",),
        ),
        Case(
            "compare a_better, m=0.01",
            "at margin (effect 0.01)",
            _one(compare("a_better", m), lambda r: metric_table({"a": m, "b": 0}, r)),
            ("confirmed", "refuted"),
        ),
        Case(
            "compare a_better, m=0.01",
            "clear (effect 0.05)",
            _one(compare("a_better", m), lambda r: metric_table({"a": 5 * m, "b": 0}, r)),
            ("refuted",),
        ),
        Case(
            "equal (TOST), m=0.02",
            "null (effect 0)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 0, "b": 0}, r)),
            ("refuted",),
        ),
        Case(
            "equal (TOST), m=0.02",
            "at margin (effect 0.02)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 2 * m, "b": 0}, r)),
            ("confirmed", "refuted"),
        ),
        Case(
            "equal (TOST), m=0.02",
            "clear (effect 0.08)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 8 * m, "b": 0}, r)),
            ("confirmed",),
        ),
        Case(
            "a_not_worse, m=0.01",
            "null (effect 0)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": 0, "b": 0}, r)),
            ("refuted",),
        ),
        Case(
            "a_not_worse, m=0.01",
            "at margin (effect -0.01)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": -m, "b": 0}, r)),
            ("confirmed", "refuted"),
        ),
        Case(
            "a_not_worse, m=0.01",
            "clear (effect -0.05)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": -5 * m, "b": 0}, r)),
            ("confirmed",),
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "null (all equal)",
            _one(best, lambda r: metric_table({a: 0.0 for a in six}, r)),
            ("confirmed", "refuted"),
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "clear (predicted +0.05)",
            _one(best, lambda r: metric_table({a: 5 * m * (a == "arm0") for a in six}, r)),
            ("refuted",),
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "clear (another arm +0.05)",
            _one(best, lambda r: metric_table({a: 5 * m * (a == "arm3") for a in six}, r)),
            ("confirmed",),
        ),
    ]
    each = {**compare("a_better", m), "group_by": "data.name", "groups": "each"}
    out += [
        Case(
            "a_better per dataset (each), m=0.01",
            "at margin in both (effect 0.01)",
            _one(each, lambda r: by_dataset({"digits": m, "mnist1d": m}, r)),
            ("confirmed", "refuted", "dependent"),
        ),
        Case(
            "a_better per dataset (each), m=0.01",
            "clear in one, reversed in the other",
            _one(each, lambda r: by_dataset({"digits": 5 * m, "mnist1d": -5 * m}, r)),
            ("confirmed", "refuted"),
        ),
    ]
    fisher = {"id": "R", "test": "rate", "axis": "arm", "a": "a", "b": "b", "predict": "a_better"}
    out += [
        Case(
            "rate a_better (Fisher), 10 seeds",
            "null (both 30%)",
            _one(fisher, lambda r: rate_table({"a": 0.3, "b": 0.3}, r, 10)),
            ("confirmed", "refuted"),
        ),
        Case(
            "rate a_better (Fisher), 10 seeds",
            "clear (0% vs 80%)",
            _one(fisher, lambda r: rate_table({"a": 0.0, "b": 0.8}, r, 10)),
            ("refuted",),
        ),
    ]
    for holm in (True, False):
        name = "10 a_better claims, m=0, " + ("Holm" if holm else "no Holm")
        out += [
            Case(
                name,
                "null (all 10 effects 0)",
                _holm_family(0.0, holm),
                ("any_confirmed", "any_refuted") if holm else (),
                "family-wise" if holm else "none: the uncorrected contrast to the Holm row",
            ),
            Case(
                name,
                "clear (all 10 effects 0.03)",
                _holm_family(3 * m, holm),
                (),
                "rates are per claim",
            ),
        ]
    return out


def run_case(case: Case, n: int, seed: int) -> dict[str, float]:
    """Fractions of ``n`` simulated studies: per claim confirmed/refuted, and for families
    the fraction of studies in which any claim was confirmed / refuted."""
    rng = np.random.default_rng(seed)
    conf = ref = dep = any_conf = any_ref = 0
    total = 0
    for _ in range(n):
        verdicts = case.simulate(rng)
        conf += sum(v == CONFIRMED for v in verdicts)
        ref += sum(v == REFUTED for v in verdicts)
        dep += sum(v == DEPENDENT for v in verdicts)
        any_conf += CONFIRMED in verdicts
        any_ref += REFUTED in verdicts
        total += len(verdicts)
    return {
        "confirmed": conf / total,
        "refuted": ref / total,
        "dependent": dep / total,
        "any_confirmed": any_conf / n,
        "any_refuted": any_ref / n,
    }


def against_nominal(rows: list[Case], results: list[dict[str, float]], sizes: list[int]) -> str:
    """Markdown: every bounded rate above ALPHA, as materially above (more than 3
    Monte-Carlo standard errors over) or within the simulation's error."""
    above, within = [], []
    for case, r, n in zip(rows, results, sizes):
        se = float(np.sqrt(ALPHA * (1 - ALPHA) / n))
        for name in case.bounded:
            if r[name] <= ALPHA:
                continue
            z = (r[name] - ALPHA) / se
            item = (
                f"{case.rule}, {case.truth}: {name.replace('_', ' ')} {r[name]:.2%} "
                f"(N = {n}, standard error {se:.2%}, {z:+.1f} SE)"
            )
            (above if z > 3 else within).append(item)
    out = [
        "## Against the nominal level",
        "",
        f"Each rate the last column bounds, compared with {ALPHA:.1%} and its Monte-Carlo "
        f"standard error sqrt({ALPHA} x {1 - ALPHA} / N) at that row's N. *Materially above* "
        f"means more than 3 standard errors over {ALPHA:.1%} (a 0.13% chance per rate when "
        f"the true rate is {ALPHA:.1%}).",
        "",
        "Materially above the nominal level:"
        + ("".join(f"\n- {a}" for a in above) if above else " none."),
        "",
        f"Above {ALPHA:.1%}, within 3 standard errors:"
        + ("".join(f"\n- {w}" for w in within) if within else " none."),
    ]
    return "\n".join(out)


def _row_rates(index: int, n: int, seed: int) -> dict[str, float]:
    """:func:`run_case` for the row ``index`` of :func:`cases`, by index: a worker process
    cannot be handed a Case (its simulate is a closure, which does not pickle)."""
    return run_case(cases()[index], n, seed + index)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="simulated studies per row")
    ap.add_argument(
        "--family-n",
        type=int,
        help="studies per row of the 10-claim families "
        "(each is 10 claims and two passes of Holm: the slow rows); default --n",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jobs", type=int, default=1, help="rows computed in parallel processes (same table)"
    )
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    family_n = args.family_n or args.n
    intro = (
        f"Generated by `python -m bench.verdict_error_rates --n {args.n} --family-n "
        f"{family_n}` (seed {args.seed}): **N = {args.n}** simulated studies per row "
        f"(**{family_n}** for the 10-claim families, i.e. {10 * family_n} claims), through "
        f"`orchestrator.verdicts.evaluate`. Metric rules: {SEEDS} seeds per arm, normal "
        f"per-seed metric with sd {SD} (half of its variance a seed effect shared by the "
        f"arms, so pairs by seed), confidence 0.95 (one-sided level {ALPHA}). A rate's "
        f"Monte-Carlo standard error is about sqrt(r(1-r)/N) "
        f"({np.sqrt(ALPHA * (1 - ALPHA) / args.n):.3f} at r = {ALPHA}, N = {args.n})."
    )
    lines = [
        "# Verdict error rates",
        "",
        intro,
        "",
        (
            "| rule | truth | confirmed | refuted | dependent "
            "| any confirmed / any refuted (family) | should be |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rows = cases()
    sizes = [family_n if c.rule.startswith("10 ") else args.n for c in rows]
    results = []
    # spawn, not fork: the caller may hold threads (a test process with Ray's), and a forked
    # child of a threaded process can deadlock on a lock one of them held.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:
        futures = [pool.submit(_row_rates, i, n, args.seed) for i, n in enumerate(sizes)]
        for case, future in zip(rows, futures):
            r = future.result()
            results.append(r)
            is_family = case.rule.startswith("10 ")
            family = f"{r['any_confirmed']:.2%} / {r['any_refuted']:.2%}" if is_family else ""
            lines.append(
                f"| {case.rule} | {case.truth} | {r['confirmed']:.2%} | "
                f"{r['refuted']:.2%} | {r['dependent']:.2%} | {family} | {case.nominal} |"
            )
            print(lines[-1], flush=True)
    lines += ["", against_nominal(rows, results, sizes)]
    procs = f" ({args.jobs} processes)" if args.jobs > 1 else ""
    lines += ["", f"Wall time {time.monotonic() - t0:.0f} s{procs}."]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
