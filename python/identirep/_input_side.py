"""The input side of d_LLV for one model pair: seeded candidate input sets from the distinct
inputs, each evaluated at O(M) per input from the pass's per-input moments and the models'
input-side factors H_k = f_k R_k (R_k R_k' the label covariance of g_k), so that
D_k(x, x0) = ||H_k(x) - H_k(x0)||^2 (docs/design.md)."""
from __future__ import annotations

import numpy as np

from . import _rules as rules
from ._arrays import is_gpu_array
from .model import to_numpy


class InputSide:
    """The input-side search of a pair: ``c1``, ``c2`` the models' ``ModelCache``, ``stats``
    the pair's pass (its per-input arrays: of the caches' rows of F), ``tol`` the
    degenerate-pair tolerance."""

    def __init__(self, c1, c2, stats, tol):
        self.c1, self.c2, self.stats, self.tol = c1, c2, stats, tol

    def factors(self):
        return self.c1.input_factor, self.c2.input_factor

    def search(self, term="max", input_set=None, num_samples=200, seed=0, paper_compat=False,
               sets_per_pivot=1):
        """(the chosen input set, t2, t4, how the candidates were drawn, their number, how many
        were rejected)."""
        a, b = self.c1.model, self.c2.model
        # the distinct inputs: found in f, or the rows kept (distinct) of a model known by its
        # statistics; the candidates are input indices, ``local`` their rows of H and stats
        pool = ((lambda: distinct_inputs(a.f, b.f)) if self.c1.rows is None
                else (lambda: self.c1.rows))
        cands, how = rules.candidate_input_sets(a, b, input_set, num_samples, seed, paper_compat,
                                                sets_per_pivot, pool, self.c1.n_inputs)
        local = self.c1.local(cands)
        s, V = self.stats, a.V
        a1, a2 = s.row_m2_11 / (V - 1), s.row_m2_22 / (V - 1)
        c12 = s.row_m2_12 / (V - 1)
        (H1, _), (H2, _) = self.factors()

        def terms(x0):
            D1 = to_numpy(((H1 - H1[x0]) ** 2).sum(1))
            D2 = to_numpy(((H2 - H2[x0]) ** 2).sum(1))
            deg = (D1 <= self.tol * (a1 + a1[x0])) | (D2 <= self.tol * (a2 + a2[x0]))
            # a ratio a / D overflows only where D < 1e-308 a: a degenerate pair (tol >> 1e-308)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                q1, q2 = np.sqrt(D1), np.sqrt(D2)
                cross = 2.0 / (q1 * q2)
                rest = np.sqrt(np.clip(a1 / D1 + a2 / D2 - c12 * cross, 0, None))
                piv = np.sqrt(np.clip(a1[x0] / D1 + a2[x0] / D2 - c12[x0] * cross, 0, None))
            return rest, piv, np.abs(q1 - q2), deg

        crits = self.criteria(local, a1, a2, c12)
        k, rejected = rules.choose_input_set(crits, paper_compat and input_set is None)
        rest, piv, t4, _ = terms(local[k, 0])
        rows = local[k, 1:]
        t2 = float(max(rest[rows].max(), piv[rows].max()))
        t4v = float(t4[rows].max() if term == "max" else t4[rows].mean())
        return [int(i) for i in cands[k]], t2, t4v, how, len(cands), rejected

    def criteria(self, cands, a1, a2, c12, block=64):
        """max over each candidate set of max(rest, piv) (+inf if any pair is degenerate).

        Blocks of input pivots: D_k(x, x0) for all x from one GEMM, q(x) + q(x0) - 2 H H0';
        entries that cancel badly (D < 1e-6 (q + q0)) are recomputed as squared differences.
        """
        (H1, q1), (H2, q2) = self.factors()
        xp = self.c1.xp
        qh1, qh2 = to_numpy(q1), to_numpy(q2)
        pivots, inv = np.unique(cands[:, 0], return_inverse=True)
        crits = np.empty(len(cands))
        for b0 in range(0, len(pivots), block):
            P = pivots[b0:b0 + block]
            Pd = xp.asarray(P)
            D = []
            for H, q, qh in ((H1, q1, qh1), (H2, q2, qh2)):
                Dk = to_numpy(q[:, None] + q[Pd][None, :] - 2.0 * (H @ H[Pd].T))
                bad = np.argwhere(Dk < 1e-6 * (qh[:, None] + qh[P][None, :]))
                if len(bad):
                    diff = H[xp.asarray(bad[:, 0])] - H[xp.asarray(P[bad[:, 1]])]
                    Dk[bad[:, 0], bad[:, 1]] = to_numpy((diff * diff).sum(1))
                D.append(Dk)
            D1, D2 = D
            deg = ((D1 <= self.tol * (a1[:, None] + a1[P][None, :]))
                   | (D2 <= self.tol * (a2[:, None] + a2[P][None, :])))
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # as in terms
                cross = 2.0 / np.sqrt(D1 * D2)
                r2 = a1[:, None] / D1 + a2[:, None] / D2 - c12[:, None] * cross
                p2 = a1[P][None, :] / D1 + a2[P][None, :] / D2 - c12[P][None, :] * cross
            m = np.where(deg, np.inf, np.sqrt(np.clip(np.maximum(r2, p2), 0, None)))
            sel = np.flatnonzero((inv >= b0) & (inv < b0 + len(P)))
            crits[sel] = m[cands[sel, 1:], (inv[sel] - b0)[:, None]].max(1)
        return crits


def distinct_inputs(*fs) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct input, an input being its rows
    in every f (language-model data repeats contexts: every text's first position, say).

    Rows are hashed (random odd multipliers on their bits, wrapping uint64 sums, O(N M)), on
    the GPU for device arrays; rows with equal hashes are compared exactly."""
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
