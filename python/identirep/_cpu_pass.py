"""The streaming pass on the CPU: one pass over (input tile, label tile) blocks.

Each block's two logit tiles come from a BLAS GEMM into a bounded workspace; the compiled
epilogue (``_core.lse_kl_update``) folds them into O(N) running state, so the N x V logits
never exist in memory. See csrc/kernels/lse_kl.h for the state layout and formulas. The
Jensen-Shannon divergence needs both log-normalisers first: a second pass over the same tiles
(``jsd_pass``, ``_core.jsd_update``, csrc/kernels/jsd.h).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import _core
from . import _rules as rules
from .errors import IdentirepError
from .passes import PassStats, check_pass_shapes, finalize, init_state

# Default tile shape, tuned on a 2-core AVX-512 machine with OpenBLAS (benchmarks/bench_stream.py):
# every GEMM call re-packs its label tile, so input tiles take as many rows as the workspace
# allows (all N when they fit) and label tiles a few thousand columns.
DEFAULT_TILE_COLS = 4096
#: the most labels per input the pass's top-k keeps (its state holds N x k values and ids per
#: model: a bound, so that no top-k becomes the N x V ranking of a large vocabulary)
MAX_TOPK = 1024


def default_epilogue_threads() -> int:
    """OpenMP threads for the epilogue that runs right after each BLAS call.

    OpenBLAS's worker threads busy-wait (without yielding) for a while after a GEMM, so the
    epilogue's extra OpenMP threads share cores with them and run at about half speed: with P
    cores, P threads take ~2/P of the one-thread time. That only pays for P > 2; on 2 cores the
    calling thread alone is faster (measured with benchmarks/bench_stream.py).
    """
    threads = _core.build_info()["openmp_max_threads"]
    return 1 if threads <= 2 else 0


def _check_operand(a, name: str) -> None:
    # Shape and dtype only: a finiteness scan would cost a pass over g; NaN/Inf inputs give
    # NaN/Inf results in the rows they touch (identirep.Model validates values).
    if not isinstance(a, np.ndarray):
        raise IdentirepError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise IdentirepError(f"{name} must be a 2-d array, got shape {a.shape}")
    if a.size == 0:
        raise IdentirepError(f"{name} is empty (shape {a.shape})")
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise IdentirepError(
            f"{name} has dtype {a.dtype}; stream_pass needs floating-point arrays "
            "(float16, bfloat16, float32, float64)")


def _compute_dtype(arrays, dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float64 if all(a.dtype == np.float64 for a in arrays) else np.float32)
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise IdentirepError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _as_compute(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """C-contiguous copy (or view, when already right) of ``a`` in the compute dtype."""
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return np.ascontiguousarray(a, dtype=dt)


def _tile_shape(n, v, m1, m2, itemsize, tile_rows, tile_cols, workspace_bytes):
    """(rows, cols) of the logit tiles: as asked, or the defaults, shrunk to the workspace."""
    for name, t in (("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if t is not None and int(t) < 1:
            raise IdentirepError(f"{name} must be >= 1, got {t}")

    def need(r, c):  # two logit tiles + the converted label tiles of both models
        return itemsize * (2 * r * c + c * (m1 + m2))

    tc = min(v, int(tile_cols) if tile_cols else DEFAULT_TILE_COLS)
    if tile_rows:
        tr = min(n, int(tile_rows))
    else:
        while tc > 1 and need(1, tc) > workspace_bytes:
            tc //= 2
        tr = min(n, max(1, (workspace_bytes - need(0, tc)) // (2 * itemsize * tc)))
    while need(tr, tc) > workspace_bytes and (tr > 1 or tc > 1):
        if tr >= tc or tc == 1:
            tr = max(1, tr // 2)
        else:
            tc = max(1, tc // 2)
    if need(tr, tc) > workspace_bytes:
        raise IdentirepError(
            f"workspace_bytes={workspace_bytes} is too small for even one 1 x 1 tile; "
            f"need at least {need(1, 1)} bytes")
    return tr, tc


def _threads(epilogue_threads) -> int:
    if epilogue_threads is None:
        return default_epilogue_threads()
    if int(epilogue_threads) < 0:
        raise IdentirepError(f"epilogue_threads must be >= 0, got {epilogue_threads}")
    return int(epilogue_threads)


def _logit_tiles(f1, g1, f2, g2, dt, tile_rows, tile_cols, workspace_bytes, progress):
    """The pass's tile loop: yields (r0, c0, l1, l2), the two logit tiles of inputs r0.. and
    labels c0.. in the workspace (label tiles outer, so each row sees its labels in increasing
    order), and reports progress after each."""
    n, v = f1.shape[0], g1.shape[0]
    tr, tc = _tile_shape(n, v, f1.shape[1], f2.shape[1], dt.itemsize, tile_rows, tile_cols,
                         workspace_bytes)
    f1c = _as_compute(f1, dt)
    f2c = _as_compute(f2, dt)
    ws1 = np.empty(tr * tc, dtype=dt)
    ws2 = np.empty(tr * tc, dtype=dt)
    n_tiles = -(-n // tr) * -(-v // tc)
    done = 0
    for c0 in range(0, v, tc):
        c1 = min(v, c0 + tc)
        g1t = _as_compute(g1[c0:c1], dt).T
        g2t = _as_compute(g2[c0:c1], dt).T
        for r0 in range(0, n, tr):
            r1 = min(n, r0 + tr)
            size = (r1 - r0) * (c1 - c0)
            l1 = ws1[:size].reshape(r1 - r0, c1 - c0)
            l2 = ws2[:size].reshape(r1 - r0, c1 - c0)
            np.matmul(f1c[r0:r1], g1t, out=l1)
            np.matmul(f2c[r0:r1], g2t, out=l2)
            yield r0, c0, l1, l2
            done += 1
            if progress is not None:
                progress(done / n_tiles)


def stream_pass(f1, g1, f2, g2, *, tile_rows: Optional[int] = None,
                tile_cols: Optional[int] = None, workspace_bytes: int = 256 << 20,
                dtype=None, progress: Optional[Callable[[float], None]] = None,
                epilogue_threads: Optional[int] = None, moments: bool = False,
                topk: int = 0) -> dict:
    """Log-normalisers, KL both ways, entropies and top-1 agreement of two softmax models.

    ``p_k(y|x) = softmax_y(f_k(x) . g_k(y))`` with f1 (N x M1), g1 (V x M1), f2 (N x M2),
    g2 (V x M2) as NumPy arrays of any float dtype (float16/bfloat16 are widened), in any memory
    order. Computes in ``dtype``: float64 when every input is float64, float32 otherwise (or as
    given). Never holds more than ``workspace_bytes`` of logit tiles and converted label tiles.
    Values are not scanned: NaN or Inf inputs give NaN/Inf results in the rows they reach.
    ``epilogue_threads`` sets the OpenMP threads of the epilogue (0: all; default: see
    ``default_epilogue_threads``).
    ``progress``, if given, is called with the fraction done after each tile.
    ``moments`` also returns ``row_moments`` (5, N) and ``col_moments`` (5, V): the label
    moments of each input's logits and the input moments of each label's logits (layout in
    csrc/kernels/lse_kl.h), from the same tiles.

    ``topk`` > 0 also returns ``topk1``, ``topk2``: (N, k) int64, each model's k = min(topk, V)
    most likely labels per input (largest logits first, ties to the lower label id), from the
    same tiles in the compiled epilogue; a slot no label filled (an input whose logits are NaN)
    holds -1.

    Returns float64 arrays of length N: ``L1``, ``L2`` (log-normalisers), ``kl12`` =
    KL(p1||p2)(x), ``kl21`` = KL(p2||p1)(x), ``H1``, ``H2`` (entropies), and the bool array
    ``top1_agree`` (the two models' most likely labels coincide).
    """
    for a, name in ((f1, "f1"), (g1, "g1"), (f2, "f2"), (g2, "g2")):
        _check_operand(a, name)
    check_pass_shapes(f1, g1, f2, g2)
    rules.check_count("topk", topk, minimum=0)
    topk = int(topk)
    if topk > MAX_TOPK:
        raise IdentirepError(f"topk={topk}: the pass keeps at most the {MAX_TOPK} largest "
                             "logits per input (N x k values and ids per model)",
                             fix=f"pass topk <= {MAX_TOPK} (the per-token report uses 10)")

    dt = _compute_dtype((f1, g1, f2, g2), dtype)
    threads = _threads(epilogue_threads)
    n, v = f1.shape[0], g1.shape[0]
    state, args = init_state(n)
    row_m = np.zeros((5, n)) if moments else None
    col_m = np.zeros((5, v)) if moments else None
    k = min(topk, v)
    top_v = np.full((2, n, k), -np.inf) if k else None
    top_i = np.full((2, n, k), -1, dtype=np.int64) if k else None

    for r0, c0, l1, l2 in _logit_tiles(f1, g1, f2, g2, dt, tile_rows, tile_cols,
                                       workspace_bytes, progress):
        r1 = r0 + l1.shape[0]
        _core.lse_kl_update(l1, l2, state[:, r0:r1], args[:, r0:r1], c0, threads,
                            None if row_m is None else row_m[:, r0:r1], col_m, r0,
                            None if top_v is None else top_v[:, r0:r1],
                            None if top_i is None else top_i[:, r0:r1])
    out = finalize(state, args)
    if moments:
        out["row_moments"], out["col_moments"] = row_m, col_m
    if k:
        out["topk1"], out["topk2"] = top_i[0], top_i[1]
    return out


def jsd_pass(f1, g1, f2, g2, L1, L2, *, tile_rows: Optional[int] = None,
             tile_cols: Optional[int] = None, workspace_bytes: int = 256 << 20, dtype=None,
             progress: Optional[Callable[[float], None]] = None,
             epilogue_threads: Optional[int] = None) -> np.ndarray:
    """Per-input Jensen-Shannon divergence of two softmax models, in nats: a second streaming
    pass, given both log-normalisers.

    Parameters
    ----------
    f1, g1, f2, g2 : numpy.ndarray
        The pass's operands, as for ``stream_pass`` (bias absorbed: ``Model.augmented``).
    L1, L2 : array_like
        (N,) log-normalisers of the two models (``stream_pass``'s ``L1``, ``L2``, or
        ``PassStats.L1``, ``L2``), from logits computed in the same dtype.
    tile_rows, tile_cols, workspace_bytes, dtype, progress, epilogue_threads
        As for ``stream_pass`` (the same tiles and workspace bound).

    Returns
    -------
    numpy.ndarray
        (N,) float64: ``JSD(x) = 0.5 KL(p1||m) + 0.5 KL(p2||m)``, ``m = (p1 + p2) / 2``,
        ``p_k = exp(l_k - L_k)``, a term with p = 0 counting 0; between 0 and log 2. NaN where
        a log-normaliser is NaN. The formula and its accuracy are in csrc/kernels/jsd.h.
    """
    for a, name in ((f1, "f1"), (g1, "g1"), (f2, "f2"), (g2, "g2")):
        _check_operand(a, name)
    check_pass_shapes(f1, g1, f2, g2)
    n = f1.shape[0]
    Ls = []
    for L, name in ((L1, "L1"), (L2, "L2")):
        L = np.asarray(L)
        if L.shape != (n,) or L.dtype.kind not in "fiu":
            raise IdentirepError(
                f"{name} must be a real (N,) = ({n},) array of log-normalisers, got "
                f"{L.dtype} {L.shape}", fix="pass the first pass's L1 and L2 (PassStats.L1, .L2)")
        Ls.append(np.ascontiguousarray(L, dtype=np.float64))
    dt = _compute_dtype((f1, g1, f2, g2), dtype)
    threads = _threads(epilogue_threads)
    out = np.zeros(n)
    for r0, _, l1, l2 in _logit_tiles(f1, g1, f2, g2, dt, tile_rows, tile_cols,
                                      workspace_bytes, progress):
        r1 = r0 + l1.shape[0]
        _core.jsd_update(l1, l2, Ls[0][r0:r1], Ls[1][r0:r1], out[r0:r1], threads)
    return out


def cpu_pass(f1, g1, f2, g2, progress=None, topk: int = 0, **kw) -> PassStats:
    """The compiled CPU pass: BLAS GEMM tiles + the fused C++ epilogue (identirep._core).
    ``topk`` > 0 fills ``PassStats.topk1``, ``topk2`` (see ``stream_pass``)."""
    o = stream_pass(f1, g1, f2, g2, progress=progress, moments=True, topk=topk, **kw)
    r, c = o["row_moments"], o["col_moments"]
    dt = "float64" if all(np.asarray(x).dtype == np.float64 for x in (f1, g1, f2, g2)) else "float32"
    return PassStats(L1=o["L1"], L2=o["L2"], kl12=o["kl12"], kl21=o["kl21"], H1=o["H1"],
                     H2=o["H2"], agree=o["top1_agree"], row_mean1=r[0], row_mean2=r[1],
                     row_m2_11=r[2], row_m2_22=r[3], row_m2_dd=r[4], col_mean1=c[0],
                     col_mean2=c[1], col_m2_11=c[2], col_m2_22=c[3], col_m2_12=c[4],
                     backend="cpu", dtype=dt, topk1=o.get("topk1"), topk2=o.get("topk2"))
