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
    def from_parts(cls, n: int, means, blocks) -> "Moments":
        """Moments of column-stacked variables from their means and scatter blocks
        ``blocks[(p, q)]`` (p <= q; every pair present)."""
        offs = np.cumsum([0] + [np.size(m) for m in means])
        S = np.empty((offs[-1], offs[-1]))
        for (p, q), B in blocks.items():
            if p != q:     # a diagonal block is written once, transposed, as before
                S[offs[p]:offs[p + 1], offs[q]:offs[q + 1]] = B
            S[offs[q]:offs[q + 1], offs[p]:offs[p + 1]] = np.asarray(B).T
        return cls(n, np.concatenate([np.atleast_1d(m) for m in means]), S)

    def merge(self, other: "Moments") -> "Moments":
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, scatter)

    def merge_in_place(self, other: "Moments") -> "Moments":
        """``merge`` into this object's arrays (the same arithmetic, no new d x d sum)."""
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * (other.n / n)
        self.scatter += other.scatter
        self.scatter += np.outer(delta, delta) * (self.n * other.n / n)
        self.n = n
        return self

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
