"""identirep info with a GPU seen through the CuPy stand-in (fake_cupy.py): what runs where,
the GPUs, cuBLAS, and devices or CuPy installs that are broken."""
import json
import sys

import pytest

import identirep as ir
from identirep.cli import main

import fake_cupy

pytestmark = pytest.mark.emulation


def test_info_with_a_gpu(monkeypatch, capsys):
    # a GPU seen through the CuPy stand-in, cuBLAS found: GPU arrays go to the compiled backend
    from identirep.gpu import cublas as gp
    fake_cupy.install(monkeypatch)
    monkeypatch.delenv("IDENTIREP_BACKEND", raising=False)
    monkeypatch.setattr(gp, "load_cublas", lambda: "/opt/cuda/lib64/libcublas.so.13")
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    cuda = ir.build_info()["cuda_compiled"]
    assert info["backends"]["cupy"] is None
    assert info["gpu_arrays"] == ("cuda" if cuda else "cupy")
    gpu = info["gpus"][0]
    assert (gpu["name"], gpu["compute_capability"], gpu["memory_gib"]) == (
        "CuPy stand-in (CPU)", "9.0", 80.0)
    assert ("wgmma" in gpu) == cuda
    if ir.build_info()["cuda_pass_driver"]:
        assert info["cublas"] == "/opt/cuda/lib64/libcublas.so.13"
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"GPU arrays: backend {info['gpu_arrays']!r}" in text
    assert "GPU 0: CuPy stand-in (CPU) (compute capability 9.0, 80.0 GiB" in text
    # IDENTIREP_BACKEND decides for GPU arrays too, and a wrong value is the reason they fail
    monkeypatch.setenv("IDENTIREP_BACKEND", "cupy")
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gpu_arrays"] == "cupy" and info["IDENTIREP_BACKEND"] == "cupy"
    monkeypatch.setenv("IDENTIREP_BACKEND", "gpu")
    assert main(["info"]) == 0
    assert "GPU arrays: not processed here: unknown backend 'gpu'" in capsys.readouterr().out


def test_info_on_broken_gpus_and_cupy(monkeypatch, capsys):
    # a device CuPy cannot describe, a ROCm CuPy, a CuPy that fails to import: reported, no crash
    cp = fake_cupy.install(monkeypatch)

    def props(i):
        raise RuntimeError("cudaErrorECCUncorrectable: uncorrectable ECC error encountered")
    monkeypatch.setattr(cp.cuda.runtime, "getDeviceProperties", props)
    assert main(["info"]) == 0
    assert "GPU 0: RuntimeError: cudaErrorECCUncorrectable" in capsys.readouterr().out
    monkeypatch.setattr(cp.cuda.runtime, "is_hip", True, raising=False)
    assert main(["info", "--json"]) == 0
    assert "ROCm (HIP) build" in json.loads(capsys.readouterr().out)["backends"]["cupy"]

    class Broken:   # a CuPy whose import fails with something else than ImportError
        def find_spec(self, name, path=None, target=None):
            if name == "cupy":
                raise OSError("libcudart.so.13: cannot open shared object file")
    monkeypatch.delitem(sys.modules, "cupy")
    monkeypatch.setattr(sys, "meta_path", [Broken()] + sys.meta_path)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backends"]["cupy"] == ("importing CuPy failed (OSError: libcudart.so.13: "
                                        "cannot open shared object file)")
    assert info["gpus"] == [] and info["gpu_arrays"] is None
    monkeypatch.setitem(sys.modules, "cupy", None)   # import cupy raises ImportError
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backends"]["cupy"].startswith(
        "CuPy is not installed")
