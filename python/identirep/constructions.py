"""Constructed models from the paper: a pair with vanishing KL but dissimilar representations
(Table 1), perturbed copies (the d_SVD <= 2 M d_LLV bound), and linearly equivalent pairs."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .model import Model

TABLE1_PERMUTATION = np.array([5, 0, 2, 4, 6, 1, 3])


def _polar(angle, length):
    return np.stack([length * np.cos(angle), length * np.sin(angle)], axis=-1)


def even_spaced_classifier(num_classes: int = 7, inputs_per_class: int = 500,
                           g_length: float = 20.0, min_f_length: float = 5.0, seed: int = 0):
    """2-d classifier: label angles evenly spaced, inputs within pi/64 of their label.

    Returns (model, g_angles, x_offsets, f_lengths); inputs are grouped by class.
    """
    rng = np.random.default_rng(seed)
    g_angles = np.arange(num_classes) * (2 * np.pi / num_classes)
    offsets = rng.uniform(-np.pi / 64, np.pi / 64, (num_classes, inputs_per_class))
    lengths = np.abs(0.01 * rng.standard_normal((num_classes, inputs_per_class))) + min_f_length
    f = _polar((g_angles[:, None] + offsets) % (2 * np.pi), lengths).reshape(-1, 2)
    g = _polar(g_angles, g_length)
    return Model(f, g, name=f"even-spaced(rho={g_length:g})"), g_angles, offsets, lengths


def table1_pair(rho: float, num_classes: int = 7, inputs_per_class: int = 500,
                min_f_length: float = 2.0, seed: int = 0) -> Tuple[Model, Model]:
    """The paper's Table 1 pair: model 2 is model 1 with its labels permuted.

    Both models put each input's mass on the same label, so KL -> 0 as rho grows, while
    their representations stay unrelated by any linear map.
    """
    if num_classes != len(TABLE1_PERMUTATION):
        raise ValueError("the Table 1 permutation is defined for 7 classes")
    m1, g_angles, offsets, lengths = even_spaced_classifier(
        num_classes, inputs_per_class, rho, min_f_length, seed)
    perm = TABLE1_PERMUTATION
    g2_angles = g_angles[perm]
    f2 = _polar((g2_angles[:, None] + offsets[perm]) % (2 * np.pi), lengths).reshape(-1, 2)
    m2 = Model(f2, _polar(g2_angles, rho), name=f"permuted(rho={rho:g})")
    m1.name = f"even-spaced(rho={rho:g})"
    return m1, m2


def perturbed_copy(base: Model, noise: float, seed: int = 0) -> Model:
    """``base`` with Gaussian noise of standard deviation ``noise`` added to its embeddings."""
    rng = np.random.default_rng(seed)
    f, g, b = base.numpy()
    return Model(f + noise * rng.standard_normal(f.shape), g, bias=b,
                 name=f"{base.name or 'model'}+noise({noise:g})")


def linear_transform(base: Model, seed: int = 0, shift: float = 1.0) -> Model:
    """An equivalent model: f' = A f, g' = A^-T g + c for a random well-conditioned A.

    p'(y|x) = p(y|x) exactly, since f'(x).g'(y) = f(x).g(y) + f'(x).c and the last term does
    not depend on y.
    """
    rng = np.random.default_rng(seed)
    f, g, b = base.numpy()
    M = f.shape[1]
    Q1, _ = np.linalg.qr(rng.standard_normal((M, M)))
    Q2, _ = np.linalg.qr(rng.standard_normal((M, M)))
    A = Q1 @ np.diag(np.exp(rng.uniform(-1, 1, M))) @ Q2
    c = shift * rng.standard_normal(M)
    return Model(f @ A.T, g @ np.linalg.inv(A) + c, bias=b,
                 name=f"{base.name or 'model'} (linear map)")


def random_model(N: int, V: int, M: int, scale: float = 1.0, seed: int = 0,
                 bias: bool = False, name: str = None) -> Model:
    """Gaussian f and g with logits of standard deviation about ``scale``."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((N, M))
    g = rng.standard_normal((V, M)) * (scale / np.sqrt(M))
    b = rng.standard_normal(V) if bias else None
    return Model(f, g, bias=b, name=name or f"random(seed={seed})")
