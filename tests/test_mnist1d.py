"""MNIST-1D (generated offline by the ``mnist1d`` package) and the four 1-D baseline models."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tasks import data as datasets
from tasks.classify import ClassifySpec, run
from tasks.events import Summary
from tasks.models import CNNSpec, ResNetSpec, build_model
from tasks.spec import StrictModel


@pytest.fixture(scope="module")
def plain() -> datasets.Dataset:
    return datasets.load(datasets.MNIST1DSpec())


@pytest.fixture
def one_thread() -> Iterator[None]:
    # As a sweep worker runs (one thread per CPU); many threads on these tiny ops only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generated_offline_with_published_sizes_and_rng_left_alone(
    monkeypatch: pytest.MonkeyPatch, plain: datasets.Dataset
) -> None:
    # ``plain`` has loaded once already: the lazy first imports (which draw from ``random``)
    # are done, so what follows measures generation alone.
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("MNIST-1D generation touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    datasets._load_cached.cache_clear()
    datasets._mnist1d_raw.cache_clear()
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    d = datasets.load(datasets.MNIST1DSpec(split_seed=5))
    # make_dataset seeds the global generators; the loader restores them.
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    # 4,000 train (3,600 + 400 validation) / 1,000 test, one channel of length 40, 10 classes.
    assert (d.x_train.shape, d.x_val.shape, d.x_test.shape) == (
        (3600, 1, 40),
        (400, 1, 40),
        (1000, 1, 40),
    )
    assert d.num_classes == 10 and d.x_train.dtype == torch.float32
    # Stratified: each class keeps its share of the package's (not exactly balanced) 4,000.
    per_class = torch.bincount(torch.cat([d.y_train, d.y_val]))
    assert torch.all((torch.bincount(d.y_val) - 0.1 * per_class).abs() <= 1)
    # The test split is the package's and does not depend on the validation split.
    assert torch.equal(d.x_test, plain.x_test)


def test_cached_per_process_and_deterministic(plain: datasets.Dataset) -> None:
    first = datasets.load(datasets.MNIST1DSpec())
    assert datasets.load(datasets.MNIST1DSpec()) is first
    datasets._load_cached.cache_clear()
    datasets._mnist1d_raw.cache_clear()
    again = datasets.load(datasets.MNIST1DSpec())
    assert again is not plain
    torch.testing.assert_close(again.x_train, plain.x_train, rtol=0, atol=0)
    assert torch.equal(again.y_test, plain.y_test)


def test_shuffle_is_one_fixed_permutation_of_positions(plain: datasets.Dataset) -> None:
    shuffled = datasets.load(datasets.MNIST1DSpec(shuffle=True))
    perm = np.random.default_rng(datasets.MNIST1D_SHUFFLE_SEED).permutation(40)
    assert not np.array_equal(perm, np.arange(40))
    for split in ("train", "val", "test"):
        x, xs = getattr(plain, f"x_{split}"), getattr(shuffled, f"x_{split}")
        assert torch.equal(getattr(plain, f"y_{split}"), getattr(shuffled, f"y_{split}"))
        assert torch.equal(xs, x[..., torch.from_numpy(perm)])


# The baselines of github.com/greydanus/mnist1d (notebooks/models.py) have these sizes.
PARAMS = {"logreg_1d": 410, "mlp_1d": 15_210, "cnn_1d": 5_210, "gru_1d": 5_134}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_baseline_sizes_and_one_epoch_learns(
    name: str, plain: datasets.Dataset, one_thread: None
) -> None:
    spec = ClassifySpec.model_validate(
        {
            "data": {"name": "mnist1d"},
            "model": {"name": name},
            "optimizer": {"name": "adam", "lr": 1e-2},
            "scheduler": {"name": "constant"},
            "train": {"epochs": 1, "batch_size": 100, "device": "cpu"},
        }
    )
    model = build_model(spec.model, plain.input_shape, plain.num_classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    summary = [e for e in run(spec) if isinstance(e, Summary)][-1]
    assert summary.outcome == "finished"
    assert summary.values["test/acc"] > 0.18  # chance is 0.1; one epoch gives 0.23-0.40


@pytest.mark.parametrize("spec", [CNNSpec(), CNNSpec(norm="gn"), ResNetSpec(blocks=1)])
def test_digit_cnns_take_one_dimensional_inputs(spec: StrictModel, plain: datasets.Dataset) -> None:
    model = build_model(spec, plain.input_shape, plain.num_classes)  # type: ignore[arg-type]
    assert any(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    assert model(plain.x_train[:8]).shape == (8, 10)
