"""Bad input: exit code 2, a message naming the field and what is allowed, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main

CASES = [
    (["nosuch"], "study: 'nosuch' is not a known study"),
    (["optimizers", "optimizer=nosuch"], "optimizer"),
    (["optimizers", "optimizer=sgd,nosuch"], "allowed:"),
    (["optimizers", "optimizer.lr=-1", "optimizer=sgd"], "optimizer.lr"),
    (["optimizers", "optimizer.lr=abc", "optimizer=sgd"], "optimizer.lr"),
    (["optimizers", "train.epochs=0"], "train.epochs"),
    (["optimizers", "+train.epochz=3"], "train.epochz"),
    (["optimizers", "sweep.mode=sideways"], "sweep.mode"),
    (["optimizers", "resources.cpus=0"], "resources.cpus"),
    (["optimizers", "resources.gpus=1.5"], "resources.gpus"),
    (["optimizers", "resources.gpus=1"], "resources.gpus"),
    (["optimizers", "seed=range(0)"], "sweep.axes.seed"),
    (["optimizers", "optimizer.lr=interval(0,1)"], "interval"),
    (["optimizers", "optimizer=sgd", "optimizer.nesterov=true"], "nesterov"),
    (["optimizers", "model.norm=batch"], "model.norm"),
    (["optimizers", "sweep.axes.nokey=1,2"], "sweep.axes.nokey"),
    (["optimizers", "task.name=os.system"], "task.name"),
    (["optimizers", "+optimizer._target_=os.system", "optimizer=sgd"], "_target_"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_exits_2_and_writes_nothing(ray_session, argv, needle, tmp_path: Path,
                                              capsys) -> None:
    db = tmp_path / "mlflow.db"
    code = main(["sweep", *argv, "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert not db.exists()
