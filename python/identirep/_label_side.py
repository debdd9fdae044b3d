"""The label side of d_LLV for one model pair: the terms of every label against pivots, the
best leave-out of a pivot, and the exact pivot search (plain up to EXACT_PIVOT_LIMIT labels,
branch and bound beyond it), from the pass's per-label moments and the pair's scatter matrix.

Notation (docs/design.md): u(x) = [f1(x), f2(x), L1(x), L2(x)] with scatter C over inputs; per
label y the pass gives n_k(y) = sum_x (centred l_k(x, y))^2 and the cross sum. Then
S_k(y, y0) = n_k(y) + n_k(y0) - 2 g_k(y)' C_kk g_k(y0) = (N - 1) D_k(y, y0) and
rest^2 = A1/S1 + A2/S2 - 2 B12/sqrt(S1 S2), with A_k(y), B12(y) quadratic forms of C.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core, sampling
from . import _rules as rules
from ._arrays import array_module
from ._linalg import matmul64, rows64, times_lower
from .errors import IdentirepError
from .model import to_numpy

#: plain exact pivot search (every pivot's full row, 4 V^2 M flops) up to this many labels;
#: beyond it the bounded search ("max" term) or a sample of DEFAULT_PIVOT_SAMPLE ("mean").
EXACT_PIVOT_LIMIT = 4096
DEFAULT_PIVOT_SAMPLE = 256
#: bounded search: pivots evaluated first (their rows give the first upper bound and the
#: labels every pivot's lower bound is taken over), labels per tree leaf, projection size
BOUND_SEED_PIVOTS = 64
#: the bounded search's leaf bounds come from the Cholesky factors of f's scatter (a
#: triangular product and a syrk per leaf) from this M on, below it from the compiled row
#: bounds, which are faster at small M
FACTORED_BOUNDS_MIN_M = 128
BOUND_LEAF = 1024
BOUND_DIM = 16
#: most pivot rows the bounded search evaluates on the CPU (on a GPU: all V if needed)
BOUND_BUDGET_CPU = 2048
#: a pair enters a lower bound only when S_k > BOUND_KAPPA * tol * (n_k(y) + n_k(y0)) (clearly
#: not degenerate, whatever the rounding), with its m^2 lowered by a rounding allowance
#: (``pair_m2``); a pivot is skipped when its bound exceeds the best criterion by BOUND_RTOL
BOUND_KAPPA = 10.0
BOUND_RTOL = 1e-9
#: the allowance is BOUND_NOISE * sqrt(M1 + M2) * eps * (size of the terms) * (1 + (n + n0) / S)
BOUND_NOISE = 16.0
#: pivots per block of the hard-label bounds (``hard_bounds``)
HARD_BOUND_ROWS = 8192
#: the hard labels' bounds come first from this M on (N=2048, two cores: at M=256 they cost
#: more pivot rows than they save, 0.95 s against 0.75 s; at M=768 the search takes 1.2 s
#: against 3.0 s, at M=2048 1.1 s against 5.3 s)
HARD_BOUNDS_MIN_M = 512
PIVOT_BLOCK = 256
#: the pivot blocks' cross products (2 x B x V in the compute dtype) take at most this many bytes
PIVOT_BLOCK_BYTES = 128 << 20
#: on a GPU: larger blocks
PIVOT_BLOCK_DEVICE = 1024
PIVOT_BLOCK_BYTES_DEVICE = 1 << 30


class LabelSide:
    """The label-side statistics of a pair and the searches over them.

    ``c1``, ``c2``: the models' ``ModelCache``; ``stats``: the pair's pass; ``C``: the scatter
    matrix of u(x) (host float64); ``tol``: the degenerate-pair tolerance; ``gpu_backend``:
    which pivot kernel runs for device models ("cuda" or "cupy")."""

    def __init__(self, c1, c2, stats, C, tol, gpu_backend):
        self.c1, self.c2 = c1, c2
        self.G1, self.G2 = c1.G, c2.G
        self.cdt, self.tol, self.gpu_backend = c1.cdt, tol, gpu_backend
        self.N, self.V = c1.n_inputs, c1.model.V
        self.M1, self.M2 = M1, M2 = c1.model.M, c2.model.M
        self.sF1, self.sF2 = slice(0, M1), slice(M1, M1 + M2)
        iL1, iL2 = M1 + M2, M1 + M2 + 1
        self.C = C
        self.n1, self.n2 = stats.col_m2_11, stats.col_m2_22
        GC1 = matmul64(self.G1, C[self.sF1][:, [iL1, iL2]], dtype=self.cdt)
        GC2 = matmul64(self.G2, C[self.sF2][:, [iL1, iL2]], dtype=self.cdt)
        self.A1 = self.n1 - 2 * GC1[:, 0] + C[iL1, iL1]
        self.A2 = self.n2 - 2 * GC2[:, 1] + C[iL2, iL2]
        self.B12 = stats.col_m2_12 - GC1[:, 1] - GC2[:, 0] + C[iL1, iL2]
        self._device_vectors = None
        self._cross_blocks = None  # C_kk in the compute dtype, where g lives (cross)
        self._factors = None       # R_k R_k' = C_kk (the lower bounds' products), or False
        self._hard_rows = None     # (labels, their g_k R_k): the rows every leaf bound takes

    def block(self, y0s: np.ndarray):
        """rest, piv, t3 and validity for every label y (rows) against pivots y0s (cols)."""
        C = self.C
        S = []
        for G, n, sl in ((self.G1, self.n1, self.sF1), (self.G2, self.n2, self.sF2)):
            X = matmul64(G, C[sl, sl] @ to_numpy(rows64(G, y0s)).T, dtype=self.cdt)
            S.append(n[:, None] + n[y0s][None, :] - 2 * X)
        S1, S2 = S
        deg = ((S1 <= self.tol * (self.n1[:, None] + self.n1[y0s][None, :]))
               | (S2 <= self.tol * (self.n2[:, None] + self.n2[y0s][None, :])))
        deg[y0s, np.arange(len(y0s))] = True
        with np.errstate(divide="ignore", invalid="ignore"):
            q1, q2 = np.sqrt(np.clip(S1, 0, None)), np.sqrt(np.clip(S2, 0, None))
            cross = 2.0 / (q1 * q2)
            rest2 = self.A1[:, None] / S1 + self.A2[:, None] / S2 - self.B12[:, None] * cross
            piv2 = self.A1[y0s][None, :] / S1 + self.A2[y0s][None, :] / S2 - self.B12[y0s][None, :] * cross
        rest = np.sqrt(np.clip(np.where(deg, 0.0, rest2), 0, None))
        piv = np.sqrt(np.clip(np.where(deg, 0.0, piv2), 0, None))
        t3 = np.abs(q1 - q2) / math.sqrt(self.N - 1)
        self_pair = np.zeros_like(deg)
        self_pair[y0s, np.arange(len(y0s))] = True
        return rest, piv, t3, ~deg, deg & ~self_pair

    def pivot_criteria(self, y0s: np.ndarray, term: str, X=None) -> np.ndarray:
        """min over leave-outs of the term criterion for each pivot in y0s (compiled epilogue,
        on the GPU when g lives there); X: their cross products, when already made."""
        xp = self.c1.xp
        X = self.cross(y0s) if X is None else X
        if xp is not np:
            from .gpu.pivots import pivot_criteria_device
            return pivot_criteria_device(X[0], X[1], *self.vectors(xp), y0s, self.tol, term,
                                         self.gpu_backend)
        return _core.pivot_criteria(X[0], X[1], *self.vectors(np),
                                    np.ascontiguousarray(y0s, np.int64), self.tol, term)

    @staticmethod
    def leave_out_criteria(rest, piv, valid, term):
        """criterion for every leave-out l of one pivot column (inf where l leaves nothing)."""
        cnt = int(valid.sum())
        if term == "max":
            m = np.where(valid, np.maximum(rest, piv), -np.inf)
            order = np.argsort(-m, kind="stable")
            top1 = m[order[0]]
            top2 = m[order[1]] if len(m) > 1 else -np.inf
            crit = np.full(len(m), top1)
            crit[valid & (np.arange(len(m)) == order[0])] = top2
            crit[~np.isfinite(crit)] = np.inf
        else:
            s = rest + piv
            tot = s[valid].sum()
            crit = np.where(valid, (tot - s) / max(2 * (cnt - 1), 1), tot / max(2 * cnt, 1))
            if cnt == 1:
                crit[valid] = np.inf
        if cnt == 0:
            crit[:] = np.inf
        return crit

    def final_terms(self, rest, piv, t3, keep, term):
        if term == "max":
            return float(max(rest[keep].max(), piv[keep].max())), float(t3[keep].max())
        return (float(np.concatenate([rest[keep], piv[keep]]).mean()), float(t3[keep].mean()))

    def pivot_step(self, leave_out=None):
        """Pivots per block of the pivot search (its 2 x B x V cross products are bounded)."""
        if self.c1.xp is np:
            step = min(PIVOT_BLOCK, PIVOT_BLOCK_BYTES // (2 * self.V * np.dtype(self.cdt).itemsize))
        else:
            step = min(PIVOT_BLOCK_DEVICE,
                       PIVOT_BLOCK_BYTES_DEVICE // (2 * self.V * np.dtype(self.cdt).itemsize))
        if leave_out is not None:   # the NumPy path keeps ~10 V x B float64 temporaries
            step //= 16
        return max(1, step)

    def criteria(self, cands, term, leave_out=None, progress=None):
        """Criterion of each pivot in cands (best leave-out, or the given one), in blocks."""
        crit = np.empty(len(cands))
        step = self.pivot_step(leave_out)
        for j0 in range(0, len(cands), step):
            blk = cands[j0:j0 + step]
            if leave_out is not None:
                rest, piv, t3, valid, _ = self.block(blk)
                crit[j0:j0 + len(blk)] = [
                    self.leave_out_criteria(rest[:, j], piv[:, j], valid[:, j], term)[leave_out]
                    for j in range(len(blk))]
            else:
                crit[j0:j0 + len(blk)] = self.pivot_criteria(blk, term)
            if progress is not None:
                progress((j0 + len(blk)) / len(cands))
        return crit

    # ------------------------------------------------------------------ bounded exact search
    def vectors(self, xp):
        if xp is np:
            return self.n1, self.n2, self.A1, self.A2, self.B12
        if self._device_vectors is None:
            self._device_vectors = [xp.asarray(v, dtype=np.float64) for v in
                                    (self.n1, self.n2, self.A1, self.A2, self.B12)]
        return self._device_vectors

    def cross_blocks(self):
        """C_11 and C_22 (f's scatter blocks) in the compute dtype, where g lives."""
        if self._cross_blocks is None:
            self._cross_blocks = [self.c1.xp.asarray(self.C[sl, sl], dtype=self.cdt)
                                  for sl in (self.sF1, self.sF2)]
        return self._cross_blocks

    def cross(self, piv, lab=None):
        """X_k = g_k(piv)' C_kk g_k(lab) (len(piv) x len(lab); all labels when ``lab`` is
        None) in the compute dtype, where g lives. A bfloat16 g on a GPU is multiplied as it
        is, in bfloat16 GEMMs of the exact split of the left factor (split_bf16_matmul)."""
        xp = self.c1.xp
        p = xp.asarray(piv, dtype=np.int64)
        q = None if lab is None else xp.asarray(lab, dtype=np.int64)
        out = []
        for c, G, Ckk in zip((self.c1, self.c2), (self.G1, self.G2), self.cross_blocks()):
            L = G[p].astype(self.cdt, copy=False) @ Ckk
            if c.g_bits is not None and self.cdt == np.float32:
                from .gpu.cublas import split_bf16_matmul
                out.append(split_bf16_matmul(L, c.g_bits if q is None else c.g_bits[q]))
            else:
                out.append(L @ (G if q is None else G[q]).T.astype(self.cdt, copy=False))
        return out

    def bound_eps(self):
        return float(np.finfo(self.cdt).eps) * BOUND_NOISE * math.sqrt(self.M1 + self.M2)

    def row_bounds(self, piv, lab):
        """Lower bound of the 'max' criterion of each pivot in ``piv`` from the labels ``lab``
        (distinct): the compiled BoundRow on the CPU, the same arithmetic in CuPy on a GPU."""
        X1, X2 = self.cross(piv, lab)
        xp = array_module(X1)
        if xp is np:
            return self._compiled_bounds(piv, lab, X1, X2)
        m2 = self.pair_m2(piv, lab, X1, X2)
        if m2.shape[1] < 2:
            return np.zeros(len(piv))
        second = to_numpy(xp.partition(m2, m2.shape[1] - 2, axis=1)[:, -2])
        return np.sqrt(np.where(np.isfinite(second), second, 0.0))

    def _compiled_bounds(self, piv, lab, X1, X2):
        return _core.pivot_bounds(X1, X2, *self.vectors(np), np.ascontiguousarray(piv, np.int64),
                                  np.ascontiguousarray(lab, np.int64), BOUND_KAPPA * self.tol,
                                  self.bound_eps())

    def leaf_bounds(self, leaf, hard):
        """``row_bounds(leaf, leaf + hard)`` for a tree leaf (distinct labels): on the CPU, from
        Z_k = g_k(leaf) R_k with R_k R_k' = C_kk lower triangular (``factors``), as
        X_k = Z_k [Z_k; g_k(hard) R_k]': a triangular product and a symmetric one, about half
        the flops of g_k(leaf) C_kk g_k(lab)'. Elsewhere, or without the factors, row_bounds."""
        hard = np.unique(np.asarray(hard, dtype=np.int64))
        out = ~np.isin(hard, leaf)
        lab = np.concatenate([leaf, hard[out]])
        R = self.factors()
        if R is None:
            return self.row_bounds(leaf, lab)
        key = hard.tobytes()
        if self._hard_rows is None or self._hard_rows[0] != key:   # the same for every leaf
            self._hard_rows = (key, [times_lower(G[hard].astype(self.cdt, copy=False), Rk)
                                     for G, Rk in ((self.G1, R[0]), (self.G2, R[1]))])
        X = []
        for G, Rk, Zh in ((self.G1, R[0], self._hard_rows[1][0]),
                          (self.G2, R[1], self._hard_rows[1][1])):
            Z = times_lower(G[leaf].astype(self.cdt, copy=False), Rk)
            Xk = np.empty((len(leaf), len(lab)), dtype=self.cdt)
            Xk[:, :len(leaf)] = Z @ Z.T        # one object on both sides: NumPy's syrk
            Xk[:, len(leaf):] = Z @ Zh[out].T
            X.append(Xk)
        return self._compiled_bounds(leaf, lab, *X)

    def factors(self):
        """Per model, R_k (host, compute dtype, lower triangular) with R_k R_k' = C_kk: the
        model's ``scatter_factor`` of f (made from its cached correlation factor), kept here
        in the compute dtype for the pivot search and d_SVD; None for device models, M below
        FACTORED_BOUNDS_MIN_M, a constant column or a failed Cholesky factorisation."""
        if self._factors is None:
            # below FACTORED_BOUNDS_MIN_M the compiled row bounds are faster (M = 8, V = 131072:
            # 2.9 s against 4.6 s for the lower bounds)
            small = min(self.c1.model.M, self.c2.model.M) < FACTORED_BOUNDS_MIN_M
            R = [None if c.xp is not np or small else c.scatter_factor("f")
                 for c in (self.c1, self.c2)]
            self._factors = (False if any(r is None for r in R) else
                             [np.ascontiguousarray(r, dtype=self.cdt) for r in R])
        return self._factors or None

    def pair_m2(self, piv, lab, X1, X2):
        """Lower bounds of max(rest^2, piv^2) as the pivot kernel computes it, for pivots
        ``piv`` (rows) against labels ``lab`` (columns): the same formula minus a rounding
        allowance (BOUND_NOISE), clipped at 0; -inf for y == y0 and for pairs that are not
        clearly non-degenerate (BOUND_KAPPA). Dropping or lowering a pair only lowers a bound."""
        xp = array_module(X1)
        n1, n2, A1, A2, B12 = self.vectors(xp)
        p, q = xp.asarray(piv, dtype=np.int64), xp.asarray(lab, dtype=np.int64)
        s1 = n1[p][:, None] + n1[q][None, :]
        s2 = n2[p][:, None] + n2[q][None, :]
        S1 = s1 - 2.0 * X1.astype(np.float64)
        S2 = s2 - 2.0 * X2.astype(np.float64)
        ok = ((S1 > BOUND_KAPPA * self.tol * s1) & (S2 > BOUND_KAPPA * self.tol * s2)
              & (p[:, None] != q[None, :]))
        i1 = 1.0 / xp.where(ok, S1, 1.0)
        i2 = 1.0 / xp.where(ok, S2, 1.0)
        c = 2.0 * xp.sqrt(i1 * i2)
        a1, a2, b = A1[q][None, :], A2[q][None, :], B12[q][None, :]
        a10, a20, b0 = A1[p][:, None], A2[p][:, None], B12[p][:, None]
        t, t0, bc, bc0 = a1 * i1 + a2 * i2, a10 * i1 + a20 * i2, b * c, b0 * c
        r2, q2 = t - bc, t0 - bc0
        size = xp.maximum(t + xp.abs(bc), t0 + xp.abs(bc0))
        slack = self.bound_eps() * size * (1.0 + s1 * i1 + s2 * i2)
        m2 = xp.fmax(xp.maximum(r2, q2) - slack, 0.0)  # NaN -> 0, as BoundRow: never a top
        return xp.where(ok, m2, -xp.inf)

    def label_coords(self, rng) -> np.ndarray:
        """Host (V, 2 BOUND_DIM) coordinates whose distances approximate the pair distances:
        S_k(y, y0) = |Fc_k (g_k(y) - g_k(y0))|^2 (Fc_k: centred f_k), so a Gaussian
        projection z_k = g_k Fc_k' P_k / sqrt(dim) keeps them on average
        (``ModelCache.input_projection``); each model is scaled by its mean n_k so that both
        count."""
        parts = []
        for c, G, n in ((self.c1, self.G1, self.n1), (self.c2, self.G2, self.n2)):
            T = c.input_projection(rng, BOUND_DIM)
            Z = to_numpy(G.astype(self.cdt, copy=False) @ T).astype(np.float64)
            parts.append(Z / math.sqrt(max(float(np.mean(n)), np.finfo(float).tiny)))
        return np.hstack(parts)

    @staticmethod
    def tree_leaves(z, leaf, rng):
        """Leaves (host index arrays) of a random-projection tree: median splits along random
        directions until at most ``leaf`` labels; nearby labels tend to share a leaf."""
        out, stack = [], [np.arange(len(z))]
        while stack:
            idx = stack.pop()
            if len(idx) <= leaf:
                out.append(idx)
                continue
            proj = z[idx] @ rng.standard_normal(z.shape[1])
            h = len(idx) // 2
            part = np.argpartition(proj, h)
            stack += [idx[part[:h]], idx[part[h:]]]
        return out

    def hard_bounds(self, hard) -> np.ndarray:
        """Per pivot (host), the lower bound of its 'max' criterion from the ``hard`` labels
        alone: ``row_bounds(every label, hard)``, with X_k = g_k (C_kk g_k(hard)') in blocks of
        HARD_BOUND_ROWS pivots, one V x M x |hard| product per model (``cross`` would take a
        V x M x M one)."""
        hard = np.asarray(hard, dtype=np.int64)
        Y = [Ckk @ G[hard].T.astype(self.cdt, copy=False)
             for G, Ckk in zip((self.G1, self.G2), self.cross_blocks())]
        lb = np.empty(self.V)
        for i in range(0, self.V, HARD_BOUND_ROWS):
            j = min(self.V, i + HARD_BOUND_ROWS)
            X = [G[i:j].astype(self.cdt, copy=False) @ Yk for G, Yk in zip((self.G1, self.G2), Y)]
            lb[i:j] = self._compiled_bounds(np.arange(i, j, dtype=np.int64), hard, *X)
        return lb

    def open_limit(self) -> int:
        """Most pivots the hard-label bounds may leave open before the tree's bounds are
        computed too: a quarter of what those cost in pivot evaluations (a pivot's row is
        ~4 V M flops; the tree's bounds ~2 V M (M + BOUND_LEAF) with the factors)."""
        return (min(self.c1.model.M, self.c2.model.M) + BOUND_LEAF) // 4

    def lower_bounds(self, hard, rng, progress=None):
        """Per pivot, a lower bound of its 'max' criterion: the second largest m over a subset
        of its labels (its tree leaf and the ``hard`` labels), 0 with fewer than two."""
        V = self.V
        lb = np.zeros(V)
        leaves = self.tree_leaves(self.label_coords(rng), BOUND_LEAF, rng)
        for i, I in enumerate(leaves):
            I = np.sort(I)
            lb[I] = self.leaf_bounds(I, hard)
            if progress is not None:
                progress((i + 1) / len(leaves))
        return lb

    def bounded_search(self, seed, budget, progress=None):
        """Exact 'max' pivot search by branch and bound. Criteria are evaluated (full rows,
        ``pivot_criteria``) for a seeded sample, then for the other pivots in increasing order
        of a lower bound, until every pivot left has a bound above the best criterion (plus
        BOUND_RTOL): those cannot be the minimum nor tie with it. On the host, from
        HARD_BOUNDS_MIN_M on, the bounds come first from the hard labels alone (``hard_bounds``); where those leave more than
        ``open_limit`` pivots to evaluate, the tree's tighter bounds (``lower_bounds``) take
        over. Returns (evaluated pivots sorted, their criteria, description)."""
        V = self.V
        rng = np.random.default_rng(seed)

        def tick(lo, hi):
            return None if progress is None else (lambda f: progress(lo + (hi - lo) * f))
        seeds = sampling.pivot_sample(V, BOUND_SEED_PIVOTS, seed)
        crit = {}
        # the seed pivots' criteria, and the labels that make them: their 4 largest m each
        hard = []
        # seed rows per block: pair_m2's ~16 float64 temporaries of rows x V within
        # PIVOT_BLOCK_BYTES (each block reads both g once)
        rows = int(min(64, max(16, PIVOT_BLOCK_BYTES // (16 * 8 * V))))
        for j0 in range(0, len(seeds), rows):
            blk = seeds[j0:j0 + rows]
            X = self.cross(blk)
            crit.update(zip(blk.tolist(), to_numpy(self.pivot_criteria(blk, "max", X))))
            m2 = to_numpy(self.pair_m2(blk, np.arange(V), *X))
            top = np.argpartition(-m2, 4, axis=1)[:, :4]
            hard.append(top[np.isfinite(np.take_along_axis(m2, top, 1))])
        hard = np.unique(np.concatenate(hard))
        left = None
        # the hard labels' bounds first where the tree's are dear (V M^2 per model, from
        # HARD_BOUNDS_MIN_M on) and the budget leaves pivots to evaluate
        if (self.c1.xp is np and min(self.c1.model.M, self.c2.model.M) >= HARD_BOUNDS_MIN_M
                and self.factors() is not None and budget > len(crit)):
            lb = self.hard_bounds(hard)
            left = self._evaluate_below(lb, crit, min(budget, len(crit) + self.open_limit()),
                                        tick(0.05, 0.25))
        if left != 0:
            lb = self.lower_bounds(hard, rng, tick(0.25, 0.5))
            left = self._evaluate_below(lb, crit, budget, tick(0.5, 0.99))
        cands = np.array(sorted(crit), dtype=np.int64)
        if left:
            return cands, np.array([crit[y] for y in cands]), (
                f"best of {len(cands)} pivots of {V} by lower bound, not proven exact: "
                f"{left} pivots whose lower bounds do not exceed its criterion were not "
                f"evaluated (budget {budget})")
        return cands, np.array([crit[y] for y in cands]), (
            f"exact over {V} labels (bounded search: {len(cands)} pivots evaluated)")

    def _evaluate_below(self, lb, crit, budget, progress=None) -> int:
        """Evaluate (into ``crit``) the pivots not in ``crit`` in increasing order of their
        lower bounds ``lb`` while a bound does not exceed the best criterion (plus BOUND_RTOL),
        up to ``budget`` pivots in ``crit`` in all. Returns how many pivots are left whose
        bounds do not exceed the best criterion (0: the best is proven the minimum)."""
        best = min(crit.values())
        order = np.array([y for y in np.argsort(lb, kind="stable").tolist() if y not in crit],
                         dtype=np.int64)
        step, max_step = min(32, self.pivot_step()), self.pivot_step()
        pos = 0
        # order is sorted by bound: the pivots still to evaluate are a prefix of order[pos:]
        while pos < len(order) and lb[order[pos]] <= best * (1 + BOUND_RTOL):
            if len(crit) >= budget:
                return int(np.count_nonzero(lb[order[pos:]] <= best * (1 + BOUND_RTOL)))
            blk = order[pos:pos + min(step, budget - len(crit))]
            blk = blk[lb[blk] <= best * (1 + BOUND_RTOL)]
            pos += len(blk)
            step = min(2 * step, max_step)  # small first blocks: the bound often closes early
            c = self.criteria(blk, "max")
            crit.update(zip(blk.tolist(), c))
            best = min(best, float(c.min()))
            if progress is not None:
                progress(min(1.0, pos / max(1, len(order))))
        return 0

    def search(self, term="max", pivot=None, leave_out=None, num_pivots=None, seed=0,
               progress=None, bound_budget=None):
        """(pivot, leave-out, t1, t3, how the pivot was found, degenerate labels). Beyond
        EXACT_PIVOT_LIMIT labels (term "max") the bounded search evaluates at most
        ``bound_budget`` pivots (default BOUND_BUDGET_CPU on the CPU, V on a GPU)."""
        V = self.V
        if pivot is not None:
            cands, how = np.array([pivot]), "given"
            crit = self.criteria(cands, term, leave_out, progress)
        elif (num_pivots is None and V > EXACT_PIVOT_LIMIT and term == "max"
              and leave_out is None):
            if bound_budget is not None and int(bound_budget) < 1:
                raise IdentirepError(f"pivot_budget must be >= 1, got {bound_budget}")
            if bound_budget is None:
                bound_budget = BOUND_BUDGET_CPU if self.c1.xp is np else V
            cands, crit, how = self.bounded_search(seed, bound_budget, progress)
        else:
            P = num_pivots if num_pivots is not None else (V if V <= EXACT_PIVOT_LIMIT else DEFAULT_PIVOT_SAMPLE)
            cands = sampling.pivot_sample(V, P, seed)
            how = f"exact over {V} labels" if len(cands) == V else f"sampled {len(cands)} of {V}"
            crit = self.criteria(cands, term, leave_out, progress)
        if not np.isfinite(crit).any():
            raise IdentirepError(rules.ALL_LABEL_PAIRS_DEGENERATE, fix=rules.LABEL_PAIRS_FIX)
        mu = crit[np.isfinite(crit)].min()
        thr = mu + rules.TIE_RTOL * abs(mu)
        y0 = int(cands[np.flatnonzero(crit <= thr)[0]])
        rest, piv, t3, valid, deg = (x[:, 0] for x in self.block(np.array([y0])))
        if leave_out is None:
            lcrit = self.leave_out_criteria(rest, piv, valid, term)
            lcrit[y0] = np.inf
            # the recomputed column may differ from the blocked one in the last bits
            lmin = lcrit.min()
            l = int(np.flatnonzero(lcrit <= max(thr, lmin + rules.TIE_RTOL * abs(lmin)))[0])
        else:
            l = int(leave_out)
        keep = valid.copy()
        keep[l] = False
        t1, t3v = self.final_terms(rest, piv, t3, keep, term)
        return y0, l, t1, t3v, how, [int(i) for i in np.flatnonzero(deg)]
