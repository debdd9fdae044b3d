"""The per-token report: what each position (token) of a text says about two models.

From the streaming pass (per input: log-normalisers, KL both ways, each model's top-k ids)
and a few gathered logits (the target's and the other model's top token's, f(x).g(y) + b(y)
in float64 for those (x, y) pairs only: never N x V), ``per_token_arrays`` gives the
per-position arrays; ``token_report`` summarises them (``results.TokenReport``) as the
quantisation tools do, with the positions and target tokens where the models differ most
shown as text. ``compare`` runs both when the models carry ``tokens`` or ``targets``.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _rules as rules
from .errors import IdentirepError
from .model import Model, to_numpy
from .passes import PassStats
from .progress import progress_bar
from ._token_text import TokenText
from .results import TokenReport, TokenShown, TopPosition, TopTarget

#: the quantiles of the per-position KL and JSD, and their keys
QUANTILES = (("q50", 0.5), ("q90", 0.9), ("q95", 0.95), ("q99", 0.99), ("q99.9", 0.999))
#: the k of the top-k agreement reported (those up to the top-k the pass computed)
AGREEMENT_KS = (1, 5, 10)
#: the largest top-k the report asks of the pass (compare's top_k, --top-k): the pass keeps
#: N x k ids and N x k float64 values per model; the pass itself takes up to
#: ``_cpu_pass.MAX_TOPK`` (1024)
MAX_TOP_K = 100
#: bytes of float64 rows gathered at a time
_CHUNK_BYTES = 16 << 20
#: a float32 pass's per-position KL is within FLOAT32_KL_ERROR x (1 + |L1 - L2| + (|L1| +
#: |L2|) sqrt(KL) + KL) nats of the exact value (``float32_kl_bound``): 64 float32 epsilons,
#: twice the largest ratio measured on random, shifted and offset pairs (|logits| to ~100)
FLOAT32_KL_ERROR = 64 * float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------- the arrays
def gathered_logits(m: Model, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """l(x, y) = f(x).g(y) + b(y) of ``m`` in float64 for the pairs (rows[i], labels[i]):
    the rows of f and g are gathered and widened to float64 a chunk at a time."""
    f, g = to_numpy(m.f), to_numpy(m.g)
    b = None if m.bias is None else to_numpy(m.bias, np.float64)
    out = np.empty(len(rows), np.float64)
    step = max(1, _CHUNK_BYTES // (16 * max(1, m.M)))
    for i0 in range(0, len(rows), step):
        r, y = rows[i0:i0 + step], labels[i0:i0 + step]
        out[i0:i0 + step] = np.einsum("ij,ij->i", f[r].astype(np.float64, copy=False),
                                      g[y].astype(np.float64, copy=False))
        if b is not None:
            out[i0:i0 + step] += b[y]
    return out


def _log_p(m: Model, L: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p(labels[x] | x) for every input x (NaN where the label is < 0), at most 0: the
    logit is gathered in float64 and L comes from the pass, which in float32 may fall below
    the largest logit by its rounding (log p = +4e-6, p = 1.000004); it is clipped to 0."""
    out = np.full(len(labels), np.nan)
    rows = np.flatnonzero(labels >= 0)
    out[rows] = np.minimum(gathered_logits(m, rows, labels[rows]) - L[rows], 0.0)
    return out


def per_token_arrays(a: Model, b: Model, stats: PassStats,
                     jsd: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """The per-position arrays of a pair from its streaming pass.

    Parameters
    ----------
    a, b : Model
        The models the pass ran on.
    stats : PassStats
        The pass, run with ``topk`` > 0 (``engine(a, b, topk=k)``, ``cpu_pass(..., topk=k)``).
    jsd : array (N,), optional
        The per-input Jensen-Shannon divergence (``_cpu_pass.jsd_pass``).

    Returns
    -------
    dict
        The keys of ``reference.per_token_reference``: ``L1``, ``L2``, ``kl12``, ``kl21``
        (clipped at 0), ``top1``, ``top2`` (N, k), ``logp1``, ``logp2`` (log p_k(target | x),
        NaN where the target is < 0 or the model has no targets), ``p2_of_top1``,
        ``p1_of_top2``, and ``jsd`` when given. The logits of the targets and top tokens are
        f.g + b in float64 minus the pass's log-normalisers, clipped to log p <= 0 (p <= 1:
        a float32 pass's L may round below the largest logit)."""
    if getattr(stats, "topk1", None) is None or getattr(stats, "topk2", None) is None:
        raise IdentirepError("the pass ran without top-k token ids, which the per-token "
                             "arrays need", fix="run it with topk > 0: engine(a, b, topk=10)")
    N = a.N
    L1, L2 = np.asarray(stats.L1, np.float64), np.asarray(stats.L2, np.float64)
    top1, top2 = np.asarray(stats.topk1, np.int64), np.asarray(stats.topk2, np.int64)
    out = {"L1": L1, "L2": L2, "kl12": np.maximum(stats.kl12, 0.0),
           "kl21": np.maximum(stats.kl21, 0.0), "top1": top1, "top2": top2}
    for k, (m, L) in enumerate(((a, L1), (b, L2)), 1):
        t = _field(m, "targets")
        out[f"logp{k}"] = np.full(N, np.nan) if t is None else _log_p(m, L, t)
    out["p2_of_top1"] = np.exp(_log_p(b, L2, top1[:, 0]))
    out["p1_of_top2"] = np.exp(_log_p(a, L1, top2[:, 0]))
    if jsd is not None:
        jsd = np.asarray(jsd, np.float64)
        if jsd.shape != (N,):
            raise IdentirepError(f"jsd must hold one value per input, shape ({N},), got "
                                 f"{jsd.shape}")
        out["jsd"] = jsd
    return out


def _field(m: Model, name: str) -> Optional[np.ndarray]:
    """A per-input field of a model (``tokens``, ``targets``, ``documents``) as int64, or
    None."""
    v = getattr(m, name, None)
    return None if v is None else np.asarray(v, np.int64)


def _shared(a: Model, b: Model, name: str) -> Optional[np.ndarray]:
    """The pair's ``tokens``, ``targets`` or ``documents``: either model's (they are equal
    where both carry them: ``check_per_token_models``)."""
    va = _field(a, name)
    return va if va is not None else _field(b, name)


# ------------------------------------------------------------------------- when and how
def carries_text(m: Model) -> bool:
    """Whether a model carries per-position ``tokens`` or ``targets`` (a language model's
    extraction keeps them)."""
    return _field(m, "tokens") is not None or _field(m, "targets") is not None


def per_token_choice(a: Model, b: Model, backend: str, per_token, top_k, jsd
                     ) -> Tuple[bool, Optional[str]]:
    """Check compare's per-token options and decide: (on, note for the report or None).

    ``per_token=None`` is on when both models carry ``tokens`` or ``targets`` and the backend
    is the CPU or the reference, off (with a note) on a GPU backend; ``jsd=True`` asks for
    the per-token report too. On a GPU backend, asking for it is an error."""
    if per_token is not None:
        rules.check_flag("per_token", per_token)
    rules.check_flag("jsd", jsd)
    rules.check_count("top_k", top_k)
    if top_k > MAX_TOP_K:
        raise IdentirepError(f"top_k={top_k}: the per-token report keeps at most the "
                             f"{MAX_TOP_K} most likely tokens per position (N x k ids and "
                             "values per model)", fix=f"give top_k={MAX_TOP_K} or less (default 10)")
    if jsd and per_token is False:
        raise IdentirepError("jsd=True asks for the per-token Jensen-Shannon divergence, and "
                             "per_token=False turns the per-token report off",
                             fix="leave per_token out (or True), or drop jsd=True")
    wanted = bool(per_token) or bool(jsd)
    if backend in ("cuda", "cupy"):
        if wanted:
            raise IdentirepError(
                f"the per-token report (top-k ids{', JSD' if jsd else ''}) runs on the CPU "
                f"backend; the {backend} backend does not compute it",
                fix='pass backend="cpu" (or --backend cpu), or per_token=False')
        if per_token is None and carries_text(a) and carries_text(b):
            return False, (f"per-token report: off on the {backend} backend (it runs on the "
                           "CPU backend: backend='cpu', --backend cpu)")
        return False, None
    on = wanted or (per_token is None and carries_text(a) and carries_text(b))
    if on:
        check_per_token_models(a, b)
    return on, None


def check_per_token_models(a: Model, b: Model) -> None:
    """Both models' ``targets``, where both carry them, must be equal: the per-token report
    reads one text (``model.check_pair`` compares ``tokens`` and ``documents``)."""
    ta, tb = _field(a, "targets"), _field(b, "targets")
    if ta is None or tb is None or np.array_equal(ta, tb):
        return
    i = int(np.flatnonzero(ta != tb)[0])
    raise IdentirepError(f"the models' targets differ at position {i} ({ta[i]} vs {tb[i]}): "
                         "they were evaluated on different texts",
                         fix="extract both models on the same texts (and tokenizer)")


def engine_token_report(e, jsd: bool = False, **report_options) -> TokenReport:
    """The per-token report of a pair from its engine (whose pass ran with ``topk`` > 0):
    with ``jsd``, the second pass (``_cpu_pass.jsd_pass``), timed."""
    from ._cpu_pass import jsd_pass
    a, b, s = e.a, e.b, e.stats
    values, seconds = None, None
    if jsd:
        t0 = time.perf_counter()
        f1, g1 = a.augmented(None)
        f2, g2 = b.augmented(None)
        with progress_bar("JSD pass", 1.0) as update:
            values = jsd_pass(f1, g1, f2, g2, s.L1, s.L2, progress=update)
        seconds = time.perf_counter() - t0
    return token_report(a, b, per_token_arrays(a, b, s, values), jsd_seconds=seconds,
                        pass_dtype=s.dtype, **report_options)


def reference_token_report(a: Model, b: Model, top_k: int = 10, jsd: bool = False,
                           **report_options) -> TokenReport:
    """The per-token report from the float64 oracle (``reference.per_token_reference``)."""
    from .reference import per_token_reference
    return token_report(a, b, per_token_reference(a, b, k=top_k, jsd=jsd), **report_options)


# ------------------------------------------------------------------------- the summary
def mean_interval(x: np.ndarray, documents: Optional[np.ndarray] = None,
                  level: float = 0.95) -> Tuple[List[float], str]:
    """The mean of ``x`` with a ``level`` interval, and how it was computed.

    With ``documents`` of at least 2 distinct values: mean +- t(G - 1) x the cluster-robust
    standard error over the G documents, sqrt(G / (G - 1) sum_d (S_d - n_d mean)^2) / n,
    S_d and n_d the sum and count of document d (positions of a text are correlated, so the
    documents, not the positions, are the independent draws; with equal n_d it is the
    t-interval of the documents' means). Otherwise the positions are taken as independent:
    mean +- t(n - 1) sd / sqrt(n) (sd with ddof = 1). t(df) is Student's t quantile of
    (1 + level) / 2; the interval is symmetric and not clipped at 0."""
    from scipy.special import stdtrit
    n = len(x)
    mean = float(x.mean())
    q = (1 + level) / 2
    if documents is not None:
        _, inv, counts = np.unique(documents, return_inverse=True, return_counts=True)
        G = len(counts)
        if G >= 2:
            resid = np.bincount(inv, weights=x, minlength=G) - counts * mean
            se = math.sqrt(G / (G - 1) * float(resid @ resid)) / n
            h = float(stdtrit(G - 1, q)) * se
            return [mean - h, mean + h], (
                f"mean +- t({G - 1}) x cluster-robust standard error over the {G} documents "
                "(positions of a text are correlated)")
    how = ("one document" if documents is not None else "no documents given")
    if n < 2:
        return [math.nan, math.nan], f"none: one position ({how})"
    h = float(stdtrit(n - 1, q)) * float(x.std(ddof=1)) / math.sqrt(n)
    return [mean - h, mean + h], (
        f"mean +- t({n - 1}) sd / sqrt(n) over the positions taken as independent ({how}; "
        "too narrow when neighbouring positions are correlated)")


def quantiles(x: np.ndarray) -> Dict[str, float]:
    """The QUANTILES of ``x`` (NumPy's default linear interpolation)."""
    vals = np.quantile(x, [q for _, q in QUANTILES])
    return {name: float(v) for (name, _), v in zip(QUANTILES, vals)}


def topk_agreement(top1: np.ndarray, top2: np.ndarray, k: int) -> float:
    """Mean over rows of |T1_k & T2_k| / k, T_k the first k ids of a row (distinct ids)."""
    total = 0
    step = max(1, (4 << 20) // (k * k))
    for i0 in range(0, len(top1), step):
        t1, t2 = top1[i0:i0 + step, :k], top2[i0:i0 + step, :k]
        total += int((t1[:, :, None] == t2[:, None, :]).any(2).sum())
    return total / (len(top1) * k)


def float32_kl_bound(arrays: Dict[str, np.ndarray], key: str = "kl12") -> np.ndarray:
    """The bound on each position's rounding error of a float32 pass's ``key`` (``kl12`` or
    ``kl21``): FLOAT32_KL_ERROR x (1 + |L1 - L2| + (|L1| + |L2|) sqrt(KL) + KL) nats.

    The float32 GEMM tiles round each logit by ~1e-7 of its size (|L| stands for it), which
    enters the KL weighted by p2 - p1 (so by sqrt(KL), Pinsker); the epilogue's float32 exp
    and partial sums over 512 labels round the means of l1 - l2 (|L1 - L2| + KL) and the
    normalisers (the 1)."""
    L1, L2, kl = arrays["L1"], arrays["L2"], arrays[key]
    return FLOAT32_KL_ERROR * (1 + np.abs(L1 - L2) + (np.abs(L1) + np.abs(L2)) * np.sqrt(kl)
                               + kl)


def float32_note(arrays: Dict[str, np.ndarray]) -> str:
    """The report's note on a float32 pass's per-position rounding."""
    bound = float32_kl_bound(arrays)
    return (f"float32 pass: each position's KL carries rounding (float32 GEMM tiles, the "
            f"epilogue's float32 exp and partial sums) within {FLOAT32_KL_ERROR:.1e} x (1 + "
            f"|L1 - L2| + (|L1| + |L2|) sqrt(KL) + KL) nats, here {np.median(bound):.1e} "
            f"(median) to {bound.max():.1e} (max); per-position KL below ~1e-5 nats is mostly "
            "noise (measured: ~1e-7 median, ~1e-6 max on close pairs), and log p(target) is "
            "good to ~1e-6 of |L|: extract and compare in float64 (identirep extract "
            "--dtype float64) for such values")


def lost_targets_note(a: Model, b: Model) -> Optional[str]:
    """A note on the targets ``drop_masked_labels`` turned into -1 (None: none)."""
    lost = max(int(((m.metadata or {}).get("masked_labels_dropped") or {}).get(
        "targets_lost", 0) or 0) for m in (a, b))
    if not lost:
        return None
    return (f"{lost} position(s) lost their target to drop_masked_labels (the target's label "
            "was dropped as masked): they are left out of the perplexities and delta p, which "
            "are over the remaining positions with a target")


def token_report(a: Model, b: Model, arrays: Dict[str, np.ndarray], k: int = 10, *,
                 context: int = 12, shown: int = 3,
                 jsd_seconds: Optional[float] = None,
                 pass_dtype: str = "float64") -> TokenReport:
    """Summarise per-position arrays (``per_token_arrays`` or the reference's).

    Parameters
    ----------
    a, b : Model
        The models (their ``tokens``, ``targets``, ``documents`` and ``labels`` give the text).
    arrays : dict
        As returned by ``per_token_arrays``.
    k : int
        How many positions and target tokens with the largest KL are listed (10).
    context : int
        The input tokens shown before and at each listed position (within its document).
    shown : int
        Each model's most likely tokens shown at a listed position.
    jsd_seconds : float, optional
        What the JSD cost, for the report.
    pass_dtype : {"float64", "float32"}
        The dtype of the pass the arrays come from: "float32" adds a note with the rounding
        bound of the per-position KL (``float32_kl_bound``).

    Returns
    -------
    TokenReport
        Every statistic, defined in ``TokenReport.definitions``."""
    rules.check_count("k", k)
    rules.check_count("context", context)
    rules.check_count("shown", shown)
    kl12, kl21 = arrays["kl12"], arrays["kl21"]
    top1, top2 = arrays["top1"], arrays["top2"]
    N, K = len(kl12), top1.shape[1]
    docs = _shared(a, b, "documents")
    tokens = _shared(a, b, "tokens")
    targets = _shared(a, b, "targets")
    text = TokenText(a.labels if a.labels is not None else b.labels)
    notes = []
    ci12, how = mean_interval(kl12, docs)
    ci21, _ = mean_interval(kl21, docs)
    lp1, lp2 = arrays["logp1"], arrays["logp2"]
    has = np.isfinite(lp1) & np.isfinite(lp2)
    n_t = int(has.sum())
    ppl1 = ppl2 = ratio = dp_mean = dp_rms = None
    if n_t:
        with np.errstate(over="ignore"):
            ppl1 = float(np.exp(-lp1[has].mean()))
            ppl2 = float(np.exp(-lp2[has].mean()))
            ratio = float(np.exp(lp1[has].mean() - lp2[has].mean()))
        dp = np.exp(lp2[has]) - np.exp(lp1[has])
        dp_mean, dp_rms = float(dp.mean()), float(np.sqrt((dp * dp).mean()))
    elif targets is not None:
        notes.append("no position has a target known to both models: no perplexity, no "
                     "delta p")
    lost = lost_targets_note(a, b)
    if lost:
        notes.append(lost)
    if pass_dtype == "float32":
        notes.append(float32_note(arrays))
    # k = V labels agree trivially (each list holds every label)
    ks = sorted({kk for kk in AGREEMENT_KS + (K,) if kk <= K and (kk == 1 or kk < a.V)})
    agreement = {f"top{kk}": topk_agreement(top1, top2, kk) for kk in ks}
    jsd = arrays.get("jsd")
    full = dict(arrays)
    for name, v in (("tokens", tokens), ("targets", targets), ("documents", docs)):
        if v is not None:
            full[name] = v
    order = np.argsort(-kl12, kind="stable")[:k]
    return TokenReport(
        positions=N, positions_with_target=n_t,
        documents=None if docs is None else int(len(np.unique(docs))),
        kl12_mean=float(kl12.mean()), kl12_ci=ci12, kl21_mean=float(kl21.mean()), kl21_ci=ci21,
        ci_method=how, kl12_quantiles=quantiles(kl12), kl12_max=float(kl12.max()),
        kl21_quantiles=quantiles(kl21), kl21_max=float(kl21.max()),
        ppl1=ppl1, ppl2=ppl2, ppl_ratio=ratio, dp_mean=dp_mean, dp_rms=dp_rms,
        top_k=K, agreement=agreement,
        p2_of_top1_mean=float(arrays["p2_of_top1"].mean()),
        p1_of_top2_mean=float(arrays["p1_of_top2"].mean()),
        top_positions=[_position(a, b, arrays, int(i), text, tokens, targets, docs, context,
                                 min(shown, K)) for i in order],
        top_targets=_top_targets(kl12, targets, text, k),
        token_text=text.how,
        jsd_mean=None if jsd is None else float(jsd.mean()),
        jsd_quantiles=None if jsd is None else quantiles(jsd),
        jsd_max=None if jsd is None else float(jsd.max()),
        jsd_seconds=jsd_seconds, notes=notes, arrays=full)


def _position(a, b, arrays, i, text, tokens, targets, docs, context, shown) -> TopPosition:
    start = max(0, i - context + 1)
    if docs is not None:
        start = max(start, int(np.searchsorted(docs, docs[i], "left")))
    ids = [] if tokens is None else tokens[start:i + 1].tolist()
    t = -1 if targets is None else int(targets[i])
    lp1, lp2 = arrays["logp1"][i], arrays["logp2"][i]

    def top(m, which, L):
        ids_k = arrays[which][i, :shown]
        p = np.exp(np.minimum(gathered_logits(m, np.full(len(ids_k), i), ids_k) - L[i], 0.0))
        return [TokenShown(int(y), text.token(int(y)), float(q)) for y, q in zip(ids_k, p)]
    return TopPosition(
        position=i, document=None if docs is None else int(docs[i]),
        kl12=float(arrays["kl12"][i]), kl21=float(arrays["kl21"][i]),
        jsd=float(arrays["jsd"][i]) if "jsd" in arrays else None,
        context=text.text(ids), context_tokens=[text.token(y) for y in ids], target=t,
        target_token=text.token(t) if t >= 0 else None,
        p1_target=float(np.exp(lp1)) if np.isfinite(lp1) else None,
        p2_target=float(np.exp(lp2)) if np.isfinite(lp2) else None,
        top1=top(a, "top1", arrays["L1"]), top2=top(b, "top2", arrays["L2"]))


def _top_targets(kl12, targets, text, k) -> List[TopTarget]:
    if targets is None:
        return []
    has = targets >= 0
    if not has.any():
        return []
    t = targets[has]
    sums = np.bincount(t, weights=kl12[has])
    counts = np.bincount(t)
    ids = np.flatnonzero(counts)
    ids = ids[np.lexsort((ids, -sums[ids]))][:k]
    return [TopTarget(int(y), text.token(int(y)), int(counts[y]), float(sums[y]),
                      float(sums[y] / counts[y])) for y in ids]


# ------------------------------------------------------------------------- the file
#: the columns of ``--per-token FILE.csv``, in order
CSV_COLUMNS = ("position", "document", "token", "target", "token_text", "target_text",
               "kl12", "kl21", "jsd", "logp1", "logp2", "p2_of_top1", "p1_of_top2",
               "top1_id", "top2_id", "top1_text", "top2_text")


def check_per_token_path(path) -> None:
    """``--per-token FILE`` ends in .npz or .csv (what is written is chosen by it)."""
    if Path(path).suffix.lower() not in (".npz", ".csv"):
        raise IdentirepError(f"--per-token {path}: the file name must end in .npz (NumPy "
                             "arrays) or .csv (one row per position)",
                             fix=f"e.g. --per-token {Path(path).with_suffix('.npz')}")


def save_per_token(path, report: TokenReport, labels=None) -> None:
    """Write a report's per-position arrays: ``.npz`` (every array of ``report.arrays``
    under its name, plus ``position``; ``top1``/``top2`` are N x k ids) or ``.csv`` (the
    CSV_COLUMNS, one row per position, token texts from ``labels`` as in the report; an
    empty cell where a value does not exist: no documents, no target, no JSD)."""
    check_per_token_path(path)
    arr = dict(report.arrays)
    arr["position"] = np.arange(report.positions)
    if Path(path).suffix.lower() == ".npz":
        with open(path, "wb") as fh:
            np.savez(fh, **arr)
        return
    text = TokenText(labels)
    ids = {"position": arr["position"], "document": arr.get("documents"),
           "token": arr.get("tokens"), "target": arr.get("targets"),
           "top1_id": arr["top1"][:, 0], "top2_id": arr["top2"][:, 0]}
    words = {"token_text": ids["token"], "target_text": ids["target"],
             "top1_text": ids["top1_id"], "top2_text": ids["top2_id"]}
    cols = []
    for name in CSV_COLUMNS:
        if name in ids:
            v = ids[name]
            cols.append([""] * report.positions if v is None else v.tolist())
        elif name in words:
            v = words[name]
            cols.append([""] * report.positions if v is None else
                        [text.token(y) if y >= 0 else "" for y in v.tolist()])
        else:
            v = arr.get(name)
            cols.append([""] * report.positions if v is None else
                        [repr(x) if math.isfinite(x) else "" for x in v.tolist()])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        w.writerows(zip(*cols))
