"""The "cupy" backend: the pass as one Python tile loop, for builds without CUDA (CuPy and a GPU
are all it needs). Label tiles outer, row tiles inner (all N rows in one tile when they fit);
the logit tiles of both models come from CuPy's cuBLAS (``cublasGemmEx`` as they are for
float16/bfloat16 pairs of one kind, else from operand tiles widened to the compute dtype), and
the epilogue of each tile is the kernels of kernels/lse_kl.cuh compiled at run time by NVRTC
(CuPy's RawModule), launched with the geometry of their launch table, on a second stream beside
the next tile's GEMMs. Tile shapes come from the compiled planner (csrc/plan.cpp). Device
memory beyond the inputs and the O(N + V) state is bounded by ``workspace_bytes``: the logit
tiles, the widened operand tiles and the epilogue's scratch. Everything runs on CuPy's current
stream."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .. import _core
from ..passes import PassStats
from . import cublas, nvrtc
from .arrays import HALF_KINDS, DeviceArray
from .plans import cupy_tiles, pass_operands
from .state import pass_state, pass_stats


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
    return tile_loop(cp, ops, dt, workspace_bytes, tile_cols, tile_rows, progress, half_gemm,
                     overlap, fused_epilogue)


class GemmPair:
    """Logit tiles f[r0:r1] @ g[c0:c1]^T of one model in the compute dtype."""

    def __init__(self, cp, f: DeviceArray, g: DeviceArray, dt, half_gemm):
        self.cp, self.f, self.g, self.dt = cp, f, g, dt
        self.half = (f.kind == g.kind and f.kind in HALF_KINDS and dt == np.float32
                     and half_gemm == "cublas")
        self.labels = None
        self.rows_cache = None

    def _prepare(self, x: DeviceArray):
        return x.data if self.half else x.widened(self.dt)

    def set_labels(self, c0, c1):
        self.labels = None  # release the previous tile before converting the next
        self.labels = self._prepare(self.g[c0:c1])

    def logits(self, r0, r1, n_row_tiles, out):
        if n_row_tiles == 1:  # one row tile: convert f once for all label tiles
            if self.rows_cache is None:
                self.rows_cache = self._prepare(self.f[r0:r1])
            rows = self.rows_cache
        else:
            rows = self._prepare(self.f[r0:r1])
        if self.half:
            cublas.gemm_ex(self.cp, rows, self.labels, out, self.f.kind)
        else:
            self.cp.matmul(rows, self.labels.T, out=out)


def tile_loop(cp, ops, dt, workspace_bytes, tile_cols, tile_rows, progress, half_gemm, overlap,
              fused):
    """The pass over the four DeviceArrays ``ops`` in compute dtype ``dt``: label tiles outer,
    row tiles inner (all N rows in one tile when they fit), the logit tiles of both models from
    CuPy's cuBLAS (``GemmPair``), each pair handed to the epilogue (``NvrtcEpilogue``), which
    runs on a second stream beside the next tile's GEMMs with ``overlap``."""
    f1, g1, f2, g2 = ops
    n, v = f1.shape[0], g1.shape[0]
    pairs = [GemmPair(cp, f, g, dt, half_gemm) for f, g in ((f1, g1), (f2, g2))]
    converted = sum(0 if p.half else p.f.shape[1] for p in pairs)  # columns widened per tile
    tr, tc, overlap = cupy_tiles(n, v, converted, dt.itemsize, tile_rows, tile_cols,
                                 workspace_bytes, overlap, fused)
    nbuf = 2 if overlap else 1   # one tile: nothing to overlap
    n_row_tiles = -(-n // tr)
    n_tiles = n_row_tiles * -(-v // tc)
    epilogue = NvrtcEpilogue(cp, tc, dt, tr, fused)

    state, args, row_m, col_m = pass_state(cp, n, v)
    bufs = [[cp.empty(tr * tc, dtype=dt) for _ in range(2)] for _ in range(nbuf)]
    # GEMMs run on the caller's (current) stream, epilogues on `side`; events order each tile's
    # epilogue after its GEMMs and the GEMMs that reuse a buffer after the epilogue that read it.
    main = cp.cuda.get_current_stream()
    side = cp.cuda.Stream(non_blocking=True) if nbuf > 1 else main
    if side is not main:
        side.wait_event(main.record())
    released = [None] * nbuf

    done = 0
    for c0 in range(0, v, tc):
        c1 = min(v, c0 + tc)
        for p in pairs:
            p.set_labels(c0, c1)
        for r0 in range(0, n, tr):
            r1 = min(n, r0 + tr)
            b = done % nbuf
            l1, l2 = (w[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0) for w in bufs[b])
            if released[b] is not None:
                main.wait_event(released[b])
            pairs[0].logits(r0, r1, n_row_tiles=n_row_tiles, out=l1)
            pairs[1].logits(r0, r1, n_row_tiles=n_row_tiles, out=l2)
            if side is main:
                epilogue(l1, l2, c0, r0, state, args, row_m, col_m)
            else:
                side.wait_event(main.record())
                with side:
                    epilogue(l1, l2, c0, r0, state, args, row_m, col_m)
                released[b] = side.record()
            done += 1
            if progress is not None:
                progress(done / n_tiles)
    if side is not main:
        main.wait_event(side.record())
    return pass_stats(state, args, row_m, col_m, "cupy", dt)


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
