"""Build facts of the compiled core (which backends, CPU flags, CUDA architectures)."""
from __future__ import annotations

from . import _core


def build_info() -> dict:
    """What this installation was compiled with.

    Keys: ``version``, ``cpu`` (always True), ``openmp`` and ``openmp_max_threads``,
    ``native`` and ``cpu_flags`` (``-march=native`` source builds), ``simd`` (widest vector ISA
    the CPU kernels were compiled for), ``compiler``, ``cuda_compiled``,
    ``cuda_architectures`` (list of CMake architecture strings, e.g. ``["90-real",
    "90-virtual"]``), ``cuda_version`` (nvcc version, or None), ``cuda_pass_driver`` (the
    compiled cuBLAS tile loop, csrc/cuda_pass.cpp, built: needs the cuBLAS headers at build
    time), ``cublas_option`` (the IDENTIREP_CUBLAS setting it was built with) and
    ``fused_gemm_wgmma`` (the fused GEMM's sm_90a wgmma kernel built: CUDA architecture 90).
    """
    raw = _core.build_info()
    archs = [a for a in raw["cuda_architectures"].split(",") if a]
    return {
        "version": raw["version"],
        "cpu": True,
        "openmp": bool(raw["openmp"]),
        "openmp_version": raw["openmp_version"],
        "openmp_max_threads": int(raw["openmp_max_threads"]),
        "native": bool(raw["native"]),
        "cpu_flags": raw["cpu_flags"].split(),
        "simd": raw["simd"],
        "compiler": raw["compiler"],
        "cuda_compiled": bool(raw["cuda_compiled"]),
        "cuda_architectures": archs if raw["cuda_compiled"] else [],
        "cuda_version": raw["cuda_version"],
        "cuda_pass_driver": bool(raw["cuda_pass_driver"]),
        "cublas_option": raw["cublas_option"],
        "fused_gemm_wgmma": bool(raw["fused_gemm_wgmma"]),
    }
