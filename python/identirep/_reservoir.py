"""The Accumulator's reservoir of input rows: a seeded 64-bit hash of each input's rows (its
priority) and the bottom-k fold that keeps the ``capacity`` distinct inputs of lowest
(priority, first input index), in input order (docs/design.md, "Mergeable statistics")."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: rows hashed per block (bounded temporaries)
_HASH_ROWS = 512


@dataclass
class Reservoir:
    """Kept inputs: their indices (increasing), priorities, rows of f1 and f2 and the pass's
    per-input values (columns of ``values``); ``complete``: no distinct input was left out."""
    index: np.ndarray
    priority: np.ndarray
    f1: np.ndarray
    f2: np.ndarray
    values: np.ndarray
    complete: bool = True

    @classmethod
    def empty(cls, M1: int, M2: int, nvalues: int) -> "Reservoir":
        return cls(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty((0, M1)),
                   np.empty((0, M2)), np.empty((nvalues, 0)))

    def folded(self, capacity: int, pri, idx, F1, F2, values,
               complete: bool = True) -> "Reservoir":
        """The reservoir with candidate rows folded in (their priorities, input indices after
        every kept one, rows and per-input values; ``complete``: whether the candidates hold
        every distinct input of theirs): the ``capacity`` distinct contents of lowest
        (priority, first input index), in input order. ``self`` is left as it is."""
        old = len(self.index)
        if old == capacity and len(pri):   # full: only rows up to the largest priority enter
            enter = pri <= self.priority.max()
            if not enter.all():
                complete = False
            pri, idx, F1, F2, values = (pri[enter], idx[enter], F1[enter], F2[enter],
                                        values[:, enter])
        complete = self.complete and complete
        if not len(pri):
            return Reservoir(self.index, self.priority, self.f1, self.f2, self.values,
                             complete)
        allp = np.concatenate([self.priority, pri])
        alli = np.concatenate([self.index, idx])
        order = np.lexsort((alli, allp))
        order = order[~_repeats(order, allp, lambda: [_rows_cat(self.f1, F1),
                                                      _rows_cat(self.f2, F2)])]
        if len(order) > capacity:
            complete = False
            order = order[:capacity]
        keep = np.zeros(len(allp), bool)
        keep[order] = True
        ko, kn = keep[:old], keep[old:]
        return Reservoir(np.concatenate([self.index[ko], idx[kn]]),
                         np.concatenate([self.priority[ko], pri[kn]]),
                         _rows_cat(self.f1[ko], F1[kn]), _rows_cat(self.f2[ko], F2[kn]),
                         np.concatenate([self.values[:, ko], values[:, kn]], axis=1), complete)

    def distinct_estimate(self) -> float:
        """The number of distinct inputs: exact while every one is kept, else the k-th
        minimum value estimate (k - 1) / (largest kept priority / 2^64)."""
        if self.complete:
            return float(len(self.index))
        tau = (float(self.priority.max()) + 1.0) / 2.0 ** 64
        return (len(self.index) - 1) / tau


def _repeats(order, pri, rows) -> np.ndarray:
    """Per position of ``order`` (candidates sorted by priority, then input index): whether an
    earlier position holds the same content (``rows()``: the candidates' rows of f1 and f2). Equal contents have equal priorities, so only
    positions that share a priority are compared, bit by bit, all at once."""
    sp = pri[order]
    same = np.r_[False, sp[1:] == sp[:-1]]
    dup = np.zeros(len(order), bool)
    if not same.any():
        return dup
    group = same | np.r_[sp[:-1] == sp[1:], False]
    pos = np.flatnonzero(group)
    content = np.hstack([_bytes(X[order[pos]]) for X in rows()])
    keyed = np.ascontiguousarray(content).view(np.dtype((np.void, content.shape[1])))[:, 0]
    _, first = np.unique(keyed, return_index=True)
    dup[pos] = True
    dup[pos[first]] = False     # the first position of each content (np.unique: its first)
    return dup


def has_repeats(pri, F1, F2) -> bool:
    """Whether two of these rows (their priorities, rows of f1 and f2) hold the same input."""
    order = np.argsort(pri, kind="stable")
    return bool(_repeats(order, pri, lambda: [F1, F2]).any())


def priorities(rows, seed: int) -> np.ndarray:
    """Per input, a seeded 64-bit hash of its rows' content (the bits of each model's row):
    random odd multipliers on 32-bit words summed modulo 2^64, then MurmurHash3's finaliser."""
    B = rows[0].shape[0]
    h = np.zeros(B, np.uint64)
    for k, X in enumerate(rows):
        words = _words(X)
        mult = _multipliers(seed, k, words.shape[1])
        for i in range(0, B, _HASH_ROWS):
            h[i:i + _HASH_ROWS] += (words[i:i + _HASH_ROWS].astype(np.uint64)
                                    * mult).sum(1, dtype=np.uint64)
    return _mix64(h ^ np.uint64(_seed_word(seed)))


def _bytes(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X).view(np.uint8).reshape(X.shape[0], -1)


def _words(X: np.ndarray) -> np.ndarray:
    """The rows of X as uint32 words (zero-padded to a multiple of 4 bytes)."""
    b = _bytes(X)
    pad = -b.shape[1] % 4
    if pad:
        b = np.hstack([b, np.zeros((b.shape[0], pad), np.uint8)])
    return b.view(np.uint32)


def _multipliers(seed: int, which: int, width: int) -> np.ndarray:
    rng = np.random.default_rng([seed, which, 0x1DE7])
    return rng.integers(1, 2 ** 63, width, dtype=np.uint64) | np.uint64(1)


def _seed_word(seed: int) -> int:
    return int(np.random.default_rng([seed, 2, 0x1DE7]).integers(0, 2 ** 63, dtype=np.uint64))


def _mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _rows_cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of a then b, in b's dtype when a has none yet."""
    if not len(a):
        return np.ascontiguousarray(b)
    return np.concatenate([a, b.astype(a.dtype, copy=False)])
