"""The synthetic data set of the width experiment.

Points x ~ N(0, 3^2 I) in the plane; a point below the x-axis (y < 0) is reflected through
the origin into the upper half-plane, and its class is the bin of its angle to the x-axis
when [0, pi) is split into C equal bins. The first ``n_train`` points of one seeded NumPy
generator are the training set, the next ``n_test`` the held-out test set on which f is
evaluated. NumPy only: no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the paper's sizes and spread
N_TRAIN = 20_000
N_TEST = 2_000
STD = 3.0


@dataclass(frozen=True)
class Dataset:
    """Inputs (n x 2, float32) and classes (n, int64) of the training and test sets."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    seed: int


def upper_half(x: np.ndarray) -> np.ndarray:
    """``x`` with every point of negative second coordinate reflected through the origin."""
    return np.where(x[:, 1:2] < 0, -x, x)


def angle_class(x: np.ndarray, classes: int) -> np.ndarray:
    """The class of points of the closed upper half-plane: the bin of their angle in [0, pi)
    split into ``classes`` equal bins (a point on the negative x-axis has angle 0, the
    reflection of its angle pi)."""
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), np.pi)
    return np.minimum((angle * (classes / np.pi)).astype(np.int64), classes - 1)


def make_dataset(classes: int = 4, seed: int = 0, n_train: int = N_TRAIN,
                 n_test: int = N_TEST) -> Dataset:
    """The training and test sets of the width experiment for ``classes`` classes."""
    rng = np.random.default_rng(seed)
    x = upper_half(STD * rng.standard_normal((n_train + n_test, 2)))
    y = angle_class(x, classes)
    x = x.astype(np.float32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, seed)
