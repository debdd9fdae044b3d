"""The rules the float64 reference and the fast engine share, and nothing numerical: argument
checks, the tie rule, the seeded candidate draws, the choice among candidate input sets and the
messages of the errors both raise. Both sides import this module; neither imports the other."""
from __future__ import annotations

from typing import Callable

import math

import numpy as np

from . import sampling
from .errors import IdentirepError

#: ties: the lowest index among candidates within this relative distance of the minimum
TIE_RTOL = 1e-12
#: a label (input) pair is degenerate when, for either model, its variance is at most this
#: fraction of the two variances it is a difference of (float64 logits)
DEGENERATE_RTOL = 1e-10
#: a d_rep set is singular (never used) when its label-difference matrix has a 1-norm
#: reciprocal condition number at or below this
REP_MIN_RCOND = 1e-12
#: d_rep's default condition-number rule: a set is used when the 1-norm condition number of
#: its label-difference matrix L1 is at most the median over the drawn non-singular sets (the
#: better-conditioned half). A set's d_rep grows like cond(L1)^2 times the models' mismatch,
#: so without a rule the mean over sets is ruled by its worst-conditioned sets and moves by
#: orders of magnitude with the seed (docs/design.md, "d_rep").
REP_COND_RULE = "median"

ALL_LABEL_PAIRS_DEGENERATE = (
    "every label pair is degenerate (identical unembeddings, or constant features): "
    "d_LLV is undefined")
LABEL_PAIRS_FIX = "give g distinct rows (drop duplicated labels) and f inputs that differ"
ALL_SVD_SETS_DEGENERATE = "every diversity set is degenerate (constant transformed features)"
SVD_SETS_FIX = ("f or g do not vary along some direction of every label (input) set: drop "
                "the constant or linearly dependent directions of f and g")
ALL_REP_SETS_SINGULAR = (
    "every d_rep label set has a singular label-difference matrix g(y_i) - g(y0) of the first "
    "model: its unembeddings do not span its M dimensions (duplicated or linearly dependent "
    "columns of g, or too few distinct labels)")
REP_SINGULAR_FIX = (
    "express f and g in a basis of g's row space (with g = U S V' of rank r, use f V_r and "
    "g V_r: the logits do not change), or pass d_rep(sets=) labels whose unembeddings are "
    "linearly independent")
NO_REP_SET_WITHIN_RULE = (
    "no d_rep label set satisfies the condition-number rule max_cond={rule!r} "
    "(smallest condition number {best:.3g})")
REP_RULE_FIX = "raise max_cond, or pass max_cond=None to use every non-singular set"


#: a column varies when its standard deviation exceeds this fraction of its own root mean
#: square, sqrt(mean^2 + sd^2) (the reference's rule, ``reference._orth_basis``): a constant
#: column's rounding (~1e-16 of its values) is no variation, whatever its offset, and a
#: shifted column keeps its variation
CONSTANT_COLUMN_RTOL = 1e-12

#: mCCA's rank rule: a data set's column space is spanned by the directions of its correlation
#: matrix (columns of zero variance left out) whose eigenvalue (variance) exceeds this
#: fraction of the largest; by the dtype the scatter matrices were computed in (float32 sums
#: leave about 1e-7 of the largest on an exactly dependent column: 10x that). Canonical
#: correlations are taken on those spaces.
MCCA_RANK_RTOL = {"float64": 1e-12, "float32": 1e-6}


def trivially_one(n: int, r1: int, r2: int) -> int:
    """How many leading canonical correlations equal 1 whatever the data: centred, n samples
    span at most n - 1 dimensions, so column spaces of ranks r1 and r2 share at least
    r1 + r2 - (n - 1) of them."""
    return max(0, int(r1) + int(r2) - (int(n) - 1))


def no_varying_column_message(what: str) -> str:
    return (f"{what} has no column that varies across samples: canonical correlations are "
            "undefined")


NO_VARYING_COLUMN_FIX = "give data that varies across samples (inputs or labels)"


#: the most candidate input sets (num_samples x sets_per_pivot) and the most indices they may
#: hold: each set costs O(M) time, and a million take about 10 s on a CPU core
MAX_INPUT_SETS = 1_000_000
MAX_INPUT_SET_INDICES = 1 << 26


#: the most label sets d_SVD or d_rep evaluates (max_label_sets, max_sets, rep_sets, d_rep's
#: num_pivots x sets_per_pivot): each costs O(M^3) time, and a million take minutes at M = 4
MAX_LABEL_SETS = 1_000_000


def check_label_sets(name, v, none_ok=False) -> None:
    """A count of d_SVD or d_rep label sets: an integer in [1, MAX_LABEL_SETS]."""
    check_count(name, v, none_ok=none_ok)
    if v is not None and v > MAX_LABEL_SETS:
        raise IdentirepError(f"{name}={v} label sets: identirep evaluates at most "
                             f"{MAX_LABEL_SETS} (each costs O(M^3) time)",
                             fix=f"lower {name.replace(' x ', ' or ')}")


def check_count(name, v, minimum=1, none_ok=False) -> None:
    """An integer option (Python or NumPy integer, not a bool) of at least ``minimum``; None
    too with ``none_ok``."""
    if v is None and none_ok:
        return
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise IdentirepError(f"{name} must be an integer >= {minimum}"
                             f"{' or None' if none_ok else ''}, got {_shown(v)}")


def _shown(v) -> str:
    """A given value for a message: its type where that is the problem, and its repr."""
    kind = type(v).__name__
    return repr(v) if isinstance(v, (int, float, np.integer, np.floating)) else f"{kind} {v!r:.80}"


def check_number(name, v, minimum=0.0) -> None:
    """A finite real number (Python or NumPy, not a bool or a string) of at least ``minimum``."""
    if (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating))
            or not _finite(v) or v < minimum):
        raise IdentirepError(f"{name} must be a finite number >= {minimum:g}, got {_shown(v)}")


def _finite(v) -> bool:
    """Whether a real number is finite, for Python ints of any size too (np.isfinite fails
    beyond int64; a float of one overflows)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_callable(name, fn, flags_ok=False, signature="a callable") -> None:
    """A callable option or None (and True/False with ``flags_ok``: a progress bar on or off),
    named in the message by ``signature``."""
    if fn is None or callable(fn):
        return
    if flags_ok and isinstance(fn, (bool, np.bool_)):
        return
    raise IdentirepError(f"{name} must be {signature}{', True, False' if flags_ok else ''} or "
                         f"None, got {type(fn).__name__} {fn!r:.60}")


def check_flag(name, v) -> None:
    """A boolean option: True or False (a NumPy bool too), never a string such as "False"."""
    if not isinstance(v, (bool, np.bool_)):
        raise IdentirepError(f"{name} must be True or False, got {_shown(v)}")


def check_llv_options(lam, combine, term) -> None:
    """d_LLV's options that do not depend on the models."""
    if not isinstance(combine, str) or combine not in ("max", "sum"):
        raise IdentirepError(f"combine must be 'max' or 'sum', got {combine!r}")
    if not isinstance(term, str) or term not in ("max", "mean"):
        raise IdentirepError(f"term must be 'max' or 'mean', got {term!r}")
    check_number("lam", lam)


def check_options(seed=0, num_samples=1, sets_per_pivot=1, pivot_budget=None) -> None:
    """The counts and the seed every measure takes, before any work."""
    check_count("seed", seed, 0)
    check_count("num_samples", num_samples)
    check_count("sets_per_pivot", sets_per_pivot)
    check_count("pivot_budget", pivot_budget, none_ok=True)
    total = int(num_samples) * int(sets_per_pivot)    # Python ints: NumPy's would wrap
    if total > MAX_INPUT_SETS:
        raise IdentirepError(
            f"num_samples x sets_per_pivot = {total} candidate input "
            f"sets: identirep draws at most {MAX_INPUT_SETS} (each set costs O(M) time; a "
            "million take about 10 s on a CPU core); lower num_samples")


def check_num_pivots(num_pivots) -> None:
    if num_pivots is None:
        return
    if isinstance(num_pivots, bool) or not isinstance(num_pivots, (int, np.integer)) or num_pivots < 1:
        raise IdentirepError(
            f"num_pivots must be an integer >= 1 (the label pivots to sample) or None for the "
            f"exact search, got {num_pivots!r}")


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
                   is_constant: Callable[[object], bool], n_inputs=None) -> None:
    """The arguments of d_LLV, in the order the errors are reported. ``is_constant(f)`` says
    whether an f does not vary across inputs (each side computes it its own way);
    ``n_inputs``: the number of inputs (default ``a.N``; a model known by its statistics
    holds fewer rows, and the distinct rows are counted by ``candidate_input_sets``)."""
    check_llv_options(lam, combine, term)
    if a.V < 3:
        raise IdentirepError(f"d_LLV needs at least 3 labels (pivot, leave-out, one more); V={a.V}",
                             fix="compare models with at least 3 labels")
    need = max(a.M, b.M) + 2
    N = a.N if n_inputs is None else int(n_inputs)
    if N < need:
        raise IdentirepError(
            f"d_LLV needs N >= M + 2 inputs (a diversity set of M + 1 plus variance); "
            f"N={N}, M={max(a.M, b.M)}",
            fix=f"evaluate the models on at least {need} distinct inputs (more or longer texts)")
    for m in (a, b):
        if is_constant(m.f):
            raise IdentirepError(
                f"f of {m.name or 'a model'} is constant across inputs: every label pair is "
                "degenerate and d_LLV is undefined",
                fix="evaluate the models on inputs whose embeddings differ")
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
                         distinct, n_inputs=None):
    """The input diversity sets every side evaluates, (K, M + 1), and how they were drawn: the
    given set, or seeded candidates from the distinct inputs (all inputs for
    ``paper_compat``). ``distinct()`` gives the sorted first occurrences of the distinct
    inputs (each side finds them its own way); it is called only when needed. ``n_inputs``:
    the number of inputs (default ``a.N``; a model known by its statistics holds fewer rows)."""
    n_inputs = a.N if n_inputs is None else int(n_inputs)
    # max(M1, M2) + 1 inputs, so that either model's M differences can span its space; the
    # paper's code takes M1 + 1 (the first model's dimension), and paper_compat follows it
    set_size = (a.M if paper_compat else max(a.M, b.M)) + 1
    check_options(seed, num_samples, sets_per_pivot)
    total = int(num_samples) * int(sets_per_pivot)
    if total > MAX_INPUT_SETS or total * set_size > MAX_INPUT_SET_INDICES:
        raise IdentirepError(
            f"num_samples x sets_per_pivot = {total} candidate input sets of {set_size} inputs: "
            f"identirep draws at most {MAX_INPUT_SETS} sets and {MAX_INPUT_SET_INDICES} indices "
            "(each set costs O(M) time; a million take about 10 s on a CPU core); lower "
            "num_samples")
    if input_set is not None:
        return check_input_set(input_set, n_inputs, set_size)[None, :], "given"
    pool = None if paper_compat else distinct()
    cands, how = sampling.input_candidates(n_inputs, set_size, num_samples, seed, paper_compat,
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
            "(duplicate f rows)", fix="deduplicate the inputs or raise num_samples")
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


def rep_budget(M1, V, rep_sets=None):
    """(num_pivots, sets_per_pivot) of d_rep's default draw: ``rep_sets`` sets in all (default
    500 up to M1 = 64, 64 up to 256, 8 up to 1024, 2 beyond: each costs O(M^3)) over
    min(sets, V, 100) pivots."""
    if rep_sets is None:
        rep_sets = 500 if M1 <= 64 else 64 if M1 <= 256 else 8 if M1 <= 1024 else 2
    check_label_sets("rep_sets", rep_sets)
    P = min(int(rep_sets), V, 100)
    return P, max(1, int(rep_sets) // P)


def rep_sets(sets, V, M, num_pivots, sets_per_pivot, seed):
    """(sets, num_pivots, sets_per_pivot) of d_rep: the given (pivot, M labels) sets, checked
    (no pivot counts), or the follow-up paper's draw of ``num_pivots`` pivots x
    ``sets_per_pivot`` sets (None: ``rep_budget``'s defaults); M is the first model's
    dimension."""
    if sets is None:
        P, C = rep_budget(M, V)
        P = P if num_pivots is None else num_pivots
        C = C if sets_per_pivot is None else sets_per_pivot
        check_count("num_pivots", P)
        check_count("sets_per_pivot", C)
        check_label_sets("num_pivots x sets_per_pivot", int(P) * int(C))
        return sampling.rep_sets(V, M, P, C, seed), P, C
    s = np.asarray(sets)
    if (s.ndim != 2 or s.shape[1] != M + 1 or s.shape[0] < 1 or s.dtype.kind not in "iu"
            or s.min() < 0 or s.max() >= V):
        raise IdentirepError(
            f"sets must be an integer array (S, M + 1 = {M + 1}) of label indices in [0, {V})")
    if any(len(set(row)) != M + 1 for row in s.tolist()):
        raise IdentirepError("each d_rep set must hold M + 1 distinct labels (pivot first)")
    return s.astype(np.int64), None, None


def check_max_cond(max_cond) -> None:
    if max_cond is None or (isinstance(max_cond, str) and max_cond == REP_COND_RULE):
        return
    if (isinstance(max_cond, bool) or not isinstance(max_cond, (int, float, np.integer, np.floating))
            or not _finite(max_cond) and max_cond != float("inf") or not max_cond >= 1):
        raise IdentirepError(
            f"max_cond must be 'median', None (every non-singular set) or a number >= 1, got "
            f"{max_cond!r}")


def rep_used_sets(cond: np.ndarray, max_cond):
    """(used mask, threshold) of d_rep's condition-number rule from the 1-norm condition
    numbers of the sets' L1 (inf: singular). ``max_cond``: "median" (REP_COND_RULE), a number,
    or None (every non-singular set)."""
    check_max_cond(max_cond)
    finite = np.isfinite(cond)
    if not finite.any():
        raise IdentirepError(ALL_REP_SETS_SINGULAR, fix=REP_SINGULAR_FIX)
    if max_cond is None:
        thr = float("inf")
    elif max_cond == REP_COND_RULE:
        thr = float(np.median(cond[finite]))
    else:
        thr = float(max_cond)
    used = finite & (cond <= thr)
    if not used.any():
        raise IdentirepError(NO_REP_SET_WITHIN_RULE.format(rule=max_cond,
                                                           best=float(cond[finite].min())),
                             fix=REP_RULE_FIX)
    return used, thr


def rep_overflow(bad: int, total: int, f1_max: float, g1_row_max) -> IdentirepError:
    """The error of d_rep sets whose value overflows float64 (a non-singular set with an inf
    or NaN value), naming the scales: d_rep is in squared units of the first model's f, and
    A = L1^-1 L2 divides by the first model's label differences. ``g1_row_max``: max |g1|
    of each label."""
    rows = [float(x) for x in g1_row_max if x > 0]
    spread = (f"; the largest entry of its g rows ranges from {min(rows):.3g} to "
              f"{max(rows):.3g}" if rows else "")
    return IdentirepError(
        f"d_rep exceeds the float64 range (about 1.8e308) in {bad} of the {total} label sets: "
        f"it is in squared units of the first model's f (max |f1| {f1_max:.3g}), and its map "
        "A = L1^-1 L2 divides the second model's label differences by the first model's "
        f"g(y_i) - g(y0), which are tiny next to them{spread}",
        fix="rescale the first model to its trained scale: f1 * c and g1 / c leave its "
            "logits unchanged and multiply d_rep by c^2; or pass d_rep(sets=) label sets "
            "whose unembeddings are not negligible; or check the data for corrupted values")


#: the quantiles of d_rep's per-set values each side reports (5, 25, 50, 75, 95 %)
REP_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def check_cca_inputs(x, y, n_components) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise IdentirepError("mcca needs two 2-d arrays (samples x features)")
    if x.shape[0] != y.shape[0]:
        raise IdentirepError(f"mcca needs the same samples in both: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise IdentirepError("mcca needs at least 2 samples")
    for nm, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "biuf" and a.dtype.name != "bfloat16":
            raise IdentirepError(f"mcca's {nm} has dtype {a.dtype}; it needs real numbers",
                                 fix="convert with .astype(np.float64)")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise IdentirepError("mcca inputs contain NaN or Inf")
    check_count("n_components", n_components, none_ok=True)
    if n_components is not None and not (1 <= n_components <= min(x.shape[1], y.shape[1])):
        raise IdentirepError(
            f"n_components must be in [1, {min(x.shape[1], y.shape[1])}], got {n_components}")

