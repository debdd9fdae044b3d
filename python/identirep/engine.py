"""The fast engine: every measure from the streaming pass and small sufficient statistics.

Notation (DESIGN.md section 3): u(x) = [f1(x), f2(x), L1(x), L2(x)] with scatter C over
inputs; per label y the pass gives n_k(y) = sum_x (centred l_k(x, y))^2 and the cross sum.
Label side: S_k(y, y0) = n_k(y) + n_k(y0) - 2 g_k(y)' C_kk g_k(y0) = (N - 1) D_k(y, y0);
rest^2 = A1/S1 + A2/S2 - 2 B12/sqrt(S1 S2) with A, B quadratic forms of C.
Input side: the label covariance Sigma_kk of g_k gives D_k(x, x0) = ||Hg_k(x) - Hg_k(x0)||^2,
Hg_k = f_k R_k with R_k R_k' = Sigma_kk; the pass gives Var_y l_k(x) and Cov_y(l1, l2)(x).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import sampling
from ._arrays import array_module, is_gpu_array
from .gpu.streams import on_models_stream
from ._build import build_info
from .errors import IdentirepError
from .model import Model, check_pair, to_numpy
from ._linalg import (host_native, matmul64, quad_diag, rows64, scatter_blocks,
                      singular_values, sqrt_factor, whiten)
from .moments import Moments
from .passes import PassStats, numpy_pass
from .reference import (TIE_RTOL, _check_input_set, _check_llv_args, _combine, _rep_sets,
                        candidate_input_sets)
from .results import DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult

#: plain exact pivot search (every pivot's full row, 4 V^2 M flops) up to this many labels;
#: beyond it the bounded search ("max" term) or a sample of DEFAULT_PIVOT_SAMPLE ("mean").
EXACT_PIVOT_LIMIT = 4096
DEFAULT_PIVOT_SAMPLE = 256
#: bounded search: pivots evaluated first (their rows give the first upper bound and the
#: labels every pivot's lower bound is taken over), labels per tree leaf, projection size
BOUND_SEED_PIVOTS = 64
BOUND_LEAF = 1024
BOUND_DIM = 16
#: most pivot rows the bounded search evaluates on the CPU (on a GPU: all V if needed)
BOUND_BUDGET_CPU = 2048
#: a pair enters a lower bound only when S_k > BOUND_KAPPA * tol * (n_k(y) + n_k(y0)) (clearly
#: not degenerate, whatever the rounding), with its m^2 lowered by a rounding allowance
#: (``_pair_m2``); a pivot is skipped when its bound exceeds the best criterion by BOUND_RTOL
BOUND_KAPPA = 10.0
BOUND_RTOL = 1e-9
#: the allowance is BOUND_NOISE * sqrt(M1 + M2) * eps * (size of the terms) * (1 + (n + n0) / S)
BOUND_NOISE = 16.0
PIVOT_BLOCK = 256
#: the pivot blocks' cross products (2 x B x V in the compute dtype) take at most this many bytes
PIVOT_BLOCK_BYTES = 128 << 20
#: on a GPU: larger blocks
PIVOT_BLOCK_DEVICE = 1024
PIVOT_BLOCK_BYTES_DEVICE = 1 << 30
#: relative tolerance of degenerate pairs by the dtype the logits were computed in: the label
#: sums of squares come from the pass, the cross terms from float64 scatter matrices.
DEGENERATE_RTOL = {"float64": 1e-10, "float32": 1e-5}


def _mean_svd(K11d, K22d, K12, precise=True):
    if bool((K11d <= 0).any()) or bool((K22d <= 0).any()):
        return None
    xp = array_module(K12)
    T = K12 / xp.sqrt(K11d)[:, None] / xp.sqrt(K22d)[None, :]
    return float(singular_values(T, precise).mean())


class ModelCache:
    """Statistics of one model alone, computed once and shared by every pair it is part of
    (``matrix``): moments of f and of g, their whitenings and the input-side factor.
    ``cdt`` is the compute dtype of the BLAS products (the pair pass's)."""

    def __init__(self, model: Model, cdt=np.float64):
        self.model, self.cdt = model, np.dtype(cdt).type
        # f and g stay where they live, in their float32/float64 storage (half types widened to
        # float32; no V x M float64 copies); rows that enter small dense algebra are converted
        # when taken
        # f_bits, g_bits: a device f's and g's bfloat16 bits (None for other kinds), for
        # tensor-core products at float32 accuracy (scatter_blocks, PairEngine._cross)
        self.f_bits = self.g_bits = None
        if is_gpu_array(model.f):
            from .gpu.arrays import as_device
            f, g = as_device(model.f, "f"), as_device(model.g, "g")
            self.F, self.G = _device_native(f), _device_native(g)
            self.f_bits, self.g_bits = (x.data if x.kind == "bfloat16" else None for x in (f, g))
        else:
            self.F, self.G = host_native(model.f), host_native(model.g)
        self.xp = array_module(self.F)
        self.bias = None if model.bias is None else to_numpy(model.bias, np.float64)
        self._cache = {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def f_moments(self):
        """(mean, scatter) of f over inputs."""
        return self._get("f", lambda: _single_moments(self.F, self.cdt, self.f_bits))

    @property
    def g_moments(self):
        """(mean, scatter) of g over labels."""
        return self._get("g", lambda: _single_moments(self.G, self.cdt, self.g_bits))

    def whitening(self, which: str, what: str):
        S = (self.f_moments if which == "f" else self.g_moments)[1]
        return self._get("W" + which, lambda: whiten(S, what, self.xp))

    @property
    def input_factor(self):
        """(H, |H|^2 per row), H = f R with R R' the label covariance of g: squared distances
        between rows of H are the input-side D(x, x0) (DESIGN.md section 3)."""
        def make():
            H = self.F @ sqrt_factor(self.g_moments[1] / (self.model.V - 1), self.xp)
            return H, (H * H).sum(1)
        return self._get("H", make)


def _device_native(x):
    """A DeviceArray as a CuPy float32/float64 array (half types widened to float32)."""
    return x.data if x.kind in ("float32", "float64") else x.widened(np.float32)


def _single_moments(X, cdt, bits=None):
    _, (mean,), S = scatter_blocks([X], dtype=cdt, bits=[bits])
    return mean, S[0, 0]


def pair_moments(c1: ModelCache, c2: ModelCache, extra=(), which: str = "f") -> Moments:
    """Moments of [x1, x2, *extra] (x = f or g) from the models' cached own blocks and the
    pair's cross blocks (the only products computed here)."""
    X1, X2 = (c1.F, c2.F) if which == "f" else (c1.G, c2.G)
    bits = [c1.f_bits, c2.f_bits] if which == "f" else [c1.g_bits, c2.g_bits]
    own1, own2 = (c1.f_moments, c2.f_moments) if which == "f" else (c1.g_moments, c2.g_moments)
    k = 2 + len(extra)
    pairs = [(p, q) for p in range(k) for q in range(p, k) if (p, q) not in ((0, 0), (1, 1))]
    extra = [np.asarray(e, np.float64).reshape(len(e), -1) for e in extra]
    means = [own1[0], own2[0]] + [e.mean(0) for e in extra]
    extra = [c1.xp.asarray(e) for e in extra]     # next to f: the products run where f lives
    n, means, S = scatter_blocks([X1, X2, *extra], pairs, c1.cdt, means=means,
                                 bits=bits + [None] * len(extra))
    S[0, 0], S[1, 1] = own1[1], own2[1]
    return Moments.from_parts(n, means, S)


class PairEngine:
    """Sufficient statistics of one model pair, computed once, shared by every measure.

    ``caches`` are the two models' ``ModelCache`` objects (made here when not given)."""

    def __init__(self, a: Model, b: Model, stats: Optional[PassStats] = None,
                 degenerate_rtol: Optional[float] = None, caches=None, _moments=None):
        check_pair(a, b)
        self.a, self.b = a, b
        self.N, self.V, self.M1, self.M2 = a.N, a.V, a.M, b.M
        if stats is None:
            f1, g1 = a.augmented()
            f2, g2 = b.augmented()
            stats = numpy_pass(f1, g1, f2, g2)
        self.stats = stats
        if degenerate_rtol is None:
            degenerate_rtol = DEGENERATE_RTOL[stats.dtype]
        self.tol = degenerate_rtol
        self.cdt = np.float32 if stats.dtype == "float32" else np.float64
        if caches is None:
            caches = (ModelCache(a, self.cdt), ModelCache(b, self.cdt))
        if any(c.cdt != self.cdt for c in caches):
            raise IdentirepError("model caches were made for another compute dtype")
        self.c1, self.c2 = caches
        self.F1, self.G1, self.b1 = self.c1.F, self.c1.G, self.c1.bias
        self.F2, self.G2, self.b2 = self.c2.F, self.c2.G, self.c2.bias
        self.mom, self._label_mom = _moments if _moments is not None else (
            pair_moments(self.c1, self.c2, (stats.L1, stats.L2)), None)
        M1, M2 = self.M1, self.M2
        self.sF1, self.sF2 = slice(0, M1), slice(M1, M1 + M2)
        self.iL1, self.iL2 = M1 + M2, M1 + M2 + 1
        C = self.mom.scatter
        self.n1, self.n2 = stats.col_m2_11, stats.col_m2_22
        GC1 = matmul64(self.G1, C[self.sF1][:, [self.iL1, self.iL2]], dtype=self.cdt)
        GC2 = matmul64(self.G2, C[self.sF2][:, [self.iL1, self.iL2]], dtype=self.cdt)
        self.A1 = self.n1 - 2 * GC1[:, 0] + C[self.iL1, self.iL1]
        self.A2 = self.n2 - 2 * GC2[:, 1] + C[self.iL2, self.iL2]
        self.B12 = stats.col_m2_12 - GC1[:, 1] - GC2[:, 0] + C[self.iL1, self.iL2]
        self._device_vectors = None
        self._cross_blocks = None  # C_kk in the compute dtype, where g lives (_cross)
        # the compiled CUDA kernels ("cuda") or the same ones through NVRTC ("cupy")
        self.gpu_backend = (stats.backend if stats.backend in ("cuda", "cupy") else
                            "cuda" if build_info().get("cuda_compiled") else "cupy")

    # ------------------------------------------------------------------ shared statistics
    @property
    def label_moments(self) -> Moments:
        """Moments over labels of [g1(y), g2(y)] (un-augmented)."""
        if self._label_mom is None:
            self._label_mom = pair_moments(self.c1, self.c2, which="g")
        return self._label_mom

    @on_models_stream
    def swapped(self) -> "PairEngine":
        """The engine of (b, a), from the same pass and the same moments (permuted)."""
        M1, M2 = self.M1, self.M2
        pu = np.r_[M1:M1 + M2, 0:M1, M1 + M2 + 1, M1 + M2]
        mom = _permuted(self.mom, pu)
        lab = None if self._label_mom is None else _permuted(self._label_mom, pu[:-2])
        return PairEngine(self.b, self.a, self.stats.swapped(), self.tol, (self.c2, self.c1),
                          _moments=(mom, lab))

    @on_models_stream
    def label_terms(self, pivot: int):
        """Per-label rest, piv, t3 and validity against one pivot (for plots and inspection)."""
        rest, piv, t3, valid, _ = (x[:, 0] for x in self._label_block(np.array([pivot])))
        return {"rest": rest, "piv": piv, "t3": t3, "valid": valid}

    # ------------------------------------------------------------------ KL, d_logit
    @on_models_stream
    def kl(self) -> KLResult:
        s = self.stats
        # KL >= 0; clip the roundoff of (near-)identical distributions
        kl12, kl21 = np.maximum(s.kl12, 0.0), np.maximum(s.kl21, 0.0)
        return KLResult(kl12=float(kl12.mean()), kl21=float(kl21.mean()),
                        top1_agreement=float(s.agree.mean()), entropy1=float(s.H1.mean()),
                        entropy2=float(s.H2.mean()), per_input_kl12=kl12,
                        per_input_kl21=kl21)

    @on_models_stream
    def d_logit(self) -> DLogitResult:
        sq = float(self.stats.row_m2_dd.mean())
        return DLogitResult(value=math.sqrt(max(sq, 0.0)), value_sq=sq)

    # ------------------------------------------------------------------ label side
    def _label_block(self, y0s: np.ndarray):
        """rest, piv, t3 and validity for every label y (rows) against pivots y0s (cols)."""
        C = self.mom.scatter
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

    def _pivot_criteria(self, y0s: np.ndarray, term: str, X=None) -> np.ndarray:
        """min over leave-outs of the term criterion for each pivot in y0s (compiled epilogue,
        on the GPU when g lives there); X: their cross products, when already made."""
        from . import _core
        xp = self.c1.xp
        X = self._cross(y0s) if X is None else X
        if xp is not np:
            from .gpu.pivots import pivot_criteria_device
            return pivot_criteria_device(X[0], X[1], *self._vectors(xp), y0s, self.tol, term,
                                         self.gpu_backend)
        return _core.pivot_criteria(X[0], X[1], *self._vectors(np),
                                    np.ascontiguousarray(y0s, np.int64), self.tol, term)

    @staticmethod
    def _leave_out_criteria(rest, piv, valid, term):
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

    def _final_label_terms(self, rest, piv, t3, keep, term):
        if term == "max":
            return float(max(rest[keep].max(), piv[keep].max())), float(t3[keep].max())
        return (float(np.concatenate([rest[keep], piv[keep]]).mean()), float(t3[keep].mean()))

    def _pivot_step(self, leave_out=None):
        """Pivots per block of the pivot search (its 2 x B x V cross products are bounded)."""
        if self.c1.xp is np:
            step = min(PIVOT_BLOCK, PIVOT_BLOCK_BYTES // (2 * self.V * np.dtype(self.cdt).itemsize))
        else:
            step = min(PIVOT_BLOCK_DEVICE,
                       PIVOT_BLOCK_BYTES_DEVICE // (2 * self.V * np.dtype(self.cdt).itemsize))
        if leave_out is not None:   # the NumPy path keeps ~10 V x B float64 temporaries
            step //= 16
        return max(1, step)

    def _criteria(self, cands, term, leave_out=None, progress=None):
        """Criterion of each pivot in cands (best leave-out, or the given one), in blocks."""
        crit = np.empty(len(cands))
        step = self._pivot_step(leave_out)
        for j0 in range(0, len(cands), step):
            blk = cands[j0:j0 + step]
            if leave_out is not None:
                rest, piv, t3, valid, _ = self._label_block(blk)
                crit[j0:j0 + len(blk)] = [
                    self._leave_out_criteria(rest[:, j], piv[:, j], valid[:, j], term)[leave_out]
                    for j in range(len(blk))]
            else:
                crit[j0:j0 + len(blk)] = self._pivot_criteria(blk, term)
            if progress is not None:
                progress((j0 + len(blk)) / len(cands))
        return crit

    # ---------------------------------------------------------- bounded exact pivot search
    def _vectors(self, xp):
        if xp is np:
            return self.n1, self.n2, self.A1, self.A2, self.B12
        if self._device_vectors is None:
            self._device_vectors = [xp.asarray(v, dtype=np.float64) for v in
                                    (self.n1, self.n2, self.A1, self.A2, self.B12)]
        return self._device_vectors

    def _cross(self, piv, lab=None):
        """X_k = g_k(piv)' C_kk g_k(lab) (len(piv) x len(lab); all labels when ``lab`` is
        None) in the compute dtype, where g lives. A bfloat16 g on a GPU is multiplied as it
        is, in bfloat16 GEMMs of the exact split of the left factor (split_bf16_matmul)."""
        xp = self.c1.xp
        if self._cross_blocks is None:
            C = self.mom.scatter
            self._cross_blocks = [xp.asarray(C[sl, sl], dtype=self.cdt)
                                  for sl in (self.sF1, self.sF2)]
        p = xp.asarray(piv, dtype=np.int64)
        q = None if lab is None else xp.asarray(lab, dtype=np.int64)
        out = []
        for c, G, Ckk in ((self.c1, self.G1, self._cross_blocks[0]),
                          (self.c2, self.G2, self._cross_blocks[1])):
            L = G[p].astype(self.cdt, copy=False) @ Ckk
            if c.g_bits is not None and self.cdt == np.float32:
                from .gpu.cublas import split_bf16_matmul
                out.append(split_bf16_matmul(L, c.g_bits if q is None else c.g_bits[q]))
            else:
                out.append(L @ (G if q is None else G[q]).T.astype(self.cdt, copy=False))
        return out

    def _bound_eps(self):
        return float(np.finfo(self.cdt).eps) * BOUND_NOISE * math.sqrt(self.M1 + self.M2)

    def _row_bounds(self, piv, lab):
        """Lower bound of the 'max' criterion of each pivot in ``piv`` from the labels ``lab``
        (distinct): the compiled BoundRow on the CPU, the same arithmetic in CuPy on a GPU."""
        X1, X2 = self._cross(piv, lab)
        xp = array_module(X1)
        if xp is np:
            from . import _core
            return _core.pivot_bounds(X1, X2, *self._vectors(np),
                                      np.ascontiguousarray(piv, np.int64),
                                      np.ascontiguousarray(lab, np.int64),
                                      BOUND_KAPPA * self.tol, self._bound_eps())
        m2 = self._pair_m2(piv, lab, X1, X2)
        if m2.shape[1] < 2:
            return np.zeros(len(piv))
        second = to_numpy(xp.partition(m2, m2.shape[1] - 2, axis=1)[:, -2])
        return np.sqrt(np.where(np.isfinite(second), second, 0.0))

    def _pair_m2(self, piv, lab, X1, X2):
        """Lower bounds of max(rest^2, piv^2) as the pivot kernel computes it, for pivots
        ``piv`` (rows) against labels ``lab`` (columns): the same formula minus a rounding
        allowance (BOUND_NOISE), clipped at 0; -inf for y == y0 and for pairs that are not
        clearly non-degenerate (BOUND_KAPPA). Dropping or lowering a pair only lowers a bound."""
        xp = array_module(X1)
        n1, n2, A1, A2, B12 = self._vectors(xp)
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
        slack = self._bound_eps() * size * (1.0 + s1 * i1 + s2 * i2)
        m2 = xp.fmax(xp.maximum(r2, q2) - slack, 0.0)  # NaN -> 0, as BoundRow: never a top
        return xp.where(ok, m2, -xp.inf)

    def _label_coords(self, rng) -> np.ndarray:
        """Host (V, 2 BOUND_DIM) coordinates whose distances approximate the pair distances:
        S_k(y, y0) = |Fc_k (g_k(y) - g_k(y0))|^2 (Fc_k: centred f_k), so a Gaussian
        projection z_k = g_k Fc_k' P_k / sqrt(dim) keeps them on average; each model is scaled
        by its mean n_k so that both count."""
        parts = []
        for c, G, n in ((self.c1, self.G1, self.n1), (self.c2, self.G2, self.n2)):
            xp = c.xp
            P = xp.asarray(rng.standard_normal((self.N, BOUND_DIM)) / math.sqrt(BOUND_DIM),
                           dtype=self.cdt)
            mean_f = xp.asarray(c.f_moments[0], dtype=self.cdt)
            T = c.F.T.astype(self.cdt, copy=False) @ P - mean_f[:, None] * P.sum(0)[None, :]
            Z = to_numpy(G.astype(self.cdt, copy=False) @ T).astype(np.float64)
            parts.append(Z / math.sqrt(max(float(np.mean(n)), np.finfo(float).tiny)))
        return np.hstack(parts)

    @staticmethod
    def _tree_leaves(z, leaf, rng):
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

    def _lower_bounds(self, hard, rng, progress=None):
        """Per pivot, a lower bound of its 'max' criterion: the second largest m over a subset
        of its labels (its tree leaf and the ``hard`` labels), 0 with fewer than two."""
        V = self.V
        lb = np.zeros(V)
        leaves = self._tree_leaves(self._label_coords(rng), BOUND_LEAF, rng)
        for i, I in enumerate(leaves):
            I = np.sort(I)
            lb[I] = self._row_bounds(I, np.union1d(I, hard))
            if progress is not None:
                progress((i + 1) / len(leaves))
        return lb

    def _bounded_search(self, seed, budget, progress=None):
        """Exact 'max' pivot search by branch and bound. Criteria are evaluated (full rows,
        ``_pivot_criteria``) for a seeded sample, then for the other pivots in increasing order
        of a cheap lower bound, until every pivot left has a bound above the best criterion
        (plus BOUND_RTOL): those cannot be the minimum nor tie with it. Returns (evaluated
        pivots sorted, their criteria, description)."""
        V = self.V
        rng = np.random.default_rng(seed)
        tick = (lambda lo, hi: None if progress is None else
                (lambda f: progress(lo + (hi - lo) * f)))
        seeds = sampling.pivot_sample(V, BOUND_SEED_PIVOTS, seed)
        crit = {}
        # the seed pivots' criteria, and the labels that make them: their 4 largest m each
        hard = []
        for j0 in range(0, len(seeds), 16):
            blk = seeds[j0:j0 + 16]
            X = self._cross(blk)
            crit.update(zip(blk.tolist(), to_numpy(self._pivot_criteria(blk, "max", X))))
            m2 = to_numpy(self._pair_m2(blk, np.arange(V), *X))
            top = np.argpartition(-m2, 4, axis=1)[:, :4]
            hard.append(top[np.isfinite(np.take_along_axis(m2, top, 1))])
        hard = np.unique(np.concatenate(hard))
        lb = self._lower_bounds(hard, rng, tick(0.05, 0.5))
        best = min(crit.values())
        order = np.array([y for y in np.argsort(lb, kind="stable").tolist() if y not in crit],
                         dtype=np.int64)
        step, max_step = min(32, self._pivot_step()), self._pivot_step()
        pos = 0
        # order is sorted by bound: the pivots still to evaluate are a prefix of order[pos:]
        while pos < len(order) and lb[order[pos]] <= best * (1 + BOUND_RTOL):
            if len(crit) >= budget:
                left = int(np.count_nonzero(lb[order[pos:]] <= best * (1 + BOUND_RTOL)))
                cands = np.array(sorted(crit), dtype=np.int64)
                return cands, np.array([crit[y] for y in cands]), (
                    f"best of {len(cands)} pivots of {V} by lower bound, not proven exact: "
                    f"{left} pivots whose lower bounds do not exceed its criterion were not "
                    f"evaluated (budget {budget})")
            blk = order[pos:pos + min(step, budget - len(crit))]
            blk = blk[lb[blk] <= best * (1 + BOUND_RTOL)]
            pos += len(blk)
            step = min(2 * step, max_step)  # small first blocks: the bound often closes early
            c = self._criteria(blk, "max")
            crit.update(zip(blk.tolist(), c))
            best = min(best, float(c.min()))
            if progress is not None:
                progress(min(0.99, 0.5 + 0.5 * pos / max(1, len(order))))
        cands = np.array(sorted(crit), dtype=np.int64)
        return cands, np.array([crit[y] for y in cands]), (
            f"exact over {V} labels (bounded search: {len(cands)} pivots evaluated)")

    @on_models_stream
    def label_side(self, term="max", pivot=None, leave_out=None, num_pivots=None, seed=0,
                   progress=None, bound_budget=None):
        """(pivot, leave-out, t1, t3, how the pivot was found, degenerate labels). Beyond
        EXACT_PIVOT_LIMIT labels (term "max") the bounded search evaluates at most
        ``bound_budget`` pivots (default BOUND_BUDGET_CPU on the CPU, V on a GPU)."""
        V = self.V
        if pivot is not None:
            cands, how = np.array([pivot]), "given"
            crit = self._criteria(cands, term, leave_out, progress)
        elif (num_pivots is None and V > EXACT_PIVOT_LIMIT and term == "max"
              and leave_out is None):
            if bound_budget is not None and int(bound_budget) < 1:
                raise IdentirepError(f"pivot_budget must be >= 1, got {bound_budget}")
            if bound_budget is None:
                bound_budget = BOUND_BUDGET_CPU if self.c1.xp is np else V
            cands, crit, how = self._bounded_search(seed, bound_budget, progress)
        else:
            P = num_pivots if num_pivots is not None else (V if V <= EXACT_PIVOT_LIMIT else DEFAULT_PIVOT_SAMPLE)
            cands = sampling.pivot_sample(V, P, seed)
            how = f"exact over {V} labels" if len(cands) == V else f"sampled {len(cands)} of {V}"
            crit = self._criteria(cands, term, leave_out, progress)
        if not np.isfinite(crit).any():
            raise IdentirepError(
                "every label pair is degenerate (identical unembeddings, or constant features): "
                "d_LLV is undefined; check that g has distinct rows and f varies across inputs")
        mu = crit[np.isfinite(crit)].min()
        thr = mu + TIE_RTOL * abs(mu)
        y0 = int(cands[np.flatnonzero(crit <= thr)[0]])
        rest, piv, t3, valid, deg = (x[:, 0] for x in self._label_block(np.array([y0])))
        if leave_out is None:
            lcrit = self._leave_out_criteria(rest, piv, valid, term)
            lcrit[y0] = np.inf
            # the recomputed column may differ from the blocked one in the last bits
            lmin = lcrit.min()
            l = int(np.flatnonzero(lcrit <= max(thr, lmin + TIE_RTOL * abs(lmin)))[0])
        else:
            l = int(leave_out)
        keep = valid.copy()
        keep[l] = False
        t1, t3v = self._final_label_terms(rest, piv, t3, keep, term)
        return y0, l, t1, t3v, how, [int(i) for i in np.flatnonzero(deg)]

    # ------------------------------------------------------------------ input side
    def _input_factors(self):
        return self.c1.input_factor, self.c2.input_factor

    @on_models_stream
    def input_side(self, term="max", input_set=None, num_samples=200, seed=0,
                   paper_compat=False, sets_per_pivot=1):
        cands, how = candidate_input_sets(self.a, self.b, input_set, num_samples, seed,
                                          paper_compat, sets_per_pivot)
        s = self.stats
        a1, a2 = s.row_m2_11 / (self.V - 1), s.row_m2_22 / (self.V - 1)
        c12 = s.row_m2_12 / (self.V - 1)
        (H1, _), (H2, _) = self._input_factors()

        def terms(x0):
            D1 = to_numpy(((H1 - H1[x0]) ** 2).sum(1))
            D2 = to_numpy(((H2 - H2[x0]) ** 2).sum(1))
            deg = (D1 <= self.tol * (a1 + a1[x0])) | (D2 <= self.tol * (a2 + a2[x0]))
            with np.errstate(divide="ignore", invalid="ignore"):
                q1, q2 = np.sqrt(D1), np.sqrt(D2)
                cross = 2.0 / (q1 * q2)
                rest = np.sqrt(np.clip(a1 / D1 + a2 / D2 - c12 * cross, 0, None))
                piv = np.sqrt(np.clip(a1[x0] / D1 + a2[x0] / D2 - c12[x0] * cross, 0, None))
            return rest, piv, np.abs(q1 - q2), deg

        crits = self._input_criteria(cands, a1, a2, c12)
        from .reference import _choose_input_set
        k, rejected = _choose_input_set(crits, paper_compat and input_set is None)
        rest, piv, t4, _ = terms(cands[k, 0])
        rows = cands[k, 1:]
        t2 = float(max(rest[rows].max(), piv[rows].max()))
        t4v = float(t4[rows].max() if term == "max" else t4[rows].mean())
        return [int(i) for i in cands[k]], t2, t4v, how, len(cands), rejected

    def _input_criteria(self, cands, a1, a2, c12, block=64):
        """max over each candidate set of max(rest, piv) (+inf if any pair is degenerate).

        Blocks of input pivots: D_k(x, x0) for all x from one GEMM, q(x) + q(x0) - 2 H H0';
        entries that cancel badly (D < 1e-6 (q + q0)) are recomputed as squared differences.
        """
        (H1, q1), (H2, q2) = self._input_factors()
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
            with np.errstate(divide="ignore", invalid="ignore"):
                cross = 2.0 / np.sqrt(D1 * D2)
                r2 = a1[:, None] / D1 + a2[:, None] / D2 - c12[:, None] * cross
                p2 = a1[P][None, :] / D1 + a2[P][None, :] / D2 - c12[P][None, :] * cross
            m = np.where(deg, np.inf, np.sqrt(np.clip(np.maximum(r2, p2), 0, None)))
            sel = np.flatnonzero((inv >= b0) & (inv < b0 + len(P)))
            crits[sel] = m[cands[sel, 1:], (inv[sel] - b0)[:, None]].max(1)
        return crits

    @on_models_stream
    def d_llv(self, lam=1e-5, combine="max", term="max", pivot=None, leave_out=None,
              input_set=None, num_samples=200, seed=0, paper_compat=False, num_pivots=None,
              sets_per_pivot=1, progress=None, pivot_budget=None) -> DLLVResult:
        _check_llv_args(self.a, self.b, combine, term, pivot, leave_out, lam)
        y0, l, t1, t3, how, deg = self.label_side(term, pivot, leave_out, num_pivots, seed, progress,
                                                  pivot_budget)
        iset, t2, t4, ihow, ncand, rejected = self.input_side(
            term, input_set, num_samples, seed, paper_compat, sets_per_pivot)
        return DLLVResult(
            value=_combine(combine, lam, t1, t2, t3, t4), t1=t1, t2=t2, t3=t3, t4=t4,
            lam=lam, combine=combine, term=term, pivot=y0, leave_out=l, input_set=iset,
            pivot_search=how, input_search=ihow, num_input_candidates=ncand,
            degenerate_pairs=len(deg), degenerate_labels=deg, rejected_input_sets=rejected)

    # ------------------------------------------------------------------ d_SVD
    @on_models_stream
    def d_svd(self, pivot: int, leave_out: int, input_set, max_sets: int = 1000,
              seed: int = 0) -> DSVDResult:
        if self.M1 != self.M2:
            check_pair(self.a, self.b, same_dim=True, what="d_SVD")
        from .reference import _svd_remaining, _svd_result
        M, xp = self.M1, self.c1.xp       # the O(M^3) work runs where the models live
        precise = self.cdt == np.float64
        C = self.mom.scatter
        C11, C22, C12 = (xp.asarray(C[i, j]) for i, j in
                         ((self.sF1, self.sF1), (self.sF2, self.sF2), (self.sF1, self.sF2)))
        rem = _svd_remaining(pivot, leave_out, self.V)
        sets, how = sampling.label_sets(rem, M, max_sets, seed)
        vals = np.full(len(sets), np.nan)
        G1p, G2p = rows64(self.G1, [pivot])[0], rows64(self.G2, [pivot])[0]
        for i, s in enumerate(sets):
            L1 = rows64(self.G1, s) - G1p
            L2 = rows64(self.G2, s) - G2p
            m = _mean_svd(quad_diag(L1, C11), quad_diag(L2, C22), L1 @ C12 @ L2.T, precise)
            if m is not None:
                vals[i] = 1.0 - m
        iset = _check_input_set(input_set, self.N, M + 1)
        S = self.label_moments.scatter
        F1s, F2s = rows64(self.F1, iset), rows64(self.F2, iset)
        N1, N2 = F1s[1:] - F1s[0], F2s[1:] - F2s[0]
        S11, S22, S12 = (xp.asarray(x) for x in (S[:M, :M], S[M:, M:], S[:M, M:]))
        mg = _mean_svd(quad_diag(N1, S11), quad_diag(N2, S22), N1 @ S12 @ N2.T, precise)
        return _svd_result(vals, mg, pivot, leave_out, iset, how)

    # ------------------------------------------------------------------ mCCA, d_rep
    @on_models_stream
    def mcca_f(self, n_components=None) -> MCCAResult:
        C = self.mom.scatter
        return mcca_from_scatter(C[self.sF1, self.sF2], n_components,
                                 self.c1.whitening("f", "f1"), self.c2.whitening("f", "f2"),
                                 self.cdt == np.float64)

    @on_models_stream
    def mcca_g(self, n_components=None) -> MCCAResult:
        S = self.label_moments.scatter
        return mcca_from_scatter(S[self.sF1, self.sF2], n_components,
                                 self.c1.whitening("g", "g1"), self.c2.whitening("g", "g2"),
                                 self.cdt == np.float64)

    @on_models_stream
    def d_rep(self, sets=None, num_sets: int = 100, seed: int = 0) -> DRepResult:
        if self.M1 != self.M2:
            check_pair(self.a, self.b, same_dim=True, what="d_rep")
        from .reference import _rep_map, _rep_result
        sets = _rep_sets(sets, self.V, self.M1, num_sets, seed)
        xp = self.c1.xp
        C, mu = self.mom.scatter, self.mom.mean
        C11, C22, C12 = (xp.asarray(C[i, j]) for i, j in
                         ((self.sF1, self.sF1), (self.sF2, self.sF2), (self.sF1, self.sF2)))
        mu1, mu2 = xp.asarray(mu[self.sF1]), xp.asarray(mu[self.sF2])
        trC11 = float(xp.trace(C11))
        vals = np.full(len(sets), np.nan)
        for i, s in enumerate(sets):
            sol = _rep_map(rows64(self.G1, s), rows64(self.G2, s),
                           None if self.b1 is None else self.b1[s],
                           None if self.b2 is None else self.b2[s], np.arange(len(s)))
            if sol is None:
                continue
            A, c = sol
            e = mu1 - A @ mu2 - c
            tr = trC11 - 2 * float(xp.sum(A * C12)) + float(xp.sum((A @ C22) * A))
            vals[i] = float(e @ e) + tr / self.N
        return _rep_result(vals, sets)


def _permuted(m: Moments, order) -> Moments:
    return Moments(m.n, m.mean[order], m.scatter[np.ix_(order, order)])


def mcca_from_scatter(S12, n_components, W1, W2, precise=True) -> MCCAResult:
    """mCCA from the cross scatter (host) and the whitenings (W' S W = I) of both sides, on
    the whitenings' device."""
    from .reference import _mcca_result
    T = W1.T @ array_module(W1).asarray(S12) @ W2
    rho = np.clip(singular_values(T, precise), 0.0, 1.0)
    return _mcca_result(rho, n_components, min(W1.shape[0], W2.shape[0]))
