"""Helpers shared by the tests: the tolerance table and its one comparison, random model pairs,
and the brute-force float64 oracle of the streaming pass. Tests import these from here, never
from each other or from conftest.py (which holds fixtures and decides every skip)."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

import identirep as ir

#: relative tolerance against the float64 reference, by the dtype the fast path computed in.
#: float16 and bfloat16 have no fixed entry: their error must be at most twice that of a plain
#: computation in the same precision (``assert_close(..., plain=...)``).
TOLERANCES = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}
HALF_DTYPES = ("float16", "bfloat16")


def _dtype_name(dtype) -> str:
    return getattr(dtype, "__name__", None) or np.dtype(dtype).name


def assert_close(actual, expected, dtype=np.float64, *, rtol=None, atol=0.0, scale=0.0,
                 plain=None, what=""):
    """``actual`` is within the tolerance of ``dtype`` of the float64 ``expected``:
    ``|actual - expected| <= rtol * max(|expected|, scale) + atol`` elementwise, with rtol from
    TOLERANCES unless given (``scale`` is the size of the terms a result is a difference of).
    For float16/bfloat16, ``plain`` is the same quantity computed plainly in that precision, and
    the error may be at most twice the plain computation's (plus ``atol``)."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    err = np.abs(actual - expected)
    name = _dtype_name(dtype)
    if name in HALF_DTYPES:
        if plain is None:
            raise TypeError(f"assert_close of {name} results needs `plain`, the same quantity "
                            "computed plainly in that precision")
        bound = 2.0 * np.abs(np.asarray(plain, float) - expected) + atol
        rule = f"2 x the plain {name} error + {atol}"
    else:
        if rtol is None:
            rtol = TOLERANCES[np.dtype(dtype)]
        bound = rtol * np.maximum(np.abs(expected), scale) + atol
        rule = f"rtol {rtol}, atol {atol}, scale {scale}"
    if not np.all(err <= bound):
        with np.errstate(divide="ignore", invalid="ignore"):
            worst = int(np.nanargmax(np.where(bound > 0, err / bound, np.inf).reshape(-1)))
        rel = err / np.maximum(np.abs(expected), 1e-300)
        raise AssertionError(
            f"{what}: max abs err {err.max():.3e}, max rel {rel.max():.3e} ({rule}); "
            f"worst at flat index {worst}: got {actual.reshape(-1)[worst]!r}, expected "
            f"{expected.reshape(-1)[worst]!r}")


def random_pair(N=301, V=53, M=5, M2=None, seed=0, bias=False, scale=2.0, noise=0.5):
    """Two related random models: b's embeddings are a's plus noise, g's are perturbed."""
    rng = np.random.default_rng(seed)
    M2 = M if M2 is None else M2
    f1 = rng.standard_normal((N, M))
    g1 = rng.standard_normal((V, M)) * scale / np.sqrt(M)
    P = rng.standard_normal((M, M2))
    f2 = f1 @ P + noise * rng.standard_normal((N, M2))
    g2 = rng.standard_normal((V, M2)) * noise * scale / np.sqrt(M2) + g1 @ np.linalg.pinv(P).T
    b1 = rng.standard_normal(V) if bias else None
    b2 = rng.standard_normal(V) if bias else None
    return ir.Model(f1, g1, bias=b1, name="a"), ir.Model(f2, g2, bias=b2, name="b")


# ------------------------------------------------------------------ the pass's oracle
#: the streaming pass is held to a tighter float64 tolerance than the measures
PASS_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
PASS_QUANTITIES = ("L1", "L2", "kl12", "kl21", "H1", "H2")


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
    """Every quantity within PASS_RTOL[dtype] * max(|expected|, scale), row by row.

    ``scale`` (scalar or per row) is the size of the logits: KL and entropies are differences
    of terms of that size, so their absolute error grows with it.
    """
    for k in PASS_QUANTITIES:
        a, e = actual[k], expected[k]
        assert a.dtype == np.float64 and a.shape == e.shape, k
        assert_close(a, e, dtype, rtol=PASS_RTOL[np.dtype(dtype)], scale=scale, what=k)
    if check_top1:
        np.testing.assert_array_equal(actual["top1_agree"], expected["top1_agree"])


# ------------------------------------------------------------------ GPU arrays without a GPU
class FakeGpuArray:
    """An array the compiled CUDA entry points read through ``__cuda_array_interface__``, over
    a made-up device pointer: their checks that need no device (dtype, shape, strides,
    alignment, writable outputs) run on it; a launch would need real device memory."""

    def __init__(self, shape, dtype, ptr=1 << 20, strides=None, readonly=False):
        """``strides`` in elements (None: C-contiguous)."""
        dt = np.dtype(dtype)
        self.shape = tuple(shape)
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": dt.str, "data": (ptr, readonly), "version": 3,
            "strides": None if strides is None else tuple(s * dt.itemsize for s in strides)}

    @classmethod
    def like(cls, a, ptr=1 << 20, dtype=None):
        """The shape and strides of NumPy array ``a``, its dtype or ``dtype``."""
        return cls(a.shape, dtype or a.dtype, ptr, [s // a.itemsize for s in a.strides])
