"""The CUDA epilogue _core.lse_kl_update_cuda against the CPU one."""
from __future__ import annotations

import numpy as np
import pytest

from identirep import _core
from identirep.passes import finalize, init_state
from helpers import assert_pass_close


def test_argument_checks_need_no_gpu(needs_cuda_build):
    with pytest.raises(ValueError, match='dtype must be "float32" or "float64"'):
        _core.lse_kl_update_cuda(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "float16")
    with pytest.raises(ValueError, match="col0 must be >= 0"):
        _core.lse_kl_update_cuda(0, 0, 4, 4, 4, 4, -1, 0, 4, 0, 4, "float32")
    with pytest.raises(ValueError, match="null device pointer"):
        _core.lse_kl_update_cuda(0, 0, 4, 4, 4, 4, 0, 0, 4, 0, 4, "float32")
    # nothing to do: returns without touching the device
    _core.lse_kl_update_cuda(0, 0, 0, 5, 5, 5, 0, 0, 0, 0, 0, "float64")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_cpu_epilogue(cupy, dtype, fused):
    rng = np.random.default_rng(0)
    n, v, tile = 67, 5003, 1000
    l1 = (3 * rng.standard_normal((n, v))).astype(dtype)
    l2 = (l1 + rng.standard_normal((n, v))).astype(dtype)
    l1[5, 100:200] = 1e4  # large logits and ties (first index wins)
    l2[6, :] = -1000.0 * (np.arange(v) % 3)  # gaps of 1000

    cpu_state, cpu_args = init_state(n)
    d1 = cupy.asarray(np.pad(l1, ((0, 0), (0, 13))))  # row stride v + 13
    d2 = cupy.asarray(l2)
    state, args = init_state(n)
    dstate, dargs = cupy.asarray(state), cupy.asarray(args)
    cupy.cuda.Device().synchronize()  # the copies above ran on the default stream
    stream = cupy.cuda.Stream(non_blocking=True)
    row_work = (cupy.empty(_core.lse_kl_cuda_fused_work_elems(n, tile)[0]) if fused else None)
    for c0 in range(0, v, tile):
        c1 = min(v, c0 + tile)
        _core.lse_kl_update(l1[:, c0:c1], l2[:, c0:c1], cpu_state, cpu_args, c0)
        _core.lse_kl_update_cuda(
            d1.data.ptr + c0 * d1.itemsize, d2.data.ptr + c0 * d2.itemsize, n, c1 - c0,
            d1.shape[1], d2.shape[1], c0, dstate.data.ptr, n, dargs.data.ptr, n,
            np.dtype(dtype).name, stream.ptr, row_work=0 if row_work is None else row_work.data.ptr)
    stream.synchronize()
    got = finalize(cupy.asnumpy(dstate), cupy.asnumpy(dargs))
    np.testing.assert_array_equal(cupy.asnumpy(dargs), cpu_args)
    scale = np.maximum(np.abs(l1).max(axis=1), np.abs(l2).max(axis=1))
    assert_pass_close(got, finalize(cpu_state, cpu_args), dtype, scale)


def test_moment_and_pivot_argument_checks_need_no_gpu(needs_cuda_build):
    assert _core.lse_kl_cuda_col_work_elems(10) == 5 * 16 * 10
    assert _core.lse_kl_cuda_fused_work_elems(10, 300) == (2 * 15 * 10, 64 * 5 * 300)
    base = (8, 8, 4, 4, 4, 4, 0, 8, 4, 8, 4, "float32")
    with pytest.raises(ValueError, match="col_moments needs col_work"):
        _core.lse_kl_update_cuda(*base, col_moments=8, col_ld=4)
    with pytest.raises(ValueError, match="col_ld >= col0 \\+ v"):
        _core.lse_kl_update_cuda(*base, col_moments=8, col_ld=3, col_work=8)
    with pytest.raises(ValueError, match="row_moments overlap"):
        _core.lse_kl_update_cuda(*base, row_moments=8, row_ld=2)
    with pytest.raises(ValueError, match="row0 must be >= 0"):
        _core.lse_kl_update_cuda(*base, row0=-1)
    with pytest.raises(ValueError, match="mode must be 'max' or 'mean'"):
        _core.pivot_criteria_cuda(0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 2, 4, 1e-10, "min", 0)
    with pytest.raises(ValueError, match="null device pointer"):
        _core.pivot_criteria_cuda(0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 2, 4, 1e-10, "max", 0)
    _core.pivot_criteria_cuda(0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 0, 4, 1e-10, "max", 0)  # B = 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [False, True])
def test_moments_match_cpu_epilogue(cupy, dtype, fused):
    # Two row tiles x four label tiles, fed as a pass does (labels outer, rows inner).
    rng = np.random.default_rng(1)
    n, v = 301, 2003
    l1 = (3 * rng.standard_normal((n, v)) + 50).astype(dtype)
    l2 = (l1 + rng.standard_normal((n, v))).astype(dtype)
    cpu = [*init_state(n), np.zeros((5, n)), np.zeros((5, v))]
    gpu = [cupy.asarray(a) for a in cpu]
    d1, d2 = cupy.asarray(l1), cupy.asarray(l2)
    if fused:
        rows, cols = _core.lse_kl_cuda_fused_work_elems(200, 600)
        row_work = cupy.empty(rows, cupy.float64)
    else:
        cols, row_work = _core.lse_kl_cuda_col_work_elems(600), None
    work = cupy.empty(cols, cupy.float64)
    state, args, row_m, col_m = gpu
    ptr = (lambda a, r0: a.data.ptr + r0 * a.itemsize)
    stream = cupy.cuda.get_current_stream()
    for c0 in range(0, v, 600):
        c1 = min(v, c0 + 600)
        for r0, r1 in ((0, 200), (200, n)):
            _core.lse_kl_update(l1[r0:r1, c0:c1], l2[r0:r1, c0:c1], cpu[0][:, r0:r1],
                                cpu[1][:, r0:r1], c0, 1, cpu[2][:, r0:r1], cpu[3], r0)
            _core.lse_kl_update_cuda(
                ptr(d1[r0], c0), ptr(d2[r0], c0), r1 - r0, c1 - c0, v, v, c0, ptr(state, r0), n,
                ptr(args, r0), n, np.dtype(dtype).name, stream.ptr, row_moments=ptr(row_m, r0),
                row_ld=n, col_moments=col_m.data.ptr, col_ld=v, row0=r0, col_work=work.data.ptr,
                row_work=0 if row_work is None else row_work.data.ptr)
    got = [cupy.asnumpy(a) for a in gpu]
    np.testing.assert_array_equal(got[1], cpu[1])
    assert_pass_close(finalize(got[0], got[1]), finalize(cpu[0], cpu[1]), dtype, 60.0)
    # the moments accumulate in float64 from the same logits on both sides
    np.testing.assert_allclose(got[2], cpu[2], rtol=1e-10, atol=1e-8, err_msg="row moments")
    np.testing.assert_allclose(got[3], cpu[3], rtol=1e-10, atol=1e-8, err_msg="column moments")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pivot_criteria_match_cpu(cupy, mode):
    rng = np.random.default_rng(2)
    B, V = 37, 5003
    h1, h2 = rng.standard_normal((V, 4)), rng.standard_normal((V, 3))
    h1[100:110] = h1[99]  # degenerate pairs (S_1 = 0): excluded
    n1, n2 = (h1 * h1).sum(1), (h2 * h2).sum(1)  # S_k(y, y0) = |h_k(y) - h_k(y0)|^2
    pivots = np.concatenate([[99, 100, 0, V - 1], rng.integers(0, V, B - 4)]).astype(np.int64)
    X1, X2 = h1[pivots] @ h1.T, h2[pivots] @ h2.T
    A1, A2 = rng.uniform(1, 3, V), rng.uniform(1, 3, V)
    B12 = 0.5 * np.sqrt(A1 * A2) * rng.uniform(-1, 1, V)
    want = _core.pivot_criteria(X1, X2, n1, n2, A1, A2, B12, pivots, 1e-10, mode)
    d = [cupy.asarray(a) for a in (X1, X2, n1, n2, A1, A2, B12, pivots)]
    crit = cupy.full(B, -1.0)
    _core.pivot_criteria_cuda(*(a.data.ptr for a in d[:2]), V, V, *(a.data.ptr for a in d[2:]),
                              B, V, 1e-10, mode, crit.data.ptr,
                              cupy.cuda.get_current_stream().ptr)
    np.testing.assert_allclose(cupy.asnumpy(crit), want, rtol=1e-12)
    bad = cupy.asarray(np.array([0, V], np.int64))  # out of range: NaN, not a crash
    _core.pivot_criteria_cuda(d[0].data.ptr, d[1].data.ptr, V, V, *(a.data.ptr for a in d[2:7]),
                              bad.data.ptr, 2, V, 1e-10, mode, crit.data.ptr,
                              cupy.cuda.get_current_stream().ptr)
    out = cupy.asnumpy(crit[:2])
    np.testing.assert_allclose(out[0], want[2], rtol=1e-12)
    assert np.isnan(out[1])
