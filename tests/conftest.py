"""Shared fixtures and every skip of the test suite."""
from __future__ import annotations

import importlib.util

import pytest

from identirep import build_info

CUDA_BUILT = build_info()["cuda_compiled"]


def _gpu_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    need_cuda = pytest.mark.skip(reason="CUDA not built (rebuild with IDENTIREP_CUDA=ON)")
    no_gpu = pytest.mark.skip(reason="no GPU (needs CuPy and a CUDA device)")
    no_bf16 = pytest.mark.skip(reason="ml_dtypes not installed (bfloat16 NumPy arrays)")
    gpu = None
    for item in items:
        if "needs_cuda_build" in item.fixturenames and not CUDA_BUILT:
            item.add_marker(need_cuda)
        if item.get_closest_marker("gpu") is not None:
            if not CUDA_BUILT:
                item.add_marker(need_cuda)
                continue
            if gpu is None:
                gpu = _gpu_available()
            if not gpu:
                item.add_marker(no_gpu)
        if "bfloat16" in item.fixturenames and importlib.util.find_spec("ml_dtypes") is None:
            item.add_marker(no_bf16)


@pytest.fixture
def needs_cuda_build():
    """Marks a test that needs the CUDA sources compiled in (but no GPU)."""


@pytest.fixture
def bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


@pytest.fixture
def cupy():
    import cupy

    return cupy
