"""The compiled CUDA pass driver (csrc/cuda_pass.cpp): its build, its cuBLAS loader, its GEMM
plan and workspace, and its argument checks, all of which run without a GPU; on a GPU, its
passes against the Python-driven loop and the NumPy pass."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import identirep
from identirep import IdentirepError, _core
from identirep.gpu import cublas, cuda_backend, cupy_backend, plans
from identirep.gpu.arrays import DeviceArray, as_device, device_augmented
from identirep.passes import numpy_pass
from helpers import (ALL_FIELDS, FakeGpuArray, assert_rows_and_columns, assert_stats_close,
                     bf16_round, bf16_value, guard_own_gemm_kernels, logit_scale, make_pair,
                     random_pair)



def test_driver_built_wherever_cuda_is():
    info = identirep.build_info()
    assert hasattr(_core, "lse_kl_pass_cuda") is info["cuda_pass_driver"]
    if not info["cuda_compiled"]:
        assert not info["cuda_pass_driver"]
    # CI sets IDENTIREP_EXPECT_CUDA=1 where nvcc is: every CUDA source must then be built,
    # the driver included (its cuBLAS headers come from the toolkit or the nvidia-cublas wheel
    # that _build_backend adds to the build environment).
    if os.environ.get("IDENTIREP_EXPECT_CUDA") == "1" and info["cublas_option"] != "OFF":
        assert info["cuda_pass_driver"], (
            "CUDA was built without the pass driver: no cuBLAS headers were found (install "
            "nvidia-cublas into the build environment, or build with IDENTIREP_CUBLAS=OFF)")


def test_build_backend_asks_for_cublas_headers_only_when_needed(monkeypatch, tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "_build_backend"))
    import identirep_build as b

    monkeypatch.setenv("IDENTIREP_CUDA", "OFF")
    assert b.cublas_requirement() == []
    monkeypatch.setenv("IDENTIREP_CUDA", "AUTO")
    monkeypatch.setenv("IDENTIREP_CUBLAS", "OFF")
    assert b.cublas_requirement() == []
    monkeypatch.delenv("IDENTIREP_CUBLAS")
    # a fake toolkit: nvcc 13.0 without cuBLAS, then with its headers
    root = tmp_path / "cuda"
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDACXX", str(nvcc))
    monkeypatch.setattr(b, "DEFAULT_CUDA_ROOT", str(tmp_path / "none"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert b.cublas_requirement() == ["nvidia-cublas>=13,<14"]
    (root / "include").mkdir()
    (root / "include" / "cublas_api.h").write_text("")
    assert b.cublas_requirement() == []


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_driver_workspace_fits_the_tile_plan(fused, overlap, dtype):
    # the driver's tiles and workspace (csrc/plan.cpp, in every build): its cuBLAS workspace,
    # the logit tiles and the epilogue's scratch, aligned, within workspace_bytes
    it = np.dtype(dtype).itemsize
    cublas = _core.cublas_workspace_bytes()
    assert cublas >= 4 << 20
    for n, v, ws in ((16384, 128256, 1 << 30), (1001, 50257, 40 << 20), (7, 3, 33 << 20),
                     (50000, 262144, 1 << 30)):
        tr, tc, over, size = plans.cuda_tiles(n, v, dtype, None, None, ws, overlap, fused, False)
        assert over == (overlap and (tr, tc) != (n, v))
        assert size == _core.lse_kl_pass_cuda_workspace(tr, tc, dtype, over, fused, False)
        scratch = (sum(_core.lse_kl_cuda_fused_work_elems(tr, tc)) if fused else
                   _core.lse_kl_cuda_col_work_elems(tc))
        parts = cublas + 2 * (2 if over else 1) * tr * tc * it + 8 * scratch
        assert parts <= size <= min(ws, parts + 6 * 256)
    with pytest.raises(IdentirepError, match="too small"):
        plans.cuda_tiles(7, 3, dtype, None, None, cublas, overlap, fused, False)


def test_fused_gemm_workspace_and_tiles():
    # no logit tiles, no cuBLAS workspace: the row records, column sums and shifts, aligned
    for n, v in ((16384, 128256), (1001, 50257), (7, 3)):
        tr, tc, over, size = plans.cuda_tiles(n, v, "float32", None, None, 1 << 30, True, False,
                                              True)
        assert (tr, tc, over) == (n, min(v, 16384), False)
        row, col, shift = _core.lse_kl_gemm_work_elems(tr, tc)
        assert row == -(-tc // 128) * 15 * tr and col == 64 * 5 * tc and shift == 2 * tc
        assert size == _core.lse_kl_pass_cuda_workspace(tr, tc, "float32", False, False, True)
        assert 8 * (row + col) + 4 * shift <= size <= 8 * (row + col) + 4 * shift + 3 * 256
    # 1 << 26 bytes: the labels shrink first (to 128), then the rows
    tr, tc, _, size = plans.cuda_tiles(16384, 128256, "float32", None, None, 1 << 26, False,
                                       False, True)
    assert tc < 16384 and size <= 1 << 26
    assert plans.cuda_tiles(1 << 20, 4096, "float32", None, None, 1 << 26, False, False,
                            True)[1] == 128
    with pytest.raises(IdentirepError, match="too small for the fused GEMM"):
        plans.cuda_tiles(16384, 4096, "float32", 16384, 4096, 1 << 20, False, False, True)
    with pytest.raises(IdentirepError, match="float32 logits"):
        plans.cuda_tiles(10, 10, "float64", None, None, 1 << 30, False, False, True)
    # sizes given as floats are taken as the integers they are, as everywhere else
    assert plans.cuda_tiles(100, 5000, "float32", 64.0, 4096.0, 2e9, True, False, False) == \
        plans.cuda_tiles(100, 5000, "float32", 64, 4096, 2 * 10 ** 9, True, False, False)
    with pytest.raises(IdentirepError, match="tile_cols must be an integer, got 'wide'"):
        plans.cupy_tiles(100, 5000, 0, 4, None, "wide", 1 << 30, True, False)
    with pytest.raises(ValueError, match="float32 logits"):
        _core.lse_kl_pass_cuda_workspace(10, 10, "float64", False, False, True)


def pass_arrays(n=10, v=20, m=8, kind=np.float32, ws=1 << 30):
    """Arguments of _core.lse_kl_pass_cuda as arrays over made-up device memory (aligned):
    f1, g1, f2, g2 of ``kind``, the pass state, a workspace of ``ws`` bytes."""
    return dict(f1=FakeGpuArray((n, m), kind, 1 << 12), g1=FakeGpuArray((v, m), kind, 1 << 13),
                f2=FakeGpuArray((n, m), kind, 1 << 14), g2=FakeGpuArray((v, m), kind, 1 << 15),
                state=FakeGpuArray((8, n), np.float64, 1 << 16),
                args=FakeGpuArray((2, n), np.int64, 1 << 17),
                row_moments=FakeGpuArray((5, n), np.float64, 1 << 18),
                col_moments=FakeGpuArray((5, v), np.float64, 1 << 19),
                workspace=FakeGpuArray((ws,), np.uint8, 1 << 20))


def run_pass(arrays, **kw):
    """_core.lse_kl_pass_cuda of ``pass_arrays()`` with the arrays and options in ``kw``; by
    default over an empty label range, which checks every argument and touches no device."""
    args = {**arrays, "c_begin": 0, "c_end": 0, "tile_rows": 10, "tile_cols": 20}
    args.update(kw)
    _core.lse_kl_pass_cuda(**args)


@pytest.mark.usefixtures("needs_cuda_driver")
def test_driver_checks_fused_gemm_arguments_before_touching_a_device():
    bf = pass_arrays(kind=np.uint16)   # bfloat16 bits
    half = pass_arrays(kind=np.float16)
    cases = [
        (pass_arrays(), {}, "float16 or bfloat16 operands of one kind"),
        ({**bf, "f2": half["f2"], "g2": half["g2"]}, {}, "of one kind; f2 is float16"),
        ({**bf, "g1": FakeGpuArray((20, 8), np.uint16, 1 << 13, strides=(1, 20))}, {},
         "contiguous rows; g1"),
        ({**bf, "g2": FakeGpuArray((20, 8), np.uint16, 1 << 15, strides=(12, 1))}, {},
         "g2: its row stride \\(12\\) is not a multiple of 8"),
        ({**bf, "f1": FakeGpuArray((10, 8), np.uint16, (1 << 12) + 8)}, {},
         "f1: its data is not 16-byte aligned"),
        (pass_arrays(kind=np.uint16, ws=100), {}, "workspace_bytes 100"),
        (bf, {"gemm": 32}, "128 or 64 rows, got 32"),
        (bf, {"gemm": 0, "wgmma": True}, "wgmma is a kind of the fused GEMM"),
    ]
    for arrays, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            run_pass(arrays, **{"gemm": 128, **kw})
    run_pass(bf, gemm=128, c_begin=5, c_end=5)  # an empty label range is a no-op
    run_pass(bf, gemm=64)
    run_pass(half, gemm=64, wgmma=True)
    with pytest.raises(IdentirepError, match="gemm_block_rows must be 128 or 64"):
        cuda_backend.cuda_pass(*[np.zeros((4, 8), np.float16)] * 4, fused_gemm=True,
                               gemm_block_rows=96)
    with pytest.raises(IdentirepError, match="gemm_wgmma=True is a kind of the fused GEMM"):
        cuda_backend.cuda_pass(*[np.zeros((4, 8), np.float16)] * 4, gemm_wgmma=True)


@pytest.mark.usefixtures("needs_cuda_driver")
def test_cublas_loader_reports_what_it_tried(tmp_path):
    # In a fresh process: once cuBLAS is loaded, cublas_load returns it without trying more.
    bad = tmp_path / "libcublas.so.99"
    bad.write_text("not a library")
    code = ("from identirep import _core\n"
            "try:\n"
            "    _core.cublas_version()\n"
            "except RuntimeError as e:\n"
            "    print('before:', e)\n"
            f"_core.cublas_load([{str(bad)!r}, 'libidentirep-none.so'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
    assert r.returncode != 0
    assert "before: cuBLAS is not loaded" in r.stdout
    err = r.stderr.strip().splitlines()
    assert f"could not load cuBLAS {_core.cublas_header_major()}" in r.stderr
    assert any(str(bad) in line for line in err)
    assert any("libidentirep-none.so" in line for line in err)


@pytest.mark.usefixtures("needs_cuda_driver")
def test_cublas_loads_where_it_is_installed(cublas_library):
    major, path = _core.cublas_header_major(), cublas_library
    assert Path(path).name.startswith(f"libcublas.so.{major}") and Path(path).is_file()
    assert _core.cublas_version()[0] == major
    assert cublas.load_cublas() == path  # loaded once


@pytest.mark.usefixtures("needs_cuda_driver")
def test_driver_checks_its_arguments_before_touching_a_device():
    # each argument checked, with its name and the reason, before any device is touched
    ok = pass_arrays()
    f64 = pass_arrays(kind=np.float64)
    cases = [
        ({"f1": np.zeros((10, 8), np.float32)}, "f1 must be a GPU array with "
         "__cuda_array_interface__"),
        ({"f1": FakeGpuArray((10, 8), np.float32, 0)}, "f1 has a null data pointer"),
        ({"g1": FakeGpuArray((20, 8), np.uint16, 1 << 13)}, "widen one first"),
        ({"f2": f64["f2"], "g2": f64["g2"]}, "pair 2 is float64 in a float32 pass"),
        ({"g2": FakeGpuArray((20, 3), np.float32, 1 << 15)}, "same number of columns"),
        ({"g1": FakeGpuArray((20, 8), np.float32, 1 << 13, strides=(16, 2))},
         "contiguous rows or columns"),
        ({"g1": FakeGpuArray((20, 8), np.int8), "f1": FakeGpuArray((10, 8), np.int8)},
         "f1 has dtype \\|i1; the pass takes float16, bfloat16"),
        ({"f1": FakeGpuArray((10, 8, 1), np.float32)}, "f1 must be a 2-d array"),
        ({}, "c_end <= V", {"c_begin": 21, "c_end": 21}),
        ({"state": FakeGpuArray((8, 10), np.float64, 0)}, "state has a null data pointer"),
        ({"state": FakeGpuArray((8, 10), np.float32)}, "state must be a \\(8, 10\\) float64 "
         "array, got \\(8, 10\\) float32"),
        ({"args": FakeGpuArray((2, 11), np.int64)}, "args must be a \\(2, 10\\) int64"),
        ({"col_moments": FakeGpuArray((5, 20), np.float64, strides=(40, 1))},
         "col_moments must be C-contiguous"),
        ({"row_moments": FakeGpuArray((5, 10), np.float64, readonly=True)},
         "row_moments is read-only"),
        ({"workspace": FakeGpuArray((100,), np.uint8)}, "workspace_bytes 100"),
        ({"workspace": FakeGpuArray((1 << 30,), np.uint8, (1 << 20) + 1024 + 8)},
         "256-byte aligned"),
        ({"workspace": FakeGpuArray((1 << 20,), np.float32)}, "workspace must be a 1-d uint8"),
    ]
    for case in cases:
        arrays, msg, kw = (*case, {}) if len(case) == 2 else case
        with pytest.raises(ValueError, match=msg):
            run_pass({**ok, **arrays}, **kw)
    run_pass(ok, c_begin=5, c_end=5)  # an empty label range is a no-op
    run_pass(f64)


@pytest.mark.usefixtures("needs_cuda_driver")
def test_driver_without_a_gpu_raises_a_clear_error(without_gpu):
    # without a CUDA driver the runtime cannot say where a pointer lives; with one (and no GPU
    # CuPy sees), the made-up pointers are no device memory
    why = "cannot tell the device of f1 \\(cudaPointerGetAttributes: |f1 is not in GPU memory"
    with pytest.raises((RuntimeError, ValueError), match=f"lse_kl_pass_cuda: ({why})"):
        run_pass(pass_arrays(), c_end=20)
    bf = pass_arrays(kind=np.uint16)
    with pytest.raises((RuntimeError, ValueError), match=f"lse_kl_gemm_mainloop_cuda: ({why})"):
        _core.lse_kl_gemm_mainloop_cuda(bf["f1"], bf["g1"], bf["f2"], bf["g2"], gemm=64)


def test_driver_calls_cover_the_labels_in_tile_groups():
    assert cuda_backend.label_groups(16384, 128256, 4096, progress=False) == [(0, 128256)]
    assert cuda_backend.label_groups(16384, 128256, 4096, progress=True) == [(0, 128256)]  # short
    n, v, tc = 1 << 20, 128256, 4096
    groups = cuda_backend.label_groups(n, v, tc, progress=True)
    assert len(groups) == cuda_backend.PROGRESS_GROUPS and groups[0][0] == 0 and groups[-1][1] == v
    assert all(a[1] == b[0] and a[0] % tc == 0 and a[0] < a[1] for a, b in zip(groups,
                                                                            groups[1:]))
    assert cuda_backend.label_groups(1 << 23, 3 * tc, tc, progress=True) == [
        (0, tc), (tc, 2 * tc), (2 * tc, 3 * tc)]


# ------------------------------------------------------------------ on a GPU
@pytest.fixture
def spy(monkeypatch):
    """The calls of the compiled pass driver."""
    calls = []
    real = _core.lse_kl_pass_cuda

    def wrapped(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(_core, "lse_kl_pass_cuda", wrapped)
    return calls


@pytest.mark.gpu
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("tiles", [{}, {"tile_rows": 300, "tile_cols": 7777}])
def test_driver_float64_pass_matches_numpy(cupy, problem64, spy, fused, tiles):
    arrays, ref, scale = problem64
    got = cuda_backend.cuda_pass(*(cupy.asarray(a) for a in arrays), fused_epilogue=fused, **tiles)
    assert spy and (got.backend, got.dtype) == ("cuda", "float64")
    assert_stats_close(got, ref, 1e-9, scale)


@pytest.mark.gpu
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("overlap", [True, False])
def test_driver_and_the_cupy_tile_loop_agree(cupy, spy, dtype, overlap):
    f1, g1, f2, g2 = make_pair(3, n=777, v=9001)
    kw = dict(tile_cols=2000, tile_rows=500, overlap=overlap)
    if dtype == "bfloat16":
        arrays = [DeviceArray(cupy.asarray((a.astype(np.float32).view(np.uint32) >> 16)
                                              .astype(np.uint16)), "bfloat16")
                  for a in (f1, g1, f2, g2)]
    else:
        arrays = [cupy.asarray(a.astype(dtype)) for a in (f1, g1, f2, g2)]
    a = cuda_backend.cuda_pass(*arrays, **kw)
    assert spy
    b = cupy_backend.cupy_pass(*arrays, **kw)
    scale = logit_scale(f1, g1, f2, g2)
    # the same tiles, cuBLAS GEMMs (which may pick other kernels for another handle) and the
    # same epilogue kernels (compiled by nvcc, and by NVRTC)
    assert_stats_close(a, b, 1e-6, scale, agree_slack=2)


@pytest.mark.gpu
@pytest.mark.usefixtures("needs_cuda_driver")
def test_driver_runs_on_the_callers_stream(cupy, spy):
    arrays = [cupy.asarray(a.astype(np.float32)) for a in make_pair(5, n=300, v=5000)]
    ref = cuda_backend.cuda_pass(*arrays, tile_cols=1000)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        got = cuda_backend.cuda_pass(*arrays, tile_cols=1000)
    for k in ALL_FIELDS:
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k), err_msg=k)


def _half_arrays(cupy, arrays, kind):
    """Device operands of kind float16 or bfloat16 (as its bits) and their exact values."""
    if kind == "bfloat16":
        bits = [bf16_round(a) for a in arrays]
        return [DeviceArray(cupy.asarray(b), kind) for b in bits], [bf16_value(b)
                                                                       for b in bits]
    halves = [a.astype(np.float16) for a in arrays]
    return [cupy.asarray(h) for h in halves], [h.astype(np.float64) for h in halves]


def _gemm_kind(rows, request):
    """cuda_pass arguments of a fused GEMM kind: 128 or 64 (mma.sync), "wg128" or "wg64"
    (wgmma; skipped where that cannot run: another GPU than compute capability 9.0)."""
    wgmma = isinstance(rows, str)
    if wgmma:
        request.getfixturevalue("wgmma_ready")
    return {"fused_gemm": True, "gemm_block_rows": int(str(rows).removeprefix("wg")),
            "gemm_wgmma": wgmma}


@pytest.mark.usefixtures("needs_cuda_driver")
def test_gpu_tests_of_own_gemm_kernels_must_be_marked(monkeypatch):
    # device_check runs them in processes of their own, found by their markers
    calls = []
    monkeypatch.setattr(_core, "lse_kl_pass_cuda", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr(_core, "lse_kl_gemm_mainloop_cuda", lambda *a, **kw: calls.append(kw))

    def node(*marks):
        return SimpleNamespace(get_closest_marker=lambda m: m if m in marks else None)
    with monkeypatch.context() as m:
        guard_own_gemm_kernels(node(), m)
        _core.lse_kl_pass_cuda(1, gemm=0, wgmma=False)      # the cuBLAS driver: no marker needed
        with pytest.raises(pytest.fail.Exception, match="without the marker 'fused_gemm'"):
            _core.lse_kl_pass_cuda(1, gemm=128, wgmma=False)
        with pytest.raises(pytest.fail.Exception, match="without the marker 'fused_gemm'"):
            _core.lse_kl_gemm_mainloop_cuda(1, gemm=64, wgmma=False)
    with monkeypatch.context() as m:
        guard_own_gemm_kernels(node("fused_gemm"), m)
        _core.lse_kl_pass_cuda(1, gemm=128, wgmma=False)
        with pytest.raises(pytest.fail.Exception, match="without the marker 'wgmma'"):
            _core.lse_kl_pass_cuda(1, gemm=128, wgmma=True)
    with monkeypatch.context() as m:
        guard_own_gemm_kernels(node("fused_gemm", "wgmma"), m)
        _core.lse_kl_gemm_mainloop_cuda(1, gemm=64, wgmma=True)
    assert calls == [dict(gemm=0, wgmma=False), dict(gemm=128, wgmma=False),
                     dict(gemm=64, wgmma=True)]


def gemm_params(*values):
    """Parameters of the fused GEMM tests (each a block-rows value as _gemm_kind takes it, or a
    tuple ending in one), those of the wgmma kernel marked `wgmma`: device_check runs the
    tests of identirep's own GEMM kernels (marker `fused_gemm`), and those of the wgmma kernel,
    in processes of their own, so that a kernel that faults or hangs costs only its tests."""
    out = []
    for v in values:
        v = v if isinstance(v, tuple) else (v,)
        wg = isinstance(v[-1], str)
        out.append(pytest.param(*v, marks=[pytest.mark.wgmma] if wg else []))
    return out


GEMM_KINDS = gemm_params(("bfloat16", 128), ("float16", 128), ("bfloat16", 64),
                         ("bfloat16", "wg128"), ("float16", "wg128"), ("bfloat16", "wg64"))


@pytest.mark.gpu
@pytest.mark.fused_gemm
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("kind, rows", GEMM_KINDS)
@pytest.mark.parametrize("shape,tiles", [((777, 9001, 37, 31), {}),
                                         ((300, 1100, 64, 16), {"tile_rows": 129,
                                                                "tile_cols": 300}),
                                         ((513, 700, 520, 264), {}),  # many k-tiles
                                         ((1, 1, 8, 8), {})])
def test_fused_gemm_matches_the_cublas_driver_and_numpy(cupy, kind, rows, shape, tiles,
                                                       request):
    n, v, m1, m2 = shape
    arrays, vals = _half_arrays(cupy, make_pair(7, n=n, v=v, m1=m1, m2=m2), kind)
    got = cuda_backend.cuda_pass(*arrays, **_gemm_kind(rows, request), **tiles)
    assert (got.backend, got.dtype) == ("cuda", "float32")
    scale = logit_scale(*vals)
    # both are float32 tensor-core sums of the same products, in other orders
    assert_stats_close(got, cuda_backend.cuda_pass(*arrays, **tiles), 1e-5, scale, agree_slack=2)
    assert_stats_close(got, numpy_pass(*vals), 1e-4, scale, agree_slack=2)


@pytest.mark.gpu
@pytest.mark.fused_gemm
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("rows", gemm_params(128, 64, "wg128", "wg64"))
def test_fused_gemm_timing_probe_runs_and_writes_nothing(cupy, rows, request):
    # bench_gpu's kernel without its epilogue: launches (every kind), and a pass after it is
    # the pass without it
    arrays, _ = _half_arrays(cupy, make_pair(8, n=513, v=700, m1=520, m2=264), "bfloat16")
    kw = _gemm_kind(rows, request)
    want = cuda_backend.cuda_pass(*arrays, **kw)
    ops = [as_device(a).data for a in arrays]   # bfloat16 as its bits
    _core.lse_kl_gemm_mainloop_cuda(*ops, gemm=kw["gemm_block_rows"], wgmma=kw["gemm_wgmma"],
                                    stream=cupy.cuda.get_current_stream().ptr)
    got = cuda_backend.cuda_pass(*arrays, **kw)
    for k in ALL_FIELDS:
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=k)


@pytest.mark.gpu
@pytest.mark.fused_gemm
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("rows", gemm_params(128, "wg128"))
@pytest.mark.parametrize("case", ["duplicate and zero labels", "logits of 1e4"])
def test_fused_gemm_on_degenerate_labels_and_extreme_logits(cupy, case, rows, request):
    f1, g1, f2, g2 = make_pair(4, n=301, v=1037, m1=24, m2=16)
    if case == "logits of 1e4":
        f1 *= 2e3
        f2 *= 2e3
    else:
        for g in (g1, g2):
            g[10:20] = g[5]  # untrained tokens sharing one unembedding
            g[-7:] = 0.0     # padding rows
    arrays, vals = _half_arrays(cupy, (f1, g1, f2, g2), "bfloat16")
    got = cuda_backend.cuda_pass(*arrays, **_gemm_kind(rows, request), tile_cols=300)
    assert np.isfinite(got.L1).all() and np.isfinite(got.kl12).all()
    assert_stats_close(got, numpy_pass(*vals), 1e-4, logit_scale(*vals), agree_slack=3)
    if case != "logits of 1e4":
        for k in ("col_mean1", "col_m2_12"):  # the same logits
            col = getattr(got, k)
            np.testing.assert_allclose(col[10:20], col[5], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.gpu
@pytest.mark.fused_gemm
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("rows", gemm_params(128, "wg64"))
def test_fused_gemm_takes_biased_models(cupy, rows, request):
    # device_augmented pads [f, 1] and [g, b] to rows of 8 elements, which the fused GEMM needs
    a, b = random_pair(N=500, V=3000, M=24, bias=True, seed=3)
    models = [SimpleNamespace(**{k: DeviceArray(cupy.asarray(bf16_round(getattr(m, k))),
                                                   "bfloat16") for k in ("f", "g", "bias")})
              for m in (a, b)]
    ops = [x for m in models for x in device_augmented(m)]   # taken as they are, or refused
    vals = [bf16_value(cupy.asnumpy(o.data)) for o in ops]
    got = cuda_backend.cuda_pass(*ops, **_gemm_kind(rows, request))
    assert_stats_close(got, numpy_pass(*vals), 1e-4, logit_scale(*vals), agree_slack=2)


@pytest.mark.gpu
@pytest.mark.fused_gemm
@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.slow
@pytest.mark.parametrize("rows", gemm_params(128, "wg128"))
def test_fused_gemm_more_than_2_31_logits_per_call(cupy, rows, request):
    # n * v = 2.15e9 logits in one call: 64-bit row records and offsets
    n, v, m = 16384, 131200, 8
    rng = np.random.default_rng(5)
    bits = [bf16_round(rng.standard_normal(s)) for s in ((n, m), (v, m), (n, m), (v, m))]
    got = cuda_backend.cuda_pass(*[DeviceArray(cupy.asarray(b), "bfloat16") for b in bits],
                       **_gemm_kind(rows, request), tile_cols=v, workspace_bytes=24 << 30)
    assert_rows_and_columns(got, *(bf16_value(b) for b in bits))
