"""The Python tile loop of a GPU pass: label tiles outer, row tiles inner (all N rows in one
tile when they fit), the logit tiles of both models from CuPy's cuBLAS (``cublasGemmEx`` for
float16/bfloat16 pairs of one kind, else widened operand tiles), each pair of tiles handed to
an epilogue, which may run on a second stream beside the next tile's GEMMs."""
from __future__ import annotations

import numpy as np

from . import cublas
from .arrays import HALF_KINDS, DeviceArray
from .plans import cupy_tiles
from .state import pass_state, pass_stats


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


def tile_loop(cp, ops, dt, backend, epilogue_class, workspace_bytes, tile_cols, tile_rows,
              progress, half_gemm, overlap, fused):
    """The pass over the four DeviceArrays ``ops`` in compute dtype ``dt`` with
    ``epilogue_class(cp, tile_cols, dt, tile_rows, fused)`` as the epilogue of each tile."""
    f1, g1, f2, g2 = ops
    n, v = f1.shape[0], g1.shape[0]
    pairs = [GemmPair(cp, f, g, dt, half_gemm) for f, g in ((f1, g1), (f2, g2))]
    converted = sum(0 if p.half else p.f.shape[1] for p in pairs)  # columns widened per tile
    tr, tc, overlap = cupy_tiles(n, v, converted, dt.itemsize, tile_rows, tile_cols,
                                 workspace_bytes, overlap, fused)
    nbuf = 2 if overlap else 1   # one tile: nothing to overlap
    n_row_tiles = -(-n // tr)
    n_tiles = n_row_tiles * -(-v // tc)
    epilogue = epilogue_class(cp, tc, dt, tr, fused)

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
    return pass_stats(state, args, row_m, col_m, backend, dt)
