"""Linear-algebra helpers of the engine: the LAPACK error policy, square-root factors and
whitenings, float64 products of tall float32/float64 arrays, centred scatter blocks and the
singular values of small matrices. Every function runs where its arrays live (NumPy's
BLAS/LAPACK, or cuBLAS/cuSOLVER through CuPy for device arrays) and uses NumPy's BLAS only on
the host: a second BLAS library's idle threads would spin against it (NOTES.md)."""
from __future__ import annotations

import contextlib
import threading
import os

import numpy as np

from ._arrays import array_module
from ._rules import (CONSTANT_COLUMN_RTOL, MCCA_RANK_RTOL, NO_VARYING_COLUMN_FIX,
                     no_varying_column_message)
from .errors import IdentirepError
from .model import to_numpy
from .moments import Moments


def linalg_raises(xp):
    """A context in which failed factorisations raise LinAlgError (CuPy ignores them unless
    asked; NumPy always raises)."""
    if xp is np:
        return contextlib.nullcontext()
    import cupyx
    return cupyx.errstate(linalg="raise")


_SERIAL = {"depth": 0, "limit": None, "controller": None}
_SERIAL_LOCK = threading.Lock()


@contextlib.contextmanager
def serial_lapack(xp=np):
    """Run the BLAS/LAPACK libraries on one thread inside the block (host arrays; a no-op for
    device arrays), through threadpoolctl: for work that runs on parallel threads of its own
    (``mean_singular_values``), so that k threads use k cores, not k x the BLAS threads. (On
    a quiet machine a lone factorisation is faster with every BLAS thread: a 2048 x 2048
    compare took 28 s with them and 31 s with LAPACK on one thread, so single calls keep
    them.) The limit is process-wide, so nested blocks share one: it is set by the first to
    enter and lifted by the last to leave, so a caller's own threadpoolctl limit entered and
    left inside such a block is undone by it."""
    if xp is not np:
        yield
        return
    with _SERIAL_LOCK:
        if _SERIAL["depth"] == 0:
            if _SERIAL["controller"] is None:
                from threadpoolctl import ThreadpoolController
                _SERIAL["controller"] = ThreadpoolController()
            _SERIAL["limit"] = _SERIAL["controller"].limit(limits=1, user_api="blas")
        _SERIAL["depth"] += 1
    try:
        yield
    finally:
        with _SERIAL_LOCK:
            _SERIAL["depth"] -= 1
            if _SERIAL["depth"] == 0:
                _SERIAL["limit"].restore_original_limits()
                _SERIAL["limit"] = None


def sqrt_factor(S, xp=np):
    """R with R R' = S for a symmetric positive semi-definite S: Cholesky when S is safely
    positive definite, the eigen square root otherwise. Computed with ``xp`` (NumPy's LAPACK,
    or cuSOLVER through CuPy) and returned there."""
    S = xp.asarray(S)
    try:
        with linalg_raises(xp):
            L = xp.linalg.cholesky(S)
        if _safe_cholesky(L):
            return L
    except np.linalg.LinAlgError:
        pass
    return _eigen_sqrt(S, xp)


def _safe_cholesky(L) -> bool:
    d = L.diagonal()
    return float(d.min()) > 1e-7 * float(d.max())


def _eigen_sqrt(S, xp):
    w, U = xp.linalg.eigh(S)
    return U * xp.sqrt(xp.clip(w, 0.0, None))


def correlation_factor(S: np.ndarray, what: str, xp=np, n: int = None,
                       mean: np.ndarray = None) -> dict:
    """The parts of the data whose scatter is S (host) that ``whiten`` and
    ``sqrt_factor_from`` share: ``idx`` the columns of non-zero variance, ``d`` the diagonal of
    S, ``s`` = d[idx]^-1/2 and ``L`` the Cholesky factor of the correlation matrix of those
    columns (``correlation_matrix``; None when it fails), on ``xp``. Given the
    data's rows ``n`` and column means, a column varies when sd = sqrt(d / n) >
    CONSTANT_COLUMN_RTOL sqrt(mean^2 + sd^2); without them, when d > 1e-24 max d."""
    d = np.diag(S).copy()
    if n and mean is not None:
        var = np.maximum(d, 0.0) / n
        rms2 = np.asarray(mean, np.float64) ** 2 + var
        var = (d > 0) & (var > CONSTANT_COLUMN_RTOL ** 2 * rms2)
    else:
        scale = d.max() if d.size else 0.0
        var = d > 1e-24 * max(scale, 1e-300)
    if not var.any():
        raise IdentirepError(no_varying_column_message(what), fix=NO_VARYING_COLUMN_FIX)
    idx = np.flatnonzero(var)
    s = 1.0 / np.sqrt(d[idx])
    try:
        with linalg_raises(xp):
            L = xp.linalg.cholesky(correlation_matrix(S, idx, s, xp))
    except np.linalg.LinAlgError:
        L = None
    return {"idx": idx, "d": d, "s": s, "L": L}


def correlation_matrix(S: np.ndarray, idx, s, xp=np):
    """The correlation matrix of the columns ``idx`` of the data whose scatter is S (host),
    ``s`` their d^-1/2, on ``xp``: made again where it is needed rather than kept (one
    M x M array less per model and side)."""
    R = S[np.ix_(idx, idx)] if len(idx) < len(S) else np.array(S)
    R *= s[:, None]     # a copy of S's block: scaled in place
    R *= s[None, :]
    return xp.asarray(R)


def sqrt_factor_from(parts: dict, S: np.ndarray, c: float, xp=np):
    """(``sqrt_factor(c S)``, whether it is lower triangular) from S's ``correlation_factor``
    parts: its Cholesky factor is (c d)^1/2 L when every column varies and that factor is
    safe, as ``sqrt_factor`` checks; otherwise ``sqrt_factor(c S)`` itself."""
    L, d = parts["L"], parts["d"]
    if L is not None and len(parts["idx"]) == len(d):
        Lc = xp.asarray(np.sqrt(c * d))[:, None] * L
        if _safe_cholesky(Lc):
            return Lc, True
    return sqrt_factor(c * S, xp), False


#: column blocks of the lower-triangular factor in ``times_lower``
TRI_BLOCK = 256


def times_lower(A, R):
    """A @ R for a lower-triangular R, skipping its zero blocks: column block j of the product
    needs only the rows of R from j on, (B + 1) / 2B of the flops for B blocks of TRI_BLOCK.
    Where A lives (NumPy or CuPy), in the wider dtype of the two."""
    M = R.shape[0]
    if M <= 2 * TRI_BLOCK:
        return A @ R
    xp = array_module(A)
    dt = xp.result_type(A, R)
    A, R = A.astype(dt, copy=False), R.astype(dt, copy=False)
    out = xp.empty((A.shape[0], M), dtype=dt)
    for j0 in range(0, M, TRI_BLOCK):
        j1 = min(M, j0 + TRI_BLOCK)
        out[:, j0:j1] = A[:, j0:] @ R[j0:, j0:j1]
    return out


def times_upper(A, U):
    """A @ U for an upper-triangular U (host), skipping its zero blocks: column block j of
    the product needs only the rows of U up to its end (as ``times_lower``)."""
    M = U.shape[0]
    if M <= 2 * TRI_BLOCK:
        return A @ U
    dt = np.result_type(A, U)
    A, U = A.astype(dt, copy=False), U.astype(dt, copy=False)
    out = np.empty((A.shape[0], U.shape[1]), dtype=dt)
    for j0 in range(0, U.shape[1], TRI_BLOCK):
        j1 = min(U.shape[1], j0 + TRI_BLOCK)
        out[:, j0:j1] = A[:, :j1] @ U[:j1, j0:j1]
    return out


def is_upper(W) -> bool:
    """Whether a square host matrix is upper triangular (exact zeros below the diagonal)."""
    if not (isinstance(W, np.ndarray) and W.ndim == 2 and W.shape[0] == W.shape[1]):
        return False
    for i in range(0, len(W), TRI_BLOCK):   # by row blocks: no copy of W
        j = min(len(W), i + TRI_BLOCK)
        if W[i:j, :i].any() or np.tril(W[i:j, i:j], -1).any():
            return False
    return True


def whiten(S: np.ndarray, what: str, xp=np, rtol: float = MCCA_RANK_RTOL["float64"],
           parts: dict = None, n: int = None, mean: np.ndarray = None):
    """W (d x r) with W' S W = I_r on the column space of the data whose scatter is S (host):
    columns of zero variance are left out, and of the correlation matrix R the directions
    with an eigenvalue above ``rtol`` x the largest are kept (the rank rule of
    ``_rules.MCCA_RANK_RTOL``). Computed with ``xp`` and returned there. ``parts``: S's
    ``correlation_factor``, when already made."""
    if parts is None:
        parts = correlation_factor(S, what, xp, n, mean)
    idx, s, L = parts["idx"], parts["s"], parts["L"]
    d = parts["d"]
    R = correlation_matrix(S, idx, s, xp)
    s = xp.asarray(s)
    W = None
    if L is not None:   # surely full rank: W = D^-1/2 L^-T from the Cholesky factor of R
        try:
            with linalg_raises(xp):
                Li = lower_inverse(L, xp)
        except np.linalg.LinAlgError:
            Li = None
        if Li is not None and _surely_full_rank(R, Li, rtol, xp):
            W = s[:, None] * Li.T
        del Li
    if W is None:
        w, U = xp.linalg.eigh(R)
        keep = w > rtol * w.max()
        W = (s[:, None] * U[:, keep]) / xp.sqrt(w[keep])
    if len(idx) == len(d):
        return W
    full = xp.zeros((len(d), W.shape[1]), dtype=W.dtype)
    full[xp.asarray(idx)] = W
    return full


#: ``lower_inverse`` inverts blocks up to this size with LAPACK, larger ones by halves
TRI_INV_BLOCK = 256


def lower_inverse(L, xp=np):
    """L^-1 of a lower-triangular L by halves: [[A, 0], [B, C]]^-1 = [[A^-1, 0],
    [-C^-1 B A^-1, C^-1]], the blocks of at most TRI_INV_BLOCK rows inverted by LAPACK (on one
    thread) and the rest in GEMMs (about M^3 / 3 flops, where LAPACK's general inverse of the
    whole takes ~2 M^3 in slower steps). Raises LinAlgError where L is singular."""
    n = L.shape[0]
    if n <= TRI_INV_BLOCK:
        Li = xp.linalg.inv(L)
        return np.tril(Li) if xp is np else Li   # LU's roundoff above the diagonal dropped
    h = n // 2
    Ai, Ci = lower_inverse(L[:h, :h], xp), lower_inverse(L[h:, h:], xp)
    out = xp.empty_like(L)
    out[:h, :h], out[h:, h:], out[:h, h:] = Ai, Ci, 0
    out[h:, :h] = -(Ci @ L[h:, :h]) @ Ai
    return out


def _surely_full_rank(R, Li, rtol, xp) -> bool:
    """Whether every eigenvalue of R (Li = L^-1, L L' = R) exceeds ``rtol`` x the largest:
    lambda_max(R) <= min(tr R, ||R||_1) = min(r, ||R||_1), and lambda_min(R) = 1 / ||L^-1||_2^2
    with ||L^-1||_2^2 bounded by ||L^-1||_F^2, by ||L^-1||_1 ||L^-1||_inf, and, when neither
    suffices, by ||R^-1||_1 (R^-1 = L^-T L^-1, one symmetric product)."""
    r = R.shape[0]
    top = rtol * min(float(r), float(xp.abs(R).sum(0).max()))
    fro = float((Li * Li).sum())
    if 1.0 / fro > top:
        return True
    A = xp.abs(Li)
    if 1.0 / (float(A.sum(0).max()) * float(A.sum(1).max())) > top:
        return True
    return 1.0 / float(xp.abs(Li.T @ Li).sum(0).max()) > top


def host_native(a) -> np.ndarray:
    """A NumPy float32/float64 view of an array (float16/bfloat16 widened to float32)."""
    a = to_numpy(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


def matmul64(A, B: np.ndarray, chunk: int = 8192, dtype=np.float64) -> np.ndarray:
    """A @ B as host float64 for a tall A: in float64 (A converted chunk by chunk), or as one
    ``dtype`` = float32 BLAS call (the float32 engine's precision). A device A (CuPy) is
    multiplied there, in float64 when A is float64 or ``dtype`` is, and the result copied back."""
    xp = array_module(A)
    if xp is not np:
        dt = np.float32 if (A.dtype == np.float32 and dtype == np.float32) else np.float64
        return to_numpy(A.astype(dt, copy=False) @ xp.asarray(B, dtype=dt), np.float64)
    if A.dtype == np.float64:
        return A @ B
    if dtype == np.float32:
        return np.asarray(A @ B.astype(np.float32), np.float64)
    return np.vstack([np.asarray(A[i:i + chunk], np.float64) @ B for i in range(0, len(A), chunk)])


def rows64(X, idx):
    """Rows ``idx`` of a host or device array as float64, where X lives (small subsets)."""
    xp = array_module(X)
    return X[xp.asarray(idx, dtype=np.int64)].astype(np.float64)


def quad_diag(L, C, R=None):
    """diag(L C L') without forming it; given R (lower triangular, R R' = C), as the squared
    row norms of L R (a triangular product: about half the flops, and no cancellation)."""
    if R is None:
        return ((L @ C) * L).sum(-1)     # also for a stack of L (S x M x M)
    LR = times_lower(L, R)     # a new array: squared in place
    LR *= LR
    return LR.sum(1)


def singular_values(T, precise: bool = True) -> np.ndarray:
    """Singular values (host) of a small square matrix, on its device: LAPACK/cuSOLVER SVD, or
    (``precise=False``, for the float32 engine) the square roots of the eigenvalues of T'T,
    ~3x faster, with an absolute error of about 1e-8 * max singular value."""
    xp = array_module(T)
    if precise or len(T) < 64:
        return to_numpy(xp.linalg.svd(T, compute_uv=False))
    G = T.T @ T
    return np.sqrt(np.clip(to_numpy(xp.linalg.eigvalsh(G)), 0.0, None))[::-1]


#: ``mean_singular_values`` runs host matrices of at least this many rows on parallel threads
PARALLEL_SVD_MIN = 256


def mean_singular_values(Ts, precise: bool = True) -> list:
    """The mean of ``singular_values`` of each matrix in ``Ts`` (None entries give None). Host
    matrices of PARALLEL_SVD_MIN rows or more are taken by as many threads as there are cores,
    each running its products and LAPACK on one OpenBLAS thread: the eigensolvers gain little
    from a second thread, while two of them run side by side at full speed."""
    out = [None] * len(Ts)
    todo = [i for i, T in enumerate(Ts) if T is not None]
    if not todo:
        return out
    xp = array_module(Ts[todo[0]])

    def one(i):
        return float(singular_values(Ts[i], precise).mean())
    workers = min(len(todo), os.cpu_count() or 1)
    if xp is not np or workers < 2 or len(Ts[todo[0]]) < PARALLEL_SVD_MIN:
        for i in todo:
            out[i] = float(singular_values(Ts[i], precise).mean())
        return out
    from concurrent.futures import ThreadPoolExecutor
    with serial_lapack(xp), ThreadPoolExecutor(workers) as pool:
        for i, v in zip(todo, pool.map(one, todo)):
            out[i] = v
    return out


def scatter_blocks(blocks, pairs=None, dtype=np.float64, chunk: int = 8192, means=None,
                   bits=None):
    """Centred scatter blocks ``S[(p, q)] = sum_x (b_p(x) - mean_p)' (b_q(x) - mean_q)`` of
    column blocks with the same rows, for the block pairs ``pairs`` (p <= q; default all).
    Returns (n, means, S) with float64 means and blocks.

    Products are NumPy BLAS calls in ``dtype`` (``a.T @ a`` is a syrk), accumulated in float64
    per chunk of rows; float32 halves the time at a relative error of ~1e-6. Blocks whose means
    are small against their spread (|mean| <= 3 sd in every column, sd from ~1024 rows spread
    over the data) enter uncentred, straight from their storage (no copy), and the mean is
    removed from the float64 result; the others are centred chunk by chunk first. Only
    NumPy's BLAS is used: a second BLAS library's idle threads would spin against it (NOTES.md).
    Device blocks (CuPy) are multiplied on the GPU; means and blocks come back to the host.
    ``bits[i]``: the bfloat16 bit patterns of device block i (float32 values that are bfloat16,
    or None): a float32 product of two such blocks entered raw is one bfloat16 tensor-core GEMM
    (``gpu.cublas.gemm_ex``; exact products, float32 accumulation, as the float32 GEMM)."""
    xp = array_module(blocks[0])   # NumPy, or CuPy for device blocks (products on the GPU)
    n = blocks[0].shape[0]
    blocks = [xp.asarray(b).reshape(n, -1) for b in blocks]
    if pairs is None:
        pairs = [(p, q) for p in range(len(blocks)) for q in range(p, len(blocks))]
    if means is None:
        means = [to_numpy(b.mean(0, dtype=np.float64)) for b in blocks]
    used = sorted({i for pq in pairs for i in pq})
    spread = {i: to_numpy(blocks[i][:: max(1, n // 1024)].var(0, dtype=np.float64)) for i in used}
    raw = {i: blocks[i].dtype == np.dtype(dtype) and bool(np.all(means[i] ** 2 <= 9 * spread[i]))
           for i in used}
    dmeans = {j: xp.asarray(means[j], dtype=blocks[j].dtype) for j in used if not raw[j]}
    S = {pq: np.zeros((means[pq[0]].size, means[pq[1]].size)) for pq in pairs}
    bits = bits or [None] * len(blocks)
    half = {(p, q) for p, q in pairs if raw[p] and raw[q] and np.dtype(dtype) == np.float32
            and bits[p] is not None and bits[q] is not None}
    step = n if all(raw.values()) else chunk
    for i in range(0, n, step):
        cs = {j: blocks[j][i:i + step] if raw[j] else
              (blocks[j][i:i + step] - dmeans[j]).astype(dtype, copy=False)
              for j in used}
        for p, q in pairs:
            if (p, q) in half:
                S[p, q] += to_numpy(_bf16_gram(bits[p][i:i + step], bits[q][i:i + step]))
            else:
                S[p, q] += to_numpy(cs[p].T @ cs[q])  # one object on both sides: NumPy's syrk
    for p, q in pairs:   # a block entered raw keeps its mean in the sums; centred ones sum to 0
        if raw[p] and raw[q]:
            S[p, q] -= n * np.outer(means[p], means[q])
    return n, means, S


def _bf16_gram(a_bits, b_bits):
    """a' b (float32) of device bfloat16 bit arrays with the same rows: one cublasGemmEx."""
    from .gpu import cublas as gp
    cp = gp.import_cupy()
    out = cp.empty((a_bits.shape[1], b_bits.shape[1]), dtype=cp.float32)
    gp.gemm_ex(cp, a_bits.T, b_bits.T, out, "bfloat16")
    return out


def moments_of_blocks(blocks, dtype=np.float64, chunk: int = 8192) -> Moments:
    """``Moments.from_rows`` of the column-stacked ``blocks`` (same rows), for tall data,
    through ``scatter_blocks``."""
    n, means, S = scatter_blocks(blocks, dtype=dtype, chunk=chunk)
    return Moments.from_parts(n, means, S)
