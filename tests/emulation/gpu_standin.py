"""pytest plugin (``-p gpu_standin``): the GPU tests of test_gpu.py on the CPU, through the CuPy
stand-in (fake_cupy.py), so that their own code (fixtures, expected values, tolerances) is
known to work before a GPU runs them. What needs a GPU is replaced by the stand-ins of
standins.py: the compiled pass driver by its emulation (its own argument checks,
then its tiles through the compiled CPU epilogue), the NVRTC epilogue kernels by the compiled
CPU kernel on host copies, cublasGemmEx by its float32 emulation, the device pivot kernel by the
CPU kernel. torch reports no CUDA here, even on a GPU machine: the stand-in cannot take torch
CUDA tensors."""
from __future__ import annotations

import importlib.util

import pytest

import fake_cupy

fake_cupy.install()


@pytest.fixture(autouse=True)
def _gpu_on_the_cpu(monkeypatch):
    from identirep import _core
    from identirep.gpu import cublas, cupy_backend, pivots

    import standins
    monkeypatch.setattr(_core, "lse_kl_pass_cuda", standins.emulated_pass_driver(
        getattr(_core, "lse_kl_pass_cuda", None)), raising=False)
    monkeypatch.setattr(cublas, "load_cublas", lambda: "emulated")
    monkeypatch.setattr(cupy_backend, "NvrtcEpilogue", standins.HostEpilogue)
    monkeypatch.setattr(cublas, "gemm_ex", standins.emulated_gemm_ex)
    monkeypatch.setattr(pivots, "pivot_criteria_device",
                        standins.host_pivot_criteria(fake_cupy.cupy, []))
    if importlib.util.find_spec("torch") is not None:
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
