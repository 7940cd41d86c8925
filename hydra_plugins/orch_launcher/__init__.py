"""Hydra launcher plugin: ``hydra/launcher=orch`` runs a Hydra app's jobs on orch's Ray slots
and tracks each job as an MLflow child run of one parent run per multirun."""
