"""The label-side pivot criteria (kernels/pivot_terms.cuh) on the GPU: the compiled kernel
(cuda backend) or the same kernel compiled by NVRTC (cupy backend)."""
from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import IdentirepError
from . import nvrtc
from .arrays import import_cupy


def pivot_criteria_device(X1, X2, n1, n2, A1, A2, B12, pivots, tol: float, mode: str,
                          backend: str) -> np.ndarray:
    """Best-leave-out criterion of each pivot (kernels/pivot_terms.cuh) on the GPU.

    X1, X2: device (B, V) cross products g_k(y0)' C_k g_k(y), float32 or float64 (read as they
    are; other dtypes are widened to float64); n1, n2, A1, A2, B12: device float64 (V,);
    pivots: (B,) indices.
    ``backend`` "cuda" launches the compiled kernel (``_core.pivot_criteria_cuda``), "cupy"
    the same kernel compiled by NVRTC. Returns host float64 (B,)."""
    if mode not in ("max", "mean"):
        raise IdentirepError(f"mode must be 'max' or 'mean', got {mode!r}")
    cp = import_cupy()
    xdt = cp.float32 if X1.dtype == cp.float32 and X2.dtype == cp.float32 else cp.float64
    X1, X2 = (cp.ascontiguousarray(x, dtype=xdt) for x in (X1, X2))
    B, V = X1.shape
    if X2.shape != (B, V) or any(v.shape != (V,) for v in (n1, n2, A1, A2, B12)):
        raise IdentirepError("pivot_criteria_device: X1, X2 must be (B, V) and the label "
                             "vectors (V,)")
    piv = cp.asarray(np.asarray(pivots, np.int64))
    crit = cp.empty(B, dtype=cp.float64)
    if B == 0:
        return crit.get()
    vecs = [cp.ascontiguousarray(v, dtype=cp.float64) for v in (n1, n2, A1, A2, B12)]
    if backend == "cuda":
        if not hasattr(_core, "pivot_criteria_cuda"):
            raise IdentirepError("the cuda backend needs identirep built with CUDA "
                                 "(IDENTIREP_CUDA=ON pip install .); backend='cupy' does not")
        _core.pivot_criteria_cuda(X1, X2, *vecs, piv, float(tol), mode, crit,
                                  cp.cuda.get_current_stream().ptr)
    else:
        kern = nvrtc.pivot_module(cp).get_function(
            nvrtc.PIVOT_KERNELS["float" if xdt == cp.float32 else "double"])
        kern((B,), (nvrtc.LAUNCH["pivot_threads"],),
             (X1, np.int64(V), X2, np.int64(V), *vecs, piv, np.int64(V), np.float64(tol),
              np.int32(0 if mode == "max" else 1), crit))
    return crit.get()
