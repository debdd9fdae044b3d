"""Seeded choices shared by every engine, so that all engines evaluate the same candidates."""
from __future__ import annotations

import itertools
import math
from typing import Tuple

import numpy as np

from .errors import IdentirepError


def distinct_inputs(*fs) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct input, an input being its rows
    in every f (language-model data repeats contexts: every text's first position, say).

    Rows are hashed (random odd multipliers on their bits, wrapping uint64 sums, O(N M)), on
    the GPU for device arrays; rows with equal hashes are compared exactly."""
    from ._arrays import is_gpu_array
    from .model import to_numpy
    rng = np.random.default_rng(0x5EED)
    N = len(fs[0])
    h = np.zeros(N, np.uint64)
    for f in fs:
        if is_gpu_array(f):
            from .gpu.arrays import as_device, import_cupy
            xp, f = import_cupy(), as_device(f).data   # bfloat16: its uint16 bits
        else:
            xp, f = np, to_numpy(f)
        bits = xp.ascontiguousarray(f).reshape(N, -1).view(xp.uint8)
        bits = xp.ascontiguousarray(bits[:, : bits.shape[1] // 4 * 4]).view(xp.uint32)
        mult = xp.asarray(rng.integers(1, 2**63, bits.shape[1], dtype=np.uint64) | np.uint64(1))
        for i in range(0, N, 4096):
            h[i:i + 4096] += to_numpy(
                (bits[i:i + 4096].astype(xp.uint64) * mult).sum(1, dtype=xp.uint64))
    order = np.argsort(h, kind="stable")
    hs = h[order]
    keep = np.ones(N, bool)
    for j in np.flatnonzero(hs[1:] == hs[:-1]) + 1:   # equal hashes (stable: a < b): compare
        a, b = order[j - 1], order[j]
        if all(np.array_equal(to_numpy(f[int(a)]), to_numpy(f[int(b)])) for f in fs):
            keep[b] = False
    return np.flatnonzero(keep).astype(np.int64)


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
                f"{len(pool)} of the N={n_inputs} inputs are distinct")
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
            f"but only {remaining.size} remain (V too small for M={size})")
    count = math.comb(remaining.size, size)
    if count <= max_sets:
        combos = np.array(list(itertools.combinations(range(remaining.size), size)), np.int64)
        return remaining[combos.reshape(count, size)], f"all {count}"
    rng = np.random.default_rng(seed)
    out = np.empty((max_sets, size), np.int64)
    for i in range(max_sets):
        out[i] = np.sort(rng.choice(remaining.size, size, replace=False))
    return remaining[out], f"sampled {max_sets} of {count}"


def pivot_sample(n_labels: int, num_pivots: int, seed: int) -> np.ndarray:
    """A seeded sorted sample of pivot labels (all labels when num_pivots >= n_labels)."""
    if num_pivots >= n_labels:
        return np.arange(n_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_labels, num_pivots, replace=False)).astype(np.int64)


def diversity_sets(n_labels: int, size: int, num_sets: int, seed: int) -> np.ndarray:
    """Random (pivot, size labels) sets, shape (num_sets, size + 1); column 0 is the pivot."""
    if n_labels < size + 1:
        raise IdentirepError(f"a diversity set needs {size + 1} labels but V={n_labels}")
    rng = np.random.default_rng(seed)
    out = np.empty((num_sets, size + 1), np.int64)
    for i in range(num_sets):
        out[i] = rng.choice(n_labels, size + 1, replace=False)
    return out
