"""The streaming pass: the only O(N V M) work. Everything else reads its O(N + V) outputs.

For each input x (over labels y) and each label y (over inputs x) it returns:
- rows: L_k(x) = logsumexp_y l_k, KL both ways, entropies, top-1 agreement, and the label
  moments of the logits (means, centred sums of squares of l1, l2 and of l1 - l2);
- columns: the input moments of the logits of each label (means, centred sums of squares of
  l1, l2 and their cross sum).

This module is the pass's contract, shared by every backend: ``PassStats``, the layout of the
epilogue's running state (``init_state``, ``finalize``), the operands' shape checks, and the
chunked NumPy pass that the compiled passes are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import logsumexp

from .errors import IdentirepError
from .moments import merge_stats


@dataclass
class PassSums:
    """Sums over ``n`` inputs of the pass's per-input values: KL both ways (each clipped at 0),
    entropies, top-1 agreements and the label-centred sums of squares of l1 - l2 (d_logit).
    Sums of shards add up to the sums of their union."""
    n: int
    kl12: float
    kl21: float
    H1: float
    H2: float
    agree: float
    row_m2_dd: float

    @classmethod
    def of(cls, stats: "PassStats") -> "PassSums":
        """The sums of a pass's per-input arrays."""
        return cls(n=len(stats.kl12), kl12=float(np.maximum(stats.kl12, 0.0).sum()),
                   kl21=float(np.maximum(stats.kl21, 0.0).sum()), H1=float(stats.H1.sum()),
                   H2=float(stats.H2.sum()), agree=float(stats.agree.sum()),
                   row_m2_dd=float(stats.row_m2_dd.sum()))

    def swapped(self) -> "PassSums":
        return PassSums(self.n, self.kl21, self.kl12, self.H2, self.H1, self.agree,
                        self.row_m2_dd)


@dataclass
class PassStats:
    L1: np.ndarray
    L2: np.ndarray
    kl12: np.ndarray
    kl21: np.ndarray
    H1: np.ndarray
    H2: np.ndarray
    agree: np.ndarray
    row_mean1: np.ndarray
    row_mean2: np.ndarray
    row_m2_11: np.ndarray
    row_m2_22: np.ndarray
    row_m2_dd: np.ndarray
    col_mean1: np.ndarray
    col_mean2: np.ndarray
    col_m2_11: np.ndarray
    col_m2_22: np.ndarray
    col_m2_12: np.ndarray
    backend: str = "numpy"
    dtype: str = "float64"      # the dtype the logits were computed in
    #: (N, k) int64: each model's k most likely labels per input, largest logit first, ties to
    #: the lower label id (the pass's ``topk``; None when not asked for)
    topk1: Optional[np.ndarray] = None
    topk2: Optional[np.ndarray] = None
    #: for statistics gathered in shards (``identirep.Accumulator``): the per-input arrays
    #: hold only some inputs (the engine's rows of f) and these are the sums over all of them
    sums: Optional[PassSums] = None

    def swapped(self) -> "PassStats":
        """The same pass with the roles of the two models exchanged."""
        return PassStats(
            L1=self.L2, L2=self.L1, kl12=self.kl21, kl21=self.kl12, H1=self.H2, H2=self.H1,
            agree=self.agree, row_mean1=self.row_mean2, row_mean2=self.row_mean1,
            row_m2_11=self.row_m2_22, row_m2_22=self.row_m2_11, row_m2_dd=self.row_m2_dd,
            col_mean1=self.col_mean2, col_mean2=self.col_mean1, col_m2_11=self.col_m2_22,
            col_m2_22=self.col_m2_11, col_m2_12=self.col_m2_12, backend=self.backend,
            topk1=self.topk2, topk2=self.topk1,
            dtype=self.dtype, sums=None if self.sums is None else self.sums.swapped())

    @property
    def row_m2_12(self) -> np.ndarray:
        return 0.5 * (self.row_m2_11 + self.row_m2_22 - self.row_m2_dd)


def numpy_pass(f1, g1, f2, g2, rows: int = 256, progress=None, topk: int = 0) -> PassStats:
    """Chunked float64 NumPy pass (materialises ``rows`` x V at a time). Bias is absorbed in
    f/g by the caller. ``topk`` > 0: ``topk1``, ``topk2`` as the compiled pass gives them
    (a stable sort of each chunk's logits)."""
    N, V = f1.shape[0], g1.shape[0]
    ntop = min(int(topk), V)
    tops = (np.empty((N, ntop), np.int64), np.empty((N, ntop), np.int64)) if ntop else None
    out = {k: np.empty(N) for k in ("L1", "L2", "kl12", "kl21", "H1", "H2", "row_mean1",
                                    "row_mean2", "row_m2_11", "row_m2_22", "row_m2_dd")}
    agree = np.empty(N, bool)
    cn, cmeans, cm2 = 0, (np.zeros(V), np.zeros(V)), {k: np.zeros(V) for k in ((0, 0), (1, 1), (0, 1))}
    for i0 in range(0, N, rows):
        sl = slice(i0, min(N, i0 + rows))
        l1 = f1[sl] @ g1.T
        l2 = f2[sl] @ g2.T
        L1 = logsumexp(l1, axis=1)
        L2 = logsumexp(l2, axis=1)
        p1 = np.exp(l1 - L1[:, None])
        p2 = np.exp(l2 - L2[:, None])
        d = l1 - l2
        out["L1"][sl], out["L2"][sl] = L1, L2
        out["kl12"][sl] = (p1 * d).sum(1) - L1 + L2
        out["kl21"][sl] = -(p2 * d).sum(1) - L2 + L1
        out["H1"][sl] = L1 - (p1 * l1).sum(1)
        out["H2"][sl] = L2 - (p2 * l2).sum(1)
        agree[sl] = l1.argmax(1) == l2.argmax(1)
        for t, x in zip(tops or (), (l1, l2)):
            order = np.argsort(-x, axis=1, kind="stable")[:, :ntop]
            t[sl] = np.where(np.isnan(np.take_along_axis(x, order, 1)), -1, order)
        for k, x in (("1", l1), ("2", l2)):
            out["row_mean" + k][sl] = x.mean(1)
        out["row_m2_11"][sl] = ((l1 - l1.mean(1, keepdims=True)) ** 2).sum(1)
        out["row_m2_22"][sl] = ((l2 - l2.mean(1, keepdims=True)) ** 2).sum(1)
        out["row_m2_dd"][sl] = ((d - d.mean(1, keepdims=True)) ** 2).sum(1)
        n = l1.shape[0]
        m1, m2 = l1.mean(0), l2.mean(0)
        c1, c2 = l1 - m1, l2 - m2
        cn, cmeans, cm2 = merge_stats(cn, cmeans, cm2, n, (m1, m2),
                                      {(0, 0): (c1 * c1).sum(0), (1, 1): (c2 * c2).sum(0),
                                       (0, 1): (c1 * c2).sum(0)})
        if progress is not None:
            progress(sl.stop / N)
    return PassStats(agree=agree, col_mean1=cmeans[0], col_mean2=cmeans[1],
                     col_m2_11=cm2[(0, 0)], col_m2_22=cm2[(1, 1)], col_m2_12=cm2[(0, 1)],
                     backend="numpy", topk1=tops[0] if ntop else None,
                     topk2=tops[1] if ntop else None, **out)


# Rows of the (8, n) float64 state; args is (2, n) int64 [arg1, arg2].
STATE_ROWS = ("m1", "s1", "a12", "e1", "m2", "s2", "a21", "e2")


def init_state(n: int, xp=np):
    """Fresh epilogue state for ``n`` inputs: (8, n) float64 and (2, n) int64 arrays (of
    ``xp``, NumPy or CuPy)."""
    state = xp.zeros((8, n), dtype=np.float64)
    state[0] = -np.inf
    state[4] = -np.inf
    args = xp.full((2, n), -1, dtype=np.int64)
    return state, args


def finalize(state: np.ndarray, args: np.ndarray) -> dict:
    """Per-input results from a filled state: log-normalisers, KL both ways, entropies, top-1.

    Rows the epilogue never updated (no finite logit, e.g. NaN inputs) come out as NaN.
    """
    m1, s1, a12, e1, m2, s2, a21, e2 = state
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s1 = np.log(s1)
        log_s2 = np.log(s2)
        L1 = m1 + log_s1
        L2 = m2 + log_s2
        # KL(p1||p2)(x) = sum_y p1 (l1 - l2) - L1 + L2, with sum_y p1 (l1 - l2) = a12 / s1.
        out = {
            "L1": L1,
            "L2": L2,
            "kl12": a12 / s1 - L1 + L2,
            "kl21": a21 / s2 - L2 + L1,
            "H1": log_s1 - e1 / s1,
            "H2": log_s2 - e2 / s2,
        }
    empty = (s1 == 0) | (s2 == 0)
    if empty.any():
        for v in out.values():
            v[empty] = np.nan
    out["top1_agree"] = (args[0] == args[1]) & ~empty
    return out


def check_pass_shapes(f1, g1, f2, g2) -> None:
    """The four operands of a pass agree: M per model, N and V across models."""
    if f1.shape[1] != g1.shape[1]:
        raise IdentirepError(f"f1 has {f1.shape[1]} dimensions but g1 has {g1.shape[1]}")
    if f2.shape[1] != g2.shape[1]:
        raise IdentirepError(f"f2 has {f2.shape[1]} dimensions but g2 has {g2.shape[1]}")
    if f1.shape[0] != f2.shape[0]:
        raise IdentirepError(f"f1 and f2 must have one row per shared input: "
                             f"N={f1.shape[0]} vs N={f2.shape[0]}")
    if g1.shape[0] != g2.shape[0]:
        raise IdentirepError(f"g1 and g2 must have one row per shared label: "
                             f"V={g1.shape[0]} vs V={g2.shape[0]}")
