"""The "cuda" backend: the compiled CUDA code. With the pass driver built
(``_core.lse_kl_pass_cuda``, csrc/cuda_pass.cpp) the whole tile loop (cublasGemmEx tiles, the
epilogue, the overlap) is one compiled call; otherwise, and for operands it does not take (a pair
of two float kinds, a float64 pair in a float32 pass, strided layouts, ``half_gemm="convert"``),
the Python tile loop with CuPy's GEMM tiles and the compiled epilogue
``_core.lse_kl_update_cuda``. Everything runs on CuPy's current stream."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .. import _core
from ..errors import IdentirepError
from ..passes import PassStats
from . import cublas
from .arrays import HALF_KINDS
from .plans import cuda_tiles, pass_operands
from .state import pass_state, pass_stats
from .tile_loop import tile_loop


def cuda_pass(f1, g1, f2, g2, *, workspace_bytes: int = 1 << 30,
              tile_cols: Optional[int] = None, tile_rows: Optional[int] = None,
              progress: Optional[Callable[[float], None]] = None,
              half_gemm: str = "cublas", overlap: bool = True,
              fused_epilogue: bool = False, driver: bool = True,
              fused_gemm: bool = False, gemm_block_rows: int = 128,
              gemm_wgmma: bool = False) -> PassStats:
    """The streaming pass with the compiled CUDA code: the pass driver
    (``_core.lse_kl_pass_cuda``: the tile loop, cuBLAS tiles and epilogue in one call) when it
    was built and takes these operands, else CuPy's GEMM tiles and the compiled epilogue
    (``_core.lse_kl_update_cuda``); ``driver=False`` forces the latter.

    ``fused_gemm``: the driver with the fused GEMM kernel (csrc/kernels/lse_kl_gemm.cuh: the
    logits are computed and reduced on chip, never written) instead of cuBLAS tiles; float16
    or bfloat16 operands of one kind with contiguous rows, row strides a multiple of 8 and
    16-byte aligned data (``gemm_problem`` says why not), compute capability 8.0+.
    ``gemm_block_rows``: its blocks' sub-tiles, 128 rows (one block per SM) or 64 (two).
    ``gemm_wgmma``: its Hopper kernel (wgmma, sm_90a: compute capability 9.0 only, and a build
    with ``build_info()["fused_gemm_wgmma"]``) instead of the mma.sync one (sm_80+).

    Same arguments and results as :func:`cupy_pass` (backend "cuda"); needs identirep built
    with CUDA.
    """
    if fused_gemm and gemm_block_rows not in (64, 128):
        raise IdentirepError(f"gemm_block_rows must be 128 or 64, got {gemm_block_rows!r}")
    if gemm_wgmma and not fused_gemm:
        raise IdentirepError("gemm_wgmma=True is a kind of the fused GEMM: set fused_gemm=True")
    cp, ops, dt = pass_operands(f1, g1, f2, g2, half_gemm)
    n, v = ops[0].shape[0], ops[1].shape[0]
    if fused_gemm:
        gemm = int(gemm_block_rows)
        if not hasattr(_core, "lse_kl_pass_cuda"):
            raise IdentirepError("fused_gemm=True needs identirep built with the CUDA pass "
                                 "driver (build_info()['cuda_pass_driver'])")
        problem = gemm_problem(ops)
        if problem:
            raise IdentirepError(f"fused_gemm=True cannot take these operands: {problem}")
        if gemm_wgmma:
            problem = _core.lse_kl_gemm_wgmma_problem(cp.cuda.Device().id)
            if problem:
                raise IdentirepError(f"gemm_wgmma=True: {problem}")
        return _driver_pass(cp, driver_operands(ops, dt), n, v, dt, workspace_bytes, tile_cols,
                            tile_rows, progress, False, False, gemm=gemm, wgmma=bool(gemm_wgmma))
    if driver and (half_gemm == "cublas" or not any(o.kind in HALF_KINDS for o in ops)):
        operands = driver_operands(ops, dt)
        if operands is not None and _driver() is not None:
            return _driver_pass(cp, operands, n, v, dt, workspace_bytes, tile_cols, tile_rows,
                                progress, overlap, fused_epilogue)
    return tile_loop(cp, ops, dt, "cuda", _CudaEpilogue, workspace_bytes, tile_cols, tile_rows,
                     progress, half_gemm, overlap, fused_epilogue)


class _CudaEpilogue:
    """The compiled epilogue: _core.lse_kl_update_cuda on CuPy's current stream; ``fused``: the
    one-read epilogue, for tiles of at most ``tr`` rows."""

    def __init__(self, cp, tc, dt, tr=1, fused=False):
        if not hasattr(_core, "lse_kl_update_cuda"):
            raise IdentirepError("the cuda backend needs identirep built with CUDA "
                                 "(IDENTIREP_CUDA=ON pip install .); backend='cupy' does not")
        self.core, self.cp, self.dtype = _core, cp, np.dtype(dt).name
        rows, cols = (_core.lse_kl_cuda_fused_work_elems(tr, tc) if fused else
                      (0, _core.lse_kl_cuda_col_work_elems(tc)))
        self.work = cp.empty(cols, dtype=cp.float64)
        self.row_work = cp.empty(rows, dtype=cp.float64) if fused else None

    def __call__(self, l1, l2, c0, r0, state, args, row_m, col_m):
        rows = slice(r0, r0 + l1.shape[0])
        self.core.lse_kl_update_cuda(
            l1, l2, state[:, rows], args[:, rows], c0, row_moments=row_m[:, rows],
            col_moments=col_m, row0=r0, col_work=self.work, row_work=self.row_work,
            stream=self.cp.cuda.get_current_stream().ptr)


# ------------------------------------------------------------------ the compiled driver
def _driver():
    """_core when it has the pass driver and cuBLAS loads, None without the driver; an
    IdentirepError when the driver is built but cuBLAS cannot be loaded."""
    if not hasattr(_core, "lse_kl_pass_cuda"):
        return None
    cublas.load_cublas()
    return _core


def driver_operands(ops, dt):
    """The four operands as the device arrays the driver takes (bfloat16 as its bits), or None
    when one of them needs the Python loop (a pair of two kinds, a float64 pair in a float32
    pass, a layout with neither rows nor columns contiguous)."""
    out = []
    for f, g in (ops[0:2], ops[2:4]):
        if f.kind != g.kind or (f.kind == "float64") != (dt == np.float64):
            return None
        for x in (f, g):
            if not cublas.blas_ready(x.data):
                return None
            out.append(x.data)
    return out


def gemm_problem(ops) -> str:
    """Why the fused GEMM cannot take these four DeviceArrays, or "" when it can."""
    kinds = {o.kind for o in ops}
    if len(kinds) != 1 or not kinds <= set(HALF_KINDS):
        return f"it takes float16 or bfloat16 operands of one kind, got {sorted(kinds)}"
    for o, name in zip(ops, ("f1", "g1", "f2", "g2")):
        rows, cols = o.shape
        s0, s1 = o.data.strides
        it = o.data.itemsize
        if cols > 1 and s1 != it:
            return f"{name} needs contiguous rows (copy it first)"
        if rows > 1 and (s0 % (8 * it) or s0 < cols * it):
            return f"the row stride of {name} ({s0 // it}) is not a multiple of 8 elements"
        if o.data.data.ptr % 16:
            return f"the data of {name} is not 16-byte aligned"
    return ""


PROGRESS_LOGITS = 1 << 35  # ~1 s of pass on an H100/H200
PROGRESS_GROUPS = 16


def label_groups(n, v, tc, progress: bool):
    """Label ranges, at label-tile boundaries, of the driver's calls: one call (the overlap
    runs across the whole pass), or with ``progress`` and above PROGRESS_LOGITS logits,
    PROGRESS_GROUPS calls with a progress report after each (each boundary costs one epilogue
    outside the overlap)."""
    tiles = -(-v // tc)
    groups = min(tiles, PROGRESS_GROUPS) if progress and n * v > PROGRESS_LOGITS else 1
    bounds = [tc * (tiles * i // groups) for i in range(groups)] + [v]
    return list(zip(bounds[:-1], bounds[1:]))


def _driver_pass(cp, operands, n, v, dt, workspace_bytes, tile_cols, tile_rows, progress,
                 overlap, fused, gemm=0, wgmma=False) -> PassStats:
    tr, tc, overlap, size = cuda_tiles(n, v, dt.name, tile_rows, tile_cols, workspace_bytes,
                                       overlap, fused, gemm)
    work = cp.empty(size, dtype=cp.uint8)
    state, args, row_m, col_m = pass_state(cp, n, v)
    stream = cp.cuda.get_current_stream()
    for c0, c1 in label_groups(n, v, tc, progress is not None):
        _core.lse_kl_pass_cuda(*operands, state, args, row_m, col_m, work, c0, c1, tr, tc,
                               overlap=overlap, fused=fused, gemm=gemm, wgmma=wgmma,
                               stream=stream.ptr)
        if progress is not None and c1 < v:
            stream.synchronize()
            progress(c1 / v)
    out = pass_stats(state, args, row_m, col_m, "cuda", dt)
    if progress is not None:
        progress(1.0)
    return out
