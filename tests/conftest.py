"""Fixtures and every skip of the test suite (shared helpers: helpers.py)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

# the CPU emulation of the GPU code (tests/emulation): its CuPy stand-in (fake_cupy) serves
# tests outside that folder too
sys.path.insert(1, str(Path(__file__).resolve().parent / "emulation"))

from helpers import guard_own_gemm_kernels, make_pair, logit_scale  # noqa: E402


def _has(mod):
    return importlib.util.find_spec(mod) is not None


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def torch():
    """torch, or skip: needed by the Hugging Face extraction (``identirep[hf]``)."""
    return pytest.importorskip("torch", reason="torch is not installed (pip install 'identirep[hf]')")


@pytest.fixture(scope="session")
def transformers(torch):
    """transformers (with torch), or skip."""
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'identirep[hf]')")


@pytest.fixture(scope="session")
def ml_dtypes():
    """ml_dtypes (NumPy bfloat16), or skip."""
    return pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")


@pytest.fixture
def torch_cuda():
    """torch with CUDA, or skip (torch missing, or without CUDA here)."""
    torch = pytest.importorskip("torch",
                                reason="torch is not installed (pip install '.[test]')")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


@pytest.fixture
def cupy_without_cublas():
    """The real CuPy where its cuBLAS/cuSOLVER cannot be loaded, or skip."""
    cupy = pytest.importorskip("cupy")
    try:
        from cupy_backends.cuda.libs import cublas  # noqa: F401
    except ImportError:
        return cupy
    pytest.skip("cuBLAS loads here")


@pytest.fixture
def cublas_library():
    """The libcublas file the pass driver loads, or skip where none is installed."""
    from identirep import IdentirepError, _core
    from identirep.gpu import cublas
    major = _core.cublas_header_major()
    files = [p for p in cublas.cublas_candidates(major) if os.path.sep in p]
    try:
        return cublas.load_cublas()
    except IdentirepError as e:
        if files:
            raise
        pytest.skip(f"no libcublas.so.{major} on this machine ({e})")


@pytest.fixture
def wgmma_ready(cupy):
    """Skip unless the wgmma kernel runs on the current GPU (compute capability 9.0, built)."""
    from identirep import _core
    problem = _core.lse_kl_gemm_wgmma_problem(cupy.cuda.Device().id)
    if problem:
        pytest.skip(problem)


@pytest.fixture
def wgmma_objects():
    """The sm_90a objects of this checkout's build for this Python (nm to read them), or skip."""
    import sys
    from pathlib import Path
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-"
    builds = [d for d in Path(__file__).resolve().parents[1].glob("build/*/CMakeFiles")
              if d.parent.name.startswith(tag)]
    objs = [o for d in builds for o in d.glob("identirep_wgmma.dir/**/*.o")]
    if not objs or shutil.which("nm") is None:
        pytest.skip("no wgmma object in this checkout's build (or no nm)")
    return objs


@pytest.fixture(scope="session")
def hf_class(transformers):
    """hf_class(name): a transformers class, or skip when this transformers version lacks it."""
    def get(name):
        cls = getattr(transformers, name, None)
        if cls is None:
            pytest.skip(f"transformers {transformers.__version__} has no {name}")
        return cls
    return get

from identirep import build_info  # noqa: E402

CUDA_BUILT = build_info()["cuda_compiled"]
CUDA_DRIVER = build_info()["cuda_pass_driver"]


def _gpu_problem():
    """Why the GPU tests cannot run here (no CuPy, CuPy failing to import, no device), or None.
    An import that warns counts as failing, as the warning would fail the tests (filterwarnings
    = error)."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - whatever stops it, say what
        return f"importing CuPy failed: {type(e).__name__}: {e}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError without a driver, or a warning
        return f"CuPy sees no GPU: {type(e).__name__}: {e}"
    return None if count > 0 else "CuPy sees 0 CUDA devices"


def _gpu_available() -> bool:
    return _gpu_problem() is None


def pytest_collection_modifyitems(config, items):
    if os.environ.get("IDENTIREP_REQUIRE_GPU_TESTS"):
        problem = "CUDA is not built" if not CUDA_BUILT else _gpu_problem()
        if problem:
            raise pytest.UsageError(f"GPU tests required, but {problem}")
    need_cuda = pytest.mark.skip(reason="CUDA not built (rebuild with IDENTIREP_CUDA=ON)")
    need_driver = pytest.mark.skip(reason="the CUDA pass driver is not built (CUDA or the "
                                   "cuBLAS headers were missing at build time)")
    no_gpu = pytest.mark.skip(reason="no GPU (needs CuPy and a CUDA device)")
    a_gpu = pytest.mark.skip(reason="the GPU tests can run here (CUDA is built and CuPy sees a "
                             "GPU): this checks what happens where they cannot")
    no_bf16 = pytest.mark.skip(reason="ml_dtypes not installed (bfloat16 NumPy arrays)")
    gpu = None
    for item in items:
        if "needs_cuda_build" in item.fixturenames and not CUDA_BUILT:
            item.add_marker(need_cuda)
        if "needs_cuda_driver" in item.fixturenames and not CUDA_DRIVER:
            item.add_marker(need_driver)
        if "without_gpu" in item.fixturenames and CUDA_BUILT:
            if gpu is None:
                gpu = _gpu_available()
            if gpu:
                item.add_marker(a_gpu)
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
        for mark in item.iter_markers("requires"):
            missing = [m for m in mark.args if not _has(m)]
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"{', '.join(missing)} not installed (pip install '.[test]')"))
        for mark in item.iter_markers("requires_programs"):
            missing = [p for p in mark.args if shutil.which(p) is None]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)} on PATH"))
    _leave_out_by_default(config, items)


#: markers of the tests the default run leaves out; .ci/run runs them: pytest -m "standin or slow"
#: (fuzz: pytest -m fuzz; repro: pytest -m repro)
LEFT_OUT = ("standin", "slow", "fuzz", "repro")


def _leave_out_by_default(config, items):
    """Without -m, and unless tests are named by node id, the tests marked standin, slow,
    fuzz or repro are deselected (any -m expression, even -m "", selects by itself)."""
    if config.option.markexpr or any("::" in str(a) for a in config.args):
        return
    keep, drop = [], []
    for item in items:
        (drop if any(item.get_closest_marker(m) for m in LEFT_OUT) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _own_gemm_kernels_are_marked(request, monkeypatch):
    """A GPU test that launches identirep's own GEMM kernels must carry the marker
    `fused_gemm`, and `wgmma` for the sm_90a kernel: benchmarks/device_check.sh runs those in
    processes of their own, so that a kernel that faults or hangs costs only its own tests."""
    if request.node.get_closest_marker("gpu") is not None and CUDA_BUILT:
        guard_own_gemm_kernels(request.node, monkeypatch)


@pytest.fixture
def needs_cuda_build():
    """Marks a test that needs the CUDA sources compiled in (but no GPU)."""


@pytest.fixture
def needs_cuda_driver():
    """Marks a test that needs the compiled CUDA pass driver (but no GPU)."""


@pytest.fixture
def without_gpu():
    """Marks a test of what happens where the GPU tests cannot run (skipped where they can: a
    CUDA build and a GPU CuPy sees)."""


@pytest.fixture(scope="session")
def nvrtc_compiler():
    """NVRTC (helpers.Nvrtc), or skip where no libnvrtc loads."""
    from helpers import Nvrtc
    try:
        return Nvrtc()
    except OSError as e:
        pytest.skip(f"NVRTC is not available ({e})")


@pytest.fixture(scope="module")
def problem64():
    """A float64 pass larger than any tile (make_pair), its NumPy statistics and logit scale."""
    from identirep.passes import numpy_pass
    f1, g1, f2, g2 = make_pair(0)
    return (f1, g1, f2, g2), numpy_pass(f1, g1, f2, g2), logit_scale(f1, g1, f2, g2)


@pytest.fixture
def bounded_small(monkeypatch):
    """The bounded pivot search on a small vocabulary, several tree leaves, few seeds."""
    import importlib
    E = importlib.import_module("identirep._label_side")
    monkeypatch.setattr(E, "EXACT_PIVOT_LIMIT", 50)
    monkeypatch.setattr(E, "BOUND_LEAF", 64)
    monkeypatch.setattr(E, "BOUND_SEED_PIVOTS", 8)


@pytest.fixture
def bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


@pytest.fixture
def cupy():
    import cupy

    return cupy
