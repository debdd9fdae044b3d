"""Pass 1 on the CPU: one streaming pass over (input tile, label tile) blocks.

Each block's two logit tiles come from a BLAS GEMM into a bounded workspace; the compiled
epilogue (``_core.lse_kl_update``) folds them into O(N) running state, so the N x V logits
never exist in memory. See csrc/kernels/lse_kl.h for the state layout and formulas.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import _core
from .errors import IdentirepError
from .model import check_array

# Default tile shape, tuned on a 2-core AVX-512 machine with OpenBLAS (benchmarks/bench_stream.py):
# a label tile of a few thousand columns keeps the GEMM efficient, and input tiles small enough
# that both logit tiles stay in L2 between the GEMM and the epilogue.
DEFAULT_TILE_ROWS = 256
DEFAULT_TILE_COLS = 4096

STATE_ROWS = ("m1", "s1", "a12", "e1", "m2", "s2", "a21", "e2")


def init_state(n: int):
    """Fresh epilogue state for ``n`` inputs: (8, n) float64 and (2, n) int64 arrays."""
    state = np.zeros((8, n), dtype=np.float64)
    state[0] = -np.inf
    state[4] = -np.inf
    args = np.full((2, n), -1, dtype=np.int64)
    return state, args


def finalize(state: np.ndarray, args: np.ndarray) -> dict:
    """Per-input results from a filled state: log-normalisers, KL both ways, entropies, top-1."""
    m1, s1, a12, e1, m2, s2, a21, e2 = state
    log_s1 = np.log(s1)
    log_s2 = np.log(s2)
    L1 = m1 + log_s1
    L2 = m2 + log_s2
    # KL(p1||p2)(x) = sum_y p1 (l1 - l2) - L1 + L2, with sum_y p1 (l1 - l2) = a12 / s1.
    kl12 = a12 / s1 - L1 + L2
    kl21 = a21 / s2 - L2 + L1
    return {
        "L1": L1,
        "L2": L2,
        "kl12": kl12,
        "kl21": kl21,
        "H1": log_s1 - e1 / s1,
        "H2": log_s2 - e2 / s2,
        "top1_agree": args[0] == args[1],
    }


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
    tr = min(n, int(tile_rows) if tile_rows else DEFAULT_TILE_ROWS)
    tc = min(v, int(tile_cols) if tile_cols else DEFAULT_TILE_COLS)
    if tr < 1 or tc < 1:
        raise IdentirepError(f"tile_rows and tile_cols must be >= 1, got {tile_rows}, {tile_cols}")

    def need(r, c):  # two logit tiles + the converted label tiles of both models
        return itemsize * (2 * r * c + c * (m1 + m2))

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


def stream_pass(f1, g1, f2, g2, *, tile_rows: Optional[int] = None,
                tile_cols: Optional[int] = None, workspace_bytes: int = 256 << 20,
                dtype=None, progress: Optional[Callable[[float], None]] = None) -> dict:
    """Log-normalisers, KL both ways, entropies and top-1 agreement of two softmax models.

    ``p_k(y|x) = softmax_y(f_k(x) . g_k(y))`` with f1 (N x M1), g1 (V x M1), f2 (N x M2),
    g2 (V x M2) as NumPy arrays of any float dtype (float16/bfloat16 are widened), in any memory
    order. Computes in ``dtype``: float64 when every input is float64, float32 otherwise (or as
    given). Never holds more than ``workspace_bytes`` of logit tiles and converted label tiles.
    ``progress``, if given, is called with the fraction done after each tile.

    Returns float64 arrays of length N: ``L1``, ``L2`` (log-normalisers), ``kl12`` =
    KL(p1||p2)(x), ``kl21`` = KL(p2||p1)(x), ``H1``, ``H2`` (entropies), and the bool array
    ``top1_agree`` (the two models' most likely labels coincide).
    """
    for a, name in ((f1, "f1"), (g1, "g1"), (f2, "f2"), (g2, "g2")):
        if not isinstance(a, np.ndarray):
            raise IdentirepError(f"{name} must be a NumPy array, got {type(a).__name__}")
        check_array(a, name, 2)
    if f1.shape[1] != g1.shape[1]:
        raise IdentirepError(f"f1 has {f1.shape[1]} dimensions but g1 has {g1.shape[1]}")
    if f2.shape[1] != g2.shape[1]:
        raise IdentirepError(f"f2 has {f2.shape[1]} dimensions but g2 has {g2.shape[1]}")
    if f1.shape[0] != f2.shape[0]:
        raise IdentirepError(f"f1 and f2 must have one row per shared input: "
                             f"N={f1.shape[0]} vs N={f2.shape[0]}")
    if g1.shape[0] != g2.shape[0]:
        raise IdentirepError(f"g1 and g2 must have one row per shared label: "
                             f"V={g1.shape[0]} vs V={g2.shape[0]}")

    dt = _compute_dtype((f1, g1, f2, g2), dtype)
    n, v = f1.shape[0], g1.shape[0]
    tr, tc = _tile_shape(n, v, f1.shape[1], f2.shape[1], dt.itemsize, tile_rows, tile_cols,
                         workspace_bytes)
    f1c = _as_compute(f1, dt)
    f2c = _as_compute(f2, dt)
    ws1 = np.empty(tr * tc, dtype=dt)
    ws2 = np.empty(tr * tc, dtype=dt)
    state, args = init_state(n)

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
            _core.lse_kl_update(l1, l2, state[:, r0:r1], args[:, r0:r1], c0)
            done += 1
            if progress is not None:
                progress(done / n_tiles)
    return finalize(state, args)
