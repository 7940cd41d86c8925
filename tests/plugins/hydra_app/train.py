"""A plain Hydra app with nothing of orch in it: the subject of tests/test_hydra_launcher.py.

It logs to MLflow the usual way (the active run) and fails on one input value.
"""

import hydra
import mlflow
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    mlflow.log_param("lr", cfg.lr)
    mlflow.set_tag("app", "hydra_app")
    mlflow.log_text(f"x={cfg.x}", "notes/x.txt")
    for step in range(cfg.steps):
        mlflow.log_metric("loss", cfg.x * cfg.y / (step + 1), step=step)
    if cfg.x == cfg.fail_on:
        raise ValueError(f"x={cfg.x} is the input this app fails on")
    return float(cfg.x * cfg.y)


if __name__ == "__main__":
    main()
