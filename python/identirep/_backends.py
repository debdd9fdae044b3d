"""Backend registry: cpu | cuda | cupy | reference, chosen by where the arrays live.

``backend="auto"`` picks cpu for NumPy arrays and a GPU backend for CuPy / torch-CUDA arrays
(anything with ``__cuda_array_interface__``): "cuda" (the compiled CUDA code: the pass driver,
cuBLAS tiles and epilogue in one compiled loop, with libcublas loaded at run time) when the
extension was built with CUDA and its pass driver and CuPy sees a GPU, else "cupy" (the same
kernels compiled at run time by CuPy, GEMM tiles from CuPy's cuBLAS) when CuPy sees a GPU.
Both keep device memory and the engine's other products in CuPy.
The environment variable IDENTIREP_BACKEND overrides "auto". A backend that is not available
fails loudly with what to do instead; nothing silently falls back to a slower path.
"""
from __future__ import annotations

import os
from typing import Optional

from ._arrays import array_location
from .errors import CUPY_INSTALL, IdentirepError, why

BACKENDS = ("cpu", "cuda", "cupy", "reference")


def resolve(backend: str, *models) -> str:
    """The backend for these models: ``backend`` itself, checked, or the one "auto" picks."""
    from .model import Model
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise IdentirepError(
                f"argument {i + 1} must be an identirep.Model, got {type(m).__name__}")
    return resolve_arrays(backend, [x for m in models for x in (m.f, m.g, m.bias)])


def resolve_arrays(backend: Optional[str], arrays) -> str:
    if backend is None:
        backend = "auto"
    if backend == "auto":
        backend = os.environ.get("IDENTIREP_BACKEND", "auto") or "auto"
    if backend not in BACKENDS + ("auto",):
        raise IdentirepError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    loc = array_location(*arrays)
    if backend == "auto":
        return "cpu" if loc == "cpu" else gpu_backend()
    if backend in ("cuda", "cupy"):
        problem = cuda_problem() if backend == "cuda" else cupy_problem()
        if problem is not None:
            other = ("; backend='cupy' needs only CuPy and a GPU" if backend == "cuda" else "")
            raise IdentirepError(
                f"backend={backend!r} is not available: {problem}{other}. Pass NumPy arrays "
                "(or backend='cpu') to use the CPU engine")
    return backend


def gpu_backend() -> str:
    """"cuda" or "cupy" for GPU arrays, or an IdentirepError saying why neither works."""
    cuda, cupy = cuda_problem(), cupy_problem()
    if cuda is None:
        return "cuda"
    if cupy is None:
        return "cupy"
    raise IdentirepError(
        f"GPU arrays arrived but neither backend works: cuda: {cuda}; cupy: {cupy}. "
        "Install CuPy on a machine with a visible GPU, or move the arrays to the host "
        "(NumPy) for the CPU engine")


def cupy_problem() -> Optional[str]:
    """Why the cupy backend cannot run here, or None."""
    try:
        import cupy
    except ImportError:
        return f"CuPy is not installed ({CUPY_INSTALL})"
    except Exception as e:  # a broken install, or a warning made an error
        return f"importing CuPy failed ({why(e)})"
    if getattr(cupy.cuda.runtime, "is_hip", False):
        return "this CuPy is a ROCm (HIP) build; identirep's GPU kernels are CUDA"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver, or a broken install
        return f"CuPy sees no GPU ({type(e).__name__}: {e})"
    if count <= 0:
        return "CuPy sees no GPU (0 CUDA devices)"
    try:  # CuPy finds these at run time; its wheel alone does not bring them
        from cupy_backends.cuda.libs import cublas, cusolver  # noqa: F401
    except Exception as e:
        return f"CuPy cannot load cuBLAS/cuSOLVER ({why(e)}); {CUPY_INSTALL}"
    return None


def cuda_problem() -> Optional[str]:
    """Why the cuda backend cannot run here, or None: it needs the CUDA build with its pass
    driver, CuPy with a GPU, and cuBLAS for the driver."""
    from ._build import build_info
    from .gpu.cuda_backend import NO_CUDA, driver_problem
    if not build_info().get("cuda_compiled"):
        return NO_CUDA
    problem = cupy_problem()
    if problem is not None:
        return "its device memory and the engine's products come from CuPy, and " + problem
    problem = driver_problem()
    if problem is not None:
        return problem
    from .gpu.cublas import load_cublas
    try:
        load_cublas()
    except IdentirepError as e:
        return str(e)
    return None


def availability() -> dict:
    """What this installation can run here, and why not where it cannot: the build, each
    backend (None where it works, else the reason), the backend GPU arrays go to, the GPUs
    CuPy sees, and the cuBLAS file of the cuda backend's pass driver (``identirep info``)."""
    from ._build import build_info
    info = build_info()
    out = {"version": info["version"], "build": info,
           "backends": {"cpu": None, "reference": None, "cuda": cuda_problem(),
                        "cupy": cupy_problem()},
           "IDENTIREP_BACKEND": os.environ.get("IDENTIREP_BACKEND") or None}
    try:  # what "auto" picks for a GPU array, IDENTIREP_BACKEND included
        out["gpu_arrays"], out["gpu_arrays_problem"] = resolve_arrays("auto", [_GpuArray()]), None
    except IdentirepError as e:
        out["gpu_arrays"], out["gpu_arrays_problem"] = None, str(e)
    out["gpus"] = _gpus(info)
    if info.get("cuda_pass_driver"):
        from .gpu.cublas import load_cublas
        try:
            out["cublas"], out["cublas_problem"] = load_cublas(), None
        except IdentirepError as e:
            out["cublas"], out["cublas_problem"] = None, str(e)
    return out


def _gpus(info) -> list:
    """[{index, name, compute_capability, memory_gib, wgmma}] of the GPUs CuPy sees (wgmma:
    None where the wgmma kernel runs on it, else why not; absent without a CUDA build)."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver: cupy_problem says why
        return []
    gpus = []
    for i in range(count):
        try:
            p = cupy.cuda.runtime.getDeviceProperties(i)
        except Exception as e:  # a device in a bad state
            gpus.append({"index": i, "problem": f"{type(e).__name__}: {e}"})
            continue
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        gpu = {"index": i, "name": name, "compute_capability": f"{p['major']}.{p['minor']}",
               "memory_gib": round(p.get("totalGlobalMem", 0) / 2 ** 30, 1)}
        if info.get("cuda_compiled"):
            from . import _core
            gpu["wgmma"] = _core.lse_kl_gemm_wgmma_problem(i) or None
        gpus.append(gpu)
    return gpus


class _GpuArray:
    """Stands for a GPU array where only its location matters (``availability``)."""
    __cuda_array_interface__ = {}
