"""L-BFGS through the training loop (OPT-9): its closure step, the gradient-evaluation count
(``opt/evals``) and divergence of a step that leaves non-finite weights."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tasks.data import Dataset
from tasks.events import Metrics, Summary
from tasks.optimizers import LBFGSSpec, SGDSpec, build_optimizer
from tasks.training import TrainSpec, fit


def _blobs(n: int = 64) -> Dataset:
    """Two well-separated Gaussian classes in 4 dimensions."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + 3.0 * y[:, None].float()
    return Dataset(x, y, x, y, x, y, num_classes=2)


def _run(spec: LBFGSSpec | SGDSpec, epochs: int, batch: int) -> tuple[list[Metrics], Summary]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    optimizer = build_optimizer(model.parameters(), spec)
    train = TrainSpec(epochs=epochs, batch_size=batch, checkpoint_every=0)
    events = list(fit(model, _blobs(), optimizer, None, train, 0, torch.device("cpu")))
    metrics = [e for e in events if isinstance(e, Metrics)]
    (summary,) = [e for e in events if isinstance(e, Summary)]
    return metrics, summary


def test_lbfgs_through_the_loop_reduces_the_loss() -> None:
    metrics, summary = _run(LBFGSSpec(line_search_fn="strong_wolfe"), epochs=3, batch=64)
    assert summary.outcome == "finished"
    assert summary.values["train/eval_loss"] < 0.5 * metrics[0].values["train/loss"]


def test_evals_count_every_closure_call() -> None:
    # First-order: one evaluation per step (4 steps an epoch at batch 16 of 64).
    sgd, _ = _run(SGDSpec(), epochs=2, batch=16)
    assert [m.values["opt/evals"] for m in sgd] == [4.0, 8.0]
    # L-BFGS: several per step, at most max_eval = 1.25 x max_iter each (torch's default).
    lbfgs, _ = _run(LBFGSSpec(max_iter=4), epochs=1, batch=16)
    assert 4 < lbfgs[0].values["opt/evals"] <= 4 * 5


def test_a_nan_lbfgs_step_ends_the_run_as_diverged() -> None:
    # lr 1e38 without a line search: the third iteration's weights overflow float32, inside
    # the first (and, full batch, only) step of the epoch: no later batch would show it.
    metrics, summary = _run(LBFGSSpec(lr=1e38, max_iter=3), epochs=2, batch=64)
    assert summary.outcome == "diverged"
    assert metrics == []
    assert summary.reason == "non-finite weights after the step at epoch 0, step 0"


def test_lbfgs_spec_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="line_search_fn"):
        LBFGSSpec.model_validate({"line_search_fn": "armijo"})
    with pytest.raises(ValidationError, match="max_iter"):
        LBFGSSpec.model_validate({"max_iter": 0})
