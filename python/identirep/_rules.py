"""The rules the float64 reference and the fast engine share, and nothing numerical: argument
checks, the tie rule, the seeded candidate draws, the choice among candidate input sets and the
messages of the errors both raise. Both sides import this module; neither imports the other."""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import sampling
from .errors import IdentirepError

#: ties: the lowest index among candidates within this relative distance of the minimum
TIE_RTOL = 1e-12
#: a label (input) pair is degenerate when, for either model, its variance is at most this
#: fraction of the two variances it is a difference of (float64 logits)
DEGENERATE_RTOL = 1e-10
#: a d_rep set is skipped when its label-difference matrix has a 1-norm reciprocal condition
#: number at or below this
REP_MIN_RCOND = 1e-12

ALL_LABEL_PAIRS_DEGENERATE = (
    "every label pair is degenerate (identical unembeddings, or constant features): "
    "d_LLV is undefined; check that g has distinct rows and f varies across inputs")
ALL_SVD_SETS_DEGENERATE = "every diversity set is degenerate (constant transformed features)"
ALL_REP_SETS_SINGULAR = "every diversity set has a singular label-difference matrix"


def constant_columns_message(what: str, const) -> str:
    ids = [int(i) for i in const][:10]
    return (f"{what} has constant column(s) {ids}: canonical correlations are undefined for "
            "features that do not vary; drop those columns")


def first_within(values: np.ndarray):
    """The tie rule: the row-major first index whose value is within TIE_RTOL of the finite
    minimum, or None when no value is finite."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    mu = values[finite].min()
    cand = np.flatnonzero((values <= mu + TIE_RTOL * abs(mu)) & finite)
    return np.unravel_index(cand[0], values.shape)


def check_llv_args(a, b, combine, term, pivot, leave_out, lam,
                   is_constant: Callable[[object], bool]) -> None:
    """The arguments of d_LLV, in the order the errors are reported. ``is_constant(f)`` says
    whether an f does not vary across inputs (each side computes it its own way)."""
    if combine not in ("max", "sum"):
        raise IdentirepError(f"combine must be 'max' or 'sum', got {combine!r}")
    if term not in ("max", "mean"):
        raise IdentirepError(f"term must be 'max' or 'mean', got {term!r}")
    if not np.isfinite(lam) or lam < 0:
        raise IdentirepError(f"lam must be a finite non-negative number, got {lam}")
    if a.V < 3:
        raise IdentirepError(f"d_LLV needs at least 3 labels (pivot, leave-out, one more); V={a.V}")
    need = max(a.M, b.M) + 2
    if a.N < need:
        raise IdentirepError(
            f"d_LLV needs N >= M + 2 inputs (a diversity set of M + 1 plus variance); "
            f"N={a.N}, M={max(a.M, b.M)}")
    for m in (a, b):
        if is_constant(m.f):
            raise IdentirepError(
                f"f of {m.name or 'a model'} is constant across inputs: every label pair is "
                "degenerate and d_LLV is undefined; the inputs must differ")
    for nm, v in (("pivot", pivot), ("leave_out", leave_out)):
        if v is not None and not (isinstance(v, (int, np.integer)) and 0 <= v < a.V):
            raise IdentirepError(f"{nm} must be a label index in [0, {a.V}), got {v!r}")
    if pivot is not None and leave_out is not None and pivot == leave_out:
        raise IdentirepError("pivot and leave_out must be different labels")


def check_input_set(input_set, n_inputs, set_size) -> np.ndarray:
    """A given input diversity set as int64 indices (pivot first), checked."""
    s = np.asarray(input_set)
    if s.ndim != 1 or s.size != set_size or s.dtype.kind not in "iu":
        raise IdentirepError(
            f"input_set must be {set_size} integer input indices (pivot first, then M), got {input_set!r}")
    if s.min() < 0 or s.max() >= n_inputs or len(set(s.tolist())) != s.size:
        raise IdentirepError(f"input_set must hold distinct indices in [0, {n_inputs})")
    return s.astype(np.int64)


def candidate_input_sets(a, b, input_set, num_samples, seed, paper_compat, sets_per_pivot,
                         distinct):
    """The input diversity sets every side evaluates, (K, M + 1), and how they were drawn: the
    given set, or seeded candidates from the distinct inputs (all inputs for
    ``paper_compat``). ``distinct()`` gives the sorted first occurrences of the distinct
    inputs (each side finds them its own way); it is called only when needed."""
    set_size = max(a.M, b.M) + 1
    if input_set is not None:
        return check_input_set(input_set, a.N, set_size)[None, :], "given"
    pool = None if paper_compat else distinct()
    cands, how = sampling.input_candidates(a.N, set_size, num_samples, seed, paper_compat,
                                           sets_per_pivot, pool)
    return cands, f"min over {len(cands)} {how} candidates"


def choose_input_set(crits: np.ndarray, paper_compat: bool):
    """(index of the chosen candidate set, number rejected) from each candidate's criterion
    (+inf: rejected). The minimum by the tie rule; ``paper_compat``: the paper code's rule
    (the smallest criterion below 1, else the first candidate)."""
    rejected = int(np.isinf(crits).sum())
    if rejected == len(crits):
        raise IdentirepError(
            "every candidate input set contains inputs whose log-likelihoods coincide "
            "(duplicate f rows); deduplicate the inputs or raise num_samples")
    if paper_compat:
        best, k = 1.0, 0
        for i, c in enumerate(crits):
            if c < best:
                best, k = c, i
        return k, rejected
    return int(first_within(crits)[0]), rejected


def svd_remaining(pivot, leave_out, V) -> np.ndarray:
    """The labels other than the pivot and the leave-out (both checked): the pool of d_SVD's
    label diversity sets."""
    for name, v in (("pivot", pivot), ("leave_out", leave_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < V:
            raise IdentirepError(f"{name} must be a label index in [0, {V}), got {v!r}")
    if pivot == leave_out:
        raise IdentirepError(f"pivot and leave_out must differ, both are {pivot}")
    return np.setdiff1d(np.arange(V), [pivot, leave_out])


def rep_sets(sets, V, M, num_sets, seed) -> np.ndarray:
    """d_rep's (pivot, M labels) sets: the given ones, checked, or a seeded draw."""
    if sets is None:
        return sampling.diversity_sets(V, M, num_sets, seed)
    s = np.asarray(sets)
    if s.ndim != 2 or s.shape[1] != M + 1 or s.dtype.kind not in "iu" or s.min() < 0 or s.max() >= V:
        raise IdentirepError(f"sets must be an integer array (S, M + 1 = {M + 1}) of label indices")
    return s.astype(np.int64)


def check_cca_inputs(x, y, n_components) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise IdentirepError("mcca needs two 2-d arrays (samples x features)")
    if x.shape[0] != y.shape[0]:
        raise IdentirepError(f"mcca needs the same samples in both: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise IdentirepError("mcca needs at least 2 samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise IdentirepError("mcca inputs contain NaN or Inf")
    if n_components is not None and not (1 <= n_components <= min(x.shape[1], y.shape[1])):
        raise IdentirepError(
            f"n_components must be in [1, {min(x.shape[1], y.shape[1])}], got {n_components}")

