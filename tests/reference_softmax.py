"""Brute-force float64 oracle for the streaming pass, and the tolerance table of its tests."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

# Error bound relative to max(|expected|, scale), by compute dtype.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}

QUANTITIES = ("L1", "L2", "kl12", "kl21", "H1", "H2")


def logits64(f, g) -> np.ndarray:
    return np.asarray(f, dtype=np.float64) @ np.asarray(g, dtype=np.float64).T


def pair_reference(l1: np.ndarray, l2: np.ndarray) -> dict:
    """Per-row L, KL both ways, entropies and top-1 agreement from full float64 logits."""
    L1 = logsumexp(l1, axis=1)
    L2 = logsumexp(l2, axis=1)
    lp1 = l1 - L1[:, None]
    lp2 = l2 - L2[:, None]
    p1 = np.exp(lp1)
    p2 = np.exp(lp2)
    return {
        "L1": L1,
        "L2": L2,
        "kl12": (p1 * (lp1 - lp2)).sum(axis=1),
        "kl21": (p2 * (lp2 - lp1)).sum(axis=1),
        "H1": -(p1 * lp1).sum(axis=1),
        "H2": -(p2 * lp2).sum(axis=1),
        "top1_agree": l1.argmax(axis=1) == l2.argmax(axis=1),
    }


def stream_reference(f1, g1, f2, g2) -> dict:
    return pair_reference(logits64(f1, g1), logits64(f2, g2))


def assert_pass_close(actual: dict, expected: dict, dtype, scale=1.0, check_top1=True) -> None:
    """Every quantity within RTOL[dtype] * max(|expected|, scale), row by row.

    ``scale`` (scalar or per row) is the size of the logits: KL and entropies are differences
    of terms of that size, so their absolute error grows with it.
    """
    rtol = RTOL[np.dtype(dtype)]
    for k in QUANTITIES:
        a, e = actual[k], expected[k]
        assert a.dtype == np.float64 and a.shape == e.shape, k
        bound = rtol * np.maximum(np.abs(e), scale)
        err = np.abs(a - e)
        worst = int(np.argmax(err / bound))
        assert np.all(err <= bound), (
            f"{k}: row {worst}: got {a[worst]!r}, expected {e[worst]!r} "
            f"(error {err[worst]:.3g} > {bound[worst]:.3g})")
    if check_top1:
        np.testing.assert_array_equal(actual["top1_agree"], expected["top1_agree"])
