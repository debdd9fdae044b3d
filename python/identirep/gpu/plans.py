"""What both GPU passes check and plan before their tile loops: the operands on the device and
their shapes, and the shape of the tiles that fit the workspace (planned in C++, csrc/plan.cpp,
the one place both backends take it from)."""
from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import IdentirepError
from ..passes import check_pass_shapes
from .arrays import as_device, import_cupy


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


def cupy_tiles(n, v, converted_cols, itemsize, tile_rows, tile_cols, workspace_bytes, overlap,
               fused):
    """(tile rows, tile cols, overlap) of the cupy backend's loop (``_core.plan_cupy_pass``,
    csrc/plan.cpp): all rows when they fit and ``tile_cols`` labels (default 4096), shrunk
    until the logit tiles, the widened operand tiles (``converted_cols`` columns) and the
    epilogue's scratch fit in ``workspace_bytes``."""
    tile_rows, tile_cols, workspace_bytes = _integers(tile_rows=tile_rows, tile_cols=tile_cols,
                                                      workspace_bytes=workspace_bytes)
    return _planned(_core.plan_cupy_pass, n, v, converted_cols, itemsize, tile_rows, tile_cols,
                    workspace_bytes, overlap, fused)


def cuda_tiles(n, v, dtype, tile_rows, tile_cols, workspace_bytes, overlap, fused, gemm):
    """(tile rows, tile cols, overlap, workspace bytes) of the pass driver's calls
    (``_core.plan_cuda_pass``, csrc/plan.cpp; ``gemm``: the fused GEMM kernel's)."""
    tile_rows, tile_cols, workspace_bytes = _integers(tile_rows=tile_rows, tile_cols=tile_cols,
                                                      workspace_bytes=workspace_bytes)
    return _planned(_core.plan_cuda_pass, n, v, dtype, tile_rows, tile_cols, workspace_bytes,
                    overlap, fused, bool(gemm))


def _integers(**sizes):
    """The sizes as Python ints (None stays None): 4096.0 is 4096, as everywhere else."""
    out = []
    for name, x in sizes.items():
        try:
            out.append(None if x is None else int(x))
        except (TypeError, ValueError):
            raise IdentirepError(f"{name} must be an integer, got {x!r}") from None
    return out


def _planned(plan, n, v, *args):
    try:
        return plan(n, v, *args)
    except ValueError as e:   # a tile size below 1, a workspace too small for one tile
        raise IdentirepError(str(e)) from None
