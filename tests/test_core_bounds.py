"""Every compiled entry point (identirep._core) checks its offsets, counts and sizes before it
reads or writes an element: offsets near 2**63 - 1, negative ones, mismatched lengths, shape
products beyond int64. Each case must raise a Python exception, never overflow or write out of
bounds. .ci/sanitize runs this file under AddressSanitizer and UBSan in a CPU-only build, where
the tests of the CUDA entry points' host checks (needs_cuda_build) are skipped: those run
without sanitizers, in a build with CUDA."""
from __future__ import annotations

import numpy as np
import pytest

from identirep import _core
from identirep.passes import init_state
from helpers import FakeGpuArray

MAX = 2**63 - 1


# ------------------------------------------------------------------ lse_kl_update
def _update(n=3, v=4, col0=0, row0=0, row_moments=None, col_moments=None, threads=0,
            dtype=np.float64, **arrays):
    rng = np.random.default_rng(0)
    l1 = arrays.pop("l1", rng.standard_normal((n, v)).astype(dtype))
    l2 = arrays.pop("l2", rng.standard_normal((n, v)).astype(dtype))
    state, args = init_state(n)
    state, args = arrays.pop("state", state), arrays.pop("args", args)
    assert not arrays
    _core.lse_kl_update(l1, l2, state, args, col0, threads, row_moments, col_moments, row0)
    return state, args


@pytest.mark.parametrize("col0", [MAX, MAX - 1, MAX - 2, MAX - 3])
def test_lse_kl_update_col0_near_int64_max(col0):
    # labels col0 .. col0+3: the args would get col0 + j past int64
    with pytest.raises(ValueError, match="col0 \\+ v must fit in int64"):
        _update(v=4, col0=col0)
    with pytest.raises(ValueError, match="col0 \\+ v must fit in int64"):
        _update(v=4, col0=col0, col_moments=np.zeros((5, 8)))


def test_lse_kl_update_last_representable_labels_are_fine():
    state, args = _update(v=4, col0=MAX - 4)  # labels up to 2**63 - 2
    assert (args >= MAX - 4).all()


@pytest.mark.parametrize("col0, v, V", [(MAX - 4, 4, 8), (5, 4, 8), (2**62, 4, 8), (0, 4, 3),
                                        (1, 0, 0), (MAX, 0, 8)])
def test_lse_kl_update_col_moments_range(col0, v, V):
    # labels col0 .. col0+v-1 of col_moments are written: col0 + v <= V
    col_m = np.zeros((5, V))
    with pytest.raises(ValueError, match="col_moments must be a writeable float64 \\(5, V\\)"):
        _update(v=v, col0=col0, col_moments=col_m)
    assert not col_m.any()


def test_lse_kl_update_col_moments_up_to_the_last_label():
    col_m = np.zeros((5, 8))
    _update(v=4, col0=4, col_moments=col_m)
    assert col_m[:, 4:].any() and not col_m[:, :4].any()
    _update(v=0, col0=8, col_moments=col_m)  # an empty tile at the end


@pytest.mark.parametrize("kw, exc, match", [
    (dict(col0=-1), ValueError, "col0 must be >= 0"),
    (dict(col0=-MAX - 1), ValueError, "col0 must be >= 0"),
    (dict(row0=-1), ValueError, "row0 must be >= 0"),
    (dict(row0=MAX), ValueError, "row0 \\+ n must fit in int64"),
    (dict(row0=MAX - 2), ValueError, "row0 \\+ n must fit in int64"),
    (dict(threads=-1), ValueError, "threads must be >= 0"),
    (dict(col0=2**63), TypeError, "incompatible function arguments"),
    (dict(threads=2**31), TypeError, "incompatible function arguments"),
    (dict(l2=np.zeros((3, 5))), ValueError, "same shape"),
    (dict(l2=np.zeros((2, 4))), ValueError, "same shape"),
    (dict(l1=np.zeros((3, 4, 1)), l2=np.zeros((3, 4, 1))), ValueError, "2-d"),
    (dict(l2=np.zeros((3, 4), np.float32)), TypeError, "same dtype"),
    (dict(l1=np.zeros((3, 4), np.int64), l2=np.zeros((3, 4), np.int64)), TypeError,
     "float32 or float64"),
    (dict(l1=np.zeros((4, 3)).T, l2=np.zeros((4, 3)).T), ValueError, "contiguous along its last"),
    (dict(state=np.zeros((8, 2))), ValueError, "state must have shape \\(8, 3\\)"),
    (dict(state=np.zeros((8, 4))), ValueError, "state must have shape \\(8, 3\\)"),
    (dict(args=np.zeros((2, 3), np.float64)), TypeError, "args must have dtype int64"),
    (dict(args=np.zeros((2, 3), ">i8")), TypeError, "args must have dtype int64"),
    (dict(row_moments=np.zeros((5, 2))), ValueError, "row_moments must have shape \\(5, 3\\)"),
    (dict(row_moments=np.zeros((5, 3), np.float32)), TypeError, "row_moments must have dtype"),
    (dict(col_moments=np.zeros((4, 8))), ValueError, "col_moments must be"),
    (dict(col_moments=np.zeros(8)), ValueError, "col_moments must be"),
    (dict(col_moments=np.zeros((5, 8), np.float32)), ValueError, "col_moments must be"),
    (dict(col_moments=np.zeros((8, 5)).T), ValueError, "contiguous along its last"),
    (dict(row_moments=np.lib.stride_tricks.as_strided(np.zeros(8), (5, 3), (8, 8))), ValueError,
     "rows of row_moments overlap"),
    (dict(col_moments=np.lib.stride_tricks.as_strided(np.zeros(12), (5, 8), (8, 8))), ValueError,
     "rows of col_moments overlap"),
    (dict(args=np.lib.stride_tricks.as_strided(np.zeros(3, np.int64), (2, 3), (0, 8))),
     ValueError, "rows of args overlap"),
])
def test_lse_kl_update_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        _update(**kw)


def test_lse_kl_update_read_only_outputs():
    for name, shape in (("row_moments", (5, 3)), ("col_moments", (5, 4))):
        a = np.zeros(shape)
        a.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            _update(**{name: a})


def test_lse_kl_update_zero_size_tiles():
    state, args = _update(n=0, v=4, col0=MAX - 4, row_moments=np.zeros((5, 0)))
    assert state.shape == (8, 0)
    col_m = np.zeros((5, 4))
    _update(n=0, v=4, row_moments=np.zeros((5, 0)), col_moments=col_m)
    assert not col_m.any()
    state, args = _update(n=3, v=0, col0=MAX, row_moments=np.zeros((5, 3)))
    np.testing.assert_array_equal(args, -1)


def test_lse_kl_update_thread_counts_beyond_the_machine():
    # 2**31 - 1 threads requested: capped at the OpenMP default (and the rows), not started
    n, v = 4, 20000  # above the tile size that goes parallel
    a = _update(n=n, v=v, threads=2**31 - 1)
    b = _update(n=n, v=v, threads=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------ pivot_criteria, pivot_bounds
def _pivot_args(B=2, V=5, K=None):
    rng = np.random.default_rng(1)
    cols = V if K is None else K
    X = [rng.standard_normal((B, cols)) for _ in range(2)]
    vecs = [rng.random(V) + 2.0 for _ in range(5)]
    return X, vecs


@pytest.mark.parametrize("pivots", [[0, 5], [-1, 0], [0, MAX], [-MAX - 1, 1]])
def test_pivot_criteria_pivots_out_of_range(pivots):
    X, vecs = _pivot_args()
    with pytest.raises(ValueError, match="pivot index out of range"):
        _core.pivot_criteria(*X, *vecs, np.array(pivots, np.int64), 1e-12, "max")


@pytest.mark.parametrize("change, exc, match", [
    (dict(pivots=np.zeros(3, np.int64)), ValueError, "pivots must be 1-d of length B=2"),
    (dict(pivots=np.zeros((2, 1), np.int64)), ValueError, "pivots must be 1-d"),
    (dict(pivots=np.zeros(2)), TypeError, "Cannot cast"),
    (dict(pivots=np.array([0, 2**63], np.uint64)), TypeError, "Cannot cast"),
    (dict(X2=np.zeros((2, 4))), ValueError, "X1 and X2 must be 2-d of the same shape"),
    (dict(X2=np.zeros((3, 5))), ValueError, "X1 and X2 must be 2-d of the same shape"),
    (dict(X1=np.zeros(5), X2=np.zeros(5)), ValueError, "2-d"),
    (dict(n2=np.zeros(4)), ValueError, "n2 must be 1-d of length 5"),
    (dict(B12=np.zeros(6)), ValueError, "B12 must be 1-d of length 5"),
    (dict(A1=np.zeros((1, 5))), ValueError, "A1 must be 1-d of length 5"),
    (dict(mode="median"), ValueError, "mode must be 'max' or 'mean'"),
])
def test_pivot_criteria_bad_arguments(change, exc, match):
    X, vecs = _pivot_args()
    kw = dict(X1=X[0], X2=X[1], **dict(zip(("n1", "n2", "A1", "A2", "B12"), vecs)),
              pivots=np.array([0, 3], np.int64), tol=1e-12, mode="max")
    kw.update(change)
    with pytest.raises(exc, match=match):
        _core.pivot_criteria(**kw)


def test_pivot_criteria_strided_and_empty_inputs():
    X, vecs = _pivot_args(B=2, V=5)
    wide = [np.zeros((2, 11)) for _ in range(2)]
    for w, x in zip(wide, X):
        w[:, ::2][:, :5] = x
    piv = np.array([1, 4], np.int64)
    want = _core.pivot_criteria(*X, *vecs, piv, 1e-12, "max")
    got = _core.pivot_criteria(*(w[:, ::2][:, :5] for w in wide), *vecs, piv, 1e-12, "max")
    np.testing.assert_array_equal(got, want)
    X0, vecs0 = _pivot_args(B=0, V=0)
    assert _core.pivot_criteria(*X0, *vecs0, np.zeros(0, np.int64), 1e-12, "mean").shape == (0,)
    with pytest.raises(ValueError, match="out of range"):  # V = 0: no pivot is a label
        X1, vecs1 = _pivot_args(B=1, V=0)
        _core.pivot_criteria(*X1, *vecs1, np.zeros(1, np.int64), 1e-12, "max")


@pytest.mark.parametrize("pivots, labels", [
    ([0, 1], [0, 1, 5]), ([0, 1], [-1, 1, 2]), ([0, 1], [MAX, 1, 2]), ([5, 1], [0, 1, 2]),
    ([-MAX - 1, 0], [0, 1, 2]),
])
def test_pivot_bounds_indices_out_of_range(pivots, labels):
    X, vecs = _pivot_args(B=2, V=5, K=3)
    with pytest.raises(ValueError, match="label index out of range"):
        _core.pivot_bounds(*X, *vecs, np.array(pivots, np.int64), np.array(labels, np.int64),
                           1e-12, 1e-9)


@pytest.mark.parametrize("change, exc, match", [
    (dict(labels=np.arange(4)), ValueError, "labels length K"),
    (dict(pivots=np.arange(3)), ValueError, "pivots must have length B"),
    (dict(labels=np.zeros((3, 1), np.int64)), ValueError, "labels length K"),
    (dict(labels=np.zeros(3)), TypeError, "Cannot cast"),
    (dict(X2=np.zeros((2, 4))), ValueError, "X1 and X2 must be 2-d of the same shape"),
    (dict(n1=np.zeros((5, 1))), ValueError, "n1 must be 1-d"),
    (dict(A2=np.zeros(4)), ValueError, "A2 must be 1-d of length 5"),
    (dict(n2=np.zeros(6)), ValueError, "n2 must be 1-d of length 5"),
])
def test_pivot_bounds_bad_arguments(change, exc, match):
    X, vecs = _pivot_args(B=2, V=5, K=3)
    kw = dict(X1=X[0], X2=X[1], **dict(zip(("n1", "n2", "A1", "A2", "B12"), vecs)),
              pivots=np.array([0, 1], np.int64), labels=np.array([2, 3, 4], np.int64),
              tol=1e-12, eps=1e-9)
    kw.update(change)
    with pytest.raises(exc, match=match):
        _core.pivot_bounds(**kw)


def test_pivot_bounds_empty_inputs():
    X, vecs = _pivot_args(B=2, V=5, K=0)
    out = _core.pivot_bounds(*X, *vecs, np.array([0, 4], np.int64), np.zeros(0, np.int64),
                             1e-12, 1e-9)
    np.testing.assert_array_equal(out, 0.0)
    X, vecs = _pivot_args(B=0, V=0, K=0)
    assert _core.pivot_bounds(*X, *vecs, np.zeros(0, np.int64), np.zeros(0, np.int64), 1e-12,
                              1e-9).shape == (0,)


# ------------------------------------------------------------------ sizes and plans (plan.cpp)
def test_no_argument_entry_points():
    for fn in (_core.build_info, _core.launch_table, _core.cublas_workspace_bytes):
        fn()
        with pytest.raises(TypeError):
            fn(1)


def test_chunk_counts_saturate():
    t = _core.launch_table()
    assert _core.lse_kl_col_chunks(MAX) == t["col_max_chunks"]
    assert _core.lse_kl_fused_chunks(MAX) == t["fused_max_chunks"]
    assert _core.lse_kl_col_chunks(0) == _core.lse_kl_fused_chunks(0) == 1
    for n in (1, 63, 64, 65, 960, 1023, 1024, 1025, 16383, 16384, 16385):
        assert _core.lse_kl_col_chunks(n) == min(16, max(1, -(-n // 64)))
        assert _core.lse_kl_fused_chunks(n) == min(64, max(1, -(-n // 256)))
    for fn in (_core.lse_kl_col_chunks, _core.lse_kl_fused_chunks):
        with pytest.raises(ValueError, match="n must be >= 0"):
            fn(-1)


def test_work_sizes_beyond_int64_raise():
    assert _core.lse_kl_cuda_col_work_elems(MAX // 80) == MAX // 80 * 80
    for call in (lambda: _core.lse_kl_cuda_col_work_elems(MAX // 80 + 1),
                 lambda: _core.lse_kl_cuda_col_work_elems(MAX),
                 lambda: _core.lse_kl_cuda_fused_work_elems(MAX, MAX),
                 lambda: _core.lse_kl_cuda_fused_work_elems(0, MAX),
                 lambda: _core.lse_kl_cuda_fused_work_elems(MAX, 1),
                 lambda: _core.lse_kl_gemm_work_elems(MAX, 1),
                 lambda: _core.lse_kl_gemm_work_elems(1, MAX),
                 lambda: _core.lse_kl_gemm_work_elems(0, MAX // 2 + 1)):
        with pytest.raises(ValueError, match="does not fit in int64"):
            call()
    for call in (lambda: _core.lse_kl_cuda_col_work_elems(-1),
                 lambda: _core.lse_kl_cuda_fused_work_elems(-1, 1),
                 lambda: _core.lse_kl_cuda_fused_work_elems(1, -MAX - 1),
                 lambda: _core.lse_kl_gemm_work_elems(1, -1)):
        with pytest.raises(ValueError, match="must be >= 0"):
            call()
    # the header's formulas where they fit
    assert _core.lse_kl_cuda_fused_work_elems(10, 300) == (2 * 15 * 10, 64 * 5 * 300)
    assert _core.lse_kl_gemm_work_elems(3, 129) == [2 * 15 * 3, 64 * 5 * 129, 2 * 129]
    assert _core.lse_kl_cuda_fused_work_elems(0, 10**15) == (0, 320 * 10**15)


@pytest.mark.parametrize("args", [(MAX, MAX), (2**32, 2**32), (1, MAX // 4)])
@pytest.mark.parametrize("fused, gemm", [(False, False), (True, False), (False, True)])
def test_pass_workspace_beyond_int64_raises(args, fused, gemm):
    with pytest.raises(ValueError, match="does not fit in int64"):
        _core.lse_kl_pass_cuda_workspace(*args, "float32", True, fused, gemm)


@pytest.mark.parametrize("rows, cols", [(0, 1), (1, 0), (-1, 5), (5, -MAX - 1)])
def test_pass_workspace_tiles_below_one(rows, cols):
    with pytest.raises(ValueError, match="tile_rows and tile_cols must be >= 1"):
        _core.lse_kl_pass_cuda_workspace(rows, cols, "float32", False, False, False)


def test_blas_layout_and_gemm_plan_extents():
    for args in ((-1, 4, 4, 1), (4, -1, 1, 4), (-MAX - 1, 1, 1, 1)):
        with pytest.raises(ValueError, match="must be >= 0"):
            _core.blas_layout(*args)
    assert _core.blas_layout(3, 4, MAX, 1) is None          # ld beyond cuBLAS's int
    assert _core.blas_layout(3, 4, -MAX - 1, 1) is None
    assert _core.blas_layout(3, 4, 4, 1) == ("row", 4)
    good = (3, 4, 4, 1)
    for a, b in (((-3, 4, 4, 1), good), (good, (5, -4, 4, 1)),
                 ((2**31, 4, 4, 1), good), (good, (MAX, 4, 4, 1)), ((3, 2**31, 2**31, 1), good)):
        with pytest.raises(ValueError, match="gemm_nt_plan"):
            _core.gemm_nt_plan(a, b)
    with pytest.raises(ValueError, match="same number of columns"):
        _core.gemm_nt_plan((3, 4, 4, 1), (5, 3, 3, 1))
    with pytest.raises(TypeError):
        _core.gemm_nt_plan((3, 4, 4), (5, 4, 4, 1))
    assert _core.gemm_nt_plan((3, 4, 4, 1), (5, 4, 4, 1)) == [1, 0, 5, 3, 4, 4, 4, 5]


def _fits(tr, tc, n, v, itemsize, ws, buffers):
    return 1 <= tr <= n and 1 <= tc <= v and 2 * buffers * tr * tc * itemsize <= ws


@pytest.mark.parametrize("n, v", [(MAX, MAX), (MAX, 10), (10, MAX), (2**40, 2**40)])
def test_plans_of_huge_passes_fit_their_workspace(n, v):
    ws = 1 << 30
    tr, tc, over = _core.plan_cupy_pass(n, v, 0, 4, None, None, ws, True, False)
    assert _fits(tr, tc, n, v, 4, ws, 2) and over
    tr, tc, over = _core.plan_cupy_pass(n, v, 7, 8, None, None, ws, False, True)
    assert _fits(tr, tc, n, v, 8, ws, 1) and not over
    tr, tc, _ = _core.plan_cupy_pass(n, v, 0, 4, MAX, MAX, ws, True, False)  # shrunk to fit
    assert _fits(tr, tc, n, v, 4, ws, 2)
    for gemm in (False, True):
        tr, tc, over, size = _core.plan_cuda_pass(n, v, "float32", None, None, ws, True, False,
                                                  gemm)
        assert 1 <= tr <= n and 1 <= tc <= v and 0 < size <= ws
    # a workspace of 2**63 - 1 bytes: tiles whose sizes still fit in int64
    tr, tc, _, size = _core.plan_cuda_pass(n, v, "float64", MAX, MAX, MAX, True, True, False)
    assert 1 <= tr <= n and 1 <= tc <= v and 0 < size <= MAX
    tr, tc, _ = _core.plan_cupy_pass(n, v, 2**40, 8, MAX, MAX, MAX, True, True)
    assert 1 <= tr <= n and 1 <= tc <= v


@pytest.mark.parametrize("call, match", [
    (lambda: _core.plan_cupy_pass(1, 1, MAX, 4, None, None, 1 << 30, True, False), "too small"),
    (lambda: _core.plan_cupy_pass(1, 1, 2**61, 8, None, None, MAX, True, True), "too small"),
    (lambda: _core.plan_cupy_pass(0, 1, 0, 4, None, None, 1 << 30, True, False), "n, v >= 1"),
    (lambda: _core.plan_cupy_pass(1, -MAX, 0, 4, None, None, 1 << 30, True, False), "n, v >= 1"),
    (lambda: _core.plan_cupy_pass(1, 1, -1, 4, None, None, 1 << 30, True, False),
     "converted_cols >= 0"),
    (lambda: _core.plan_cupy_pass(1, 1, 0, 4, None, None, -1, True, False),
     "workspace_bytes must be >= 0"),
    (lambda: _core.plan_cupy_pass(5, 5, 0, 4, 0, None, 1 << 30, True, False),
     "tile_rows must be >= 1"),
    (lambda: _core.plan_cupy_pass(5, 5, 0, 4, None, -MAX - 1, 1 << 30, True, False),
     "tile_cols must be >= 1"),
    (lambda: _core.plan_cuda_pass(MAX, MAX, "float32", None, None, 1000, True, True, False),
     "too small"),
    (lambda: _core.plan_cuda_pass(MAX, MAX, "float32", MAX, MAX, MAX, True, False, True),
     "too small"),
    (lambda: _core.plan_cuda_pass(1, 1, "float32", None, None, -MAX - 1, True, False, False),
     "workspace_bytes must be >= 0"),
    (lambda: _core.plan_cuda_pass(0, 1, "float32", None, None, 1 << 30, True, False, False),
     "n, v >= 1"),
    (lambda: _core.plan_cuda_pass(1, 1, "float32", None, 0, 1 << 30, True, False, True),
     "tile_cols must be >= 1"),
])
def test_plans_reject_impossible_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plans_reject_integers_beyond_int64():
    with pytest.raises(TypeError):
        _core.plan_cupy_pass(2**63, 1, 0, 4, None, None, 1 << 30, True, False)
    with pytest.raises(TypeError):
        _core.lse_kl_cuda_col_work_elems(-2**63 - 1)


# ------------------------------------------------------------------ CUDA entry points' host checks
def _update_cuda_args(n=4, v=4):
    G = FakeGpuArray
    return dict(l1=G((n, v), np.float32, 1 << 12), l2=G((n, v), np.float32, 1 << 13),
                state=G((8, n), np.float64, 1 << 14), args=G((2, n), np.int64, 1 << 15), col0=0)


@pytest.mark.usefixtures("needs_cuda_build")
@pytest.mark.parametrize("kw, match", [
    (dict(col0=MAX), "col0 \\+ v and row0 \\+ n must fit in int64"),
    (dict(col0=MAX - 3), "col0 \\+ v and row0 \\+ n must fit in int64"),
    (dict(row0=MAX - 1), "col0 \\+ v and row0 \\+ n must fit in int64"),
    (dict(col0=-1), "col0 and row0 must be >= 0"),
    (dict(row0=-MAX - 1), "col0 and row0 must be >= 0"),
    (dict(col0=2**62, col_moments=FakeGpuArray((5, 8), np.float64, 1 << 16),
          col_work=FakeGpuArray((320,), np.float64, 1 << 17)), "col_moments has 8 labels"),
    (dict(col0=MAX - 4, col_moments=FakeGpuArray((5, 8), np.float64, 1 << 16),
          col_work=FakeGpuArray((320,), np.float64, 1 << 17)), "col_moments has 8 labels"),
    (dict(l1=FakeGpuArray((4, -4), np.float32, 1 << 12)), "l1 has a negative extent"),
    (dict(state=FakeGpuArray((8, -1), np.float64, 1 << 14)), "state has a negative extent"),
    (dict(l1=FakeGpuArray((2**62, 2**62), np.float32, 1 << 12),
          l2=FakeGpuArray((2**62, 2**62), np.float32, 1 << 13)), "more bytes than int64 holds"),
    (dict(l1=FakeGpuArray((4, 4), np.float32, 1 << 12, strides=(2**60, 1))),
     "strides span more bytes than int64 holds"),
    (dict(l1=FakeGpuArray((3, 4), np.float32, 1 << 12, strides=(-(2**61), 1))),
     "strides span more bytes than int64 holds"),
])
def test_lse_kl_update_cuda_host_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        _core.lse_kl_update_cuda(**{**_update_cuda_args(), **kw})


@pytest.mark.usefixtures("needs_cuda_build")
def test_cuda_entry_points_accept_empty_arrays_with_huge_other_extents():
    # an empty array's other extents multiply to nothing: no size overflows, nothing touched
    G = FakeGpuArray
    _core.lse_kl_update_cuda(**{**_update_cuda_args(n=0, v=4), "col0": MAX - 4})
    # C-contiguous: its row stride, 2**62 bytes, still fits in int64
    _core.lse_kl_update_cuda(l1=G((0, 2**60), np.float32, 0), l2=G((0, 2**60), np.float32, 0),
                             state=G((8, 0), np.float64, 0), args=G((2, 0), np.int64, 0), col0=0)
    # strides given: any that fit serve, no element is addressed
    _core.lse_kl_update_cuda(l1=G((0, 2**62), np.float32, 0, strides=(1, 1)),
                             l2=G((0, 2**62), np.float32, 0, strides=(1, 1)),
                             state=G((8, 0), np.float64, 0), args=G((2, 0), np.int64, 0), col0=0)


@pytest.mark.usefixtures("needs_cuda_build")
@pytest.mark.parametrize("name", ["l1", "state"])
@pytest.mark.parametrize("shape, match", [
    ((2, 3, 2**62), "{} has more bytes than int64 holds"),
    ((2**62, 2**62), "{} has more bytes than int64 holds"),
    ((2**21, 2**21, 2**21), "{} has more bytes than int64 holds"),
    ((MAX, 2), "{} has more bytes than int64 holds"),
    # empty: no bytes, but its C-order (default) strides are computed, and do not fit
    ((0, 2**62), ("{}: a C-order stride of its shape \\(0, 4611686018427387904\\) \\w+ "
                  "does not fit in int64")),
    ((3, 0, 2**62), "{}: a C-order stride of its shape .* does not fit in int64"),
    ((0, MAX, 2), "{}: a C-order stride of its shape .* does not fit in int64"),
])
def test_cuda_host_checks_default_strides_of_huge_shapes(name, shape, match):
    # no strides given (C-contiguous): the extents are checked before any stride is formed
    # (a product past int64 would be undefined behaviour, and wrap)
    dtype = np.float32 if name == "l1" else np.float64
    with pytest.raises(ValueError, match=match.format(name)):
        _core.lse_kl_update_cuda(**{**_update_cuda_args(), name: FakeGpuArray(shape, dtype)})


def _typestr(typestr, shape=(4, 4), strides=None, ptr=1 << 12):
    a = FakeGpuArray(shape, np.float32, ptr)
    a.__cuda_array_interface__.update(typestr=typestr, strides=strides)
    return a


@pytest.mark.usefixtures("needs_cuda_build")
@pytest.mark.parametrize("strides", [None, (16, 4)])
@pytest.mark.parametrize("typestr, match", [
    ("<f0", "l1 has typestr '<f0', an item size of 0 bytes \\(it must be 1 to 16 bytes\\)"),
    ("|V0", "l1 has typestr '\\|V0', an item size of 0 bytes"),
    ("<f00", "l1 has typestr '<f00', an item size of 0 bytes"),
    ("<f17", "l1 has typestr '<f17', an item size of 17 bytes"),
    ("|V32", "l1 has typestr '\\|V32', an item size of 32 bytes"),
    ("<f9223372036854775807", "an item size of 9223372036854775807 bytes"),  # was a -4 stride
    ("<f9223372036854775808", "whose item size does not fit in int64"),       # was IndexError
    ("<f" + "9" * 40, "l1 has typestr '<f9{27}\\.\\.\\.', whose item size does not fit"),
    ("<f" + "1" * 100_000, "whose item size does not fit in int64"),
    (">f4", "l1 has dtype >f4, not one of fixed-size numbers"),
    ("<f", "l1 has dtype <f, not one of fixed-size numbers"),
    ("<f-4", "l1 has dtype <f-4, not one of fixed-size numbers"),
    ("<f 4", "l1 has dtype <f 4, not one of fixed-size numbers"),
])
def test_cuda_host_checks_item_sizes(typestr, match, strides):
    # the item size is 1 to 16 bytes, read from the typestr's digits however many there are
    # (ValueError, never a wrapped size or the parser's own exception); shown clipped
    with pytest.raises(ValueError, match=match) as info:
        _core.lse_kl_update_cuda(**{**_update_cuda_args(), "l1": _typestr(typestr,
                                                                           strides=strides)})
    assert len(str(info.value)) < 200


@pytest.mark.usefixtures("needs_cuda_build")
def test_cuda_host_checks_item_sizes_in_range():
    # sizes the parser knows are accepted as such, leading zeros and all; others of 1 to 16
    # bytes are parsed, then refused by the entry point's dtype check
    for typestr, match in (("<f16", "got \\(4, 4\\) <f16"), ("<c8", "got \\(4, 4\\) <c8"),
                           ("<f04", "got \\(4, 4\\) <f04"),
                           ("<f" + "0" * 60 + "4", "got \\(4, 4\\) <f0{27}\\.\\.\\.")):
        with pytest.raises(ValueError, match=match):
            _core.lse_kl_update_cuda(**{**_update_cuda_args(), "l1": _typestr(typestr)})
    # a known typestr with explicit strides: its item size divides them (l1 and l2 pass; the
    # next check, of state, fails before any device is asked about the arrays)
    with pytest.raises(ValueError, match="state must be a \\(8, 4\\) float64 array"):
        _core.lse_kl_update_cuda(**{**_update_cuda_args(), "l1": _typestr("<f4", strides=(16, 4)),
                                    "l2": _typestr("<f4", strides=(32, 4), ptr=1 << 13),
                                    "state": FakeGpuArray((8, 5), np.float64, 1 << 14)})
    with pytest.raises(ValueError, match="l1 has a stride of 6 bytes, not a multiple of its "
                                         "4-byte elements"):
        _core.lse_kl_update_cuda(**{**_update_cuda_args(), "l1": _typestr("<f4", strides=(6, 4))})


@pytest.mark.usefixtures("needs_cuda_build")
def test_pivot_criteria_cuda_host_checks():
    G = FakeGpuArray
    vec = G((4,), np.float64)
    piv = dict(X1=G((2, 4), np.float64), X2=G((2, 4), np.float64), n1=vec, n2=vec, A1=vec,
               A2=vec, B12=vec, pivots=G((2,), np.int64), tol=1e-10, mode="max",
               crit=G((2,), np.float64))
    for kw, match in (({"pivots": G((-2,), np.int64)}, "pivots has a negative extent"),
                      ({"n1": G((2**62,), np.float64)}, "more bytes than int64 holds"),
                      ({"crit": G((3,), np.float64)}, "crit must be a 1-d float64 array of 2"),
                      ({"X1": G((2, 4), np.float64, strides=(MAX // 8, 1))},
                       "strides span more bytes")):
        with pytest.raises(ValueError, match=match):
            _core.pivot_criteria_cuda(**{**piv, **kw})


@pytest.mark.usefixtures("needs_cuda_driver")
def test_pass_driver_host_checks():
    G = FakeGpuArray
    n, v, m = 2**40, 2**40, 8  # made-up operands whose tiles overflow the workspace's size
    arrays = dict(f1=G((n, m), np.float32, 1 << 12), g1=G((v, m), np.float32, 1 << 13),
                  f2=G((n, m), np.float32, 1 << 14), g2=G((v, m), np.float32, 1 << 15),
                  state=G((8, n), np.float64, 1 << 16), args=G((2, n), np.int64, 1 << 17),
                  row_moments=G((5, n), np.float64, 1 << 18),
                  col_moments=G((5, v), np.float64, 1 << 19),
                  workspace=G((1 << 30,), np.uint8, 1 << 20))
    base = dict(c_begin=0, c_end=0, tile_rows=2**31 - 1, tile_cols=2**31 - 1)
    for kw, match in ((dict(base), "does not fit in int64"),
                      ({**base, "c_begin": -1}, "0 <= c_begin <= c_end <= V"),
                      ({**base, "c_end": v + 1}, "0 <= c_begin <= c_end <= V"),
                      ({**base, "c_begin": MAX, "c_end": MAX}, "0 <= c_begin <= c_end <= V"),
                      ({**base, "tile_rows": 0}, "tile_rows and tile_cols must be >= 1"),
                      ({**base, "tile_cols": 2**31}, "fewer than 2\\^31")):
        with pytest.raises(ValueError, match=match):
            _core.lse_kl_pass_cuda(**arrays, **kw)
    with pytest.raises(ValueError, match="negative extent"):
        _core.lse_kl_pass_cuda(**{**arrays, "workspace": G((-1,), np.uint8, 1 << 20)}, **base)
