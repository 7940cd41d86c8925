"""How often each verdict rule says confirmed / refuted when the truth is known.

Simulated studies go through the real engine (:func:`orchestrator.verdicts.evaluate`) with
trial tables shaped like ``Client.trials``: per-seed metrics drawn from a normal law (seed
effects shared by the arms, so pairing by seed is what a real sweep gets), or Bernoulli
diverged outcomes for rate claims. For each rule and truth (null, exactly at the margin, a
clear effect) the table gives the fraction of N studies that ended confirmed and refuted.

    python -m bench.verdict_error_rates --n 10000 --out docs/verdict_error_rates.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.verdicts import CONFIRMED, REFUTED, evaluate

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
    rows = [
        {
            "run_id": f"{prefix}{arm}-{s}",
            "outcome": "finished",
            "seed": s,
            axis: arm,
            "test/acc": 0.8 + mu + seed_effect[s] + rng.normal(0.0, sd / np.sqrt(2)),
        }
        for arm, mu in means.items()
        for s in range(seeds)
    ]
    return pd.DataFrame(rows)


def rate_table(rates: dict[str, float], rng: np.random.Generator, n: int) -> pd.DataFrame:
    rows = [
        {
            "run_id": f"{arm}-{s}",
            "seed": s,
            "arm": arm,
            "outcome": "diverged" if rng.random() < p else "finished",
        }
        for arm, p in rates.items()
        for s in range(n)
    ]
    return pd.DataFrame(rows)


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
    nominal: str  # what the rates should respect, in words


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
            "confirmed <= 2.5%",
        ),
        Case(
            "compare a_better, m=0.01",
            "at margin (effect 0.01)",
            _one(compare("a_better", m), lambda r: metric_table({"a": m, "b": 0}, r)),
            "confirmed <= 2.5%, refuted <= 2.5%",
        ),
        Case(
            "compare a_better, m=0.01",
            "clear (effect 0.05)",
            _one(compare("a_better", m), lambda r: metric_table({"a": 5 * m, "b": 0}, r)),
            "refuted <= 2.5%",
        ),
        Case(
            "equal (TOST), m=0.02",
            "null (effect 0)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 0, "b": 0}, r)),
            "refuted <= 2.5%",
        ),
        Case(
            "equal (TOST), m=0.02",
            "at margin (effect 0.02)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 2 * m, "b": 0}, r)),
            "confirmed <= 2.5%, refuted <= 2.5%",
        ),
        Case(
            "equal (TOST), m=0.02",
            "clear (effect 0.08)",
            _one(compare("equal", 2 * m), lambda r: metric_table({"a": 8 * m, "b": 0}, r)),
            "confirmed <= 2.5%",
        ),
        Case(
            "a_not_worse, m=0.01",
            "null (effect 0)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": 0, "b": 0}, r)),
            "refuted <= 2.5%",
        ),
        Case(
            "a_not_worse, m=0.01",
            "at margin (effect -0.01)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": -m, "b": 0}, r)),
            "confirmed <= 2.5%, refuted <= 2.5%",
        ),
        Case(
            "a_not_worse, m=0.01",
            "clear (effect -0.05)",
            _one(compare("a_not_worse", m), lambda r: metric_table({"a": -5 * m, "b": 0}, r)),
            "confirmed <= 2.5%",
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "null (all equal)",
            _one(best, lambda r: metric_table({a: 0.0 for a in six}, r)),
            "confirmed <= 2.5%, refuted <= 2.5%",
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "clear (predicted +0.05)",
            _one(best, lambda r: metric_table({a: 5 * m * (a == "arm0") for a in six}, r)),
            "refuted <= 2.5%",
        ),
        Case(
            "best of 6 arms, 1 predicted",
            "clear (another arm +0.05)",
            _one(best, lambda r: metric_table({a: 5 * m * (a == "arm3") for a in six}, r)),
            "confirmed <= 2.5%",
        ),
    ]
    fisher = {"id": "R", "test": "rate", "axis": "arm", "a": "a", "b": "b", "predict": "a_better"}
    out += [
        Case(
            "rate a_better (Fisher), 10 seeds",
            "null (both 30%)",
            _one(fisher, lambda r: rate_table({"a": 0.3, "b": 0.3}, r, 10)),
            "confirmed <= 2.5%, refuted <= 2.5%",
        ),
        Case(
            "rate a_better (Fisher), 10 seeds",
            "clear (0% vs 80%)",
            _one(fisher, lambda r: rate_table({"a": 0.0, "b": 0.8}, r, 10)),
            "refuted <= 2.5%",
        ),
    ]
    for holm in (True, False):
        name = "10 a_better claims, m=0, " + ("Holm" if holm else "no Holm")
        out += [
            Case(
                name,
                "null (all 10 effects 0)",
                _holm_family(0.0, holm),
                "any confirmed <= 2.5% (family-wise)",
            ),
            Case(
                name,
                "clear (all 10 effects 0.03)",
                _holm_family(3 * m, holm),
                "rates are per claim",
            ),
        ]
    return out


def run_case(case: Case, n: int, seed: int) -> dict[str, float]:
    """Fractions of ``n`` simulated studies: per claim confirmed/refuted, and for families
    the fraction of studies in which any claim was confirmed / refuted."""
    rng = np.random.default_rng(seed)
    conf = ref = any_conf = any_ref = 0
    total = 0
    for _ in range(n):
        verdicts = case.simulate(rng)
        conf += sum(v == CONFIRMED for v in verdicts)
        ref += sum(v == REFUTED for v in verdicts)
        any_conf += CONFIRMED in verdicts
        any_ref += REFUTED in verdicts
        total += len(verdicts)
    return {
        "confirmed": conf / total,
        "refuted": ref / total,
        "any_confirmed": any_conf / n,
        "any_refuted": any_ref / n,
    }


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
            "| rule | truth | confirmed | refuted | any confirmed / any refuted (family) "
            "| should be |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for i, case in enumerate(cases()):
        is_family = case.rule.startswith("10 ")
        r = run_case(case, family_n if is_family else args.n, args.seed + i)
        family = f"{r['any_confirmed']:.2%} / {r['any_refuted']:.2%}" if is_family else ""
        lines.append(
            f"| {case.rule} | {case.truth} | {r['confirmed']:.2%} | "
            f"{r['refuted']:.2%} | {family} | {case.nominal} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Wall time {time.monotonic() - t0:.0f} s."]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
