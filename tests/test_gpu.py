"""The GPU passes (cuda: compiled epilogue; cupy: the same kernels through NVRTC) against the
float64 NumPy pass, and how GPU arrays pick a backend. Tests marked gpu are skipped by
conftest.py without a CUDA build or a GPU; the others run everywhere."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import identirep as ir
from identirep import IdentirepError, _arrays, _backends, _core
from identirep.gpu import cublas, cuda_backend, cupy_backend, nvrtc, pivots, plans
from identirep.gpu.arrays import DeviceArray
from identirep.passes import numpy_pass

from helpers import (ALL_FIELDS, COL_FIELDS, COL_SSQ, assert_rows_and_columns,
                     assert_stats_close, bf16_round, bf16_value, field_errors, logit_scale,
                     make_pair, pivot_problem, random_pair)

BACKENDS = ("cuda", "cupy")
PASSES = {"cuda": cuda_backend.cuda_pass, "cupy": cupy_backend.cupy_pass}


@pytest.fixture(scope="module")
def problem_bf16():
    bits = [bf16_round(a) for a in make_pair(1)]
    vals = [bf16_value(b) for b in bits]
    return bits, vals, numpy_pass(*vals), logit_scale(*vals)


# ------------------------------------------------------------------ without a GPU
def test_cupy_backend_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    a, b = random_pair(N=40, V=7, M=2)
    with pytest.raises(IdentirepError, match=r"backend='cupy' is not available: CuPy is not "
                                             r"installed \(pip install 'cupy-cuda"):
        ir.kl(a, b, backend="cupy")
    with pytest.raises(IdentirepError, match="backend='cuda' is not available"):
        ir.kl(a, b, backend="cuda")
    with pytest.raises(IdentirepError, match="the GPU backends need CuPy"):
        cupy_backend.cupy_pass(a.f, a.g, b.f, b.g)


def test_cupy_without_its_cuda_libraries_is_not_a_working_backend(monkeypatch,
                                                                 cupy_without_cublas):
    """CuPy's wheel alone does not bring cuBLAS/cuSOLVER: with a GPU but without them, the
    backend is reported unavailable with the install command, not at the first product."""
    cupy = cupy_without_cublas
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    assert re.search(r"cannot load cuBLAS/cuSOLVER .*cupy-cuda13x\[ctk\]", _backends.cupy_problem())


class FakeCupyArray:
    """Stands in for a CuPy array: only its module says where it lives."""
    __module__ = "cupy._core.core"
    shape = (3, 2)
    dtype = np.dtype(np.float32)


@pytest.mark.parametrize("cuda_compiled", [False, True])
def test_gpu_arrays_without_a_working_backend(monkeypatch, cuda_compiled):
    import identirep._build
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(identirep._build, "build_info", lambda: {"cuda_compiled": cuda_compiled})
    monkeypatch.delenv("IDENTIREP_BACKEND", raising=False)
    fake = FakeCupyArray()
    assert _arrays.array_location(fake, None) == "gpu"
    with pytest.raises(IdentirepError, match="some arrays are on a GPU and some on the CPU"):
        _arrays.array_location(fake, np.zeros(3))
    why = "its device memory and the engine.s products come from CuPy" if cuda_compiled \
        else "without CUDA"
    with pytest.raises(IdentirepError, match=f"GPU arrays arrived but neither backend works: "
                                             f"cuda: .*{why}.*; cupy: CuPy is not installed"):
        _backends.resolve_arrays("auto", [fake, fake])
    assert _backends.resolve_arrays("cpu", [fake]) == "cpu"  # explicit: copies to the host


def _strip_host_code(text):
    return re.sub(r"#ifndef __CUDACC_RTC__.*?#endif[^\n]*", "", text, flags=re.S)


@pytest.mark.parametrize("name", nvrtc.KERNEL_HEADERS)
def test_kernel_headers_need_no_headers_under_nvrtc(name):
    # under NVRTC a header includes nothing but the kernel headers installed with it, and the
    # program of it (those written in place) includes nothing at all
    kernels = _strip_host_code(nvrtc.kernel_source(name))
    includes = re.findall(r'#\s*include\s*[<"]([^>"]+)[>"]', kernels)
    assert set(includes) <= set(nvrtc.KERNEL_HEADERS), includes
    assert "std::" not in kernels and "cudaError_t" not in kernels and "<<<" not in kernels
    program = _strip_host_code(nvrtc.kernel_program(name))
    assert "#include" not in program and "#pragma once" not in program
    assert program.count("constexpr int kLseKlThreads") <= 1   # each header once


def test_chunk_counts_of_the_launch_table():
    assert [_core.lse_kl_col_chunks(n) for n in (1, 64, 65, 1000, 10 ** 6)] == [1, 1, 2, 16, 16]
    assert [_core.lse_kl_fused_chunks(n) for n in (1, 256, 257, 16384, 10 ** 6)] == [
        1, 1, 2, 64, 64]
    assert nvrtc.kernel_names("float")["rows"] == (
        f"identirep::kernels::LseKlKernel<float, {nvrtc.LAUNCH['lse_kl_threads']}>")


def _col_major(x, rows, cols, ld):
    return as_strided(x, shape=(rows, cols), strides=(x.itemsize, ld * x.itemsize))


@pytest.mark.parametrize("layout_a", ["C", "F", "rows of F", "one row"])
@pytest.mark.parametrize("layout_b", ["C", "F", "strided", "one column"])
def test_gemm_ex_arguments_compute_a_times_b_transposed(layout_a, layout_b):
    # The one plan of a logit tile's cublasGemmEx (csrc/plan.cpp: the pass driver's, and
    # gemm_ex's) against an emulation of cublasGemmEx (column-major, op(A) op(B)) on the same
    # memory with NumPy.
    def plan(a, b):
        return _core.gemm_nt_plan(cublas.strides2d(a), cublas.strides2d(b))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((9, 5))
    gappy = rng.standard_normal((14, 10))[::2, ::2]  # neither rows nor columns contiguous
    assert plan(gappy, b) is None and plan(a, gappy) is None
    assert not cublas.blas_ready(gappy) and cublas.blas_ready(a) and cublas.blas_ready(b.T)
    a = {"C": a, "F": np.asfortranarray(a), "one row": a[2:3],
         "rows of F": np.asfortranarray(rng.standard_normal((20, 5)))[3:10]}[layout_a]
    b = {"C": b, "F": np.asfortranarray(b), "one column": b,
         "strided": rng.standard_normal((30, 8))[4:13, 1:6]}[layout_b]
    if layout_b == "one column":
        a, b = np.ascontiguousarray(a[:, :1]), np.ascontiguousarray(b[:, :1])
    transa, transb, m, n, k, lda, ldb, ldc = plan(a, b)
    A = _col_major(b, *((m, k) if transa == 0 else (k, m)), lda)
    B = _col_major(a, *((k, n) if transb == 0 else (n, k)), ldb)
    out_t = (A if transa == 0 else A.T) @ (B if transb == 0 else B.T)
    assert ldc == m == b.shape[0] and n == a.shape[0]
    np.testing.assert_allclose(out_t.T, a @ b.T, rtol=1e-14)


@pytest.mark.parametrize("overlap", [False, True])
def test_tile_shape_fits_the_workspace(overlap):
    # the cupy backend's tiles (csrc/plan.cpp): two pairs of logit tiles with the overlap, the
    # widened operand tiles (m columns) and the column scratch fit the workspace
    buffers = 2 if overlap else 1

    def need(r, c, m):
        return 4 * (2 * buffers * r * c + (r + c) * m) + 8 * _core.lse_kl_cuda_col_work_elems(c)
    assert plans.cupy_tiles(16384, 131200, 16, 4, None, 131200, buffers * 24 << 30, overlap,
                            False) == (16384, 131200, False)
    for n, v, m, ws in ((16384, 50304, 1536, 1 << 30), (10, 100, 4, 20000), (7, 3, 2, 10 ** 9),
                        (16384, 128256, 0, 1 << 30)):
        tr, tc, over = plans.cupy_tiles(n, v, m, 4, None, None, ws, overlap, False)
        assert 1 <= tr <= n and 1 <= tc <= v and need(tr, tc, m) <= ws
        assert over == (overlap and (tr, tc) != (n, v))   # one tile: nothing to overlap
        if tc == min(v, 4096):  # the default label tile: rows shrink first, only as needed
            assert tr == n or need(min(n, 2 * tr), tc, m) > ws
    with pytest.raises(IdentirepError, match="too small"):
        plans.cupy_tiles(10, 10, 2, 4, None, None, 100, overlap, False)
    with pytest.raises(IdentirepError, match="tile_cols must be >= 1, got 0"):
        plans.cupy_tiles(10, 10, 2, 4, None, 0, 1 << 20, overlap, False)


# ------------------------------------------------------------------ on a GPU
def _layouts(cp, arrays, layout):
    if layout == "C":
        return [cp.asarray(a) for a in arrays]
    if layout == "F":
        return [cp.asfortranarray(cp.asarray(a)) for a in arrays]
    out = []  # every other row and column of a bigger array
    for a in arrays:
        big = cp.zeros((2 * a.shape[0], 2 * a.shape[1]), a.dtype)
        big[::2, ::2] = cp.asarray(a)
        out.append(big[::2, ::2])
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,tiles", [("C", {}), ("F", {"tile_rows": 300}),
                                          ("strided", {"tile_cols": 7777})])
def test_float64_pass_matches_numpy(cupy, problem64, backend, layout, tiles):
    arrays, ref, scale = problem64
    got = PASSES[backend](*_layouts(cupy, arrays, layout), **tiles)
    assert (got.backend, got.dtype) == (backend, "float64")
    assert_stats_close(got, ref, 1e-9, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["C", "F"])
def test_float32_pass_matches_numpy(cupy, problem64, backend, layout):
    arrays, ref, scale = problem64
    got = PASSES[backend](*_layouts(cupy, [a.astype(np.float32) for a in arrays], layout))
    assert got.dtype == "float32"
    # references are of the float64 values; float32 rounding of the inputs is within 1e-4
    assert_stats_close(got, ref, 1e-4, scale, agree_slack=5)


def _plain_float32(cp, vals):
    """The same statistics from full float32 logits with plain CuPy reductions."""
    f1, g1, f2, g2 = (cp.asarray(v, dtype=cp.float32) for v in vals)
    l1, l2 = f1 @ g1.T, f2 @ g2.T
    L1 = l1.max(1) + cp.log(cp.exp(l1 - l1.max(1, keepdims=True)).sum(1))
    L2 = l2.max(1) + cp.log(cp.exp(l2 - l2.max(1, keepdims=True)).sum(1))
    p1, p2 = cp.exp(l1 - L1[:, None]), cp.exp(l2 - L2[:, None])
    d = l1 - l2
    c1, c2 = l1 - l1.mean(0), l2 - l2.mean(0)
    out = {"L1": L1, "L2": L2, "kl12": (p1 * d).sum(1) - L1 + L2,
           "kl21": -(p2 * d).sum(1) - L2 + L1, "H1": L1 - (p1 * l1).sum(1),
           "H2": L2 - (p2 * l2).sum(1), "row_mean1": l1.mean(1), "row_mean2": l2.mean(1),
           "row_m2_11": l1.var(1) * l1.shape[1], "row_m2_22": l2.var(1) * l2.shape[1],
           "row_m2_dd": d.var(1) * d.shape[1], "col_mean1": l1.mean(0), "col_mean2": l2.mean(0),
           "col_m2_11": (c1 * c1).sum(0), "col_m2_22": (c2 * c2).sum(0),
           "col_m2_12": (c1 * c2).sum(0)}
    return type("Plain", (), {k: cp.asnumpy(x).astype(np.float64) for k, x in out.items()})


def _bf16_inputs(cp, bits, source, request):
    if source == "torch":
        torch = request.getfixturevalue("torch_cuda")
        return [torch.from_numpy(b.view(np.int16)).cuda().view(torch.bfloat16) for b in bits]
    return [DeviceArray(cp.asarray(b), "bfloat16") for b in bits]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source,half_gemm", [("torch", "cublas"), ("bits", "cublas"),
                                              ("bits", "convert")])
def test_bfloat16_error_at_most_twice_plain_float32(cupy, problem_bf16, backend, source,
                                                    half_gemm, request):
    bits, vals, ref, scale = problem_bf16
    got = PASSES[backend](*_bf16_inputs(cupy, bits, source, request), half_gemm=half_gemm)
    assert got.dtype == "float32"
    ours = field_errors(got, ref, scale)
    plain = field_errors(_plain_float32(cupy, vals), ref, scale)
    bad = {k: (ours[k], plain[k]) for k in ALL_FIELDS if not ours[k] <= 2 * plain[k] + 1e-6}
    assert not bad, f"(ours, plain float32) relative errors: {bad}"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_inputs(cupy, backend):
    arrays = [a.astype(np.float16) for a in make_pair(2, n=301, v=1037)]
    vals = [a.astype(np.float64) for a in arrays]
    got = PASSES[backend](*[cupy.asarray(a) for a in arrays])
    assert_stats_close(got, numpy_pass(*vals), 1e-4, logit_scale(*vals), agree_slack=2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_and_zero_labels(cupy, backend):
    f1, g1, f2, g2 = make_pair(3, n=301, v=1037)
    for g in (g1, g2):
        g[10:20] = g[5]  # untrained tokens sharing one unembedding
        g[-7:] = 0.0     # padding rows
    got = PASSES[backend](*[cupy.asarray(a) for a in (f1, g1, f2, g2)], tile_cols=97)
    assert_stats_close(got, numpy_pass(f1, g1, f2, g2), 1e-9, logit_scale(f1, g1, f2, g2))
    for k in COL_FIELDS + COL_SSQ:
        col = getattr(got, k)
        np.testing.assert_allclose(col[10:20], col[5], rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_of_magnitude_1e4(cupy, backend, dtype):
    f1, g1, f2, g2 = make_pair(4, n=301, v=1037)
    f1 *= 2e3
    f2 *= 2e3
    arrays = [a.astype(dtype) for a in (f1, g1, f2, g2)]
    vals = [a.astype(np.float64) for a in arrays]
    scale = logit_scale(*vals)
    assert scale.max() > 1e4
    got = PASSES[backend](*[cupy.asarray(a) for a in arrays], tile_cols=128)
    assert np.isfinite(got.L1).all() and np.isfinite(got.kl12).all()
    assert_stats_close(got, numpy_pass(*vals), 1e-9 if dtype == np.float64 else 1e-4, scale,
                       agree_slack=0 if dtype == np.float64 else 3)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_tile_of_more_than_2_31_logits(cupy, backend):
    n, v, m = 16384, 131200, 8  # n * v = 2.15e9 > 2^31 logits in a single tile
    rng = np.random.default_rng(5)
    f1, f2 = rng.standard_normal((n, m)), rng.standard_normal((n, m))
    g1, g2 = rng.standard_normal((v, m)), rng.standard_normal((v, m))
    arrays = [a.astype(np.float32) for a in (f1, g1, f2, g2)]
    f1, g1, f2, g2 = (a.astype(np.float64) for a in arrays)
    # one pair of logit tiles (no overlap) of all n x v logits fits 24 GiB
    tiles = (plans.cuda_tiles(n, v, "float32", None, v, 24 << 30, False, False, False)
             if backend == "cuda" else
             plans.cupy_tiles(n, v, 0, 4, None, v, 24 << 30, False, False))
    assert tiles[:2] == (n, v)
    got = PASSES[backend](*[cupy.asarray(a) for a in arrays], workspace_bytes=24 << 30,
                          tile_cols=v, overlap=False)
    cupy.get_default_memory_pool().free_all_blocks()
    assert_rows_and_columns(got, f1, g1, f2, g2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_and_cupy_backends_agree(cupy, dtype):
    arrays = [cupy.asarray(a.astype(dtype)) for a in make_pair(6, n=513, v=3001)]
    a = cuda_backend.cuda_pass(*arrays, tile_cols=1000, tile_rows=200)
    b = cupy_backend.cupy_pass(*arrays, tile_cols=1000, tile_rows=200)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    for k in ALL_FIELDS:
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=rtol, atol=rtol, err_msg=k)
    np.testing.assert_array_equal(a.agree, b.agree)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tiles", [{}, {"tile_rows": 300, "tile_cols": 1000},
                                   {"tile_rows": 7, "tile_cols": 257}])
def test_fused_epilogue_matches_numpy(cupy, problem64, backend, tiles):
    # odd tiles: slabs of 256 labels with a 1-label remainder, sub-tiles of 8 rows with a rest
    arrays, ref, scale = problem64
    got = PASSES[backend](*(cupy.asarray(a) for a in arrays), fused_epilogue=True, **tiles)
    assert_stats_close(got, ref, 1e-9, scale)   # as the three-kernel epilogue's test


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_epilogue_float32_matches_the_row_and_column_kernels(cupy, backend):
    arrays = [cupy.asarray(a.astype(np.float32)) for a in make_pair(8, n=1500, v=5003)]
    kw = dict(tile_cols=2000, tile_rows=700)
    a = PASSES[backend](*arrays, fused_epilogue=True, **kw)
    b = PASSES[backend](*arrays, **kw)
    scale = logit_scale(*(x.get().astype(np.float64) for x in arrays))
    assert_stats_close(a, b, 1e-6, scale)
    np.testing.assert_array_equal(a.agree, b.agree)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nan_labels", [[500], list(range(256, 512))])
def test_fused_epilogue_propagates_nan_like_the_row_kernel(cupy, backend, nan_labels):
    # one NaN label (part of a 256-label slab), or a whole slab of them
    f1, g1, f2, g2 = make_pair(9, n=40, v=700)
    g1[nan_labels, 0] = np.nan
    arrays = [cupy.asarray(a) for a in (f1, g1, f2, g2)]
    a = PASSES[backend](*arrays, fused_epilogue=True, tile_cols=1000)
    b = PASSES[backend](*arrays, tile_cols=1000)
    for k in ("L1", "kl12", "kl21", "H1", "row_mean1", "row_m2_11"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-12, equal_nan=True,
                                   err_msg=k)
    assert np.isnan(b.L1).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_overlapped_epilogue_gives_the_serial_results(cupy, backend, dtype):
    # Same tiles, same kernels, same order per tile: the stream overlap must not change a bit.
    arrays = [cupy.asarray(a.astype(dtype)) for a in make_pair(7, n=513, v=3001)]
    kw = dict(tile_cols=1000, tile_rows=200)
    a = PASSES[backend](*arrays, overlap=True, **kw)
    b = PASSES[backend](*arrays, overlap=False, **kw)
    for k in ALL_FIELDS + ("agree",):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _report_values(r):
    out = {}
    for sec, d in r.to_dict().items():
        if isinstance(d, dict):
            out.update({f"{sec}.{k}": v for k, v in d.items()})
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("source", ["cupy", "torch", "cupy backend"])
def test_compare_on_gpu_arrays_matches_cpu(cupy, source, request):
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=7)
    if source == "torch":
        torch = request.getfixturevalue("torch_cuda")
        move = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    else:
        move = cupy.asarray
    ga, gb = (ir.Model(move(m.f), move(m.g), bias=move(m.bias), name=m.name) for m in (a, b))
    backend = "cupy" if source == "cupy backend" else "auto"
    got = ir.compare(ga, gb, num_samples=30, backend=backend)
    want = ir.compare(a, b, num_samples=30)
    assert got.backend == ("cupy" if backend == "cupy" else "cuda") and want.backend == "cpu"
    gv, wv = _report_values(got), _report_values(want)
    for k, w in wv.items():
        if isinstance(w, float) or (isinstance(w, list) and w and isinstance(w[0], float)):
            np.testing.assert_allclose(gv[k], w, rtol=1e-9, atol=1e-12, err_msg=k)
        elif isinstance(w, dict) and w and all(isinstance(v, float) for v in w.values()):
            assert gv[k].keys() == w.keys(), k     # d_rep's quantiles: floats by name
            for q in w:
                np.testing.assert_allclose(gv[k][q], w[q], rtol=1e-9, atol=1e-12,
                                           err_msg=f"{k}.{q}")
        else:
            assert gv[k] == w, k


def _record_streams(monkeypatch, cupy, module, name):
    """module.<name> wrapped to record CuPy's current stream at each call; the list of them."""
    seen, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(cupy.cuda.get_current_stream().ptr)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    return seen


def _on_torch(torch, m):
    """Model m as torch CUDA tensors."""
    return ir.Model(*(torch.from_numpy(x).cuda() for x in (m.f, m.g)),
                    bias=torch.from_numpy(m.bias).cuda())


@pytest.mark.gpu
def test_torch_inputs_run_on_torchs_current_stream(cupy, monkeypatch, torch_cuda):
    torch = torch_cuda
    seen = _record_streams(monkeypatch, cupy, cuda_backend, "cuda_pass")
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=9)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = ir.kl(_on_torch(torch, a), _on_torch(torch, b))
    assert seen == [stream.cuda_stream] and stream.cuda_stream != 0
    want = ir.kl(a, b)
    np.testing.assert_allclose([got.kl12, got.kl21], [want.kl12, want.kl21], rtol=1e-9)
    # torch's stream outlives the call: the CuPy stream that wrapped it did not destroy it
    import gc
    gc.collect()
    with torch.cuda.stream(stream):
        x = torch.ones(1, device="cuda").add_(1)
    stream.synchronize()
    assert float(x.cpu()) == 2.0


@pytest.mark.gpu
def test_engine_used_later_runs_on_torchs_stream_of_the_call(cupy, monkeypatch, torch_cuda):
    torch = torch_cuda
    seen = _record_streams(monkeypatch, cupy, pivots, "pivot_criteria_device")
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=9)
    e = ir.engine(_on_torch(torch, a), _on_torch(torch, b))
    torch.cuda.synchronize()
    later = torch.cuda.Stream()
    with torch.cuda.stream(later):
        got = e.d_llv(num_pivots=10)
    assert seen and set(seen) == {later.cuda_stream} and later.cuda_stream != 0
    want = ir.d_llv(a, b, num_pivots=10)
    assert got.pivot == want.pivot
    np.testing.assert_allclose(got.value, want.value, rtol=1e-9)


def _host_models(kind, request):
    """A host pair: float64 NumPy, bfloat16 NumPy (ml_dtypes) with a float32 bias, or torch
    CPU bfloat16 tensors."""
    a, b = random_pair(N=301, V=53, M=5, M2=4, bias=True, seed=21)
    if kind == "float64":
        return a, b
    if kind == "ml_dtypes":
        bf = np.dtype(request.getfixturevalue("ml_dtypes").bfloat16)
        return [ir.Model(m.f.astype(bf), m.g.astype(bf), m.bias.astype(np.float32))
                for m in (a, b)]
    torch = request.getfixturevalue("torch")
    return [ir.Model(*(torch.from_numpy(x).to(torch.bfloat16) for x in (m.f, m.g, m.bias)))
            for m in (a, b)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["float64", "ml_dtypes", "torch"])
def test_host_models_with_a_gpu_backend_run_on_the_gpu(cupy, backend, kind, request):
    a, b = _host_models(kind, request)
    e = ir.engine(a, b, backend=backend)
    assert e.stats.backend == backend
    for x in (e.c1.F, e.c1.G, e.c2.F, e.c2.G):
        assert isinstance(x, cupy.ndarray)
    got = ir.d_llv(a, b, backend=backend, num_pivots=10)
    want = ir.d_llv(a, b, backend="cpu", num_pivots=10)
    assert (got.pivot, got.leave_out, got.input_set) == (want.pivot, want.leave_out,
                                                         want.input_set)
    np.testing.assert_allclose(got.value, want.value, rtol=1e-9 if kind == "float64" else 1e-4)


# ------------------------------------------------------------------ the engine on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("xdtype", [np.float64, np.float32])
def test_device_pivot_criteria_match_the_cpu_kernel(cupy, backend, mode, xdtype):
    from identirep import _core
    X1, X2, n1, n2, A1, A2, B12, piv = pivot_problem(xdtype, 5003)
    want = _core.pivot_criteria(X1, X2, n1, n2, A1, A2, B12, piv, 1e-5, mode)
    dev = [cupy.asarray(x) for x in (X1, X2, n1, n2, A1, A2, B12)]
    assert dev[0].dtype == xdtype
    got = pivots.pivot_criteria_device(*dev, piv, 1e-5, mode, backend)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.gpu
def test_engine_keeps_gpu_models_on_the_device(cupy):
    a, b = random_pair(N=301, V=97, M=6, seed=11)
    ga, gb = (ir.Model(cupy.asarray(m.f), cupy.asarray(m.g)) for m in (a, b))
    e = ir.engine(ga, gb)
    assert e.c1.xp is cupy and isinstance(e.G1, cupy.ndarray) and isinstance(e.F2, cupy.ndarray)
    want = ir.engine(a, b)
    for pivot in (None, 3):
        got_r = e.d_llv(num_samples=20, pivot=pivot, num_pivots=40)
        want_r = want.d_llv(num_samples=20, pivot=pivot, num_pivots=40)
        assert (got_r.pivot, got_r.leave_out, got_r.input_set) == \
            (want_r.pivot, want_r.leave_out, want_r.input_set)
        np.testing.assert_allclose(got_r.value, want_r.value, rtol=1e-9)
    np.testing.assert_allclose(e.mcca_g().value, want.mcca_g().value, rtol=1e-9)


def _gpu_and_cpu_engines(cupy, **kw):
    a, b = random_pair(**kw)
    move = (lambda x: None if x is None else cupy.asarray(x))
    ga, gb = (ir.Model(move(m.f), move(m.g), bias=move(m.bias)) for m in (a, b))
    return ir.engine(ga, gb), ir.engine(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("noise", [0.5, 0.02])
def test_bounded_pivot_search_on_the_device_matches_the_cpu(cupy, bounded_small, noise):
    e, want = _gpu_and_cpu_engines(cupy, N=400, V=700, M=6, seed=3, noise=noise, bias=True)
    got, ref = e.label_side("max"), want.label_side("max")
    assert "bounded search" in got[4] and "bounded search" in ref[4]
    assert got[:2] == ref[:2] and got[5] == ref[5]
    np.testing.assert_allclose(got[2:4], ref[2:4], rtol=1e-9)


@pytest.mark.gpu
def test_device_row_bounds_match_the_compiled_cpu_bounds(cupy):
    e, want = _gpu_and_cpu_engines(cupy, N=400, V=700, M=6, seed=4, noise=0.1)
    rng = np.random.default_rng(2)
    piv = np.sort(rng.choice(700, 80, replace=False))
    lab = np.union1d(rng.choice(700, 200, replace=False), piv[:10])
    np.testing.assert_allclose(e.labels.row_bounds(piv, lab), want.labels.row_bounds(piv, lab),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_matrix_of_gpu_models_matches_cpu(cupy):
    from identirep import constructions as C
    base = C.random_model(N=150, V=21, M=3, seed=0, bias=True, name="base")
    models = [base, C.perturbed_copy(base, 0.3, seed=1), C.linear_transform(base, seed=2)]
    gpu = [ir.Model(cupy.asarray(m.f), cupy.asarray(m.g), bias=cupy.asarray(m.bias), name=m.name)
           for m in models]
    got, want = ir.matrix(gpu, num_samples=20), ir.matrix(models, num_samples=20)
    for k in want.values:
        np.testing.assert_allclose(got.values[k], want.values[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", ["lse_kl.cuh", "pivot_terms.cuh"])
def test_nvrtc_compiles_the_kernels_the_cupy_backend_launches(nvrtc_compiler, name):
    """The cupy backend's run-time compilation, without a GPU: each header's NVRTC program with
    the exact name expressions it launches (sm_90 PTX)."""
    exprs = ([n for t in ("float", "double") for n in nvrtc.kernel_names(t).values()]
             if name == "lse_kl.cuh" else list(nvrtc.PIVOT_KERNELS.values()))
    lowered, ptx = _nvrtc_compile(nvrtc_compiler, name, exprs)
    assert all(x.startswith("_ZN9identirep7kernels") for x in lowered)
    assert ".entry" in ptx


def _nvrtc_compile(compiler, header, exprs, arch="compute_90"):
    """The NVRTC program of a kernel header (kernel_program) for arch with these name
    expressions: (lowered names, PTX)."""
    return compiler.compile(nvrtc.kernel_program(header), header, exprs,
                            ["-std=c++17", f"-arch={arch}"])


def test_nvrtc_compiles_the_fused_gemm_kernel(nvrtc_compiler):
    """lse_kl_gemm.cuh (with lse_kl.cuh, which it includes) under NVRTC: its inline PTX
    (mma.sync, ldmatrix, cp.async) and dynamic shared memory compile for sm_90."""
    exprs = ([f"identirep::kernels::LseKlGemmKernel<{b}, {m}>" for b in ("true", "false")
              for m in (128, 64)]
             + [f"identirep::kernels::LseKlShiftKernel<{b}>" for b in ("true", "false")])
    _, ptx = _nvrtc_compile(nvrtc_compiler, "lse_kl_gemm.cuh", exprs)
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
    assert "cp.async.cg.shared.global" in ptx and "ldmatrix.sync.aligned" in ptx
    assert "wgmma" not in ptx


def test_nvrtc_compiles_the_wgmma_gemm_kernel_for_sm_90a_only(nvrtc_compiler):
    """The wgmma kernels under NVRTC: their PTX for sm_90a (wgmma, the async proxy fence);
    for plain sm_90 they compile to a trap (the launcher checks the GPU first)."""
    exprs = [f"identirep::kernels::LseKlGemmKernel<{b}, {m}, true>" for b in ("true", "false")
             for m in (128, 64)]
    _, ptx = _nvrtc_compile(nvrtc_compiler, "lse_kl_gemm.cuh", exprs, arch="compute_90a")
    for n in (128, 64):
        for t in ("bf16", "f16"):
            assert f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{t}.{t}" in ptx
    assert "wgmma.wait_group.sync.aligned 1" in ptx and "fence.proxy.async" in ptx
    _, ptx = _nvrtc_compile(nvrtc_compiler, "lse_kl_gemm.cuh", exprs)
    assert "wgmma" not in ptx and "trap" in ptx


@pytest.mark.gpu
def test_split_bfloat16_cross_products_as_accurate_as_float32(cupy):
    # the engine's pivot cross products of a bfloat16 g: three bfloat16 tensor-core GEMMs of
    # the exact split of the float32 left factor against a float32 GEMM, both to float64
    from identirep import _bf16 as bf16
    rng = np.random.default_rng(8)
    L = rng.standard_normal((300, 1024)).astype(np.float32)
    g_bits = bf16.from_f32(rng.standard_normal((5000, 1024)).astype(np.float32))
    exact = L.astype(np.float64) @ bf16.to_f32(g_bits).astype(np.float64).T
    got = cupy.asnumpy(cublas.split_bf16_matmul(cupy.asarray(L), cupy.asarray(g_bits)))
    plain = cupy.asnumpy(cupy.asarray(L) @ bf16.to_f32(cupy.asarray(g_bits)).T)
    err, err32 = np.abs(got - exact).max(), np.abs(plain - exact).max()
    assert err <= 2 * err32 + 1e-7 * np.abs(exact).max(), (err, err32)


@pytest.mark.gpu
def test_bfloat16_scatter_blocks_as_accurate_as_float32(cupy):
    # scatter blocks of bfloat16 data: one bfloat16 tensor-core GEMM against float32 GEMMs
    from identirep import _bf16 as bf16
    from identirep._linalg import scatter_blocks
    rng = np.random.default_rng(9)
    bits = [bf16.from_f32((rng.standard_normal((20000, d)) + 0.1).astype(np.float32))
            for d in (64, 48)]
    host = [bf16.to_f32(b).astype(np.float64) for b in bits]
    dev = [bf16.to_f32(cupy.asarray(b)) for b in bits]
    exact = scatter_blocks(host)[2]
    _, _, got = scatter_blocks(dev, dtype=np.float32, bits=[cupy.asarray(b) for b in bits])
    _, _, plain = scatter_blocks(dev, dtype=np.float32)
    for pq, want in exact.items():
        err, err32 = np.abs(got[pq] - want).max(), np.abs(plain[pq] - want).max()
        assert err <= 2 * err32 + 1e-7 * np.abs(want).max(), (pq, err, err32)
