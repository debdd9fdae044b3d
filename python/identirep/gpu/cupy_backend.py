"""The "cupy" backend: the pass as a Python tile loop (tile_loop.py) whose epilogue is the
kernels of kernels/lse_kl.cuh compiled at run time by NVRTC (CuPy's RawModule), for builds
without CUDA: CuPy and a GPU are all it needs. Everything runs on CuPy's current stream."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .. import _core
from ..passes import PassStats
from . import nvrtc
from .plans import pass_operands
from .tile_loop import tile_loop


def cupy_pass(f1, g1, f2, g2, *, workspace_bytes: int = 1 << 30,
              tile_cols: Optional[int] = None, tile_rows: Optional[int] = None,
              progress: Optional[Callable[[float], None]] = None,
              half_gemm: str = "cublas", overlap: bool = True,
              fused_epilogue: bool = False) -> PassStats:
    """The streaming pass with the epilogue compiled at run time by CuPy (no CUDA build needed).

    f1 (N x M1), g1 (V x M1), f2 (N x M2), g2 (V x M2): device (or host) arrays of float16,
    bfloat16, float32 or float64, any strides. ``half_gemm``: "cublas" feeds float16/bfloat16
    pairs to cuBLAS as they are, "convert" widens them to float32 first. ``overlap``: run the
    epilogue of one tile on a second stream while the GEMMs of the next tile run (two pairs of
    logit tiles in the workspace; the same results, since the epilogue still sees the tiles in
    order). ``fused_epilogue``: the one-read epilogue (LseKlSlabKernel) instead of the row and
    column kernels; the same statistics up to rounding. Returns a PassStats of host NumPy
    arrays (backend "cupy").
    """
    cp, ops, dt = pass_operands(f1, g1, f2, g2, half_gemm)
    return tile_loop(cp, ops, dt, "cupy", NvrtcEpilogue, workspace_bytes, tile_cols, tile_rows,
                     progress, half_gemm, overlap, fused_epilogue)


class NvrtcEpilogue:
    """The epilogue kernels of lse_kl.cuh compiled by CuPy (NVRTC), launched as LseKl (or, with
    ``fused``, LseKlFused) does."""

    def __init__(self, cp, tc, dt, tr=1, fused=False):
        mod = nvrtc.lse_kl_module(cp)
        names = nvrtc.kernel_names("float" if dt == np.float32 else "double")
        self.rows, self.cols, self.merge, self.slab, self.row_merge = (
            mod.get_function(names[k]) for k in ("rows", "cols", "merge", "slab", "row_merge"))
        rows, cols = (_core.lse_kl_cuda_fused_work_elems(tr, tc) if fused else
                      (0, _core.lse_kl_cuda_col_work_elems(tc)))
        self.work = cp.empty(cols, dtype=cp.float64)
        self.row_work = cp.empty(rows, dtype=cp.float64) if fused else None

    def __call__(self, l1, l2, c0, r0, state, args, row_m, col_m):
        i64, t = np.int64, nvrtc.LAUNCH
        n, v = l1.shape
        N, V = state.shape[1], col_m.shape[1]
        ld1, ld2 = i64(l1.strides[0] // l1.itemsize), i64(l2.strides[0] // l2.itemsize)
        merge = t["merge_threads"]
        if self.row_work is not None:
            chunks = _core.lse_kl_fused_chunks(n)
            self.slab((-(-v // t["slab_cols"]), chunks), (t["slab_threads"],),
                      (l1, ld1, l2, ld2, i64(n), i64(v), self.row_work, self.work))
        else:
            self.rows((n,), (t["lse_kl_threads"],),
                      (l1, ld1, l2, ld2, i64(v), i64(c0), state[:, r0:], i64(N), args[:, r0:],
                       i64(N), row_m[:, r0:], i64(N)))
            chunks = _core.lse_kl_col_chunks(n)
            self.cols((-(-v // 32), chunks), (32, t["col_rows"]),
                      (l1, ld1, l2, ld2, i64(n), i64(v), self.work))
        self.merge((-(-v // merge),), (merge,),
                   (l1, l2, i64(n), i64(v), i64(c0), i64(chunks), self.work, col_m, i64(V),
                    i64(r0)))
        if self.row_work is not None:
            self.row_merge((-(-n // merge),), (merge,),
                           (i64(n), i64(v), i64(c0), self.row_work, state[:, r0:], i64(N),
                            args[:, r0:], i64(N), row_m[:, r0:], i64(N)))
