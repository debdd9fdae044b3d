"""Baselines a user would otherwise run: a faithful NumPy port of the paper's d_LLV algorithm,
the naive chunked log-softmax KL, and the per-token statistics from stored full logits as
llama.cpp's ``--kl-divergence`` computes them (``stored_logits_write``,
``stored_logits_compare``; torch). Used by the benchmarks and the tests, never by the engines.

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


def _chunk_logits(f, g, gemm: str):
    """A function r0, r1 -> the float32 logits f[r0:r1] g^T as a torch tensor, computed by
    NumPy's BLAS (``gemm="numpy"``: the library identirep's pass and the benchmarks' floors
    use) or torch's (``"torch"``: MKL in the PyPI wheels)."""
    import torch
    if gemm not in ("numpy", "torch"):
        raise ValueError(f"gemm must be 'numpy' or 'torch', got {gemm!r}")
    gc = np.ascontiguousarray(g, dtype=np.float32)
    if gemm == "numpy":
        return lambda r0, r1: torch.from_numpy(
            np.asarray(f[r0:r1], dtype=np.float32) @ gc.T)
    gt = torch.from_numpy(gc)
    return lambda r0, r1: torch.from_numpy(
        np.ascontiguousarray(f[r0:r1], dtype=np.float32)) @ gt.T


def stored_logits_write(f, g, path, *, rows: int = 512, dtype: str = "float32",
                        gemm: str = "numpy") -> tuple:
    """The first half of the materialising approach (llama.cpp's ``llama-perplexity
    --kl-divergence-base``): the reference model's log-probabilities at every input, computed
    ``rows`` inputs at a time (float32; the GEMM by ``gemm``'s BLAS, the rest by torch) and
    appended to the file ``path`` as ``dtype`` (float32 or float16; llama.cpp stores them as
    16-bit integers with a scale per input). The file holds N x V values. Returns (N, V);
    needs torch."""
    import torch
    logits = _chunk_logits(f, g, gemm)
    out_dtype = np.dtype(dtype)
    with open(path, "wb") as fh, torch.inference_mode():
        for r0 in range(0, f.shape[0], rows):
            z = logits(r0, min(f.shape[0], r0 + rows))
            fh.write(torch.log_softmax(z, dim=1).numpy().astype(out_dtype, copy=False).tobytes())
    return f.shape[0], g.shape[0]


def stored_logits_compare(f, g, path, targets, *, rows: int = 512, dtype: str = "float32",
                          k: int = 10, jsd: bool = False, gemm: str = "numpy") -> dict:
    """The second half (llama.cpp's ``--kl-divergence``): the compared model's logits,
    ``rows`` inputs at a time (float32, as in the first half), against the reference's
    log-probabilities read
    back from ``path`` (written by :func:`stored_logits_write` in ``dtype``): per input
    KL(p1||p2) and KL(p2||p1), log p of the target under each (NaN where ``targets`` < 0),
    each model's ``k`` top labels, the probability of each model's top label under the other,
    and the Jensen-Shannon divergence when ``jsd``. Float64 arrays of length N (top-k: N x k
    int64). Needs torch."""
    import torch
    n, v = f.shape[0], g.shape[0]
    logits = _chunk_logits(f, g, gemm)
    t_all = np.asarray(targets, dtype=np.int64)
    keys = ("kl12", "kl21", "logp1", "logp2", "p2_of_top1", "p1_of_top2") + (("jsd",) if jsd else ())
    out = {key: np.empty(n) for key in keys}
    out["top1"], out["top2"] = np.empty((n, k), np.int64), np.empty((n, k), np.int64)
    item = np.dtype(dtype).itemsize
    with open(path, "rb") as fh, torch.inference_mode():
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            fh.seek(r0 * v * item)
            lp1 = torch.from_numpy(np.fromfile(fh, dtype=dtype, count=(r1 - r0) * v)
                                   .reshape(r1 - r0, v).astype(np.float32, copy=False))
            lp2 = torch.log_softmax(logits(r0, r1), dim=1)
            p1, p2 = lp1.exp(), lp2.exp()
            d = lp1 - lp2
            out["kl12"][r0:r1] = (p1 * d).sum(1).clamp(min=0).numpy()
            out["kl21"][r0:r1] = (-(p2 * d).sum(1)).clamp(min=0).numpy()
            if jsd:
                log_m = torch.logaddexp(lp1, lp2) - float(np.log(2.0))
                out["jsd"][r0:r1] = (0.5 * (p1 * (lp1 - log_m)).sum(1)
                                     + 0.5 * (p2 * (lp2 - log_m)).sum(1)).numpy()
            t = torch.from_numpy(t_all[r0:r1])
            has = (t >= 0).numpy()
            idx = t.clamp(min=0)[:, None]
            for key, lp in (("logp1", lp1), ("logp2", lp2)):
                out[key][r0:r1] = np.where(has, lp.gather(1, idx)[:, 0].numpy(), np.nan)
            top1, top2 = torch.topk(lp1, k, dim=1).indices, torch.topk(lp2, k, dim=1).indices
            out["top1"][r0:r1], out["top2"][r0:r1] = top1.numpy(), top2.numpy()
            out["p2_of_top1"][r0:r1] = p2.gather(1, top1[:, :1])[:, 0].numpy()
            out["p1_of_top2"][r0:r1] = p1.gather(1, top2[:, :1])[:, 0].numpy()
    return out
