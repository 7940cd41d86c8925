"""Datasets for the built-in tasks: scikit-learn's bundled digits and synthetic sets.

Nothing is downloaded. A dataset is loaded once per worker process (a module-level cache
keyed by the spec) because Ray reuses worker processes across trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator

from tasks.spec import StrictModel


class DigitsSpec(StrictModel):
    """sklearn's 8x8 digits (1,797 images), optionally a class subset and a domain shift."""

    name: Literal["digits"] = "digits"
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = None
    transform: Literal["none", "invert", "permute"] = "none"
    per_class: PositiveInt | None = None  # training examples kept per class (target size)
    val_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    split_seed: int = 0  # fixed split: every trial of a sweep sees the same examples

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("classes must list at least two distinct digits 0-9")
        return v


class SyntheticSpec(StrictModel):
    """A synthetic classification problem (sklearn's make_classification), optionally sparse."""

    name: Literal["synthetic"] = "synthetic"
    n_samples: PositiveInt = 2000
    n_features: PositiveInt = 64
    n_informative: PositiveInt = 16
    n_classes: Annotated[int, Field(ge=2)] = 2
    sparsity: float = Field(0.0, ge=0, lt=1)  # fraction of features zeroed per example
    val_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    split_seed: int = 0


DataSpec = Annotated[DigitsSpec | SyntheticSpec, Field(discriminator="name")]


@dataclass(frozen=True)
class Dataset:
    """Train/val/test tensors; ``x`` keeps the natural shape (digits: N x 1 x 8 x 8)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load(spec: DigitsSpec | SyntheticSpec) -> Dataset:
    """The dataset a spec names, cached per process."""
    return _load_cached(spec.model_dump_json())


@lru_cache(maxsize=16)
def _load_cached(spec_json: str) -> Dataset:
    from pydantic import TypeAdapter

    spec = TypeAdapter(DataSpec).validate_json(spec_json)
    if isinstance(spec, DigitsSpec):
        x, y = _digits(spec)
    else:
        x, y = _synthetic(spec)
    return _split(x, y, spec.val_fraction, spec.test_fraction, spec.split_seed,
                  getattr(spec, "per_class", None))


def _digits(spec: DigitsSpec) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    if spec.classes is not None:
        keep = np.isin(y, spec.classes)
        x, y = x[keep], y[keep]
        # Relabel to 0..k-1 so a head of k outputs fits any subset.
        remap = {c: i for i, c in enumerate(sorted(spec.classes))}
        y = np.array([remap[int(c)] for c in y], dtype=np.int64)
    if spec.transform == "invert":
        x = 1.0 - x
    elif spec.transform == "permute":
        # A fixed pixel permutation: same labels, no spatial structure left ("different" domain).
        perm = np.random.default_rng(1234).permutation(64)
        x = x.reshape(len(x), 64)[:, perm].reshape(x.shape)
    return x, y


def _synthetic(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=spec.n_samples, n_features=spec.n_features,
        n_informative=min(spec.n_informative, spec.n_features), n_redundant=0,
        n_classes=spec.n_classes, random_state=spec.split_seed,
    )
    if spec.sparsity > 0:
        mask = np.random.default_rng(spec.split_seed).random(x.shape) >= spec.sparsity
        x = x * mask
    return x.astype(np.float32), y.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float,
           seed: int, per_class: int | None) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
        stratify=y_rest)
    if per_class is not None:
        idx = np.concatenate([np.flatnonzero(y_train == c)[:per_class] for c in np.unique(y_train)])
        x_train, y_train = x_train[idx], y_train[idx]
    t = torch.from_numpy
    return Dataset(t(x_train), t(y_train), t(x_val), t(y_val), t(x_test), t(y_test),
                   int(len(np.unique(y))))
