"""Baselines a user would otherwise run: a faithful NumPy port of the paper's d_LLV algorithm
and the naive chunked log-softmax KL. Used by the benchmarks and the tests, never by the
engines.

The port:

Same structure as the published research code: the log-likelihood matrix is built one label
at a time, the pivot/leave-out search loops over every (pivot, leave-out) pair with a boolean
filter, and candidate input sets are evaluated one by one. Float64 throughout (the original
stores log-likelihoods in float32) so that results can be compared with identirep's exactly.
"""
import numpy as np
from scipy.special import log_softmax, logsumexp


def naive_kl(f1, g1, f2, g2, rows: int = 64):
    """Row chunks of the full logits through scipy's log_softmax: per-input KL both ways, L."""
    n = f1.shape[0]
    out = np.empty((4, n))
    for r0 in range(0, n, rows):
        l1 = f1[r0:r0 + rows] @ g1.T
        l2 = f2[r0:r0 + rows] @ g2.T
        lp1 = log_softmax(l1, axis=1)
        lp2 = log_softmax(l2, axis=1)
        d = lp1 - lp2
        out[0, r0:r0 + rows] = (np.exp(lp1) * d).sum(axis=1)
        out[1, r0:r0 + rows] = -(np.exp(lp2) * d).sum(axis=1)
        out[2, r0:r0 + rows] = (l1 - lp1)[:, 0]
        out[3, r0:r0 + rows] = (l2 - lp2)[:, 0]
    return out


def log_likelihoods(f, g):
    vals = np.zeros((g.shape[0], f.shape[0]))
    for k in range(g.shape[0]):
        vals[k] = f @ g[k]
    return vals - logsumexp(vals, axis=0, keepdims=True)


def _terms_with_pivot(lp1_rest, lp1_0, lp2_rest, lp2_0, axis):
    v1 = np.var(lp1_rest - lp1_0, axis=axis, ddof=1, keepdims=True)
    v2 = np.var(lp2_rest - lp2_0, axis=axis, ddof=1, keepdims=True)
    rest = np.std(lp1_rest / np.sqrt(v1) - lp2_rest / np.sqrt(v2), axis=axis, ddof=1)
    piv = np.std(lp1_0 / np.sqrt(v1) - lp2_0 / np.sqrt(v2), axis=axis, ddof=1)
    gap = np.abs(np.sqrt(v1) - np.sqrt(v2)).squeeze(axis)
    return np.concatenate([rest, piv], 0), gap


def _label_terms(lp1, lp2, pivot):
    V = lp1.shape[0]
    keep = np.arange(V) != pivot
    return _terms_with_pivot(lp1[keep], lp1[pivot][None], lp2[keep], lp2[pivot][None], 1)


def choose_pivot_and_leave_out(lp1, lp2):
    V = lp1.shape[0]
    table = np.zeros((V, V - 1))
    filt = np.arange(2 * (V - 1))
    for k in range(V):
        t1, _ = _label_terms(lp1, lp2, k)
        for l in range(V - 1):
            table[k, l] = np.max(t1[~np.isin(filt, (l, l + V - 1))])
    k, l = np.argwhere(table == table.min())[0]
    return int(k), int(l + 1 if l >= k else l)


def paper_input_side(lp1, lp2, M, num_samples=200, seed=0):
    """The port's input side on materialised log-likelihoods lp_k (V x N): draw num_samples
    disjoint sets of M + 1 inputs, evaluate them one by one, keep the first whose max term is
    smallest and below 1 (else the first set), and return (chosen set, its t2 and t4 terms).
    ``paper_d_llv`` calls this; the input-side benchmark times it."""
    cands = np.random.RandomState(seed).choice(lp1.shape[1], (M + 1) * num_samples, replace=False)
    cands = cands.reshape(num_samples, M + 1)
    best, choice = 1.0, cands[0]
    for c in cands:
        t2, _ = _terms_with_pivot(lp1[:, c[1:]], lp1[:, [c[0]]], lp2[:, c[1:]], lp2[:, [c[0]]], 0)
        if t2.max() < best:
            best, choice = t2.max(), c
    t2, t4 = _terms_with_pivot(lp1[:, choice[1:]], lp1[:, [choice[0]]],
                               lp2[:, choice[1:]], lp2[:, [choice[0]]], 0)
    return choice, t2, t4


def paper_d_llv(f1, g1, f2, g2, lam=1e-5, num_samples=200, seed=0):
    lp1, lp2 = log_likelihoods(f1, g1), log_likelihoods(f2, g2)
    V = lp1.shape[0]
    pivot, lo = choose_pivot_and_leave_out(lp1, lp2)
    keep = np.arange(V) != lo
    p = pivot - 1 if lo < pivot else pivot
    t1, t3 = _label_terms(lp1[keep], lp2[keep], p)
    choice, t2, t4 = paper_input_side(lp1, lp2, f1.shape[1], num_samples, seed)
    value = max(t1.max(), t2.max(), lam * t3.max(), lam * t4.max())
    return dict(value=value, t1=t1.max(), t2=t2.max(), pivot=pivot, leave_out=lo,
                input_set=[int(i) for i in choice])


def followup_d_rep(f1, f2, g1, g2, num_pivots=100, num_combinations=200, seed=0):
    """A NumPy port of the follow-up paper's d_rep (Logit Distance Bounds Representational
    Similarity, 2026): g centred over labels; ``num_pivots`` distinct pivots drawn with
    ``np.random.default_rng(seed)``, then per pivot ``num_combinations`` sets of M1 labels
    among the others (indices into g without the pivot); per set A = L1^-1 L2 and the sum
    over inputs of ||f1(x) - A f2(x)||^2 divided by N * P * C; the mean over the P * C sets."""
    rng = np.random.default_rng(seed)
    V, M1 = g1.shape
    N = f1.shape[0]
    pivots = rng.choice(np.arange(V), num_pivots, replace=False)
    c1, c2 = g1 - g1.mean(0), g2 - g2.mean(0)
    vals = []
    for p in pivots:
        keep = np.arange(V) != p
        n1, n2 = c1[keep], c2[keep]
        for _ in range(num_combinations):
            idx = rng.choice(range(V - 1), M1, replace=False)
            L1 = n1[idx] - c1[p]
            L2 = n2[idx] - c2[p]
            A = np.linalg.inv(L1) @ L2
            r = f1 - f2 @ A.T
            vals.append((r ** 2).sum(1).sum() / (N * num_pivots * num_combinations))
    return float(np.mean(vals))
