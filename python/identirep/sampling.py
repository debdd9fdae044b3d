"""Seeded choices shared by every engine, so that all engines evaluate the same candidates."""
from __future__ import annotations

import itertools
import math
from typing import Tuple

import numpy as np

from .errors import IdentirepError


def input_candidates(n_inputs: int, set_size: int, num_samples: int, seed: int,
                     paper_compat: bool = False, sets_per_pivot: int = 1,
                     pool=None) -> Tuple[np.ndarray, str]:
    """Candidate input diversity sets, shape (K, set_size); column 0 is the pivot.

    With ``sets_per_pivot == 1`` (the paper's scheme) K = num_samples sets, disjoint (all
    indices distinct, as the paper's code draws them) whenever the inputs suffice, otherwise
    independent. With ``sets_per_pivot = s > 1``, num_samples distinct pivots each get s
    independent sets of the other inputs (K = num_samples * s): the engines evaluate these
    at O(M) per extra set. ``paper_compat`` draws exactly like the paper's code run after
    ``np.random.seed(seed)``. ``pool`` restricts the draw to these input indices (the
    distinct inputs; ignored by ``paper_compat``).
    """
    if pool is not None and not paper_compat and len(pool) < n_inputs:
        if len(pool) < set_size:
            raise IdentirepError(
                f"an input diversity set needs {set_size} distinct inputs (M + 1) but only "
                f"{len(pool)} of the N={n_inputs} inputs are distinct",
                fix=f"evaluate the models on at least {set_size} distinct inputs")
        cands, how = input_candidates(len(pool), set_size, num_samples, seed, False,
                                      sets_per_pivot)
        return np.asarray(pool)[cands], f"{how} (from {len(pool)} distinct inputs)"
    if num_samples < 1 or sets_per_pivot < 1:
        raise IdentirepError(
            f"num_samples and sets_per_pivot must be >= 1, got {num_samples}, {sets_per_pivot}")
    if n_inputs < set_size:
        raise IdentirepError(
            f"an input diversity set needs {set_size} distinct inputs (M + 1) but N={n_inputs}")
    if sets_per_pivot > 1 and not paper_compat:
        return _pivoted_candidates(n_inputs, set_size, num_samples, sets_per_pivot, seed)
    total = set_size * num_samples
    if paper_compat:
        if total > n_inputs:
            raise IdentirepError(
                f"paper_compat draws {num_samples} disjoint sets of {set_size} inputs "
                f"({total} inputs) but only N={n_inputs} are available; lower num_samples")
        idx = np.random.RandomState(seed).choice(n_inputs, total, replace=False)
        return idx.reshape(num_samples, set_size).astype(np.int64), "paper-compat disjoint"
    rng = np.random.default_rng(seed)
    if total <= n_inputs:
        idx = rng.choice(n_inputs, total, replace=False)
        return idx.reshape(num_samples, set_size).astype(np.int64), "disjoint"
    out = np.empty((num_samples, set_size), np.int64)
    for i in range(num_samples):
        out[i] = rng.choice(n_inputs, set_size, replace=False)
    return out, "independent"


def _pivoted_candidates(n_inputs, set_size, num_pivots, per_pivot, seed):
    if num_pivots > n_inputs:
        raise IdentirepError(f"num_samples={num_pivots} pivots exceed the N={n_inputs} inputs")
    rng = np.random.default_rng(seed)
    pivots = rng.choice(n_inputs, num_pivots, replace=False)
    out = np.empty((num_pivots * per_pivot, set_size), np.int64)
    out[:, 0] = np.repeat(pivots, per_pivot)
    # the others: set_size - 1 distinct inputs among the n_inputs - 1 that are not the pivot
    r = distinct_rows(rng, len(out), n_inputs - 1, set_size - 1)
    out[:, 1:] = r + (r >= out[:, :1])
    return out, f"{num_pivots} pivots x {per_pivot}"


#: rejection sampling while a row of iid draws is distinct with at least this probability
_MIN_ACCEPT = 0.25
#: bytes of random keys per chunk of rows on the random-keys path
_KEY_BYTES = 32 << 20


def distinct_rows(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """``rows`` x ``k`` indices, each row ``k`` distinct values of range(n), rows independent,
    each row's set uniform over the k-subsets of range(n) (exactly), in a uniformly random
    order on the rejection path and an arbitrary one on the random-keys path.

    Vectorised: rows of k iid uniform draws, keeping the rows without a repeat and redrawing
    the others (a row kept is uniform over ordered k-tuples of distinct values) while a row
    is accepted with probability prod_i (1 - i/n) >= 1/4; otherwise the k smallest of n iid
    uniform keys per row (argpartition), in chunks of rows of bounded memory.
    """
    if not 0 <= k <= n:
        raise IdentirepError(f"cannot draw {k} distinct values out of {n}")
    out = np.empty((rows, k), np.int64)
    if k == 0 or rows == 0:
        return out
    log_accept = float(np.log1p(-np.arange(k) / n).sum())
    if log_accept >= math.log(_MIN_ACCEPT):
        todo = np.arange(rows)
        while todo.size:
            draw = rng.integers(0, n, (todo.size, k), dtype=np.int64)
            s = np.sort(draw, axis=1)
            ok = (s[:, 1:] != s[:, :-1]).all(axis=1)
            out[todo[ok]] = draw[ok]
            todo = todo[~ok]
        return out
    chunk = max(1, _KEY_BYTES // (8 * n))
    for i in range(0, rows, chunk):
        keys = rng.random((min(chunk, rows - i), n))
        out[i:i + chunk] = keys.argpartition(k - 1, axis=1)[:, :k]
    return out


def label_sets(remaining: np.ndarray, size: int, max_sets: int, seed: int) -> Tuple[np.ndarray, str]:
    """Sets of ``size`` labels drawn from ``remaining`` (sorted label ids).

    Every combination, in itertools order, when there are at most ``max_sets`` of them;
    otherwise ``max_sets`` seeded random sets (each of distinct labels).
    """
    remaining = np.asarray(remaining, np.int64)
    if remaining.size < size:
        raise IdentirepError(
            f"a label diversity set needs {size} labels besides the pivot and the leave-out, "
            f"but only {remaining.size} remain (V too small for M={size})",
            fix=f"d_SVD needs V >= M + 2 = {size + 2} labels; use mCCA or d_rep instead")
    count = math.comb(remaining.size, size)
    if count <= max_sets:
        combos = np.array(list(itertools.combinations(range(remaining.size), size)), np.int64)
        return remaining[combos.reshape(count, size)], f"all {count}"
    rng = np.random.default_rng(seed)
    out = np.empty((max_sets, size), np.int64)
    for i in range(max_sets):
        out[i] = np.sort(rng.choice(remaining.size, size, replace=False))
    return remaining[out], f"sampled {max_sets} of {_count(count)}"


def _count(n: int) -> str:
    """A count for people: exact up to 12 digits, else in scientific notation."""
    if n < 10 ** 12:
        return str(n)
    digits = str(n)
    return f"{digits[0]}.{digits[1:3]}e{len(digits) - 1}"


def pivot_sample(n_labels: int, num_pivots: int, seed: int) -> np.ndarray:
    """A seeded sorted sample of pivot labels (all labels when num_pivots >= n_labels)."""
    if num_pivots >= n_labels:
        return np.arange(n_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_labels, num_pivots, replace=False)).astype(np.int64)


def rep_sets(n_labels: int, size: int, num_pivots: int, sets_per_pivot: int,
             seed: int) -> np.ndarray:
    """d_rep's label sets as the follow-up paper's code draws them after
    ``np.random.default_rng(seed)``: ``num_pivots`` distinct pivots, then for each pivot in turn
    ``sets_per_pivot`` sets of ``size`` distinct labels among the others. Shape
    (num_pivots * sets_per_pivot, size + 1); column 0 is the pivot."""
    if n_labels < size + 1:
        raise IdentirepError(
            f"a d_rep label set needs {size + 1} labels (a pivot and M = {size}) but V={n_labels}",
            fix="d_rep needs V >= M1 + 1 labels; compare the representations with mCCA")
    for name, v in (("num_pivots", num_pivots), ("sets_per_pivot", sets_per_pivot)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise IdentirepError(f"{name} must be an integer >= 1, got {v!r}")
    if num_pivots > n_labels:
        raise IdentirepError(f"num_pivots={num_pivots} exceeds the V={n_labels} labels")
    rng = np.random.default_rng(seed)
    pivots = rng.choice(n_labels, num_pivots, replace=False)
    out = np.empty((num_pivots * sets_per_pivot, size + 1), np.int64)
    k = 0
    for p in pivots:
        for _ in range(sets_per_pivot):
            idx = rng.choice(n_labels - 1, size, replace=False)
            out[k, 0] = p
            out[k, 1:] = idx + (idx >= p)     # an index among the labels other than the pivot
            k += 1
    return out
