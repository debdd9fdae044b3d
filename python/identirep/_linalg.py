"""Linear-algebra helpers of the engine: the LAPACK error policy, square-root factors and
whitenings, float64 products of tall float32/float64 arrays, centred scatter blocks and the
singular values of small matrices. Every function runs where its arrays live (NumPy's
BLAS/LAPACK, or cuBLAS/cuSOLVER through CuPy for device arrays) and uses NumPy's BLAS only on
the host: a second BLAS library's idle threads would spin against it (NOTES.md)."""
from __future__ import annotations

import contextlib

import numpy as np

from ._arrays import array_module
from ._rules import MCCA_RANK_RTOL, no_varying_column_message
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


def sqrt_factor(S, xp=np):
    """R with R R' = S for a symmetric positive semi-definite S: Cholesky when S is safely
    positive definite, the eigen square root otherwise. Computed with ``xp`` (NumPy's LAPACK,
    or cuSOLVER through CuPy) and returned there."""
    S = xp.asarray(S)
    try:
        with linalg_raises(xp):
            L = xp.linalg.cholesky(S)
        d = xp.diag(L)
        if float(d.min()) > 1e-7 * float(d.max()):
            return L
    except np.linalg.LinAlgError:
        pass
    w, U = xp.linalg.eigh(S)
    return U * xp.sqrt(xp.clip(w, 0.0, None))


def whiten(S: np.ndarray, what: str, xp=np, rtol: float = MCCA_RANK_RTOL["float64"]):
    """W (d x r) with W' S W = I_r on the column space of the data whose scatter is S (host):
    columns of zero variance are left out, and of the correlation matrix R the directions
    with an eigenvalue above ``rtol`` x the largest are kept (the rank rule of
    ``_rules.MCCA_RANK_RTOL``). Computed with ``xp`` and returned there."""
    d = np.diag(S).copy()
    scale = d.max() if d.size else 0.0
    var = d > 1e-24 * max(scale, 1e-300)
    if not var.any():
        raise IdentirepError(no_varying_column_message(what))
    idx = np.flatnonzero(var)
    s = 1.0 / np.sqrt(d[idx])
    R = xp.asarray(S[np.ix_(idx, idx)] * s[:, None] * s[None, :])
    s = xp.asarray(s)
    W = None
    try:  # surely full rank: W = D^-1/2 L^-T from the Cholesky factor of R
        with linalg_raises(xp):
            Li = xp.linalg.inv(xp.linalg.cholesky(R))
        # lambda_min(R) >= 1 / ||L^-1||_F^2 and lambda_max(R) <= tr R = r
        if 1.0 / float((Li * Li).sum()) > rtol * len(idx):
            W = s[:, None] * Li.T
    except np.linalg.LinAlgError:
        pass
    if W is None:
        w, U = xp.linalg.eigh(R)
        keep = w > rtol * w.max()
        W = (s[:, None] * U[:, keep]) / xp.sqrt(w[keep])
    if len(idx) == len(d):
        return W
    full = xp.zeros((len(d), W.shape[1]), dtype=W.dtype)
    full[xp.asarray(idx)] = W
    return full


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


def quad_diag(L, C):
    """diag(L C L') without forming it."""
    return ((L @ C) * L).sum(1)


def singular_values(T, precise: bool = True) -> np.ndarray:
    """Singular values (host) of a small square matrix, on its device: LAPACK/cuSOLVER SVD, or
    (``precise=False``, for the float32 engine) the square roots of the eigenvalues of T'T,
    ~3x faster, with an absolute error of about 1e-8 * max singular value."""
    xp = array_module(T)
    if precise or len(T) < 64:
        return to_numpy(xp.linalg.svd(T, compute_uv=False))
    return np.sqrt(np.clip(to_numpy(xp.linalg.eigvalsh(T.T @ T)), 0.0, None))[::-1]


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
