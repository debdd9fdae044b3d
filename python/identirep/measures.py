"""The public function-level API. Each function dispatches to an engine by backend."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from . import _rules as rules
from . import reference as ref
from ._backends import resolve
from ._heap import retained_heap
from ._cpu_pass import cpu_pass
from ._linalg import whiten
from ._pair import PairEngine, mcca_from_scatter, rep_overflow_error
from .errors import IdentirepError, why
from .gpu.streams import on_caller_stream
from .model import (Model, check_logit_scale, check_pair, logit_spread_failure, to_numpy,
                    tokenizer_note, tokenizer_option, warn_tokenizer_note)
from .moments import Moments
from .progress import progress_bar
from .results import (DLLVResult, DLogitResult, DRepResult, DSVDResult, Failure, KLResult,
                      MCCAResult, Report)
from .tokens import engine_token_report, per_token_choice, reference_token_report


@on_caller_stream
def engine(a: Model, b: Model, backend: str = "auto", progress=None, caches=None,
           topk: int = 0) -> PairEngine:
    """Run the streaming pass for a pair once; every measure can then be read off it.

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels (M may differ).
    backend : {"auto", "cpu", "cuda", "cupy"}
        "auto" follows where the arrays live (host arrays: "cpu").
    progress : callable, optional
        ``progress(fraction)`` during the pass.
    caches : callable, optional
        ``caches(compute_dtype)`` returns the two models' ``ModelCache`` objects (``matrix``
        shares them between pairs).
    topk : int
        > 0: the pass also keeps each model's ``topk`` most likely labels per input
        (``stats.topk1``, ``topk2``, (N, min(topk, V)) int64, ties to the lower label id);
        CPU backend only; at most ``_cpu_pass.MAX_TOPK`` = 1024.

    Returns
    -------
    PairEngine
        ``.kl()``, ``.d_llv()``, ``.d_svd()``, ``.mcca_f()``, ``.mcca_g()``, ``.d_logit()``,
        ``.d_rep()`` from the one pass."""
    return _engine(a, b, backend, progress, caches, topk)


#: ``_engine``'s default: the logits' scale is checked there, as ``engine`` checks it
_CHECK = object()


def _alone(a: Model, b: Model) -> None:
    """The checks of a measure called on its own on the reference backend (``_engine``'s
    for the others): the logits' scale, and what differs between the tokenizers as a
    warning."""
    check_pair(a, b)
    check_logit_scale(a, b)
    warn_tokenizer_note(a, b)


def _engine(a: Model, b: Model, backend: str = "auto", progress=None, caches=None,
            topk: int = 0, logit_failure=_CHECK) -> PairEngine:
    """``engine``; ``logit_failure``: the caller's ``logit_spread_failure(a, b)`` (None, or
    logits too small to resolve): they do not stop the pass, and the engine carries the
    error as ``logit_failure``, for the measures that read the logits (KL, d_logit, d_LLV)
    to raise, while mCCA and d_rep are computed."""
    check_pair(a, b)
    for name, fn in (("progress", progress), ("caches", caches)):
        rules.check_callable(name, fn)
    alone = logit_failure is _CHECK    # engine(), for a measure on its own: it has no notes
    if alone:
        logit_failure = check_logit_scale(a, b)
    rules.check_count("topk", topk, minimum=0)
    backend = resolve(backend, a, b)
    if backend == "reference":
        raise IdentirepError("the reference backend has no engine; call the measures directly")
    if topk and backend in ("cuda", "cupy"):
        raise IdentirepError(
            f"per-input top-k (topk={topk}) runs on the CPU backend, not backend={backend!r}",
            fix="pass backend='cpu' (models on the GPU are copied to the host), or topk=0")
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
        stats = cpu_pass(f1, g1, f2, g2, progress=progress, topk=topk)
    cdt = np.float32 if stats.dtype == "float32" else np.float64
    e = PairEngine(a, b, stats, caches=None if caches is None else caches(cdt))
    e.logit_failure = logit_failure
    if alone:
        warn_tokenizer_note(a, b)
    return e


@on_caller_stream
def kl(a: Model, b: Model, backend: str = "auto") -> KLResult:
    """Mean KL divergence over the inputs, both directions.

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels.
    backend : {"auto", "cpu", "cuda", "cupy", "reference"}

    Returns
    -------
    KLResult
        ``kl12`` = mean_x KL(p_a(.|x) || p_b(.|x)) (the headline, nats), ``kl21``, top-1
        agreement and both mean entropies."""
    if resolve(backend, a, b) == "reference":
        _alone(a, b)
        return ref.kl_reference(a, b)
    return engine(a, b, backend).kl()


@on_caller_stream
def d_llv(a: Model, b: Model, lam: float = 1e-5, combine: str = "max", term: str = "max",
          pivot: Optional[int] = None, leave_out: Optional[int] = None, input_set=None,
          num_samples: int = 200, seed: int = 0, *, num_pivots: Optional[int] = None,
          sets_per_pivot: int = 1, paper_compat: bool = False, pivot_budget: Optional[int] = None,
          backend: str = "auto") -> DLLVResult:
    """The log-likelihood variance distance d_LLV^lambda with all four terms.

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels; N >= max(M1, M2) + 2 and V >= 3.
    lam : float
        Weight of the sqrt-variance gap terms t3, t4.
    combine : {"max", "sum"}
        How t1, t2, lam t3, lam t4 combine.
    term : {"max", "mean"}
        Max or mean over labels (inputs) of each term, as the paper's ``dist_type``.
    num_samples : int
        Candidate input sets (or input pivots with ``sets_per_pivot`` > 1).
    seed : int
        Every draw (input sets, sampled pivots) is seeded.

    Returns
    -------
    DLLVResult
        ``value`` (a distance: 0 when the models are equal up to the identifiable linear maps),
        the four terms, and every choice (pivot, leave-out, input set) with how it was found.

    Notes
    -----
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
    rules.check_llv_options(lam, combine, term)
    rules.check_flag("paper_compat", paper_compat)
    rules.check_num_pivots(num_pivots)
    rules.check_options(seed, num_samples, sets_per_pivot, pivot_budget)
    if resolve(backend, a, b) == "reference":
        _alone(a, b)
        cands = None
        if num_pivots is not None and pivot is None:
            from .sampling import pivot_sample
            cands = pivot_sample(a.V, num_pivots, seed)
        return ref.d_llv_reference(a, b, pivot_candidates=cands, **kw)
    with progress_bar("streaming pass", 1.0) as update:
        e = engine(a, b, backend, progress=update)
    with progress_bar("pivot search", 1.0) as update:
        return e.d_llv(num_pivots=num_pivots, progress=update, pivot_budget=pivot_budget, **kw)


#: the options of d_LLV's search that d_svd passes on (``**llv``)
_LLV_SEARCH_OPTIONS = {"lam", "combine", "term", "num_samples", "num_pivots", "sets_per_pivot",
                       "paper_compat", "pivot_budget"}


@on_caller_stream
def d_svd(a: Model, b: Model, pivot: Optional[int] = None, leave_out: Optional[int] = None,
          input_set=None, max_sets: int = 1000, seed: int = 0, *, backend: str = "auto",
          **llv) -> DSVDResult:
    """PLS-SVD dissimilarity of f over label diversity sets and of g over the input set.

    Parameters
    ----------
    a, b : Model
        Models of equal dimension M on the same inputs and labels.
    pivot, leave_out, input_set : optional
        d_LLV's choices; those not given are taken from ``d_llv(a, b, seed=seed, **llv)``.
    max_sets : int
        Every set of M labels among the V - 2 others up to this many, else a seeded sample.

    Returns
    -------
    DSVDResult
        ``max_d_svd`` (a distance in [0, 1]) = max of ``max_d_svd_f`` (over label sets) and
        ``d_svd_g`` (the input set); the paper bounds it by 2 M d_LLV.
    """
    check_pair(a, b, same_dim=True, what="d_SVD")
    rules.check_options(seed)
    rules.check_label_sets("max_sets", max_sets)
    unknown = set(llv) - _LLV_SEARCH_OPTIONS
    if unknown:
        raise IdentirepError(f"unknown option(s) {', '.join(sorted(unknown))} of d_svd",
                             fix="its other options go to d_llv's search: "
                                 + ", ".join(sorted(_LLV_SEARCH_OPTIONS)))
    check_compare_options(seed=seed, **llv)
    be = resolve(backend, a, b)
    if be == "reference":
        _alone(a, b)
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


def mcca(x, y, n_components: Optional[int] = None, backend: str = "auto") -> MCCAResult:
    """Mean exact canonical correlation of two data sets with matching rows.

    Parameters
    ----------
    x, y : array (n, d1), (n, d2)
        NumPy, torch or CuPy arrays (e.g. ``a.f`` and ``b.f``).
    n_components : int, optional
        At most this many leading correlations (never beyond min(rank x, rank y)).
    backend : {"auto", "reference"}

    Returns
    -------
    MCCAResult
        ``value`` (a similarity in [0, 1]), the correlations, and the ranks of x and y by the
        stated rank rule (``rank_rtol``): the correlations are taken on the column spaces."""
    if isinstance(x, Model) or isinstance(y, Model):
        raise IdentirepError("mcca takes arrays (e.g. a.f, b.f), not models")
    if backend not in (None, "auto", "cpu", "reference"):
        raise IdentirepError(f"mcca's backend must be 'auto', 'cpu' or 'reference', got "
                             f"{backend!r}", fix="mcca runs on the host: leave backend out")
    try:   # GPU arrays: the scatter matrices are small, computed on the host
        x, y = to_numpy(x), to_numpy(y)
    except (TypeError, ValueError):
        raise IdentirepError("mcca takes two 2-d arrays (samples x features); a nested list "
                             "here is ragged (rows of different lengths)") from None
    rules.check_cca_inputs(x, y, n_components)
    # canonical correlations do not change when x or y is multiplied by a number: arrays
    # whose squares would overflow (or underflow) float64 are scaled by a power of 2
    x, y = _within_square_range(x), _within_square_range(y)
    if backend == "reference":
        return ref.mcca_reference(x, y, n_components)
    mom = Moments.from_rows(np.hstack([x.astype(np.float64), y.astype(np.float64)]))
    d = x.shape[1]
    S = mom.scatter
    n, mu = len(x), mom.mean
    return mcca_from_scatter(S[:d, d:], n_components,
                             whiten(S[:d, :d], "x", n=n, mean=mu[:d]),
                             whiten(S[d:, d:], "y", n=n, mean=mu[d:]), n=n)


def _within_square_range(x: np.ndarray) -> np.ndarray:
    """``x`` as float64, times the power of 2 that brings its largest magnitude near 1 when
    that magnitude is beyond 1e100 or below 1e-100 (exact: only the exponents change)."""
    x = np.asarray(x, np.float64)
    top = float(np.abs(x).max()) if x.size else 0.0
    if top == 0.0 or 1e-100 <= top <= 1e100:
        return x
    return np.ldexp(x, -np.frexp(top)[1])


@on_caller_stream
def d_logit(a: Model, b: Model, backend: str = "auto") -> DLogitResult:
    """d_logit: root mean over inputs of the squared distance of label-centred logits.

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels (M may differ).
    backend : {"auto", "cpu", "cuda", "cupy", "reference"}

    Returns
    -------
    DLogitResult
        ``value`` (a distance in logit units; it grows with V) and ``value_sq``."""
    if resolve(backend, a, b) == "reference":
        _alone(a, b)
        return ref.d_logit_reference(a, b)
    return engine(a, b, backend).d_logit()


@on_caller_stream
def d_rep(a: Model, b: Model, sets=None, num_pivots: Optional[int] = None,
          sets_per_pivot: Optional[int] = None, seed: int = 0, *, max_cond=rules.REP_COND_RULE, unsquared: bool = False,
          backend: str = "auto") -> DRepResult:
    """d_rep, the follow-up paper's linear-identifiability dissimilarity.

    Parameters
    ----------
    a, b : Model
        The models; M1 and M2 may differ (A is M1 x M2).
    sets : array (S, M1 + 1) of label ids, optional
        The label sets (pivot first); default: ``num_pivots`` distinct pivots x
        ``sets_per_pivot`` sets of M1 other labels, drawn as the follow-up's code draws them
        after ``np.random.default_rng(seed)``. Defaults: 500 sets in all up to M1 = 64, 64 up
        to 256, 8 up to 1024, 2 beyond (each costs O(M^3)), over min(sets, V, 100) pivots.
    max_cond : "median", float or None
        The condition-number rule: a set is used when cond_1(L1) is at most the median over
        the drawn sets ("median"), at most this number, or always when not singular (None).

    Returns
    -------
    DRepResult
        ``value``: the mean over the used sets of mean_x ||f_a(x) - A f_b(x) - c||^2 (squared
        units of f_a), with A = L_a^-1 L_b and c the bias offsets; ``quantiles`` over those
        sets; ``followup``: the follow-up paper's number (mean over every non-singular set,
        divided once more by the number of sets); how many sets were used, left out by the rule or
        singular.
    """
    check_pair(a, b)
    rules.check_options(seed)
    rules.check_num_pivots(num_pivots)
    rules.check_label_sets("sets_per_pivot", sets_per_pivot, none_ok=True)
    if num_pivots is not None and sets_per_pivot is not None:
        rules.check_label_sets("num_pivots x sets_per_pivot",
                               int(num_pivots) * int(sets_per_pivot))
    rules.check_max_cond(max_cond)
    rules.check_flag("unsquared", unsquared)
    kw = dict(sets=sets, num_pivots=num_pivots, sets_per_pivot=sets_per_pivot, seed=seed,
              max_cond=max_cond, unsquared=unsquared)
    failure = logit_spread_failure(a, b)    # d_rep reads f and g, not the logits
    warn_tokenizer_note(a, b)
    if resolve(backend, a, b) == "reference":
        return _d_rep_reference(a, b, **kw)
    return _engine(a, b, backend, logit_failure=failure).d_rep(**kw)


def _d_rep_reference(a, b, **kw) -> DRepResult:
    """The reference's d_rep, with the engine's rule for sets whose value overflows float64
    (an IdentirepError naming the scales, not a warning and an inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = ref.d_rep_reference(a, b, **kw)
    overflow = np.isfinite(r.cond_per_set) & ~np.isfinite(r.per_set)
    if overflow.any():
        raise rep_overflow_error(a, int(overflow.sum()), len(r.per_set))
    return r


#: the fix of a failed measure whose error gives none apart (its message then says it)
FIX_IN_REASON = "see the reason, which says what the models or options must satisfy"


@on_caller_stream
@tokenizer_option
def compare(a: Model, b: Model, lam: float = 1e-5, combine: str = "max", term: str = "max",
            num_samples: int = 200, seed: int = 0, *, num_pivots: Optional[int] = None,
            sets_per_pivot: int = 1, paper_compat: bool = False, max_label_sets: Optional[int] = None,
            rep_sets: Optional[int] = None, pivot_budget: Optional[int] = None,
            backend: str = "auto", progress=None, per_token: Optional[bool] = None,
            top_k: int = 10, jsd: bool = False, check_tokenizer: bool = True) -> Report:
    """Every measure for one pair, from a single streaming pass.

    Parameters
    ----------
    a, b : Model
        Models on the same inputs and labels (M may differ).
    lam, combine, term, num_samples, seed, num_pivots, sets_per_pivot, paper_compat,
    pivot_budget
        d_LLV's options (see ``d_llv``); ``seed`` seeds every draw of every measure.
    max_label_sets : int, optional
        d_SVD's label sets (default 1000 up to M = 16, 64 up to 64, 16 up to 256, 2
        beyond).
    rep_sets : int, optional
        d_rep's label sets in all (default 500 up to M1 = 64, 64 up to 256, 8 up to 1024, 2
        beyond); each set of either costs O(M^3).
    backend : {"auto", "cpu", "cuda", "cupy", "reference"}
    progress : callable, optional
        ``progress(fraction)`` during the streaming pass (bars appear on a terminal anyway).
    per_token : bool, optional
        The per-token report (``report.tokens``, ``identirep.tokens``): None (default) = on
        when both models carry ``tokens`` or ``targets`` (a language model's extraction) on
        the CPU or reference backend, off on a GPU backend or for logits too small to
        resolve (with a note); True there is an error (it runs on the CPU backend, and reads
        the logits).
    top_k : int
        Each model's most likely tokens per position kept by the pass for the per-token
        report (top-1/5/10 agreement; at most ``tokens.MAX_TOP_K`` = 100, while ``engine``'s
        ``topk`` takes up to ``_cpu_pass.MAX_TOPK`` = 1024).
    jsd : bool
        Also the per-position Jensen-Shannon divergence (a second pass; the report says what
        it cost); asks for the per-token report.
    check_tokenizer : bool
        False compares models whose tokenizers' vocabularies (or label names) differ, by
        token id (``model.allow_tokenizer_mismatch``); the report's notes say what differs.
        Tokenizers that differ only in their settings pass either way, with a note.

    Returns
    -------
    Report
        Every measure's result (each says what it is: ``result.meaning``). A measure that
        cannot be computed for this pair (d_SVD when M1 != M2, d_rep when g has dependent
        columns, ...) is ``None``, and ``report.failures[name]`` says why and how to fix it;
        the others are still computed."""
    t0 = time.perf_counter()
    check_pair(a, b)
    be = resolve(backend, a, b)
    llv = dict(lam=lam, combine=combine, term=term, num_samples=num_samples, seed=seed,
               paper_compat=paper_compat, sets_per_pivot=sets_per_pivot)
    check_compare_options(num_pivots=num_pivots, max_label_sets=max_label_sets,
                          rep_sets=rep_sets, pivot_budget=pivot_budget, **llv)
    check_progress(progress)
    on, note, spread = report_choices(a, b, be, per_token, top_k, jsd)
    if be == "reference":

        def logits(fn):
            def run(d):
                if spread is not None:
                    raise spread
                return fn(d)
            return run
        cands = None
        if num_pivots is not None:
            from .sampling import pivot_sample
            cands = pivot_sample(a.V, num_pivots, seed)
        M = max(a.M, b.M)
        max_label_sets = _budgets(M, max_label_sets)
        rp = rules.rep_budget(a.M, a.V, rep_sets)

        def svd(d):
            return ref.d_svd_reference(a, b, d.pivot, d.leave_out, d.input_set, max_label_sets,
                                       seed)
        steps = {
            "kl": logits(lambda d: ref.kl_reference(a, b)),
            "d_llv": logits(lambda d: ref.d_llv_reference(a, b, pivot_candidates=cands, **llv)),
            "d_logit": logits(lambda d: ref.d_logit_reference(a, b)),
            "mcca_f": lambda d: ref.mcca_reference(a.numpy()[0], b.numpy()[0]),
            "mcca_g": lambda d: ref.mcca_reference(a.numpy()[1], b.numpy()[1]),
            "d_svd": svd,
            "d_rep": lambda d: _d_rep_reference(a, b, sets=None, num_pivots=rp[0],
                                                sets_per_pivot=rp[1], seed=seed),
        }
        r = _run_steps(a, b, be, steps, t0, progress=None)
        return with_tokens(r, t0, lambda: reference_token_report(a, b, top_k, jsd) if on
                           else None, tokenizer_note(a, b), note)
    call = progress if callable(progress) else None
    with progress_bar("streaming pass", 1.0, None if call else progress) as bar:
        def update(fraction):
            bar(fraction)
            if call is not None:
                call(fraction)
        e = _engine(a, b, be, progress=update, topk=top_k if on else 0, logit_failure=spread)
    r = _report_from_engine(e, t0=t0, backend=be, num_pivots=num_pivots,
                            max_label_sets=max_label_sets, rep_sets=rep_sets,
                            pivot_budget=pivot_budget, **llv)
    return with_tokens(r, t0, lambda: engine_token_report(e, jsd) if on else None,
                       tokenizer_note(a, b), note)


def report_choices(a: Model, b: Model, be: str, per_token, top_k: int, jsd: bool) -> tuple:
    """(whether the per-token report runs, the note why not or None, ``logit_spread_failure``):
    logits too small to resolve fail the measures that read them with the reason, while mCCA
    and d_rep (f and g alone) are computed; the per-token report is then off with a note, or,
    asked for (``per_token=True``, ``jsd=True``), refused with the reason."""
    on, note = per_token_choice(a, b, be, per_token, top_k, jsd)
    spread = logit_spread_failure(a, b)
    if spread is not None and on:
        if per_token or jsd:      # asked for: refused, as where it cannot run
            raise IdentirepError(
                f"the per-token report was asked for, and it reads the logits: {spread.reason}",
                fix=f"{spread.fix}; or leave out per_token=True and jsd=True (--per-token, "
                    "--jsd) for a report of mCCA and d_rep, the measures that read f and g")
        on, note = False, f"no per-token report: {spread.reason}"
    return on, note, spread


def with_tokens(r: Report, t0: float, make, *notes: Optional[str]) -> Report:
    """``r`` with its per-token report (``make()``: a TokenReport or None) and the seconds
    since ``t0``; the ``notes`` that are not None (why it is off, what differs between the
    tokenizers) among its notes."""
    r.tokens = make()
    r.notes.extend(n for n in notes if n)
    r.seconds = time.perf_counter() - t0
    return r


#: compare's options after the models (``matrix`` passes them on)
COMPARE_OPTIONS = ("lam", "combine", "term", "num_samples", "seed", "num_pivots",
                   "sets_per_pivot", "paper_compat", "max_label_sets", "rep_sets", "pivot_budget")


def check_compare_options(lam=1e-5, combine="max", term="max", num_samples=200, seed=0,
                          paper_compat=False, sets_per_pivot=1, num_pivots=None,
                          max_label_sets=None, rep_sets=None, pivot_budget=None,
                          **unknown) -> None:
    """``compare``'s options that do not depend on the models, before any work: a bad one
    (or one that is not an option of compare) raises here, never as one measure's failure in
    the report."""
    if unknown:
        raise IdentirepError(f"unknown option(s) {', '.join(sorted(unknown))}",
                             fix="compare's options are " + ", ".join(COMPARE_OPTIONS))
    rules.check_llv_options(lam, combine, term)
    rules.check_flag("paper_compat", paper_compat)
    rules.check_num_pivots(num_pivots)
    rules.check_options(seed, num_samples, sets_per_pivot, pivot_budget)
    rules.check_label_sets("max_label_sets", max_label_sets, none_ok=True)
    rules.check_label_sets("rep_sets", rep_sets, none_ok=True)


def check_progress(progress) -> None:
    """A progress option: a callable ``progress(fraction)``, True, False or None."""
    rules.check_callable("progress", progress, True, "a callable progress(fraction)")


def _report_from_engine(e: PairEngine, t0=None, backend="cpu", num_pivots=None,
                        max_label_sets=None, rep_sets=None, lam=1e-5, combine="max", term="max",
                        num_samples=200, seed=0, paper_compat=False, sets_per_pivot=1,
                        pivot_budget=None, **unknown) -> Report:
    check_compare_options(lam, combine, term, num_samples, seed, paper_compat, sets_per_pivot,
                          num_pivots, max_label_sets, rep_sets, pivot_budget, **unknown)
    t0 = time.perf_counter() if t0 is None else t0
    a, b = e.a, e.b
    max_label_sets = _budgets(max(a.M, b.M), max_label_sets)
    rp = rules.rep_budget(a.M, a.V, rep_sets)

    def llv(d):
        with progress_bar("pivot search", 1.0) as update:
            try:
                return e.d_llv(lam=lam, combine=combine, term=term, num_samples=num_samples,
                               seed=seed, paper_compat=paper_compat,
                               sets_per_pivot=sets_per_pivot, num_pivots=num_pivots,
                               progress=update, pivot_budget=pivot_budget)
            finally:   # the input side's N x M factors: no later measure reads them
                e.release_input_factors()
    # d_SVD, d_rep, mCCA: O(M^3) each, minutes at M = 4096 on a CPU
    steps = {
        "kl": lambda d: e.kl(), "d_llv": llv, "d_logit": lambda d: e.d_logit(),
        "d_svd": lambda d: e.d_svd(d.pivot, d.leave_out, d.input_set, max_label_sets, seed),
        "d_rep": lambda d: e.d_rep(None, *rp, seed),
        "mcca_f": lambda d: e.mcca_f(), "mcca_g": lambda d: e.mcca_g(),
    }
    with retained_heap():   # the measures' M x M temporaries reuse freed memory
        return _run_steps(a, b, backend, steps, t0, progress="d_SVD, d_rep, mCCA")


def _run_steps(a, b, be, steps, t0, progress) -> Report:
    """Run each measure; one that raises IdentirepError becomes a ``Failure`` (reason, fix)."""
    out, failures = {}, {}

    def run(name):
        try:
            if name == "d_svd" and a.M != b.M:
                raise IdentirepError(
                    f"d_SVD compares representations of equal dimension; M1={a.M}, M2={b.M}",
                    fix="compare the representations with mCCA or d_rep, which take M1 != M2")
            if name == "d_svd" and out.get("d_llv") is None:
                raise IdentirepError("d_SVD uses d_LLV's pivot, leave-out and input set, and "
                                     "d_LLV could not be computed",
                                     fix="fix what d_LLV's failure says")
            out[name] = steps[name](out.get("d_llv"))
        except IdentirepError as err:
            out[name] = None
            failures[name] = Failure(reason=err.reason, fix=err.fix or FIX_IN_REASON)
        except (ArithmeticError, np.linalg.LinAlgError, MemoryError) as err:
            # a numerical failure of one measure: the others stand, and the report says so
            out[name] = None
            failures[name] = Failure(reason=f"internal error: {why(err)}",
                                     fix="please report it with the models' shapes and options")
    for name in ("kl", "d_llv", "d_logit"):
        run(name)
    slow = ("d_svd", "d_rep", "mcca_f", "mcca_g")
    with progress_bar(progress or "measures", len(slow), None if progress else False) as update:
        for i, name in enumerate(slow):
            run(name)
            update(i + 1)
    notes = []
    M = max(a.M, b.M)
    sv, d = out["d_svd"], out["d_llv"]
    if (sv is not None and d is not None and np.isfinite(sv.max_d_svd)
            and sv.max_d_svd > 2 * M * d.value + 1e-9):
        notes.append("max d_SVD exceeds the bound 2 M d_LLV")
    return Report(name1=a.name or "model 1", name2=b.name or "model 2", N=a.N, V=a.V,
                  M1=a.M, M2=b.M, backend=be, kl=out["kl"], d_llv=d, d_logit=out["d_logit"],
                  mcca_f=out["mcca_f"], mcca_g=out["mcca_g"], d_svd=sv, d_rep=out["d_rep"],
                  seconds=time.perf_counter() - t0, notes=notes, failures=failures)


def _budgets(M, max_label_sets):
    """The default number of d_SVD label sets: each costs O(M^3)."""
    if max_label_sets is None:
        max_label_sets = 1000 if M <= 16 else 64 if M <= 64 else 16 if M <= 256 else 2
    return max_label_sets
