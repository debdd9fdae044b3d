"""The float64 oracle of every quantity: the plainest computation of each definition.

It materialises the N x V logits (small inputs only), searches pivots and leave-outs by filling
the whole V x V criterion table, loops over label sets, and shares no numerical code with the
fast engine: only the rules of ``_rules`` (argument checks, the tie rule, the seeded candidate
draws, the choice among candidate input sets, error messages). Semantics follow the paper's
reference code; the documented differences (tie rule, degenerate pairs, the input-set
threshold quirk behind ``paper_compat``) are in docs/design.md.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from . import _rules as rules
from . import sampling
from .errors import IdentirepError
from .model import Model, check_pair, to_numpy
from .results import DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult

TIE_RTOL = rules.TIE_RTOL
DEGENERATE_RTOL = rules.DEGENERATE_RTOL


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
    choice = rules.first_within(crit)
    if choice is None:
        raise IdentirepError(rules.ALL_LABEL_PAIRS_DEGENERATE, fix=rules.LABEL_PAIRS_FIX)
    y0, l = int(choice[0]), int(choice[1])
    rest, piv, t3, valid, deg = per_pivot[y0]
    keep = valid & (idx != l)
    t1, t3v = _reduce(rest, piv, t3, keep, term)
    return y0, l, float(t1), float(t3v), deg


def _input_terms(lp1, lp2, raw1, raw2, cset, tol):
    rows = np.asarray(cset)
    rest, piv, t4, deg = _pair_terms(lp1[rows], lp2[rows], raw1[rows], raw2[rows], 0, tol)
    return rest[1:], piv[1:], t4[1:], deg[1:]


def _constant(f) -> bool:
    """Whether f does not vary across inputs (float64, on the host)."""
    f = to_numpy(f, np.float64)
    return float(f.std(0).max()) <= 1e-12 * float(np.abs(f).max())


def distinct_inputs(a: Model, b: Model) -> np.ndarray:
    """Sorted first occurrences of the distinct inputs, an input being its rows of f in both
    models bit for bit: by sorting the rows' bit patterns."""
    bits = np.hstack([to_numpy(m.f, np.float64).view(np.uint64) for m in (a, b)])
    return np.sort(np.unique(bits, axis=0, return_index=True)[1]).astype(np.int64)


def d_llv_reference(a: Model, b: Model, lam: float = 1e-5, combine: str = "max",
                    term: str = "max", pivot=None, leave_out=None, input_set=None,
                    num_samples: int = 200, seed: int = 0, paper_compat: bool = False,
                    degenerate_rtol: float = DEGENERATE_RTOL, pivot_candidates=None,
                    sets_per_pivot: int = 1) -> DLLVResult:
    check_pair(a, b)
    rules.check_llv_args(a, b, combine, term, pivot, leave_out, lam, _constant)
    lp1, _ = log_probs(a)
    lp2, _ = log_probs(b)
    raw1, raw2 = logits(a), logits(b)
    y0, l, t1, t3, deg = _label_side(lp1.T, lp2.T, raw1.T, raw2.T, term,
                                      pivot, leave_out, degenerate_rtol, pivot_candidates)
    cands, how = rules.candidate_input_sets(a, b, input_set, num_samples, seed, paper_compat,
                                            sets_per_pivot, lambda: distinct_inputs(a, b))
    crits = np.empty(len(cands))
    for i, c in enumerate(cands):
        rest, piv, _, dg = _input_terms(lp1, lp2, raw1, raw2, c, degenerate_rtol)
        crits[i] = np.inf if dg.any() else max(rest.max(), piv.max())
    k, rejected = rules.choose_input_set(crits, paper_compat and input_set is None)
    rest, piv, t4s, _ = _input_terms(lp1, lp2, raw1, raw2, cands[k], degenerate_rtol)
    t2 = float(max(rest.max(), piv.max()))
    t4 = float(t4s.max() if term == "max" else t4s.mean())
    terms = (t1, t2, lam * t3, lam * t4)
    value = float(max(terms) if combine == "max" else sum(terms))
    deg_labels = [int(i) for i in np.flatnonzero(deg) if i != y0]
    return DLLVResult(
        value=value, t1=t1, t2=t2, t3=t3, t4=t4, lam=lam, combine=combine, term=term,
        pivot=y0, leave_out=l, input_set=[int(i) for i in cands[k]],
        pivot_search=("given" if pivot is not None else f"exact over {a.V} labels"
                      if pivot_candidates is None else f"sampled {len(pivot_candidates)} of {a.V}"),
        input_search=how,
        num_input_candidates=len(cands), degenerate_pairs=len(deg_labels),
        degenerate_labels=deg_labels, rejected_input_sets=rejected)


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


def _stacked_d_svd(f1, f2, L1, L2) -> list:
    """1 - msvd(f1 L1', f2 L2') for each set of a stack of label-difference matrices
    (S x M x M); NaN for a set with a constant transformed feature."""
    out = []
    Z1, Z2 = f1 @ np.swapaxes(L1, 1, 2), f2 @ np.swapaxes(L2, 1, 2)     # S x N x M
    for Z in (Z1, Z2):
        Z -= Z.mean(1, keepdims=True)
    sd1, sd2 = Z1.std(1, ddof=1), Z2.std(1, ddof=1)
    lim1 = 1e-12 * np.maximum(1.0, np.abs(Z1).max((1, 2)))
    lim2 = 1e-12 * np.maximum(1.0, np.abs(Z2).max((1, 2)))
    ok = (sd1 > lim1[:, None]).all(1) & (sd2 > lim2[:, None]).all(1)
    C = np.swapaxes(Z1[ok] / sd1[ok][:, None], 1, 2) @ (Z2[ok] / sd2[ok][:, None])
    means = iter(np.linalg.svd(C / (f1.shape[0] - 1), compute_uv=False).mean(1))
    for good in ok:
        out.append(1.0 - float(next(means)) if good else np.nan)
    return out


def d_svd_reference(a: Model, b: Model, pivot: int, leave_out: int, input_set,
                    max_sets: int = 1000, seed: int = 0) -> DSVDResult:
    check_pair(a, b, same_dim=True, what="d_SVD")
    f1, g1, _ = a.numpy()
    f2, g2, _ = b.numpy()
    M = a.M
    rem = rules.svd_remaining(pivot, leave_out, a.V)
    sets, how = sampling.label_sets(rem, M, max_sets, seed)
    per_set = []
    for i in range(0, len(sets), 64):      # the transformed data of 64 sets at a time
        per_set += _stacked_d_svd(f1, f2, g1[sets[i:i + 64]] - g1[pivot],
                                  g2[sets[i:i + 64]] - g2[pivot])
    iset = rules.check_input_set(input_set, a.N, M + 1)
    mg = msvd(g1 @ (f1[iset[1:]] - f1[iset[0]]).T, g2 @ (f2[iset[1:]] - f2[iset[0]]).T)
    finite = [v for v in per_set if not np.isnan(v)]
    if not finite and mg is None:
        raise IdentirepError(rules.ALL_SVD_SETS_DEGENERATE, fix=rules.SVD_SETS_FIX)
    fmax = max(finite) if finite else float("nan")
    dg = float("nan") if mg is None else 1.0 - mg
    return DSVDResult(
        max_d_svd=float(fmax if np.isnan(dg) else dg if np.isnan(fmax) else max(fmax, dg)),
        max_d_svd_f=float(fmax), d_svd_g=float(dg),
        mean_d_svd_f=float(sum(finite) / len(finite)) if finite else float("nan"),
        pivot=int(pivot), leave_out=int(leave_out), input_set=[int(i) for i in iset],
        num_label_sets=len(per_set), label_set_search=how,
        skipped_label_sets=len(per_set) - len(finite), d_svd_f_per_set=np.array(per_set))


# ----------------------------------------------------------------------------------- mCCA
def _orth_basis(X, what, rtol):
    """An orthonormal basis of the column space of the centred, standardised X by the rank
    rule (columns of zero variance left out; singular values s with s^2 > rtol * s_max^2)."""
    mu = X.mean(0)
    Xc = X - mu
    sd = Xc.std(0)
    # a column varies when its sd exceeds 1e-12 of its own root mean square (any offset)
    var = (sd > 0) & (sd > rules.CONSTANT_COLUMN_RTOL * np.sqrt(mu ** 2 + sd ** 2))
    if not var.any():
        raise IdentirepError(rules.no_varying_column_message(what), fix=rules.NO_VARYING_COLUMN_FIX)
    Z = Xc[:, var] / sd[var]
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, s ** 2 > rtol * s[0] ** 2]


def canonical_correlations(X: np.ndarray, Y: np.ndarray, what=("x", "y"),
                           rtol: float = rules.MCCA_RANK_RTOL["float64"]):
    """(exact canonical correlations, descending, rank of X, rank of Y) of two data sets with
    matching rows, on their column spaces by the rank rule."""
    U1 = _orth_basis(np.asarray(X, np.float64), what[0], rtol)
    U2 = _orth_basis(np.asarray(Y, np.float64), what[1], rtol)
    rho = np.clip(np.linalg.svd(U1.T @ U2, compute_uv=False), 0.0, 1.0)
    return rho, U1.shape[1], U2.shape[1]


def mcca_reference(x, y, n_components=None, rtol=rules.MCCA_RANK_RTOL["float64"]) -> MCCAResult:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    rules.check_cca_inputs(x, y, n_components)
    rho, r1, r2 = canonical_correlations(x, y, rtol=rtol)
    n = min(n_components or min(r1, r2), r1, r2)
    corr = [float(v) for v in rho[:n]]
    return MCCAResult(value=float(np.mean(corr)), correlations=corr, n_components=n,
                      rank1=r1, rank2=r2, rank_rtol=rtol,
                      trivially_one=min(n, rules.trivially_one(len(x), r1, r2)))


# ----------------------------------------------------------------------------------- d_logit
def d_logit_reference(a: Model, b: Model) -> DLogitResult:
    check_pair(a, b)
    l1, l2 = logits(a), logits(b)
    c1 = l1 - l1.mean(1, keepdims=True)
    c2 = l2 - l2.mean(1, keepdims=True)
    sq = float(((c1 - c2) ** 2).sum(1).mean())
    return DLogitResult(value=float(np.sqrt(sq)), value_sq=sq)


# ----------------------------------------------------------------------------------- d_rep
def _rep_maps(g1, g2, b1, b2, sets):
    """Per set, (A, c, cond_1(L1)) with L1 A = L2 and L1 c = b2 - b1 differences, or None when
    L1 is singular by the rule (1-norm reciprocal condition number <= REP_MIN_RCOND)."""
    L1 = g1[sets[:, 1:]] - g1[sets[:, :1]]
    L2 = g2[sets[:, 1:]] - g2[sets[:, :1]]
    db = np.zeros(L1.shape[:2])
    if b2 is not None:
        db += b2[sets[:, 1:]] - b2[sets[:, :1]]
    if b1 is not None:
        db -= b1[sets[:, 1:]] - b1[sets[:, :1]]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        cond = np.linalg.cond(L1, 1)          # inf or NaN for a singular L1
        ok = 1.0 / cond > rules.REP_MIN_RCOND
    out = [None] * len(sets)
    if ok.any():
        A = np.linalg.solve(L1[ok], L2[ok])
        c = np.linalg.solve(L1[ok], db[ok][:, :, None])[:, :, 0]
        for j, k in enumerate(np.flatnonzero(ok)):
            out[k] = (A[j], c[j], float(cond[k]))
    return out


def d_rep_reference(a: Model, b: Model, sets=None, num_pivots=None, sets_per_pivot=None,
                    seed: int = 0, max_cond=rules.REP_COND_RULE,
                    unsquared: bool = False) -> DRepResult:
    check_pair(a, b)
    rules.check_max_cond(max_cond)
    f1, g1, b1 = a.numpy()
    f2, g2, b2 = b.numpy()
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    g1, g2 = np.asarray(g1, np.float64), np.asarray(g2, np.float64)
    sets, num_pivots, sets_per_pivot = rules.rep_sets(sets, a.V, a.M, num_pivots,
                                                      sets_per_pivot, seed)
    per_set = np.full(len(sets), np.nan)
    cond = np.full(len(sets), np.inf)
    norms = np.full(len(sets), np.nan)
    for i, sol in enumerate(_rep_maps(g1, g2, b1, b2, sets)):
        if sol is None:
            continue
        A, c, cond[i] = sol
        r = f1 - f2 @ A.T - c
        sq = (r * r).sum(1)
        per_set[i] = float(sq.mean())
        norms[i] = float(np.sqrt(sq).mean())
    used, thr = rules.rep_used_sets(cond, max_cond)
    vals = [float(x) for x, u in zip(per_set, used) if u]
    fine = [float(x) for x in per_set if not np.isnan(x)]
    q = np.quantile(vals, rules.REP_QUANTILES)
    fields = dict(
        value=sum(vals) / len(vals), median=float(q[2]), min=min(vals), max=max(vals),
        quantiles={f"q{round(p * 100):02d}": float(x) for p, x in zip(rules.REP_QUANTILES, q)},
        followup=sum(fine) / len(fine) / len(per_set),
        unsquared=(sum(float(x) for x, u in zip(norms, used) if u) / len(vals)
                   if unsquared else None),
        num_sets=len(per_set), used_sets=len(vals), excluded_sets=len(fine) - len(vals),
        singular_sets=len(per_set) - len(fine), max_cond=max_cond, cond_threshold=thr,
        num_pivots=num_pivots, sets_per_pivot=sets_per_pivot)
    return DRepResult(**fields, sets=sets.tolist(), per_set=per_set, cond_per_set=cond)


# ----------------------------------------------------------------------------------- per token
def _target_log_p(model: Model, lp: np.ndarray) -> np.ndarray:
    """log p(target(x) | x) from the full N x V log-probabilities; NaN where the target is < 0
    or the model carries no targets."""
    out = np.full(lp.shape[0], np.nan)
    t = getattr(model, "targets", None)
    if t is None:
        return out
    t = np.asarray(t, dtype=np.int64)
    for i in range(lp.shape[0]):
        if t[i] >= 0:
            out[i] = lp[i, t[i]]
    return out


def per_token_reference(a: Model, b: Model, k: int = 10, jsd: bool = True) -> dict:
    """Every per-input quantity of the per-token report, brute force on the N x V float64
    logits (small inputs only).

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels; ``targets`` (per input, -1 where none) where
        they carry them.
    k : int
        How many of each model's most likely labels per input (at most V are given).
    jsd : bool
        Also the Jensen-Shannon divergence.

    Returns
    -------
    dict
        (N,) float64 ``L1``, ``L2`` (log-normalisers), ``kl12``, ``kl21`` (KL(p1||p2),
        KL(p2||p1) per input, clipped at 0); (N, min(k, V)) int64 ``top1``, ``top2`` (labels
        by decreasing logit, a stable sort: ties to the lower label id); ``logp1``, ``logp2``
        (log p_k(target(x) | x) with model k's own targets, NaN where the target is < 0 or the
        model has none); ``p2_of_top1`` = p2(top1[:, 0] | x), ``p1_of_top2`` =
        p1(top2[:, 0] | x); with ``jsd``, ``jsd`` = 0.5 KL(p1||m) + 0.5 KL(p2||m),
        m = (p1 + p2)/2, in nats (scipy's ``rel_entr``: 0 where p = 0).
    """
    from scipy.special import rel_entr
    check_pair(a, b)
    rules.check_count("k", k)
    rules.check_flag("jsd", jsd)
    l1, l2 = logits(a), logits(b)
    L1, L2 = logsumexp(l1, axis=1), logsumexp(l2, axis=1)
    lp1, lp2 = l1 - L1[:, None], l2 - L2[:, None]
    p1, p2 = np.exp(lp1), np.exp(lp2)
    kk = min(int(k), l1.shape[1])
    top1 = np.argsort(-l1, axis=1, kind="stable")[:, :kk].astype(np.int64)
    top2 = np.argsort(-l2, axis=1, kind="stable")[:, :kk].astype(np.int64)
    rows = np.arange(l1.shape[0])
    out = {"L1": L1, "L2": L2,
           "kl12": np.maximum((p1 * (lp1 - lp2)).sum(1), 0.0),
           "kl21": np.maximum((p2 * (lp2 - lp1)).sum(1), 0.0),
           "top1": top1, "top2": top2,
           "logp1": _target_log_p(a, lp1), "logp2": _target_log_p(b, lp2),
           "p2_of_top1": p2[rows, top1[:, 0]], "p1_of_top2": p1[rows, top2[:, 0]]}
    if jsd:
        m = 0.5 * (p1 + p2)
        out["jsd"] = 0.5 * (rel_entr(p1, m).sum(1) + rel_entr(p2, m).sum(1))
    return out
