"""Run a planned sweep: Ray up, the parent run, dedup, dispatch, the record, the report."""

from orchestrator.sweep.run import RESUME_OVERRIDES, new_sweep_id, resume_sweep, run_sweep

__all__ = ["RESUME_OVERRIDES", "new_sweep_id", "resume_sweep", "run_sweep"]
