"""The CUDA epilogue _core.lse_kl_update_cuda against the CPU one."""
from __future__ import annotations

import numpy as np
import pytest

from identirep import _core
from identirep.passes import finalize, init_state
from helpers import FakeGpuArray, assert_pass_close


def update_arrays(n=4, v=4, dtype=np.float32):
    """Arguments of _core.lse_kl_update_cuda over made-up device memory."""
    G = FakeGpuArray
    return dict(l1=G((n, v), dtype, 1 << 12), l2=G((n, v), dtype, 1 << 13),
                state=G((8, n), np.float64, 1 << 14), args=G((2, n), np.int64, 1 << 15), col0=0)


def test_argument_checks_need_no_gpu(needs_cuda_build):
    # each array checked, with its name and the reason, before any device is touched
    G = FakeGpuArray
    cases = [
        ({"l1": G((4, 4), np.float16), "l2": G((4, 4), np.float16)},
         "l1 must be a 2-d float32 or float64 array, got \\(4, 4\\) float16"),
        ({"l1": np.zeros((4, 4), np.float32)},
         "l1 must be a GPU array with __cuda_array_interface__"),
        ({"col0": -1}, "col0 and row0 must be >= 0"),
        ({"l1": G((4, 4), np.float32, 0)}, "l1 has a null data pointer"),
        ({"l2": G((4, 4), np.float32, (1 << 13) + 2)},
         "l2's data is not aligned to its 4-byte elements"),
        ({"l2": G((4, 4), np.float64)}, "l2 must be a \\(4, 4\\) float32 array"),
        ({"l1": G((4, 4), np.float32, strides=(1, 4))}, "l1 needs contiguous rows"),
        ({"state": G((8, 5), np.float64)}, "state must be a \\(8, 4\\) float64 array"),
        ({"args": G((2, 4), np.int64, readonly=True)}, "args is read-only"),
        ({"state": G((8, 4), np.float64, strides=(0, 1))}, "the rows of state overlap"),
        ({"l1": G((4, 4), np.float32, strides=(2, 1))}, "the rows of l1 overlap"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            _core.lse_kl_update_cuda(**{**update_arrays(), **kw})
    # nothing to do: returns without touching the device, whatever scratch is given
    _core.lse_kl_update_cuda(**update_arrays(n=0, v=5, dtype=np.float64))
    _core.lse_kl_update_cuda(**update_arrays(n=0, v=5), row_work=G((1000,), np.float64),
                             col_moments=G((5, 5), np.float64), col_work=G((2000,), np.float64))
    _core.lse_kl_update_cuda(**update_arrays(n=3, v=0), row_work=G((1000,), np.float64))


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
        _core.lse_kl_update_cuda(d1[:, c0:c1], d2[:, c0:c1], dstate, dargs, c0,
                                 row_work=row_work, stream=stream.ptr)
    stream.synchronize()
    got = finalize(cupy.asnumpy(dstate), cupy.asnumpy(dargs))
    np.testing.assert_array_equal(cupy.asnumpy(dargs), cpu_args)
    scale = np.maximum(np.abs(l1).max(axis=1), np.abs(l2).max(axis=1))
    assert_pass_close(got, finalize(cpu_state, cpu_args), dtype, scale)


def test_moment_and_pivot_argument_checks_need_no_gpu(needs_cuda_build):
    assert _core.lse_kl_cuda_col_work_elems(10) == 5 * 16 * 10
    assert _core.lse_kl_cuda_fused_work_elems(10, 300) == (2 * 15 * 10, 64 * 5 * 300)
    G = FakeGpuArray
    base, cm = update_arrays(), G((5, 4), np.float64, 1 << 16)
    cases = [
        ({"col_moments": cm}, "col_moments needs col_work"),
        ({"col_moments": G((5, 3), np.float64), "col_work": G((320,), np.float64)},
         "col_moments has 3 labels, fewer than col0 \\+ v = 4"),
        ({"col_moments": cm, "col_work": G((319,), np.float64)},
         "col_work must be a 1-d float64 array of at least 320 elements"),
        ({"row_work": G((10,), np.float64)},
         "row_work must be a 1-d float64 array of at least 60 elements"),
        ({"row_moments": G((5, 2), np.float64)}, "row_moments must be a \\(5, 4\\) float64"),
        ({"row0": -1}, "col0 and row0 must be >= 0"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            _core.lse_kl_update_cuda(**{**base, **kw})
    vec = G((4,), np.float64)
    piv = dict(X1=G((2, 4), np.float64), X2=G((2, 4), np.float64), n1=vec, n2=vec, A1=vec,
               A2=vec, B12=vec, pivots=G((2,), np.int64), tol=1e-10, mode="max",
               crit=G((2,), np.float64))
    cases = [
        ({"mode": "min"}, "mode must be 'max' or 'mean'"),
        ({"X2": G((2, 4), np.float32)}, "X2 must be a \\(2, 4\\) float64 array"),
        ({"A2": G((4,), np.float32)}, "A2 must be a 1-d float64 array of 4 elements"),
        ({"pivots": G((3,), np.int64)}, "pivots must be a 1-d int64 array of 2 elements"),
        ({"crit": G((2,), np.float64, 0)}, "crit has a null data pointer"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            _core.pivot_criteria_cuda(**{**piv, **kw})
    _core.pivot_criteria_cuda(**{**piv, "X1": G((0, 4), np.float64), "X2": G((0, 4), np.float64),
                                 "pivots": G((0,), np.int64), "crit": G((0,), np.float64)})


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
    stream = cupy.cuda.get_current_stream()
    for c0 in range(0, v, 600):
        c1 = min(v, c0 + 600)
        for r0, r1 in ((0, 200), (200, n)):
            _core.lse_kl_update(l1[r0:r1, c0:c1], l2[r0:r1, c0:c1], cpu[0][:, r0:r1],
                                cpu[1][:, r0:r1], c0, 1, cpu[2][:, r0:r1], cpu[3], r0)
            _core.lse_kl_update_cuda(
                d1[r0:r1, c0:c1], d2[r0:r1, c0:c1], state[:, r0:r1], args[:, r0:r1], c0,
                row_moments=row_m[:, r0:r1], col_moments=col_m, row0=r0, col_work=work,
                row_work=row_work, stream=stream.ptr)
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
    _core.pivot_criteria_cuda(*d, 1e-10, mode, crit, cupy.cuda.get_current_stream().ptr)
    np.testing.assert_allclose(cupy.asnumpy(crit), want, rtol=1e-12)
    bad = cupy.asarray(np.array([0, V], np.int64))  # out of range: NaN, not a crash
    _core.pivot_criteria_cuda(d[0][:2], d[1][:2], *d[2:7], bad, 1e-10, mode, crit[:2],
                              cupy.cuda.get_current_stream().ptr)
    out = cupy.asnumpy(crit[:2])
    np.testing.assert_allclose(out[0], want[2], rtol=1e-12)
    assert np.isnan(out[1])
