"""The pair engine: every measure of one model pair from its streaming pass and small
sufficient statistics (docs/design.md). It composes the models' caches (``_model_cache``), the
label side (``_label_side``) and the input side (``_input_side``); d_SVD, mCCA and d_rep are
small dense algebra on the pair's scatter matrices, run where the models live."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from . import _rules as rules
from . import sampling
from ._arrays import array_module
from ._build import build_info
from ._input_side import InputSide
from ._label_side import LabelSide
from ._linalg import (is_upper, linalg_raises, mean_singular_values, quad_diag, rows64,
                      singular_values, times_lower, times_upper)
from ._model_cache import ModelCache, label_cross, pair_moments, permuted_moments
from .errors import IdentirepError
from .gpu.streams import on_models_stream
from .model import Model, check_pair, logit_spread_failure, to_numpy
from .moments import Moments
from .passes import PassStats, numpy_pass
from .results import DLLVResult, DLogitResult, DRepResult, DSVDResult, KLResult, MCCAResult

#: relative tolerance of degenerate pairs by the dtype the logits were computed in: the label
#: sums of squares come from the pass, the cross terms from float64 scatter matrices.
DEGENERATE_RTOL = {"float64": rules.DEGENERATE_RTOL, "float32": 1e-5}


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
        self._own_caches = caches is None   # else shared with other pairs (``matrix``)
        if caches is None:
            caches = (ModelCache(a, self.cdt), ModelCache(b, self.cdt))
        if any(c.cdt != self.cdt for c in caches):
            raise IdentirepError("model caches were made for another compute dtype")
        self.c1, self.c2 = caches
        self.N = self.c1.n_inputs     # the caches' F may hold some rows only (from_statistics)
        self.F1, self.G1, self.b1 = self.c1.F, self.c1.G, self.c1.bias
        self.F2, self.G2, self.b2 = self.c2.F, self.c2.G, self.c2.bias
        self.mom, self._label_cross = _moments if _moments is not None else (
            pair_moments(self.c1, self.c2, (stats.L1, stats.L2)), None)
        M1, M2 = self.M1, self.M2
        self.sF1, self.sF2 = slice(0, M1), slice(M1, M1 + M2)
        # the compiled CUDA kernels ("cuda") or the same ones through NVRTC ("cupy")
        self.gpu_backend = (stats.backend if stats.backend in ("cuda", "cupy") else
                            "cuda" if build_info().get("cuda_compiled") else "cupy")
        self.labels = LabelSide(self.c1, self.c2, stats, self.mom.scatter, self.tol,
                                self.gpu_backend)
        self.inputs = InputSide(self.c1, self.c2, stats, self.tol)
        #: an IdentirepError when the logits vary too little to resolve (``model.
        #: logit_spread_failure``): KL, d_logit and d_LLV raise it; mCCA, d_SVD of given
        #: choices and d_rep read f and g only
        self.logit_failure = None

    def _logits_resolved(self) -> None:
        if self.logit_failure is not None:
            raise self.logit_failure

    @classmethod
    def from_statistics(cls, a: Model, b: Model, stats: PassStats, moments: Moments,
                        caches) -> "PairEngine":
        """The engine of a pair known by its sufficient statistics (``identirep.Accumulator``):
        ``a.f``, ``b.f`` hold some rows of f (the caches' ``rows``, made by
        ``ModelCache.from_statistics``), ``stats`` the pass's per-input arrays of those rows,
        its per-label arrays and ``stats.sums`` over every input, ``moments`` those of
        [f1, f2, L1, L2] over every input."""
        return cls(a, b, stats, caches=caches, _moments=(moments, None))

    # ------------------------------------------------------------------ shared statistics
    @property
    def label_cross(self) -> np.ndarray:
        """The cross scatter block of g1 and g2 over labels (M1 x M2, float64); each model's
        own block is its cache's ``g_moments``."""
        if self._label_cross is None:
            self._label_cross = label_cross(self.c1, self.c2)
        return self._label_cross

    @property
    def label_moments(self) -> Moments:
        """Moments over labels of [g1(y), g2(y)] (un-augmented), assembled on each call from
        each model's own block and ``label_cross`` (an (M1 + M2)^2 array; the measures read
        the blocks, not this)."""
        (m1, S1), (m2, S2) = self.c1.g_moments, self.c2.g_moments
        return Moments.from_parts(self.V, [m1, m2], {(0, 0): S1, (1, 1): S2,
                                                     (0, 1): self.label_cross})

    @on_models_stream
    def swapped(self) -> "PairEngine":
        """The engine of (b, a), from the same pass and the same moments (permuted)."""
        M1, M2 = self.M1, self.M2
        pu = np.r_[M1:M1 + M2, 0:M1, M1 + M2 + 1, M1 + M2]
        mom = permuted_moments(self.mom, pu)
        lab = None if self._label_cross is None else np.ascontiguousarray(self._label_cross.T)
        s = PairEngine(self.b, self.a, self.stats.swapped(), self.tol, (self.c2, self.c1),
                       _moments=(mom, lab))
        if self.logit_failure is not None:   # the same objection, naming the models as swapped
            s.logit_failure = logit_spread_failure(self.b, self.a)
        return s

    @on_models_stream
    def label_terms(self, pivot: int):
        """Per-label rest, piv, t3 and validity against one pivot (for plots and inspection)."""
        _check_label("pivot", pivot, self.V)
        rest, piv, t3, valid, _ = (x[:, 0] for x in self.labels.block(np.array([pivot])))
        return {"rest": rest, "piv": piv, "t3": t3, "valid": valid}

    # ------------------------------------------------------------------ KL, d_logit
    @on_models_stream
    def kl(self) -> KLResult:
        self._logits_resolved()
        s = self.stats
        if s.sums is not None:   # sums over inputs of which s holds some (no per-input arrays)
            t = s.sums
            return KLResult(kl12=t.kl12 / t.n, kl21=t.kl21 / t.n, top1_agreement=t.agree / t.n,
                            entropy1=t.H1 / t.n, entropy2=t.H2 / t.n)
        # KL >= 0; clip the roundoff of (near-)identical distributions
        kl12, kl21 = np.maximum(s.kl12, 0.0), np.maximum(s.kl21, 0.0)
        return KLResult(kl12=float(kl12.mean()), kl21=float(kl21.mean()),
                        top1_agreement=float(s.agree.mean()), entropy1=float(s.H1.mean()),
                        entropy2=float(s.H2.mean()), per_input_kl12=kl12,
                        per_input_kl21=kl21)

    @on_models_stream
    def d_logit(self) -> DLogitResult:
        self._logits_resolved()
        s = self.stats
        sq = float(s.row_m2_dd.mean()) if s.sums is None else s.sums.row_m2_dd / s.sums.n
        return DLogitResult(value=math.sqrt(max(sq, 0.0)), value_sq=sq)

    # ------------------------------------------------------------------ d_LLV
    @on_models_stream
    def label_side(self, term="max", pivot=None, leave_out=None, num_pivots=None, seed=0,
                   progress=None, bound_budget=None):
        """(pivot, leave-out, t1, t3, how the pivot was found, degenerate labels): see
        ``LabelSide.search``."""
        self._logits_resolved()
        _check_term(term)
        for name, v in (("pivot", pivot), ("leave_out", leave_out)):
            if v is not None:
                _check_label(name, v, self.V)
        if pivot is not None and pivot == leave_out:
            raise IdentirepError("pivot and leave_out must be different labels")
        rules.check_num_pivots(num_pivots)
        rules.check_options(seed, pivot_budget=bound_budget)
        rules.check_callable("progress", progress)
        return self.labels.search(term, pivot, leave_out, num_pivots, seed, progress,
                                  bound_budget)

    @on_models_stream
    def input_side(self, term="max", input_set=None, num_samples=200, seed=0,
                   paper_compat=False, sets_per_pivot=1):
        """(input set, t2, t4, how the candidates were drawn, their number, how many were
        rejected): see ``InputSide.search``."""
        self._logits_resolved()
        _check_term(term)
        rules.check_options(seed, num_samples, sets_per_pivot)
        rules.check_flag("paper_compat", paper_compat)
        return self.inputs.search(term, input_set, num_samples, seed, paper_compat,
                                  sets_per_pivot)

    def release_input_factors(self) -> None:
        """Drop the input side's N x M factors (made again if the input side runs again) where
        this engine made its models' caches: ``compare`` calls it once d_LLV has its input
        set, and no later measure reads them. Caches shared with other pairs keep them."""
        if self._own_caches:
            for c in (self.c1, self.c2):
                c.release("H")

    @on_models_stream
    def d_llv(self, lam=1e-5, combine="max", term="max", pivot=None, leave_out=None,
              input_set=None, num_samples=200, seed=0, paper_compat=False, num_pivots=None,
              sets_per_pivot=1, progress=None, pivot_budget=None) -> DLLVResult:
        rules.check_flag("paper_compat", paper_compat)
        rules.check_options(seed, num_samples, sets_per_pivot, pivot_budget)
        rules.check_callable("progress", progress)
        rules.check_llv_args(self.a, self.b, combine, term, pivot, leave_out, lam,
                             self._constant_features, self.N)
        rules.check_num_pivots(num_pivots)
        y0, l, t1, t3, how, deg = self.label_side(term, pivot, leave_out, num_pivots, seed, progress,
                                                  pivot_budget)
        iset, t2, t4, ihow, ncand, rejected = self.input_side(
            term, input_set, num_samples, seed, paper_compat, sets_per_pivot)
        if combine == "max":
            value = float(max(t1, t2, lam * t3, lam * t4))
        else:
            value = float(t1 + t2 + lam * t3 + lam * t4)
        return DLLVResult(
            value=value, t1=t1, t2=t2, t3=t3, t4=t4,
            lam=lam, combine=combine, term=term, pivot=y0, leave_out=l, input_set=iset,
            pivot_search=how, input_search=ihow, num_input_candidates=ncand,
            degenerate_pairs=len(deg), degenerate_labels=deg, rejected_input_sets=rejected)

    def _constant_features(self, f) -> bool:
        """``constant_features`` of f, or from the moments of a cache made from statistics."""
        for c in (self.c1, self.c2):
            if c.rows is not None and f is c.model.f:
                return c.f_constant()
        return constant_features(f)

    # ------------------------------------------------------------------ d_SVD
    @on_models_stream
    def d_svd(self, pivot: int, leave_out: int, input_set, max_sets: int = 1000,
              seed: int = 0) -> DSVDResult:
        if self.M1 != self.M2:
            check_pair(self.a, self.b, same_dim=True, what="d_SVD")
        rules.check_label_sets("max_sets", max_sets)
        rules.check_options(seed)
        rem = rules.svd_remaining(pivot, leave_out, self.V)
        iset = rules.check_input_set(input_set, self.N, self.M1 + 1)
        M, xp = self.M1, self.c1.xp       # the O(M^3) work runs where the models live
        precise = self.cdt == np.float64
        C = self.mom.scatter
        batched = xp is np and M < SVD_BATCH_MAX_M
        # the blocks and factors in the compute dtype once (not per set): the products run
        # in it. diag(L C_kk L') as row norms of L R_k, R_k R_k' = C_kk the models' scatter
        # factors (the label side's compute-dtype copies where it keeps them, else made from
        # each model's cached correlation factor); C_kk itself only where a factor is missing
        # or every set runs in one batched call
        Rf = self.labels.factors() or tuple(_in(self.cdt, c.scatter_factor("f"))
                                            for c in (self.c1, self.c2))
        C11, C22 = (xp.asarray(C[sl, sl]).astype(self.cdt, copy=False) if batched or r is None
                    else None for r, sl in zip(Rf, (self.sF1, self.sF2)))
        C12 = xp.asarray(C[self.sF1, self.sF2]).astype(self.cdt, copy=False)
        sets, how = sampling.label_sets(rem, M, max_sets, seed)
        vals = np.full(len(sets), np.nan)
        G1p, G2p = rows64(self.G1, [pivot])[0], rows64(self.G2, [pivot])[0]

        def scaled(i):   # T of label set i (i < len(sets)), or of the input set (i = len(sets))
            if i < len(sets):
                L1 = _row_differences(self.G1, sets[i], pivot, self.cdt)
                L2 = _row_differences(self.G2, sets[i], pivot, self.cdt)
                return _scaled_cross(L1, L2, C11, C22, C12, Rf, self.cdt)
            rows = self.c1.local(iset)
            N1 = _row_differences(self.F1, rows[1:], rows[0], self.cdt)
            N2 = _row_differences(self.F2, rows[1:], rows[0], self.cdt)
            Rg = tuple(_in(self.cdt, c.scatter_factor("g")) for c in (self.c1, self.c2))
            # each model's own block (as the assembled pair scatter held it: transposed) is
            # read only where its scatter factor is missing
            S11, S22 = (None if r is not None else
                        xp.asarray(np.ascontiguousarray(c.g_moments[1].T)).astype(
                            self.cdt, copy=False)
                        for r, c in zip(Rg, (self.c1, self.c2)))
            S12 = xp.asarray(self.label_cross).astype(self.cdt, copy=False)
            return _scaled_cross(N1, N2, S11, S22, S12, Rg, self.cdt)
        if batched:   # small M: every label set in one batched call
            vals = _batched_d_svd(rows64(self.G1, sets.ravel()).reshape(*sets.shape, M) - G1p,
                                  rows64(self.G2, sets.ravel()).reshape(*sets.shape, M) - G2p,
                                  C11, C22, C12, self.cdt)
            mg = mean_singular_values([scaled(len(sets))], precise)[0]
        else:
            # a few matrices at a time (their singular values on parallel threads), O(M^2)
            # memory
            step = max(1, min(len(sets) + 1, os.cpu_count() or 1))
            means = []
            for i0 in range(0, len(sets) + 1, step):
                means += mean_singular_values(
                    [scaled(i) for i in range(i0, min(i0 + step, len(sets) + 1))], precise)
            for i, m in enumerate(means[:-1]):
                if m is not None:
                    vals[i] = 1.0 - m
            mg = means[-1]
        ok = np.isfinite(vals)
        if not ok.any() and mg is None:
            raise IdentirepError(rules.ALL_SVD_SETS_DEGENERATE, fix=rules.SVD_SETS_FIX)
        fmax = float(vals[ok].max()) if ok.any() else float("nan")
        dg = float("nan") if mg is None else 1.0 - mg
        return DSVDResult(
            max_d_svd=float(np.nanmax([fmax, dg])), max_d_svd_f=fmax, d_svd_g=dg,
            mean_d_svd_f=float(vals[ok].mean()) if ok.any() else float("nan"),
            pivot=int(pivot), leave_out=int(leave_out), input_set=[int(i) for i in iset],
            num_label_sets=len(vals), label_set_search=how,
            skipped_label_sets=int((~ok).sum()), d_svd_f_per_set=vals)

    # ------------------------------------------------------------------ mCCA, d_rep
    @on_models_stream
    def mcca_f(self, n_components=None) -> MCCAResult:
        return self._mcca("f", self.mom.scatter[self.sF1, self.sF2], n_components)

    @on_models_stream
    def mcca_g(self, n_components=None) -> MCCAResult:
        return self._mcca("g", self.label_cross, n_components)

    def _mcca(self, which, S12, n_components) -> MCCAResult:
        """mCCA of the two models' f (over inputs) or g (over labels) from the pair's cross
        scatter block ``S12``."""
        rules.check_count("n_components", n_components, none_ok=True)
        if n_components is not None and n_components > min(self.M1, self.M2):
            raise IdentirepError(f"n_components must be in [1, {min(self.M1, self.M2)}], got "
                                 f"{n_components}", fix="leave it out for every correlation")
        return mcca_from_scatter(S12, n_components,
                                 self.c1.whitening(which, which + "1"),
                                 self.c2.whitening(which, which + "2"),
                                 self.cdt == np.float64, self.c1.rank_rtol,
                                 n=self.N if which == "f" else self.V)

    @on_models_stream
    def d_rep(self, sets=None, num_pivots: Optional[int] = None,
              sets_per_pivot: Optional[int] = None, seed: int = 0,
              max_cond=rules.REP_COND_RULE, unsquared: bool = False) -> DRepResult:
        """Per set, mean_x ||f1(x) - A f2(x) - c||^2 from the moments of [f1, f2]:
        |mu1 - A mu2 - c|^2 + tr(C11 - 2 A C12' + A C22 A') / N; sets of M1 labels, A is
        M1 x M2. ``unsquared`` adds mean_x ||f1 - A f2 - c|| per set (an O(N M1 M2) pass)."""
        rules.check_options(seed)
        rules.check_num_pivots(num_pivots)
        rules.check_label_sets("sets_per_pivot", sets_per_pivot, none_ok=True)
        rules.check_max_cond(max_cond)
        rules.check_flag("unsquared", unsquared)
        if unsquared and self.c1.rows is not None:
            raise IdentirepError("unsquared d_rep is a mean over every input's f, and only "
                                 "their statistics are kept here", fix="leave unsquared out")
        sets, num_pivots, sets_per_pivot = rules.rep_sets(sets, self.V, self.M1, num_pivots,
                                                         sets_per_pivot, seed)
        xp = self.c1.xp
        C, mu = self.mom.scatter, self.mom.mean
        C11, C22, C12 = (xp.asarray(C[i, j]) for i, j in
                         ((self.sF1, self.sF1), (self.sF2, self.sF2), (self.sF1, self.sF2)))
        mu1, mu2 = xp.asarray(mu[self.sF1]), xp.asarray(mu[self.sF2])
        trC11 = float(xp.trace(C11))
        vals = np.full(len(sets), np.nan)
        cond = np.full(len(sets), np.inf)
        norms = np.full(len(sets), np.nan) if unsquared else None
        # sets in batches of about 2^22 matrix entries: one batched LAPACK call per batch;
        # a set whose value overflows float64 is named below (rep_overflow), not warned about
        step = max(1, (1 << 22) // (self.M1 * max(self.M1, self.M2)))
        with np.errstate(over="ignore", invalid="ignore"):
            self._rep_sets(sets, step, vals, cond, norms, C11, C22, C12, mu1, mu2, trC11)
        overflow = np.isfinite(cond) & ~np.isfinite(vals)
        if overflow.any():
            raise rep_overflow_error(self.a, int(overflow.sum()), len(sets), self.c1.f_max_abs)
        vals = np.maximum(vals, 0.0)    # the closed form's roundoff for (near-)equal models
        used, thr = rules.rep_used_sets(cond, max_cond)
        fields = _rep_summary(vals, used, thr, max_cond, num_pivots, sets_per_pivot, norms)
        return DRepResult(**fields, sets=sets.tolist(), per_set=vals, cond_per_set=cond)

    def _rep_sets(self, sets, step, vals, cond, norms, C11, C22, C12, mu1, mu2, trC11):
        """d_rep's per-set values and condition numbers (into ``vals``, ``cond``, ``norms``)."""
        xp = self.c1.xp
        unsquared = norms is not None
        # R2 R2' = C22, the second model's scatter factor (host models), once for every batch
        R2 = self.c2.scatter_factor("f") if xp is np else None
        for i0 in range(0, len(sets), step):
            batch = sets[i0:i0 + step]
            sols = _rep_maps(rows64(self.G1, batch.ravel()).reshape(*batch.shape, self.M1),
                             rows64(self.G2, batch.ravel()).reshape(*batch.shape, self.M2),
                             None if self.b1 is None else self.b1[batch],
                             None if self.b2 is None else self.b2[batch])
            idx = [k for k, sol in enumerate(sols) if sol is not None]
            if not idx:
                continue
            A = xp.stack([sols[k][0] for k in idx])
            c = xp.stack([sols[k][1] for k in idx])
            e = mu1 - A @ mu2 - c
            tr = trC11 - 2 * (A * C12).sum((1, 2)) + _quad_c22(A, C22, R2)
            at = i0 + np.asarray(idx)
            vals[at] = to_numpy((e * e).sum(1) + tr / self.N)
            cond[at] = [sols[k][2] for k in idx]
            if unsquared:
                for j, k in enumerate(idx):
                    norms[i0 + k] = _mean_norm(self.F1, self.F2, A[j], c[j])



def _quad_c22(A, C22, R2=None):
    """tr(A C22 A') per matrix of the stack A (S x M1 x M2): ||A R2||_F^2 given R2 (lower
    triangular, R2 R2' = C22; a triangular product, half the flops of A C22), else from C22
    itself."""
    if R2 is None:
        return ((A @ C22) * A).sum((1, 2))
    AR = times_lower(A.reshape(-1, A.shape[-1]), R2).reshape(A.shape)
    AR *= AR    # a new array: squared in place
    return AR.sum((1, 2))


def _check_label(name: str, v, V: int) -> None:
    """A label index option (pivot, leave_out): an integer in [0, V)."""
    rules.check_count(name, v, 0)
    if v >= V:
        raise IdentirepError(f"{name} must be a label index in [0, {V}), got {v!r}")


def _check_term(term) -> None:
    """d_LLV's ``term`` ("max" or "mean"), by d_LLV's option rule (its other options valid)."""
    rules.check_llv_options(0.0, "max", term)



def rep_overflow_error(a: Model, bad: int, total: int, f1_max=None) -> IdentirepError:
    """``rules.rep_overflow`` with the first model's scales (read on the error path only;
    ``f1_max``: max |f1| when known)."""
    from .model import max_abs
    return rules.rep_overflow(bad, total, max_abs(a.f) if f1_max is None else f1_max,
                              np.abs(to_numpy(a.g, np.float64)).max(1))


def _rep_summary(per_set, used, thr, max_cond, num_pivots, sets_per_pivot, unsquared=None):
    """DRepResult's fields from the per-set values (NaN: singular) and the rule's choice."""
    v = per_set[used]
    ok = np.isfinite(per_set)
    q = np.quantile(v, rules.REP_QUANTILES)
    return dict(
        value=float(v.mean()), median=float(q[2]),
        quantiles={f"q{round(p * 100):02d}": float(x) for p, x in zip(rules.REP_QUANTILES, q)},
        min=float(v.min()), max=float(v.max()),
        followup=float(per_set[ok].mean() / len(per_set)),
        unsquared=None if unsquared is None else float(unsquared[used].mean()),
        num_sets=len(per_set), used_sets=int(used.sum()), excluded_sets=int((ok & ~used).sum()),
        singular_sets=int((~ok).sum()), max_cond=max_cond, cond_threshold=thr,
        num_pivots=num_pivots, sets_per_pivot=sets_per_pivot)


def constant_features(f) -> bool:
    """Whether f does not vary across inputs, where f lives (device arrays: no host copy)."""
    from ._arrays import is_gpu_array
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


def _scaled_cross(L1, L2, C11, C22, C12, R=(None, None), dtype=np.float64):
    """The correlation-scaled cross block of d_SVD's transformed features,
    K12 / sqrt(diag K11) / sqrt(diag K22) with K_kl = L_k C_kl L_l' (float64), or None when a
    side has a constant transformed feature. diag K_kk are row norms of L_k R_k where R_k (lower
    triangular, R_k R_k' = C_kk) is given. The products run in ``dtype`` (float32 for the
    float32 engine, whose scatter matrices carry float32 sums: the mean singular value moves
    by ~1e-9 at M = 2048)."""
    def c(x):
        return _in(dtype, x)
    L1, L2 = c(L1), c(L2)
    K11d = quad_diag(L1, c(C11), c(R[0])).astype(np.float64)
    K22d = quad_diag(L2, c(C22), c(R[1])).astype(np.float64)
    if bool((K11d <= 0).any()) or bool((K22d <= 0).any()):
        return None
    xp = array_module(L1)
    K12 = (L1 @ c(C12) @ L2.T).astype(np.float64)    # a new array: scaled in place
    K12 /= xp.sqrt(K11d)[:, None]
    K12 /= xp.sqrt(K22d)[None, :]
    return K12


def _in(dtype, x):
    """``x`` in ``dtype`` (None stays None)."""
    return None if x is None else x.astype(dtype, copy=False)


def _row_differences(X, idx, p, dtype):
    """X[idx] - X[p] in ``dtype``, where X lives: in X's own dtype when that is ``dtype``
    (one gather, one subtraction), else through float64."""
    xp = array_module(X)
    if X.dtype == dtype:
        return X[xp.asarray(idx, dtype=np.int64)] - X[int(p)]
    return (rows64(X, idx) - rows64(X, [p])[0]).astype(dtype)


#: d_SVD takes every label set in one batched LAPACK call below this M (host models)
SVD_BATCH_MAX_M = 64


def _batched_d_svd(L1, L2, C11, C22, C12, dtype=np.float64) -> np.ndarray:
    """d_SVD = 1 - mean singular value of each set's correlation-scaled cross block, for a
    stack of label-difference matrices L_k (S x M x M, host float64; NaN for a set with a
    constant transformed feature): ``_scaled_cross`` and ``singular_values`` for all sets at
    once (products in ``dtype``)."""
    def c(x):
        return _in(dtype, x)
    L1, L2 = c(L1), c(L2)
    K11d = quad_diag(L1, c(C11)).astype(np.float64)
    K22d = quad_diag(L2, c(C22)).astype(np.float64)
    out = np.full(len(L1), np.nan)
    ok = (K11d > 0).all(1) & (K22d > 0).all(1)
    if ok.any():
        K12 = (L1[ok] @ c(C12) @ np.swapaxes(L2[ok], 1, 2)).astype(np.float64)
        T = K12 / np.sqrt(K11d[ok])[:, :, None] / np.sqrt(K22d[ok])[:, None, :]
        out[ok] = 1.0 - np.linalg.svd(T, compute_uv=False).mean(1)
    return out


def _rep_maps(G1s, G2s, b1s, b2s):
    """Per set, (A, c, cond_1(L1)) with L1 A = L2 and L1 c = the bias differences, from the
    float64 rows (S, M1 + 1, M_k) of each model's sets (pivot first), on their device; None for
    a set whose L1 is singular by the rule (1-norm reciprocal condition number <=
    REP_MIN_RCOND). Biases: host rows (S, M1 + 1) or None."""
    xp = array_module(G1s)
    L1, L2 = G1s[:, 1:] - G1s[:, :1], G2s[:, 1:] - G2s[:, :1]
    db = np.zeros(L1.shape[:2])
    if b2s is not None:
        db += b2s[:, 1:] - b2s[:, :1]
    if b1s is not None:
        db -= b1s[:, 1:] - b1s[:, :1]
    try:
        with linalg_raises(xp):
            inv = xp.linalg.inv(L1)
    except np.linalg.LinAlgError:   # one singular set: the others one by one
        inv = None
    if inv is not None:             # every set at once
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            cond = to_numpy(xp.abs(L1).sum(1).max(-1) * xp.abs(inv).sum(1).max(-1))
            ok = 1.0 / cond > rules.REP_MIN_RCOND
        A = inv @ L2
        c = (inv @ xp.asarray(db)[:, :, None])[:, :, 0]
        return [(A[k], c[k], float(cond[k])) if ok[k] else None for k in range(len(L1))]
    out = []
    for k in range(len(L1)):
        try:
            with linalg_raises(xp):
                ik = xp.linalg.inv(L1[k])
        except np.linalg.LinAlgError:
            out.append(None)
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            cond = (np.float64(xp.abs(L1[k]).sum(0).max()) *
                    np.float64(xp.abs(ik).sum(0).max()))
        if not 1.0 / cond > rules.REP_MIN_RCOND:
            out.append(None)
            continue
        out.append((ik @ L2[k], ik @ xp.asarray(db[k]), float(cond)))
    return out


def _mean_norm(F1, F2, A, c, chunk: int = 8192) -> float:
    """mean_x ||f1(x) - A f2(x) - c|| in float64, chunk by chunk of rows, where F lives."""
    xp = array_module(F1)
    total = 0.0
    for i in range(0, F1.shape[0], chunk):
        r = (F1[i:i + chunk].astype(np.float64) - F2[i:i + chunk].astype(np.float64) @ A.T - c)
        total += float(xp.sqrt((r * r).sum(1)).sum())
    return total / F1.shape[0]


def mcca_from_scatter(S12, n_components, W1, W2, precise=True,
                      rtol=rules.MCCA_RANK_RTOL["float64"], n: Optional[int] = None) -> MCCAResult:
    """mCCA from the cross scatter (host) and the whitenings of both sides' column spaces
    (W' S W = I_r, ``_linalg.whiten``), on the whitenings' device: the mean of the first
    min(``n_components``, r1, r2) canonical correlations (default: all min(r1, r2))."""
    if is_upper(W1) and is_upper(W2):   # full-rank whitenings D^-1/2 L^-T: half the flops
        T = times_upper(times_upper(S12, W2).T, W1).T
    else:
        T = W1.T @ array_module(W1).asarray(S12) @ W2
    r1, r2 = W1.shape[1], W2.shape[1]
    rho = np.clip(singular_values(T, precise), 0.0, 1.0)
    k = min(n_components or min(r1, r2), r1, r2)
    corr = [float(v) for v in rho[:k]]
    return MCCAResult(value=float(np.mean(corr)), correlations=corr, n_components=k,
                      rank1=r1, rank2=r2, rank_rtol=rtol,
                      trivially_one=0 if n is None else min(k, rules.trivially_one(n, r1, r2)))
