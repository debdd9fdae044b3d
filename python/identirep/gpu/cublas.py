"""cuBLAS for the GPU backends: the pass driver's run-time loader of libcublas, and
``cublasGemmEx`` through CuPy's handle for float16/bfloat16 products (float32 accumulation)."""
from __future__ import annotations

import numpy as np

from .. import _bf16 as bf16
from .. import _core
from ..errors import IdentirepError
from .arrays import import_cupy

# cuBLAS / CUDA enums (cublas_api.h, library_types.h).
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1


def cublas_candidates(major: int) -> list:
    """Where libcublas.so.<major> may be: its soname (loaded already by CuPy or torch, or on
    the loader's path), NVIDIA's PyPI wheels, the CUDA toolkit."""
    import glob
    import importlib.util
    import os
    name = f"libcublas.so.{major}"
    out = [name]
    spec = importlib.util.find_spec("nvidia")
    for d in (spec.submodule_search_locations or []) if spec else []:
        out += [os.path.join(d, sub, "lib", name) for sub in (f"cu{major}", "cublas")]
    roots = [os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for r in filter(None, roots):
        out += [os.path.join(r, "lib64", name)] + sorted(glob.glob(os.path.join(
            r, "targets", "*", "lib", name)))
    return [p for p in out if os.path.sep not in p or os.path.isfile(p)]


def load_cublas() -> str:
    """Load libcublas into the pass driver (once); returns its file, or raises IdentirepError
    with the places tried."""
    try:
        _core.cublas_version()
        return _core.cublas_load([])  # loaded already: its file
    except RuntimeError:
        pass
    try:  # CuPy's cuBLAS, when CuPy has one, is the library the rest of the engine uses
        from cupy_backends.cuda.libs import cublas  # noqa: F401
    except Exception:
        pass
    major = _core.cublas_header_major()
    try:
        return _core.cublas_load(cublas_candidates(major))
    except RuntimeError as e:
        raise IdentirepError(
            f"the cuda backend's pass driver needs cuBLAS {major}: {e}. Install it "
            f"(pip install 'nvidia-cublas>={major},<{major + 1}', or the CUDA toolkit), or use "
            "backend='cupy'") from e


def strides2d(x):
    """(rows, cols, s0, s1) of a 2-d array, strides in elements, or None when a stride is not a
    whole number of elements (it needs a copy)."""
    it = x.itemsize
    s0, s1 = x.strides
    if s0 % it or s1 % it:
        return None
    return (*x.shape, s0 // it, s1 // it)


def blas_ready(x) -> bool:
    """Whether cuBLAS (and the pass driver) can read the 2-d array x as it is: rows or columns
    contiguous (``_core.blas_layout``, the driver's own rule), else it needs a copy."""
    s = strides2d(x)
    return s is not None and _core.blas_layout(*s) is not None


def gemm_ex(cp, a, b, out, kind: str, beta: float = 0.0) -> None:
    """out (r x c, C-contiguous float32) = a (r x k) @ b (c x k)^T + beta out for
    float16/bfloat16 a, b (CuPy arrays; bfloat16 as uint16 bits), with cublasGemmEx: float32
    accumulation, no rounding of the inputs. Any row- or column-contiguous layout; others are
    copied."""
    from cupy.cuda import cublas, device
    if out.shape != (a.shape[0], b.shape[0]) or out.dtype != np.float32 \
            or not out.flags.c_contiguous:
        raise IdentirepError("gemm_ex: out must be a C-contiguous float32 (r, c) array")
    if not blas_ready(a):
        a = cp.ascontiguousarray(a)
    if not blas_ready(b):
        b = cp.ascontiguousarray(b)
    # the driver's plan of a logit tile (csrc/plan.cpp): out' = op(b) op(a), column-major
    transa, transb, m, n, k, lda, ldb, ldc = _core.gemm_nt_plan(strides2d(a), strides2d(b))
    code = _CUDA_R_16BF if kind == "bfloat16" else _CUDA_R_16F
    one = np.ones(1, dtype=np.float32)
    zero = np.full(1, beta, dtype=np.float32)
    host_mode = getattr(cublas, "CUBLAS_POINTER_MODE_HOST", 0)
    handle = device.get_cublas_handle()
    mode = cublas.getPointerMode(handle)  # alpha and beta are host scalars
    if mode != host_mode:
        cublas.setPointerMode(handle, host_mode)
    try:
        cublas.gemmEx(handle, transa, transb, m, n, k, one.ctypes.data, b.data.ptr, code, lda,
                      a.data.ptr, code, ldb, zero.ctypes.data, out.data.ptr, _CUDA_R_32F, ldc,
                      _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
    finally:
        if mode != host_mode:
            cublas.setPointerMode(handle, mode)


def split_bf16_matmul(L, g_bits):
    """L (r x k, float32, device) @ g^T for g (c x k) given as bfloat16 bits: the exact split
    L = hi + mid + lo (``bf16.split3``) in three bfloat16 GEMMs (``gemm_ex``, float32
    accumulation, smallest part first). Every product is exact, as in a float32 GEMM of L and
    g, at three times the bfloat16 tensor-core cost instead of a float32 (non-tensor) GEMM's."""
    cp = import_cupy()
    out = cp.empty((L.shape[0], g_bits.shape[0]), dtype=cp.float32)
    for i, part in enumerate(reversed(bf16.split3(cp.ascontiguousarray(L, dtype=cp.float32)))):
        gemm_ex(cp, part, g_bits, out, "bfloat16", beta=0.0 if i == 0 else 1.0)
    return out
