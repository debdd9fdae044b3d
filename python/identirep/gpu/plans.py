"""What both GPU passes check and plan before their tile loops: the operands on the device and
their shapes, and the shape of the logit tiles that fit the workspace."""
from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import IdentirepError
from ..passes import check_pass_shapes
from .arrays import as_device, import_cupy

DEFAULT_TILE_COLS = 4096


def pass_operands(f1, g1, f2, g2, half_gemm):
    """(cupy, the four operands as checked DeviceArrays, the compute dtype: float64 when all
    four are float64, float32 otherwise)."""
    if half_gemm not in ("cublas", "convert"):
        raise IdentirepError(f"half_gemm must be 'cublas' or 'convert', got {half_gemm!r}")
    cp = import_cupy()
    ops = [as_device(a, name) for a, name in zip((f1, g1, f2, g2), ("f1", "g1", "f2", "g2"))]
    _check_shapes(ops)
    dt = np.dtype(np.float64 if all(o.kind == "float64" for o in ops) else np.float32)
    return cp, ops, dt


def _check_shapes(ops):
    f1, g1, f2, g2 = ops
    for a, name in zip(ops, ("f1", "g1", "f2", "g2")):
        if len(a.shape) != 2:
            raise IdentirepError(f"{name} must be a 2-d array, got shape {tuple(a.shape)}")
        if 0 in a.shape:
            raise IdentirepError(f"{name} is empty (shape {tuple(a.shape)})")
    check_pass_shapes(f1, g1, f2, g2)


def tile_shape(n, v, m1, m2, itemsize, tile_rows, tile_cols, workspace_bytes, buffers=1,
               fused=False, slack=0):
    """(rows, cols) of the logit tiles: all rows when they fit, ``tile_cols`` labels (default
    DEFAULT_TILE_COLS), shrunk until ``buffers`` pairs of logit tiles, the widened operand
    tiles (m1 + m2 columns; 0 for operands used as they are), the epilogue's scratch
    (``epilogue_scratch``) and ``slack`` bytes fit in ``workspace_bytes``."""
    for name, t in (("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if t is not None and int(t) < 1:
            raise IdentirepError(f"{name} must be >= 1, got {t}")
    tiles = 2 * buffers

    def need(r, c):
        return slack + itemsize * (tiles * r * c + (r + c) * (m1 + m2)) + 8 * sum(
            epilogue_scratch(r, c, fused))

    tc = min(v, int(tile_cols) if tile_cols else DEFAULT_TILE_COLS)
    tr = min(n, int(tile_rows)) if tile_rows else n
    while need(tr, tc) > workspace_bytes and (tr > 1 or tc > 1):
        if tile_rows is None and tr > 1:
            per_row = itemsize * (tiles * tc + m1 + m2)
            tr = max(1, min(tr // 2, (workspace_bytes - need(0, tc)) // per_row))
        elif tc > 1:
            tc = max(1, tc // 2)
        else:
            tr = max(1, tr // 2)
    if need(tr, tc) > workspace_bytes:
        raise IdentirepError(f"workspace_bytes={workspace_bytes} is too small for even one 1 x 1 "
                             f"tile; need at least {need(1, 1)} bytes")
    return tr, min(tc, 0x7FFFFFFF)


def epilogue_scratch(rows, cols, fused=False):
    """float64 elements (row scratch, column scratch) of the epilogue for a rows x cols tile
    (LseKlColWorkElems, or LseKlFusedRowWorkElems and LseKlFusedColWorkElems)."""
    if not fused:
        return 0, _core.lse_kl_cuda_col_work_elems(cols)
    return _core.lse_kl_cuda_fused_work_elems(rows, cols)
