"""Adaptive seeds: rounds of more seeds for the arms of claims still inconclusive.

With ``sweep.seeds: {min, max}`` the plan holds ``min`` seeds per arm. After they ran,
:func:`run_rounds` replays the sequential rule (:mod:`orchestrator.verdicts.sequential`,
which documents why looking after every round keeps the error at ``alpha``) over the trials
recorded so far; for each claim still open it adds, to that claim's arms only, the seeds up
to the next planned look, and repeats until every claim is decided or the last look
(``max``) has run. The report replays the same looks, so the verdicts it shows (with seeds
used and why each claim stopped) are the ones that drove the rounds.

New seeds are planned as the study with ``seed=range(n, n2)``: a trial's key hashes its
config, so a seed's trial has the key it would have had in a plain sweep; only its index is
new (after every index used so far).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pandas as pd
from rich.console import Console

from orchestrator.config.compose import composer
from orchestrator.config.plan import SweepPlan, plan_sweep
from orchestrator.core.specs import AdaptiveSeeds, Trial
from orchestrator.store import schema, writer
from orchestrator.store.reader import StoreReader
from orchestrator.sweep.recorder import Recorder
from orchestrator.verdicts import ClaimSpec
from orchestrator.verdicts.sequential import claim_arm_matches, looks, sequential_verdicts


def is_adaptive(plan: SweepPlan) -> bool:
    """A grid study with ``sweep.seeds: {min, max}`` and claims to decide."""
    return (
        plan.search is None
        and isinstance(plan.spec.sweep.seeds, AdaptiveSeeds)
        and bool(plan.spec.study.claims)
    )


def run_rounds(
    plan: SweepPlan,
    tracker: writer.Tracker,
    reader: StoreReader,
    rec: Recorder,
    dispatch: Callable[[list[Trial]], None],
    console: Console,
) -> None:
    """Run the looks after the first (whose ``min`` seeds already ran); see the module doc.

    ``dispatch`` runs a list of trials to the end (upstreams and phases as the plan's own).
    """
    seeds = plan.spec.sweep.seeds
    assert isinstance(seeds, AdaptiveSeeds)
    schedule = looks(seeds.min, seeds.max)
    claims = plan.spec.study.claims
    next_index = 1 + max(
        [t.index for t in plan.trials] + [r.trial.index for r in rec.results], default=-1
    )

    def history(run_id: str, metric: str) -> pd.DataFrame:
        return pd.DataFrame(
            [(s, v) for s, v, _ in reader.history(run_id, metric)], columns=["step", "value"]
        )

    for k in range(1, len(schedule)):
        tracker.flush()  # the round's outcomes and metrics must be in the store to be read
        trials = reader.trials(rec.sweep_id)
        _, states = sequential_verdicts(
            claims, trials, schedule, history, list(plan.axes), plan.spec.study.learned, done=k
        )
        open_claims = [c for c, s in zip(claims, states) if not s.decided]
        if not open_claims:
            return
        if len(trials):  # a resumed sweep: its earlier rounds' trials are in the store
            next_index = max(next_index, int(trials["trial_index"].max()) + 1)
        new = _more_seeds(plan, open_claims, schedule[k - 1], schedule[k], trials, next_index)
        console.print(
            f"adaptive seeds: look {k} of {len(schedule)} leaves "
            f"{', '.join(c.id for c in open_claims)} open; seeds {schedule[k - 1]}.."
            f"{schedule[k] - 1} for their arms ({len(new)} trials)",
            highlight=False,
        )
        if not new:
            continue
        next_index += sum(t.index >= next_index for t in new)
        rec.progress.add_total(len(new))
        dispatch(new)


def _more_seeds(
    plan: SweepPlan,
    open_claims: list[ClaimSpec],
    lo: int,
    hi: int,
    recorded: pd.DataFrame,
    first_index: int,
) -> list[Trial]:
    """Trials of seeds ``lo..hi-1`` whose arm some open claim needs. A trial the sweep
    already settled (a resumed sweep) is left out; one it recorded unsettled keeps its
    index, so the store holds one row per trial; the others are indexed from
    ``first_index``."""
    more = plan_sweep(
        composer(plan.config_dir),
        plan.spec.study.name,
        [*plan.overrides, f"seed=range({lo},{hi})"],
        quick=plan.quick,
    )
    known: dict[str, int] = {}
    settled: set[str] = set()
    if len(recorded):
        known = dict(zip(recorded["trial_key"], recorded["trial_index"].astype(int)))
        settled = set(recorded.loc[recorded["outcome"].isin(schema.SETTLED_OUTCOMES), "trial_key"])
    out: list[Trial] = []
    for t in more.trials:
        if t.key in settled or not any(
            claim_arm_matches(c, arm) for c in open_claims for arm in (t.arm, *t.also)
        ):
            continue
        index = known.get(t.key, first_index + sum(o.index >= first_index for o in out))
        out.append(replace(t, index=index))
    return out
