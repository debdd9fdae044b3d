"""identirep.build_info(): what the compiled core contains."""
from __future__ import annotations

import os
import subprocess

import identirep
from identirep import _core


def test_build_info_keys_and_types():
    info = identirep.build_info()
    assert {"version", "cpu", "openmp", "openmp_max_threads", "native", "cpu_flags", "simd",
            "cuda_compiled", "cuda_architectures", "cuda_version"} <= set(info)
    assert info["cpu"] is True
    assert isinstance(info["openmp"], bool) and info["openmp_max_threads"] >= 1
    assert isinstance(info["native"], bool) and isinstance(info["cpu_flags"], list)
    assert ("-march=native" in info["cpu_flags"]) == info["native"]
    assert isinstance(info["cuda_architectures"], list)
    assert all(isinstance(a, str) and a for a in info["cuda_architectures"])
    assert "build_info" in identirep.__all__


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    assert identirep.build_info()["version"] == version("identirep")


def test_cuda_facts_are_consistent():
    info = identirep.build_info()
    if info["cuda_compiled"]:
        assert isinstance(info["cuda_version"], str) and info["cuda_version"]
        assert info["cuda_architectures"]
        assert hasattr(_core, "lse_kl_update_cuda")
        # the sm_90a wgmma kernel is built exactly when architecture 90 is a target
        hopper = any(a.startswith("90") for a in info["cuda_architectures"])
        assert info["fused_gemm_wgmma"] is hopper
        assert (_core.lse_kl_gemm_wgmma_problem() == "") is hopper
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] == []
        assert not hasattr(_core, "lse_kl_update_cuda")


def test_cuda_compiled_as_expected():
    # CI sets IDENTIREP_EXPECT_CUDA=1 where nvcc is installed (0 where it is not), so a build
    # that silently dropped (or grew) the CUDA kernels fails here.
    expect = os.environ.get("IDENTIREP_EXPECT_CUDA")
    if expect is not None:
        assert identirep.build_info()["cuda_compiled"] is (expect == "1")


def _defined_symbols(obj):
    out = subprocess.run(["nm", "--defined-only", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    return {parts[2] for parts in map(str.split, out.splitlines())
            if len(parts) == 3 and parts[1] in "TWVDBR" and not parts[2].startswith("DW.ref.")}


def test_the_sm90a_object_defines_nothing_another_object_defines(wgmma_objects):
    # The wgmma object holds sm_90a code only. A function defined in it and in another object
    # (a launcher template instantiated in both) is linked once, maybe as its copy, whose
    # kernel launches then find no image on any GPU but compute capability 9.0.
    objs = wgmma_objects
    assert len(objs) == 1, objs
    others = [o for o in objs[0].parents[2].glob("_core.dir/**/*.o")]
    assert others
    mine = _defined_symbols(objs[0])
    assert mine
    for o in others:
        shared = mine & _defined_symbols(o)
        assert not shared, f"{o.name} also defines {sorted(shared)[:3]}"
