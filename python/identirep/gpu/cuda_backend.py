"""The "cuda" backend: the compiled pass driver (``_core.lse_kl_pass_cuda``, csrc/cuda_pass.cpp),
one launch path. The whole tile loop runs in C++: cublasGemmEx logit tiles (float32 accumulation;
float64 for a float64 pair), the compiled epilogue of kernels/lse_kl.cuh on each, overlapped with
the next tile's GEMMs on a second stream. Operands the driver does not take as they are (a pair
of two float kinds, a float64 pair in a float32 pass, a layout with neither rows nor columns
contiguous, float16/bfloat16 pairs with ``half_gemm="convert"``) are converted on the device
first, as the cupy backend converts them per tile: O((N + V) M) memory, never N x V. Everything
runs on CuPy's current stream.

A CUDA build without the driver (no cuBLAS headers at build time) has no cuda backend
(``driver_problem``); "auto" then picks the cupy backend.
"""
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

#: why a build has no pass driver
NO_CUDA = ("identirep was built without CUDA (rebuild on a machine with nvcc: IDENTIREP_CUDA=ON "
           "pip install .)")
NO_DRIVER = ("identirep was built with CUDA but without the pass driver: the cuBLAS headers were "
             "missing at build time (pip install nvidia-cublas, or install the CUDA toolkit's "
             "cuBLAS, then rebuild: IDENTIREP_CUBLAS=ON pip install .)")
PROGRESS_LOGITS = 1 << 35  # ~1 s of pass on an H100/H200
PROGRESS_GROUPS = 16


def cuda_pass(f1, g1, f2, g2, *, workspace_bytes: int = 1 << 30,
              tile_cols: Optional[int] = None, tile_rows: Optional[int] = None,
              progress: Optional[Callable[[float], None]] = None,
              half_gemm: str = "cublas", overlap: bool = True,
              fused_epilogue: bool = False, fused_gemm: bool = False,
              gemm_block_rows: int = 128, gemm_wgmma: bool = False) -> PassStats:
    """The streaming pass with the compiled pass driver (``_core.lse_kl_pass_cuda``: the tile
    loop, cuBLAS tiles and epilogue in one call per group of label tiles); operands it does not
    take as they are are converted on the device first (``driver_operands``).

    ``fused_gemm``: experimental until a GPU has confirmed it (benchmarks/device_check.sh): the
    driver with identirep's own fused GEMM kernel (csrc/kernels/lse_kl_gemm.cuh: the logits
    are computed and reduced on chip, never written) instead of cuBLAS tiles; float16 or
    bfloat16 operands of one kind with contiguous rows, row strides a multiple of 8 and 16-byte
    aligned data (taken as they are: the driver says which operand does not fit, and why),
    compute capability 8.0+. ``gemm_block_rows``: its blocks' sub-tiles, 128 rows (one block
    per SM) or 64 (two). ``gemm_wgmma``: experimental too: its Hopper kernel (wgmma, sm_90a:
    compute capability 9.0 only, and a build with ``build_info()["fused_gemm_wgmma"]``)
    instead of the mma.sync one (sm_80+).

    Same arguments and results as :func:`identirep.gpu.cupy_backend.cupy_pass` (backend
    "cuda"); needs identirep built with CUDA and its pass driver. Memory: the tiles, the
    epilogue's scratch and cuBLAS's workspace stay within ``workspace_bytes``; operands
    converted for the driver (``driver_operands``: mixed kinds, a float64 model beside a
    float32 one, ``half_gemm="convert"``, layouts with neither rows nor columns contiguous)
    are whole-array copies beside it, O((N + V) M).
    """
    if fused_gemm and gemm_block_rows not in (64, 128):
        raise IdentirepError(f"gemm_block_rows must be 128 or 64, got {gemm_block_rows!r}")
    if gemm_wgmma and not fused_gemm:
        raise IdentirepError("gemm_wgmma=True is a kind of the fused GEMM: set fused_gemm=True")
    problem = driver_problem()
    if problem is not None:
        raise IdentirepError(f"the cuda backend is not available: {problem}; backend='cupy' "
                             "needs only CuPy and a GPU")
    cp, ops, dt = pass_operands(f1, g1, f2, g2, half_gemm)
    if gemm_wgmma:  # before anything is allocated: which GPUs run it is known here
        problem = _core.lse_kl_gemm_wgmma_problem(cp.cuda.Device().id)
        if problem:
            raise IdentirepError(f"gemm_wgmma=True: {problem}")
    if fused_gemm:  # no cuBLAS
        operands, gemm = [o.data for o in ops], int(gemm_block_rows)
    else:
        cublas.load_cublas()
        operands, gemm = driver_operands(cp, ops, dt, half_gemm), 0
    return _run_driver(cp, operands, ops[0].shape[0], ops[1].shape[0], dt, workspace_bytes,
                       tile_cols, tile_rows, progress, overlap and not gemm,
                       fused_epilogue and not gemm, gemm, bool(gemm_wgmma))


def driver_problem() -> Optional[str]:
    """Why this build has no pass driver (so no cuda backend), or None."""
    if hasattr(_core, "lse_kl_pass_cuda"):
        return None
    return NO_DRIVER if hasattr(_core, "lse_kl_update_cuda") else NO_CUDA


def driver_operands(cp, ops, dt, half_gemm="cublas"):
    """The four operands (DeviceArrays) as device arrays the driver takes (bfloat16 as its
    bits): each pair (f_k, g_k) of one kind, float64 only in a float64 pass and float16 or
    bfloat16 only with ``half_gemm="cublas"``; each array with rows or columns contiguous
    (``_core.blas_layout``, the driver's own rule). Others are converted on the device: a pair
    that is not of such a kind widened (or rounded) to the compute dtype ``dt``, as the cupy
    backend's tiles are; a layout copied to C order. Operands that need nothing are the arrays
    themselves."""
    out = []
    for f, g in (ops[0:2], ops[2:4]):
        native = (f.kind == g.kind and (f.kind == "float64") == (dt == np.float64)
                  and (f.kind not in HALF_KINDS or half_gemm == "cublas"))
        for x in (f, g):
            data = x.data if native else x.widened(dt)
            out.append(data if cublas.blas_ready(data) else cp.ascontiguousarray(data))
    return out


def label_groups(n, v, tc, progress: bool):
    """Label ranges, at label-tile boundaries, of the driver's calls: one call (the overlap
    runs across the whole pass), or with ``progress`` and above PROGRESS_LOGITS logits,
    PROGRESS_GROUPS calls with a progress report after each (each boundary costs one epilogue
    outside the overlap)."""
    tiles = -(-v // tc)
    groups = min(tiles, PROGRESS_GROUPS) if progress and n * v > PROGRESS_LOGITS else 1
    bounds = [tc * (tiles * i // groups) for i in range(groups)] + [v]
    return list(zip(bounds[:-1], bounds[1:]))


def _run_driver(cp, operands, n, v, dt, workspace_bytes, tile_cols, tile_rows, progress,
                overlap, fused, gemm, wgmma) -> PassStats:
    """The pass through the driver (gemm: 0 for cuBLAS tiles, else the fused GEMM's block
    rows): its tiles and workspace (csrc/plan.cpp), its calls, the statistics."""
    tr, tc, overlap, size = cuda_tiles(n, v, dt.name, tile_rows, tile_cols, workspace_bytes,
                                       overlap, fused, gemm)
    work = cp.empty(size, dtype=cp.uint8)
    state, args, row_m, col_m = pass_state(cp, n, v)
    stream = cp.cuda.get_current_stream()
    for c0, c1 in label_groups(n, v, tc, progress is not None):
        try:
            _core.lse_kl_pass_cuda(*operands, state, args, row_m, col_m, work, c0, c1, tr, tc,
                                   overlap=overlap, fused=fused, gemm=gemm, wgmma=wgmma,
                                   stream=stream.ptr)
        except ValueError as e:  # operands the fused GEMM cannot take: the driver says why
            raise IdentirepError(f"fused_gemm=True cannot take these operands: {e}" if gemm
                                 else str(e)) from None
        if progress is not None and c1 < v:
            stream.synchronize()
            progress(c1 / v)
    out = pass_stats(state, args, row_m, col_m, "cuda", dt)
    if progress is not None:
        progress(1.0)
    return out
