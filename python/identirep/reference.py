"""Float64 NumPy oracle of every quantity. Materialises the N x V logits: small inputs only.

Semantics follow the paper's reference code (see NOTES.md for the documented differences:
tie rule, degenerate pairs, the input-set threshold quirk behind ``paper_compat``).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from . import sampling
from .errors import IdentirepError
from .model import Model, check_pair
from .results import DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult

TIE_RTOL = 1e-12
DEGENERATE_RTOL = 1e-10


def logits(model: Model) -> np.ndarray:
    f, g = model.augmented(np.float64)
    return f @ g.T


def log_probs(model: Model):
    """(log p (N x V), L (N)) in float64."""
    l = logits(model)
    L = logsumexp(l, axis=1)
    return l - L[:, None], L


def log_normalisers(model: Model) -> np.ndarray:
    return log_probs(model)[1]


def kl_reference(a: Model, b: Model) -> KLResult:
    check_pair(a, b)
    lp1, _ = log_probs(a)
    lp2, _ = log_probs(b)
    p1, p2 = np.exp(lp1), np.exp(lp2)
    # KL >= 0; clip the roundoff of (near-)identical distributions
    kl12 = np.maximum((p1 * (lp1 - lp2)).sum(1), 0.0)
    kl21 = np.maximum((p2 * (lp2 - lp1)).sum(1), 0.0)
    agree = np.argmax(lp1, 1) == np.argmax(lp2, 1)
    return KLResult(kl12=float(kl12.mean()), kl21=float(kl21.mean()),
                    top1_agreement=float(agree.mean()),
                    entropy1=float(-(p1 * lp1).sum(1).mean()),
                    entropy2=float(-(p2 * lp2).sum(1).mean()),
                    per_input_kl12=kl12, per_input_kl21=kl21)


# ----------------------------------------------------------------------------------- d_LLV
def _pair_terms(lp1, lp2, raw1, raw2, i0, tol):
    """Terms for every row r against pivot row i0; rows are the varying index (labels for
    the label side, inputs for the input side) and the variance runs over columns.

    Returns rest, piv, t3 (sqrt-variance gap) and a mask of degenerate pairs.
    """
    d1 = lp1 - lp1[i0]
    d2 = lp2 - lp2[i0]
    D1 = d1.var(axis=1, ddof=1)
    D2 = d2.var(axis=1, ddof=1)
    v1 = raw1.var(axis=1, ddof=1)
    v2 = raw2.var(axis=1, ddof=1)
    deg = (D1 <= tol * (v1 + v1[i0])) | (D2 <= tol * (v2 + v2[i0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        s1 = np.sqrt(D1)[:, None]
        s2 = np.sqrt(D2)[:, None]
        rest = (lp1 / s1 - lp2 / s2).std(axis=1, ddof=1)
        piv = (lp1[i0][None, :] / s1 - lp2[i0][None, :] / s2).std(axis=1, ddof=1)
    t3 = np.abs(s1[:, 0] - s2[:, 0])
    return rest, piv, t3, deg


def _first_within(values: np.ndarray):
    """Row-major first index whose value is within TIE_RTOL of the finite minimum."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    mu = values[finite].min()
    cand = np.flatnonzero((values <= mu + TIE_RTOL * abs(mu)) & finite)
    return np.unravel_index(cand[0], values.shape)


def _reduce(rest, piv, t3, keep, term):
    if term == "max":
        return max(rest[keep].max(), piv[keep].max()), t3[keep].max()
    return np.concatenate([rest[keep], piv[keep]]).mean(), t3[keep].mean()


def _label_side(lp1T, lp2T, raw1T, raw2T, term, pivot, leave_out, tol, candidates=None):
    V = lp1T.shape[0]
    idx = np.arange(V)
    if pivot is not None:
        pivots = [pivot]
    else:
        pivots = range(V) if candidates is None else [int(p) for p in candidates]
    crit = np.full((V, V), np.inf)
    per_pivot = {}
    for y0 in pivots:
        rest, piv, t3, deg = _pair_terms(lp1T, lp2T, raw1T, raw2T, y0, tol)
        valid = ~deg & (idx != y0)
        per_pivot[y0] = (rest, piv, t3, valid, deg)
        los = [leave_out] if leave_out is not None else [l for l in range(V) if l != y0]
        for l in los:
            keep = valid & (idx != l)
            if keep.any():
                crit[y0, l] = _reduce(rest, piv, t3, keep, term)[0]
    choice = _first_within(crit)
    if choice is None:
        raise IdentirepError(
            "every label pair is degenerate (identical unembeddings, or constant features): "
            "d_LLV is undefined; check that g has distinct rows and f varies across inputs")
    y0, l = int(choice[0]), int(choice[1])
    rest, piv, t3, valid, deg = per_pivot[y0]
    keep = valid & (idx != l)
    t1, t3v = _reduce(rest, piv, t3, keep, term)
    return y0, l, float(t1), float(t3v), deg


def _input_terms(lp1, lp2, raw1, raw2, cset, tol):
    rows = np.asarray(cset)
    rest, piv, t4, deg = _pair_terms(lp1[rows], lp2[rows], raw1[rows], raw2[rows], 0, tol)
    return rest[1:], piv[1:], t4[1:], deg[1:]


def d_llv_reference(a: Model, b: Model, lam: float = 1e-5, combine: str = "max",
                    term: str = "max", pivot=None, leave_out=None, input_set=None,
                    num_samples: int = 200, seed: int = 0, paper_compat: bool = False,
                    degenerate_rtol: float = DEGENERATE_RTOL, pivot_candidates=None,
                    sets_per_pivot: int = 1) -> DLLVResult:
    check_pair(a, b)
    _check_llv_args(a, b, combine, term, pivot, leave_out, lam)
    lp1, _ = log_probs(a)
    lp2, _ = log_probs(b)
    raw1, raw2 = logits(a), logits(b)
    y0, l, t1, t3, deg = _label_side(lp1.T, lp2.T, raw1.T, raw2.T, term,
                                      pivot, leave_out, degenerate_rtol, pivot_candidates)
    cands, how = candidate_input_sets(a, b, input_set, num_samples, seed, paper_compat,
                                      sets_per_pivot)
    crits = np.empty(len(cands))
    for i, c in enumerate(cands):
        rest, piv, _, dg = _input_terms(lp1, lp2, raw1, raw2, c, degenerate_rtol)
        crits[i] = np.inf if dg.any() else max(rest.max(), piv.max())
    k, rejected = _choose_input_set(crits, paper_compat and input_set is None)
    rest, piv, t4s, _ = _input_terms(lp1, lp2, raw1, raw2, cands[k], degenerate_rtol)
    t2 = float(max(rest.max(), piv.max()))
    t4 = float(t4s.max() if term == "max" else t4s.mean())
    value = _combine(combine, lam, t1, t2, t3, t4)
    deg_labels = [int(i) for i in np.flatnonzero(deg) if i != y0]
    return DLLVResult(
        value=value, t1=t1, t2=t2, t3=t3, t4=t4, lam=lam, combine=combine, term=term,
        pivot=y0, leave_out=l, input_set=[int(i) for i in cands[k]],
        pivot_search=("given" if pivot is not None else f"exact over {a.V} labels"
                      if pivot_candidates is None else f"sampled {len(pivot_candidates)} of {a.V}"),
        input_search=how,
        num_input_candidates=len(cands), degenerate_pairs=len(deg_labels),
        degenerate_labels=deg_labels, rejected_input_sets=rejected)


def candidate_input_sets(a: Model, b: Model, input_set, num_samples, seed, paper_compat,
                         sets_per_pivot):
    """The input diversity sets every engine evaluates, (K, M + 1), and how they were drawn:
    the given set, or seeded candidates from the distinct inputs (all inputs for
    ``paper_compat``)."""
    set_size = max(a.M, b.M) + 1
    if input_set is not None:
        return _check_input_set(input_set, a.N, set_size)[None, :], "given"
    pool = None if paper_compat else sampling.distinct_inputs(a.f, b.f)
    cands, how = sampling.input_candidates(a.N, set_size, num_samples, seed, paper_compat,
                                           sets_per_pivot, pool)
    return cands, f"min over {len(cands)} {how} candidates"


def _choose_input_set(crits: np.ndarray, paper_compat: bool):
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
    return int(_first_within(crits)[0]), rejected


def _combine(combine, lam, t1, t2, t3, t4):
    if combine == "max":
        return float(max(t1, t2, lam * t3, lam * t4))
    return float(t1 + t2 + lam * t3 + lam * t4)


def _constant_f(f) -> bool:
    """Whether f does not vary across inputs (on the GPU for device arrays: no host copy)."""
    from ._arrays import array_module, is_gpu_array
    from .model import to_numpy
    if is_gpu_array(f):
        from .gpu.arrays import as_device
        d = as_device(f, "f")
        f = d.widened(np.float64 if d.kind == "float64" else np.float32)
    else:
        f = to_numpy(f)
        if f.dtype not in (np.float32, np.float64):
            f = f.astype(np.float32)
    xp = array_module(f)
    return float(f.std(0, dtype=np.float64).max()) <= 1e-12 * float(xp.abs(f).max())


def _check_llv_args(a, b, combine, term, pivot, leave_out, lam):
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
        if _constant_f(m.f):
            raise IdentirepError(
                f"f of {m.name or 'a model'} is constant across inputs: every label pair is "
                "degenerate and d_LLV is undefined; the inputs must differ")
    for nm, v in (("pivot", pivot), ("leave_out", leave_out)):
        if v is not None and not (isinstance(v, (int, np.integer)) and 0 <= v < a.V):
            raise IdentirepError(f"{nm} must be a label index in [0, {a.V}), got {v!r}")
    if pivot is not None and leave_out is not None and pivot == leave_out:
        raise IdentirepError("pivot and leave_out must be different labels")


def _check_input_set(input_set, n_inputs, set_size):
    s = np.asarray(input_set)
    if s.ndim != 1 or s.size != set_size or s.dtype.kind not in "iu":
        raise IdentirepError(
            f"input_set must be {set_size} integer input indices (pivot first, then M), got {input_set!r}")
    if s.min() < 0 or s.max() >= n_inputs or len(set(s.tolist())) != s.size:
        raise IdentirepError(f"input_set must hold distinct indices in [0, {n_inputs})")
    return s.astype(np.int64)


# ----------------------------------------------------------------------------------- d_SVD
def _standardise(Z):
    Zc = Z - Z.mean(0)
    sd = Zc.std(0, ddof=1)
    if (sd <= 1e-12 * max(1.0, np.abs(Zc).max())).any():
        return None
    return Zc / sd


def msvd(Z1: np.ndarray, Z2: np.ndarray):
    """Mean PLS-SVD covariance of two column-standardised data sets (rows = samples)."""
    A, B = _standardise(Z1), _standardise(Z2)
    if A is None or B is None:
        return None
    return float(np.linalg.svd(A.T @ B / (len(A) - 1), compute_uv=False).mean())


def d_svd_reference(a: Model, b: Model, pivot: int, leave_out: int, input_set,
                    max_sets: int = 1000, seed: int = 0) -> DSVDResult:
    check_pair(a, b, same_dim=True, what="d_SVD")
    f1, g1, _ = a.numpy()
    f2, g2, _ = b.numpy()
    M = a.M
    rem = _svd_remaining(pivot, leave_out, a.V)
    sets, how = sampling.label_sets(rem, M, max_sets, seed)
    vals = np.full(len(sets), np.nan)
    for i, s in enumerate(sets):
        m = msvd(f1 @ (g1[s] - g1[pivot]).T, f2 @ (g2[s] - g2[pivot]).T)
        if m is not None:
            vals[i] = 1.0 - m
    iset = _check_input_set(input_set, a.N, M + 1)
    mg = msvd(g1 @ (f1[iset[1:]] - f1[iset[0]]).T, g2 @ (f2[iset[1:]] - f2[iset[0]]).T)
    return _svd_result(vals, mg, pivot, leave_out, iset, how)


def _svd_remaining(pivot, leave_out, V):
    """The labels other than the pivot and the leave-out (both checked)."""
    for name, v in (("pivot", pivot), ("leave_out", leave_out)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < V:
            raise IdentirepError(f"{name} must be a label index in [0, {V}), got {v!r}")
    if pivot == leave_out:
        raise IdentirepError(f"pivot and leave_out must differ, both are {pivot}")
    return np.setdiff1d(np.arange(V), [pivot, leave_out])


def _svd_result(vals, mg, pivot, leave_out, iset, how):
    ok = np.isfinite(vals)
    if not ok.any() and mg is None:
        raise IdentirepError("every diversity set is degenerate (constant transformed features)")
    fmax = float(vals[ok].max()) if ok.any() else float("nan")
    dg = float("nan") if mg is None else 1.0 - mg
    return DSVDResult(
        max_d_svd=float(np.nanmax([fmax, dg])), max_d_svd_f=fmax, d_svd_g=dg,
        mean_d_svd_f=float(vals[ok].mean()) if ok.any() else float("nan"),
        pivot=int(pivot), leave_out=int(leave_out), input_set=[int(i) for i in iset],
        num_label_sets=len(vals), label_set_search=how,
        skipped_label_sets=int((~ok).sum()), d_svd_f_per_set=vals)


# ----------------------------------------------------------------------------------- mCCA
def _orth_basis(X, what):
    Xc = X - X.mean(0)
    sd = Xc.std(0)
    scale = np.abs(X).max() if X.size else 0.0
    const = np.flatnonzero(sd <= 1e-12 * max(scale, 1e-300))
    if const.size:
        raise IdentirepError(
            f"{what} has constant column(s) {const[:10].tolist()}: canonical correlations are "
            "undefined for features that do not vary; drop those columns")
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    r = int((s > s[0] * max(Xc.shape) * np.finfo(float).eps).sum())
    return U[:, :r]


def canonical_correlations(X: np.ndarray, Y: np.ndarray, what=("x", "y")) -> np.ndarray:
    """Exact canonical correlations (descending) of two data sets with matching rows."""
    U1 = _orth_basis(np.asarray(X, np.float64), what[0])
    U2 = _orth_basis(np.asarray(Y, np.float64), what[1])
    return np.clip(np.linalg.svd(U1.T @ U2, compute_uv=False), 0.0, 1.0)


def mcca_reference(x, y, n_components=None) -> MCCAResult:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    _check_cca_inputs(x, y, n_components)
    rho = canonical_correlations(x, y)
    return _mcca_result(rho, n_components, min(x.shape[1], y.shape[1]))


def _check_cca_inputs(x, y, n_components):
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


def _mcca_result(rho, n_components, dim):
    n = n_components or dim
    r = np.zeros(n)
    r[:min(n, len(rho))] = rho[:n]
    return MCCAResult(value=float(r.mean()), correlations=[float(v) for v in r], n_components=n)


# ----------------------------------------------------------------------------------- d_logit
def d_logit_reference(a: Model, b: Model) -> DLogitResult:
    check_pair(a, b)
    l1, l2 = logits(a), logits(b)
    c1 = l1 - l1.mean(1, keepdims=True)
    c2 = l2 - l2.mean(1, keepdims=True)
    sq = float(((c1 - c2) ** 2).sum(1).mean())
    return DLogitResult(value=float(np.sqrt(sq)), value_sq=sq)


# ----------------------------------------------------------------------------------- d_rep
def d_rep_reference(a: Model, b: Model, sets=None, num_sets: int = 100, seed: int = 0) -> DRepResult:
    check_pair(a, b, same_dim=True, what="d_rep")
    f1, g1, b1 = a.numpy()
    f2, g2, b2 = b.numpy()
    sets = _rep_sets(sets, a.V, a.M, num_sets, seed)
    vals = np.full(len(sets), np.nan)
    for i, s in enumerate(sets):
        sol = _rep_map(g1, g2, b1, b2, s)
        if sol is not None:
            A, c = sol
            r = f1 - f2 @ A.T - c
            vals[i] = (r * r).sum(1).mean()
    return _rep_result(vals, sets)


def _rep_sets(sets, V, M, num_sets, seed):
    if sets is None:
        return sampling.diversity_sets(V, M, num_sets, seed)
    s = np.asarray(sets)
    if s.ndim != 2 or s.shape[1] != M + 1 or s.dtype.kind not in "iu" or s.min() < 0 or s.max() >= V:
        raise IdentirepError(f"sets must be an integer array (S, M + 1 = {M + 1}) of label indices")
    return s.astype(np.int64)


def _rep_map(g1, g2, b1, b2, s):
    """(A, c) with L1 A = L2 and L1 c = db, or None when L1 is singular (1-norm reciprocal
    condition number <= 1e-12); on the device of g1, g2 (NumPy's LAPACK or cuSOLVER). The
    biases b1, b2 are host arrays or None."""
    from ._arrays import array_module
    from ._linalg import linalg_raises as _linalg_raises
    xp = array_module(g1)
    idx = xp.asarray(s, dtype=np.int64)
    L1 = g1[idx[1:]].astype(np.float64) - g1[idx[0]].astype(np.float64)
    L2 = g2[idx[1:]].astype(np.float64) - g2[idx[0]].astype(np.float64)
    try:
        with _linalg_raises(xp):
            inv = xp.linalg.inv(L1)
    except np.linalg.LinAlgError:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        rcond = 1.0 / (np.float64(xp.abs(L1).sum(0).max()) * np.float64(xp.abs(inv).sum(0).max()))
    if not rcond > 1e-12:
        return None
    db = np.zeros(len(s) - 1)
    if b2 is not None:
        db += b2[s[1:]] - b2[s[0]]
    if b1 is not None:
        db -= b1[s[1:]] - b1[s[0]]
    return inv @ L2, inv @ xp.asarray(db)


def _rep_result(vals, sets):
    ok = np.isfinite(vals)
    if not ok.any():
        raise IdentirepError("every diversity set has a singular label-difference matrix")
    return DRepResult(value=float(vals[ok].max()), mean=float(vals[ok].mean()),
                      min=float(vals[ok].min()), num_sets=len(vals),
                      skipped_sets=int((~ok).sum()), sets=sets.tolist(), per_set=vals)
