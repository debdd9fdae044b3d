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
        """``from_rows`` of the column-stacked ``blocks`` (same rows), for tall data: BLAS
        syrk/gemm per block pair in ``dtype``, accumulated in float64 (float32 halves the
        time; relative error ~1e-6). Never copies all rows at once.

        Blocks whose means are small against their spread (|mean| <= 3 sd in every column)
        enter uncentred, straight from their storage (no copy), and the mean is removed from
        the float64 result; others are centred chunk by chunk first."""
        from scipy.linalg import blas
        f32 = np.dtype(dtype) == np.float32
        syrk, gemm = (blas.ssyrk, blas.sgemm) if f32 else (blas.dsyrk, blas.dgemm)
        n = blocks[0].shape[0]
        blocks = [np.asarray(b) for b in blocks]
        means = [b.mean(0, dtype=np.float64) for b in blocks]
        raw = [b.dtype == np.dtype(dtype) and b.flags.c_contiguous
               and bool(np.all(m * m <= 9 * b[: min(n, 4096)].var(0, dtype=np.float64)))
               for b, m in zip(blocks, means)]
        offs = np.cumsum([0] + [m.size for m in means])
        S = np.zeros((offs[-1], offs[-1]))
        step = n if all(raw) else chunk
        for i in range(0, n, step):
            # transposes of C-ordered rows are F-ordered: BLAS reads them without copies
            cs = [(b[i:i + step] if r else
                   (b[i:i + step] - m.astype(b.dtype)).astype(dtype, copy=False)).T
                  for b, m, r in zip(blocks, means, raw)]
            for p, a in enumerate(cs):
                sp = slice(offs[p], offs[p + 1])
                S[sp, sp] += syrk(1.0, a, trans=0, lower=0)
                for q in range(p + 1, len(cs)):
                    S[sp, offs[q]:offs[q + 1]] += gemm(1.0, a, cs[q], trans_b=1)
        S = np.triu(S) + np.triu(S, 1).T
        mean = np.concatenate(means)
        shift = np.concatenate([m * r for m, r in zip(means, raw)])   # means left in the sums
        S -= n * np.outer(shift, shift)
        # a block entered raw against a centred one: its cross sums carry mean x (sum of 0s)
        return cls(n, mean, S)

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
