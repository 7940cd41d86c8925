"""What the store holds: every ``orch.*`` tag, artifact path and status rule, in one place.

Who writes what (the contract, like Optuna's storage docs):

* The sweep's driver is the only writer of its runs (sqlite sees one writer at a time;
  a tracking server is written through the same client). Workers stream events back.
* A *sweep* is one MLflow parent run (``TAG_KIND = "sweep"``) tagged with everything
  ``orch resume`` needs to re-plan it (``SWEEP_TAGS``), its composed ``config.yaml``, and at
  the end ``verdicts.json``, ``report/`` and ``orch.verdict.<id>`` tags.
* A *trial attempt* is one child run (``TAG_KIND = "trial"``, or ``"upstream"`` for a run
  other trials need first) under it, identified by ``TAG_KEY`` (a hash of the resolved
  config). ``TAG_OUTCOME`` is written with the run's terminal status in one request, so a
  run shows a terminal status only once its result is written.
* A run left RUNNING belongs to a live driver, or to a dead one: ``orch resume`` settles
  those of its own sweep (outcome written: the status is completed; else ``interrupted``).
* A trial's checkpoints are artifacts of its attempt's run (``checkpoint_path``), the
  latest ``sweep.checkpoints_keep`` kept; ``TAG_CHECKPOINT_STEP`` names the usable one and
  is written after its artifact and after the run's metrics up to that step. An attempt
  that resumed from one carries ``TAG_RESUMED_STEP``/``TAG_RESUMED_RUN`` and a copy of the
  earlier run's metric history up to that step.
* A RUNNING trial run is also a *lease* on its trial key (``store/lease.py``): its driver
  updates ``TAG_HEARTBEAT`` every few seconds, and another sweep meeting it waits for its
  result instead of training the trial again. A lease whose heartbeat is older than
  ``sweep.lease_timeout_s`` is taken over: the one write a driver makes to another sweep's
  run is ending it ``interrupted``.
* An *upstream* run (pre-training that trials name in ``TAG_UPSTREAM``) is leased the same
  way under its own key: a sweep meeting another's live claim on it waits, then gives its
  trials that run's ``outputs/`` artifacts (it records no run of its own for it).
* An Optuna search's trials are not leased. Two searches started together are two Optuna
  studies and two sweeps: each sampler asks for its own trials and learns only from its
  own results, so a configuration both happen to ask for is trained by each. Waiting on the
  other's run instead would have to feed its per-step values to this study's pruner and
  tell its result as this study's trial; not done.
"""

from __future__ import annotations

import os
import re

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: The MLflow major version whose table layout the writer and reader use directly on
#: sqlite and PostgreSQL stores (any other version goes through MLflow's API).
MLFLOW_SCHEMA_MAJOR = 3

# -- every run ------------------------------------------------------------------------------
TAG_KIND = "orch.kind"  # "sweep", "trial" or "upstream"
TAG_SWEEP = "orch.sweep_id"
TAG_STUDY = "orch.study"
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT = "mlflow.source.git.commit"
TAG_TOKEN = "orch.create_token"  # makes a retried create_run idempotent
KIND_SWEEP, KIND_TRIAL, KIND_UPSTREAM = "sweep", "trial", "upstream"

# -- a sweep's parent run -------------------------------------------------------------------
TAG_OVERRIDES = "orch.overrides"  # JSON list of the command's overrides
TAG_QUICK = "orch.quick"  # "1" for a study's quick variant
TAG_CONFIG_DIR = "orch.config_dir"
TAG_TASKS = "orch.tasks"  # JSON list of --tasks modules
TAG_N_TRIALS = "orch.n_trials"
TAG_METRIC = "orch.metric"
TAG_MODE = "orch.mode"
TAG_AXES = "orch.axes"  # JSON list of the grid's axis keys
TAG_CANCEL = "orch.cancel_requested"
TAG_VERDICT = "orch.verdict."  # + claim id: the claim's verdict
TAG_OPTUNA_STUDY = "orch.optuna_study"
TAG_OPTUNA_STORAGE = "orch.optuna_storage"
TAG_DRIVER_PID = "orch.driver_pid"  # the sweep's driver: the CLI, or orch up's standby
TAG_SEARCH = "orch.search."  # + sampler | pruner | metrics | directions | best
#: The parent's tags that ``orch resume`` re-plans a sweep from.
SWEEP_TAGS = (TAG_OVERRIDES, TAG_QUICK, TAG_CONFIG_DIR, TAG_TASKS, TAG_STUDY)

# -- a trial attempt's child run ------------------------------------------------------------
TAG_KEY = "orch.trial_key"
TAG_INDEX = "orch.trial_index"
TAG_OUTCOME = "orch.outcome"  # finished | failed | diverged | pruned | killed | retried ...
TAG_ERROR = "orch.error"
TAG_ARM = "orch.arm"  # JSON: axis key -> value
TAG_ALSO = "orch.also_arms"  # JSON list: the arms of other sub-grids with this config
TAG_NODE = "orch.node"
TAG_NODE_ID = "orch.node_id"
TAG_ATTEMPT = "orch.attempt"
TAG_PID = "orch.pid"  # the worker process that ran the attempt (on orch.node)
TAG_REUSED = "orch.reused_from"  # run id of the finished run with the same key
TAG_UPSTREAM = "orch.upstream_key"  # the trial key of the run this one needed first
TAG_OPTUNA_TRIAL = "orch.optuna_trial"
#: The pointer to the run's latest stored checkpoint (its step K): written only after the
#: artifact ``checkpoint_path(K)`` is complete, so a newer artifact without it is ignored.
TAG_CHECKPOINT_STEP = "orch.checkpoint_step"
TAG_RESUMED_STEP = "orch.resumed_from_step"  # this attempt continued after step K ...
TAG_RESUMED_RUN = "orch.resumed_from_run"  # ... of this run's checkpoint
#: This attempt started over: the previous one could not resume (the CheckpointError).
TAG_RESTARTED = "orch.restarted_from_scratch"
TAG_HEARTBEAT = "orch.heartbeat"  # epoch seconds: the claiming driver is alive (store/lease.py)

# -- artifacts ------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
VERDICTS_ARTIFACT = "verdicts.json"
REPORT_FOLDER = "report"
SEARCH_FOLDER = "search"  # a search's plots, importances and summary.json
OUTPUTS_FOLDER = "outputs"  # a task's Summary.artifacts
TRACEBACK_ARTIFACT = "error/traceback.txt"
CHECKPOINTS_FOLDER = "checkpoints"  # a trial's resume states, the latest few kept

# -- outcomes -------------------------------------------------------------------------------
#: MLflow run status for each trial outcome. A diverged run is FAILED (its training did)
#: but counts as done: re-running the same seed would diverge again.
STATUS = {
    "finished": "FINISHED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "pruned": "KILLED",
    "killed": "KILLED",
    "interrupted": "KILLED",
}
#: Outcomes whose run another sweep may reuse instead of training again.
DONE_OUTCOMES = ("finished", "diverged")
#: Outcomes a resumed sweep does not run again (killed and interrupted trials it does).
SETTLED_OUTCOMES = ("finished", "diverged", "failed")
RETRIED = "retried"  # the outcome of an attempt that was run again


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, then ``$MLFLOW_TRACKING_URI``, then the embedded default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def is_server(uri: str) -> bool:
    """True for a tracking *server* (http/https), as opposed to a database or local files."""
    return uri.startswith(("http://", "https://"))


def checkpoint_path(step: int) -> str:
    """The artifact path of a trial's checkpoint after step ``step``."""
    return f"{CHECKPOINTS_FOLDER}/{checkpoint_name(step)}"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.pt"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint artifact's file name; None for any other file."""
    m = re.fullmatch(r"step-(\d+)\.pt", name)
    return int(m.group(1)) if m else None


def verdict_tag(claim_id: str) -> str:
    """The tag key of a claim's verdict (characters MLflow rejects become ``_``)."""
    return TAG_VERDICT + re.sub(r"[^\w./\- ]", "_", claim_id)
