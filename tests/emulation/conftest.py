"""Fixtures of the CPU emulation of the GPU code, and its skips (helpers: standins.py, helpers.py).

IDENTIREP_SIMT_KERNELS=<dir> builds the SIMT emulator's harness from the kernel headers of another
folder (a modified copy, to see that a broken kernel fails the emulated kernel tests)."""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from identirep import _backends
from identirep.gpu import cuda_backend, cupy_backend, pivots

import fake_cupy
from standins import host_pass, host_pivot_criteria

ROOT = Path(__file__).resolve().parents[2]
SIMT = Path(__file__).resolve().parent / "simt"
KERNELS = Path(os.environ.get("IDENTIREP_SIMT_KERNELS", ROOT / "csrc" / "kernels"))


@pytest.fixture
def dev(monkeypatch):
    """The stand-in as ``cupy``, GPU arrays resolving to backend "cupy" (``dev.backend``), the
    GPU pass and pivot kernel replaced; ``dev.pivot_calls`` lists the kernel's backends."""
    cp = fake_cupy.install(monkeypatch)
    monkeypatch.delenv("IDENTIREP_BACKEND", raising=False)
    ns = types.SimpleNamespace(cp=cp, backend="cupy", pivot_calls=[])
    monkeypatch.setattr(_backends, "gpu_backend", lambda: ns.backend)
    monkeypatch.setattr(cupy_backend, "cupy_pass", functools.partial(host_pass, "cupy"))
    monkeypatch.setattr(cuda_backend, "cuda_pass", functools.partial(host_pass, "cuda"))

    monkeypatch.setattr(pivots, "pivot_criteria_device", host_pivot_criteria(cp, ns.pivot_calls))
    return ns


@pytest.fixture(scope="session")
def simt_builds(tmp_path_factory):
    """The SIMT emulator's two programs, compiled side by side (each takes seconds): its
    harness (simt/run_kernels.cpp) and the library of its RawModule kernels
    (simt/launch_kernels.cpp), both with the kernel headers. Skipped where the emulator cannot
    run: it needs Linux and a C++20 compiler with <ucontext.h>."""
    if sys.platform != "linux":
        pytest.skip("the SIMT emulator needs Linux (glibc fibers, its own ELF symbol table)")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    d = tmp_path_factory.mktemp("simt")
    probe = d / "probe.cpp"
    probe.write_text("#include <atomic>\n#include <bit>\n#include <ucontext.h>\n"
                     "int main() { std::atomic<unsigned> a{0}; a.notify_all();\n"
                     "  return std::bit_cast<int>(0.0f); }\n")
    if subprocess.run([cxx, "-std=c++20", "-pthread", str(probe), "-o", str(d / "probe")],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip(f"{cxx} cannot build C++20 with atomic waits and <ucontext.h>")
    exe, lib = d / "run_kernels", d / "libsimt_launch.so"
    common = [cxx, "-std=c++20", "-O1", "-pthread", "-D__CUDACC_RTC__"]
    # -fno-gnu-unique: the library's __shared__ statics stay its own, whatever else the
    # process loads
    builds = [common + [f"-I{SIMT}", f"-I{KERNELS}", str(SIMT / "run_kernels.cpp"), "-o",
                        str(exe), "-ldl"],
              common + ["-shared", "-fPIC", "-fno-gnu-unique", f"-I{KERNELS}",
                        str(SIMT / "launch_kernels.cpp"), "-o", str(lib), "-ldl"]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in builds]
    errors = [p.communicate()[1] for p in procs]
    errors = [(e or f"exit {p.returncode}") if p.returncode else "" for e, p in zip(errors, procs)]
    return exe, lib, errors


@pytest.fixture(scope="session")
def harness(simt_builds):
    """simt/run_kernels.cpp built with the SIMT emulator and the kernel headers."""
    exe, _, errors = simt_builds
    assert not errors[0], errors[0]
    return exe


@pytest.fixture(scope="session")
def launch_library(simt_builds):
    """simt/launch_kernels.cpp as a shared library (the emulator's RawModule kernels)."""
    _, lib, errors = simt_builds
    assert not errors[1], errors[1]
    return lib


def _include_dir(header, dirs):
    return next((str(d) for d in dirs if (Path(d) / header).is_file()), None)


@pytest.fixture(scope="session")
def driver_simulation_build():
    """The compile command of cuda_pass_sim.cpp (the pass driver with stand-ins for CUDA and
    cuBLAS) without its output file: a C++ compiler, the CUDA runtime and cuBLAS headers (from
    the toolkit or NVIDIA's wheels), a source checkout; skipped without them."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    roots = [os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    cuda_inc = _include_dir("cuda_runtime.h", [Path(r) / "include" for r in roots if r])
    spec = importlib.util.find_spec("nvidia")
    wheels = [Path(d) / sub / "include" for d in (spec.submodule_search_locations or [])
              for sub in ("cu13", "cu12", "cublas")] if spec else []
    blas_inc = _include_dir("cublas_api.h", [Path(r) / "include" for r in roots if r] + wheels)
    missing = [what for what, x in (("a C++ compiler", cxx), ("the CUDA runtime headers",
                                                              cuda_inc),
                                    ("the cuBLAS headers", blas_inc)) if not x]
    if missing or not (ROOT / "csrc" / "cuda_pass.cpp").is_file():
        pytest.skip(f"needs {', '.join(missing) or 'a source checkout'}")
    return [cxx, "-std=c++17", "-O1", "-DIDENTIREP_WITH_CUDA", "-DIDENTIREP_WITH_CUBLAS", "-I",
            str(ROOT / "csrc"), "-isystem", cuda_inc, "-isystem", blas_inc,
            str(Path(__file__).resolve().parent / "cuda_pass_sim.cpp"),
            str(ROOT / "csrc" / "plan.cpp")]
