"""Mergeable first and second moments (Chan et al.): the unit of sharding.

A ``Moments`` holds the count, the mean and the centred scatter sum of a set of row vectors.
Two shards merge exactly, in any order, so sufficient statistics can be computed per shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    n: int
    mean: np.ndarray      # (d,)
    scatter: np.ndarray   # (d, d) = sum of centred outer products

    @classmethod
    def from_rows(cls, X: np.ndarray) -> "Moments":
        X = np.asarray(X, np.float64)
        mean = X.mean(0)
        Xc = X - mean
        return cls(len(X), mean, Xc.T @ Xc)

    @classmethod
    def from_blocks_blas(cls, blocks, dtype=np.float64, chunk: int = 8192) -> "Moments":
        """``from_rows`` of the column-stacked ``blocks`` (same rows), for tall data, through
        ``scatter_blocks``."""
        n, means, S = scatter_blocks(blocks, dtype=dtype, chunk=chunk)
        return cls.from_parts(n, means, S)

    @classmethod
    def from_parts(cls, n: int, means, blocks) -> "Moments":
        """Moments of column-stacked variables from their means and scatter blocks
        ``blocks[(p, q)]`` (p <= q; every pair present)."""
        offs = np.cumsum([0] + [np.size(m) for m in means])
        S = np.empty((offs[-1], offs[-1]))
        for (p, q), B in blocks.items():
            S[offs[p]:offs[p + 1], offs[q]:offs[q + 1]] = B
            S[offs[q]:offs[q + 1], offs[p]:offs[p + 1]] = np.asarray(B).T
        return cls(n, np.concatenate([np.atleast_1d(m) for m in means]), S)

    def merge(self, other: "Moments") -> "Moments":
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, scatter)

    @property
    def cov(self) -> np.ndarray:
        return self.scatter / (self.n - 1)


def merge_stats(nA, meanA, m2A, nB, meanB, m2B):
    """Chan's update for elementwise running means and (co)variance sums.

    ``meanA``/``meanB`` are tuples of arrays (one per variable); ``m2A``/``m2B`` are dicts
    keyed by variable index pairs (i, j). Returns (n, means, m2).
    """
    n = nA + nB
    w = np.where(n > 0, nB / np.maximum(n, 1), 0.0)
    deltas = [mb - ma for ma, mb in zip(meanA, meanB)]
    means = tuple(ma + d * w for ma, d in zip(meanA, deltas))
    fac = np.where(n > 0, nA * nB / np.maximum(n, 1), 0.0)
    m2 = {k: m2A[k] + m2B[k] + deltas[k[0]] * deltas[k[1]] * fac for k in m2A}
    return n, means, m2


def scatter_blocks(blocks, pairs=None, dtype=np.float64, chunk: int = 8192, means=None,
                   bits=None):
    """Centred scatter blocks ``S[(p, q)] = sum_x (b_p(x) - mean_p)' (b_q(x) - mean_q)`` of
    column blocks with the same rows, for the block pairs ``pairs`` (p <= q; default all).
    Returns (n, means, S) with float64 means and blocks.

    Products are NumPy BLAS calls in ``dtype`` (``a.T @ a`` is a syrk), accumulated in float64
    per chunk of rows; float32 halves the time at a relative error of ~1e-6. Blocks whose means
    are small against their spread (|mean| <= 3 sd in every column, sd from ~1024 rows spread
    over the data) enter uncentred, straight from their storage (no copy), and the mean is
    removed from the float64 result; the others are centred chunk by chunk first. Only
    NumPy's BLAS is used: a second BLAS library's idle threads would spin against it (NOTES.md).
    Device blocks (CuPy) are multiplied on the GPU; means and blocks come back to the host.
    ``bits[i]``: the bfloat16 bit patterns of device block i (float32 values that are bfloat16,
    or None): a float32 product of two such blocks entered raw is one bfloat16 tensor-core GEMM
    (``_cupy_pass.gemm_ex``; exact products, float32 accumulation, as the float32 GEMM)."""
    from ._backends import array_module
    from .model import to_numpy
    xp = array_module(blocks[0])   # NumPy, or CuPy for device blocks (products on the GPU)
    n = blocks[0].shape[0]
    blocks = [xp.asarray(b).reshape(n, -1) for b in blocks]
    if pairs is None:
        pairs = [(p, q) for p in range(len(blocks)) for q in range(p, len(blocks))]
    if means is None:
        means = [to_numpy(b.mean(0, dtype=np.float64)) for b in blocks]
    used = sorted({i for pq in pairs for i in pq})
    spread = {i: to_numpy(blocks[i][:: max(1, n // 1024)].var(0, dtype=np.float64)) for i in used}
    raw = {i: blocks[i].dtype == np.dtype(dtype) and bool(np.all(means[i] ** 2 <= 9 * spread[i]))
           for i in used}
    dmeans = {j: xp.asarray(means[j], dtype=blocks[j].dtype) for j in used if not raw[j]}
    S = {pq: np.zeros((means[pq[0]].size, means[pq[1]].size)) for pq in pairs}
    bits = bits or [None] * len(blocks)
    half = {(p, q) for p, q in pairs if raw[p] and raw[q] and np.dtype(dtype) == np.float32
            and bits[p] is not None and bits[q] is not None}
    step = n if all(raw.values()) else chunk
    for i in range(0, n, step):
        cs = {j: blocks[j][i:i + step] if raw[j] else
              (blocks[j][i:i + step] - dmeans[j]).astype(dtype, copy=False)
              for j in used}
        for p, q in pairs:
            if (p, q) in half:
                S[p, q] += to_numpy(_bf16_gram(bits[p][i:i + step], bits[q][i:i + step]))
            else:
                S[p, q] += to_numpy(cs[p].T @ cs[q])  # one object on both sides: NumPy's syrk
    for p, q in pairs:   # a block entered raw keeps its mean in the sums; centred ones sum to 0
        if raw[p] and raw[q]:
            S[p, q] -= n * np.outer(means[p], means[q])
    return n, means, S


def _bf16_gram(a_bits, b_bits):
    """a' b (float32) of device bfloat16 bit arrays with the same rows: one cublasGemmEx."""
    from . import _cupy_pass as gp
    cp = gp.import_cupy()
    out = cp.empty((a_bits.shape[1], b_bits.shape[1]), dtype=cp.float32)
    gp.gemm_ex(cp, a_bits.T, b_bits.T, out, "bfloat16")
    return out
