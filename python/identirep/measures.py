"""The public function-level API. Each function dispatches to an engine by backend."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from . import _rules as rules
from . import reference as ref
from ._backends import resolve
from ._cpu_pass import cpu_pass
from ._linalg import whiten
from ._pair import PairEngine, mcca_from_scatter
from .errors import IdentirepError
from .gpu.streams import on_caller_stream
from .model import Model, check_pair, to_numpy
from .moments import Moments
from .progress import progress_bar
from .results import Report


@on_caller_stream
def engine(a: Model, b: Model, backend: str = "auto", progress=None, caches=None) -> PairEngine:
    """Run the streaming pass for a pair once; every measure can then be read off it.

    ``caches(compute_dtype)`` may return the two models' ``ModelCache`` objects (``matrix``
    shares them between pairs)."""
    check_pair(a, b)
    backend = resolve(backend, a, b)
    if backend == "reference":
        raise IdentirepError("the reference backend has no engine; call the measures directly")
    if backend in ("cuda", "cupy"):
        # models on the host go to the device once; the pass and every product run there
        from .gpu.arrays import device_augmented, on_device
        from .gpu.cuda_backend import cuda_pass
        from .gpu.cupy_backend import cupy_pass
        a, b = on_device(a), on_device(b)
        f1, g1 = device_augmented(a)
        f2, g2 = device_augmented(b)
        run = cuda_pass if backend == "cuda" else cupy_pass
        stats = run(f1, g1, f2, g2, progress=progress)
    else:
        f1, g1 = a.augmented(None)
        f2, g2 = b.augmented(None)
        stats = cpu_pass(f1, g1, f2, g2, progress=progress)
    cdt = np.float32 if stats.dtype == "float32" else np.float64
    return PairEngine(a, b, stats, caches=None if caches is None else caches(cdt))


@on_caller_stream
def kl(a: Model, b: Model, backend: str = "auto"):
    """Mean KL(p_a || p_b) and KL(p_b || p_a) over the inputs (plus top-1 agreement, entropies)."""
    if resolve(backend, a, b) == "reference":
        return ref.kl_reference(a, b)
    return engine(a, b, backend).kl()


@on_caller_stream
def d_llv(a: Model, b: Model, lam: float = 1e-5, combine: str = "max", term: str = "max",
          pivot: Optional[int] = None, leave_out: Optional[int] = None, input_set=None,
          num_samples: int = 200, seed: int = 0, *, num_pivots: Optional[int] = None,
          sets_per_pivot: int = 1, paper_compat: bool = False, pivot_budget: Optional[int] = None,
          backend: str = "auto"):
    """The log-likelihood variance distance d_LLV^lambda with all four terms.

    ``pivot``/``leave_out``/``input_set`` fix the choices the search would make; ``num_pivots``
    samples that many pivots instead of the exact search (default: exact, by a bounded search
    beyond 4096 labels; ``pivot_search`` in the result says which ran, and ``pivot_budget``
    caps the pivots that search evaluates: default 2048 on a CPU, all on a GPU);
    ``sets_per_pivot`` evaluates more candidate input sets per sampled input pivot;
    ``paper_compat`` reproduces the reference code's input-set draw and its threshold quirk.
    """
    kw = dict(lam=lam, combine=combine, term=term, pivot=pivot, leave_out=leave_out,
              input_set=input_set, num_samples=num_samples, seed=seed, paper_compat=paper_compat,
              sets_per_pivot=sets_per_pivot)
    if resolve(backend, a, b) == "reference":
        cands = None
        if num_pivots is not None and pivot is None:
            from .sampling import pivot_sample
            cands = pivot_sample(a.V, num_pivots, seed)
        return ref.d_llv_reference(a, b, pivot_candidates=cands, **kw)
    with progress_bar("streaming pass", 1.0) as update:
        e = engine(a, b, backend, progress=update)
    with progress_bar("pivot search", 1.0) as update:
        return e.d_llv(num_pivots=num_pivots, progress=update, pivot_budget=pivot_budget, **kw)


@on_caller_stream
def d_svd(a: Model, b: Model, pivot: Optional[int] = None, leave_out: Optional[int] = None,
          input_set=None, max_sets: int = 1000, seed: int = 0, *, backend: str = "auto", **llv):
    """PLS-SVD dissimilarity of f over label diversity sets and of g over the input set.

    Choices not given are taken from d_LLV (its pivot, leave-out and input set).
    """
    check_pair(a, b, same_dim=True, what="d_SVD")
    be = resolve(backend, a, b)
    eng = None if be == "reference" else engine(a, b, be)
    if pivot is None or leave_out is None or input_set is None:
        r = (eng.d_llv(seed=seed, **llv) if eng is not None
             else ref.d_llv_reference(a, b, seed=seed, **llv))
        pivot = r.pivot if pivot is None else pivot
        leave_out = r.leave_out if leave_out is None else leave_out
        input_set = r.input_set if input_set is None else input_set
    if eng is None:
        return ref.d_svd_reference(a, b, pivot, leave_out, input_set, max_sets, seed)
    return eng.d_svd(pivot, leave_out, input_set, max_sets, seed)


def mcca(x, y, n_components: Optional[int] = None, backend: str = "auto"):
    """Mean of the first ``n_components`` exact canonical correlations of two data sets."""
    if isinstance(x, Model) or isinstance(y, Model):
        raise IdentirepError("mcca takes arrays (e.g. a.f, b.f), not models")
    x = to_numpy(x)  # GPU arrays: the scatter matrices are small, computed on the host
    y = to_numpy(y)
    rules.check_cca_inputs(x, y, n_components)
    if backend == "reference":
        return ref.mcca_reference(x, y, n_components)
    mom = Moments.from_rows(np.hstack([x.astype(np.float64), y.astype(np.float64)]))
    d = x.shape[1]
    S = mom.scatter
    return mcca_from_scatter(S[:d, d:], n_components, whiten(S[:d, :d], "x"),
                             whiten(S[d:, d:], "y"))


@on_caller_stream
def d_logit(a: Model, b: Model, backend: str = "auto"):
    """d_logit: root mean over inputs of the squared distance of label-centred logits."""
    if resolve(backend, a, b) == "reference":
        return ref.d_logit_reference(a, b)
    return engine(a, b, backend).d_logit()


@on_caller_stream
def d_rep(a: Model, b: Model, sets=None, num_sets: int = 100, seed: int = 0,
          backend: str = "auto"):
    """mean_x ||f_a(x) - A f_b(x) - c||^2 for A = L_a^-1 L_b over diversity sets (max, mean)."""
    check_pair(a, b, same_dim=True, what="d_rep")
    if resolve(backend, a, b) == "reference":
        return ref.d_rep_reference(a, b, sets, num_sets, seed)
    return engine(a, b, backend).d_rep(sets, num_sets, seed)


@on_caller_stream
def compare(a: Model, b: Model, lam: float = 1e-5, combine: str = "max", term: str = "max",
            num_samples: int = 200, seed: int = 0, *, num_pivots: Optional[int] = None,
            sets_per_pivot: int = 1, paper_compat: bool = False, max_label_sets: Optional[int] = None,
            rep_sets: Optional[int] = None, pivot_budget: Optional[int] = None,
            backend: str = "auto", progress=None) -> Report:
    """Every measure for one pair, from a single streaming pass."""
    t0 = time.perf_counter()
    check_pair(a, b)
    be = resolve(backend, a, b)
    llv = dict(lam=lam, combine=combine, term=term, num_samples=num_samples, seed=seed,
               paper_compat=paper_compat, sets_per_pivot=sets_per_pivot)
    same = a.M == b.M
    max_label_sets, rep_sets = _budgets(max(a.M, b.M), max_label_sets, rep_sets)
    if be == "reference":
        k = ref.kl_reference(a, b)
        cands = None
        if num_pivots is not None:
            from .sampling import pivot_sample
            cands = pivot_sample(a.V, num_pivots, seed)
        d = ref.d_llv_reference(a, b, pivot_candidates=cands, **llv)
        dl = ref.d_logit_reference(a, b)
        mf = ref.mcca_reference(a.numpy()[0], b.numpy()[0])
        mg = ref.mcca_reference(a.numpy()[1], b.numpy()[1])
        sv = ref.d_svd_reference(a, b, d.pivot, d.leave_out, d.input_set, max_label_sets, seed) if same else None
        dr = ref.d_rep_reference(a, b, None, rep_sets, seed) if same else None
    else:
        with progress_bar("streaming pass", 1.0, progress) as update:
            e = engine(a, b, be, progress=update)
        return _report_from_engine(e, t0=t0, backend=be, num_pivots=num_pivots,
                                   max_label_sets=max_label_sets, rep_sets=rep_sets,
                                   pivot_budget=pivot_budget, **llv)
    return _finish_report(a, b, be, k, d, dl, mf, mg, sv, dr, t0)


def _report_from_engine(e: PairEngine, t0=None, backend="cpu", num_pivots=None,
                        max_label_sets=None, rep_sets=None, lam=1e-5, combine="max", term="max",
                        num_samples=200, seed=0, paper_compat=False, sets_per_pivot=1,
                        pivot_budget=None) -> Report:
    t0 = time.perf_counter() if t0 is None else t0
    a, b = e.a, e.b
    same = a.M == b.M
    max_label_sets, rep_sets = _budgets(max(a.M, b.M), max_label_sets, rep_sets)
    with progress_bar("pivot search", 1.0) as update:
        d = e.d_llv(lam=lam, combine=combine, term=term, num_samples=num_samples, seed=seed,
                    paper_compat=paper_compat, sets_per_pivot=sets_per_pivot,
                    num_pivots=num_pivots, progress=update, pivot_budget=pivot_budget)
    # O(M^3) each: minutes at M = 4096 on a CPU
    steps = [("d_svd", lambda: e.d_svd(d.pivot, d.leave_out, d.input_set, max_label_sets, seed)
              if same else None),
             ("d_rep", lambda: e.d_rep(None, rep_sets, seed) if same else None),
             ("mcca_f", e.mcca_f), ("mcca_g", e.mcca_g)]
    out = {}
    with progress_bar("d_SVD, d_rep, mCCA", len(steps)) as update:
        for i, (name, fn) in enumerate(steps):
            out[name] = fn()
            update(i + 1)
    return _finish_report(a, b, backend, e.kl(), d, e.d_logit(), out["mcca_f"], out["mcca_g"],
                          out["d_svd"], out["d_rep"], t0)


def _budgets(M, max_label_sets, rep_sets):
    """Default numbers of d_SVD label sets and d_rep sets: each costs O(M^3)."""
    if max_label_sets is None:
        max_label_sets = 1000 if M <= 16 else 64 if M <= 64 else 16 if M <= 256 else 2
    if rep_sets is None:
        rep_sets = 100 if M <= 64 else 16 if M <= 256 else 2
    return max_label_sets, rep_sets


def _finish_report(a, b, be, k, d, dl, mf, mg, sv, dr, t0) -> Report:
    notes = []
    M = max(a.M, b.M)
    if a.M != b.M:
        notes.append(f"d_SVD and d_rep need equal dimensions (M={a.M} vs M={b.M}): skipped")
    if sv is not None and np.isfinite(sv.max_d_svd) and sv.max_d_svd > 2 * M * d.value + 1e-9:
        notes.append("max d_SVD exceeds the bound 2 M d_LLV")
    return Report(name1=a.name or "model 1", name2=b.name or "model 2", N=a.N, V=a.V,
                  M1=a.M, M2=b.M, backend=be, kl=k, d_llv=d, d_logit=dl, mcca_f=mf, mcca_g=mg,
                  d_svd=sv, d_rep=dr, seconds=time.perf_counter() - t0, notes=notes)
