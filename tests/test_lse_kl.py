"""The compiled CPU epilogue _core.lse_kl_update: state semantics, tie rule, argument checks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identirep import _core
from identirep.passes import finalize, init_state
from helpers import PASS_RTOL, assert_pass_close, pair_reference


def fold(l1, l2, cuts, state=None, args=None):
    """Feed the label tiles [cuts[k], cuts[k+1]) in order; returns the finalised results."""
    if state is None:
        state, args = init_state(l1.shape[0])
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        _core.lse_kl_update(l1[:, c0:c1], l2[:, c0:c1], state, args, c0)
    return finalize(state, args), state, args


def random_logits(seed, n, v, scale=3.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    l1 = scale * rng.standard_normal((n, v))
    l2 = l1 + rng.standard_normal((n, v))
    return l1.astype(dtype), l2.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_single_tile_matches_reference(dtype):
    l1, l2 = random_logits(0, 37, 2000, dtype=dtype)
    got, state, args = fold(l1, l2, [0, 2000])
    expected = pair_reference(l1.astype(np.float64), l2.astype(np.float64))
    assert_pass_close(got, expected, dtype, scale=10.0)
    np.testing.assert_array_equal(args[0], l1.argmax(axis=1))
    np.testing.assert_array_equal(args[1], l2.argmax(axis=1))
    np.testing.assert_array_equal(state[0], l1.max(axis=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_epilogue_error_is_small(dtype):
    # Errors of the epilogue alone (same rounded logits on both sides), ~1e-7 relative.
    l1, l2 = random_logits(1, 16, 50000, dtype=dtype)
    got, _, _ = fold(l1, l2, list(range(0, 50000, 4096)) + [50000])
    expected = pair_reference(l1.astype(np.float64), l2.astype(np.float64))
    tol = 1e-13 if dtype == np.float64 else 2e-6
    for k in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        np.testing.assert_allclose(got[k], expected[k], rtol=tol, atol=tol, err_msg=k)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), v=st.integers(1, 300), data=st.data(),
       shift=st.sampled_from([0.0, 1e3, -1e4]), dtype=st.sampled_from([np.float32, np.float64]))
def test_any_tiling_matches_reference(n, v, data, shift, dtype):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, v - 1), max_size=6)) if v > 1 else []))
    l1, l2 = random_logits(v, n, v)
    l1 = (l1 + shift).astype(dtype)
    l2 = (l2 + shift).astype(dtype)
    got, _, _ = fold(l1, l2, [0] + cuts + [v])
    expected = pair_reference(l1.astype(np.float64), l2.astype(np.float64))
    assert_pass_close(got, expected, dtype, scale=max(1.0, abs(shift)) * 10, check_top1=False)
    np.testing.assert_array_equal(got["top1_agree"], expected["top1_agree"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_keep_the_first_index_across_tiles(dtype):
    l1 = np.zeros((2, 12), dtype)
    l1[0, [3, 7, 10]] = 5.0  # ties inside and across tiles
    l1[1, [9, 11]] = 2.0
    l2 = np.zeros_like(l1)
    l2[:, 10] = 1.0
    _, _, args = fold(l1, l2, [0, 5, 8, 12])
    np.testing.assert_array_equal(args[0], [3, 9])
    np.testing.assert_array_equal(args[1], [10, 10])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_first_tile_from_empty_state_and_huge_gaps(dtype):
    # -inf running max, then logits far apart: no NaN, underflowed terms vanish.
    l1 = np.array([[0.0, -1000.0, -2000.0, -1e30], [1e4, -1e4, 1e4 - 1.0, 0.0]], dtype)
    l2 = np.array([[-1000.0, 0.0, -2000.0, 0.0], [1e4, 1e4, 0.0, -1e4]], dtype)
    got, _, _ = fold(l1, l2, [0, 1, 4])
    for k in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        assert np.isfinite(got[k]).all(), k
    assert got["L1"][0] == 0.0 and got["H1"][0] == 0.0
    assert got["kl12"][0] == pytest.approx(1000.0 + np.log(2.0), rel=PASS_RTOL[np.dtype(dtype)])
    assert_pass_close(got, pair_reference(l1.astype(np.float64), l2.astype(np.float64)), dtype, 1e4)


def test_rows_of_minus_infinity_leave_the_state_untouched():
    l1 = np.full((1, 4), -np.inf)
    l2 = np.zeros((1, 4))
    state, args = init_state(1)
    _core.lse_kl_update(l1, l2, state, args, 0)
    np.testing.assert_array_equal(state, init_state(1)[0])
    np.testing.assert_array_equal(args, init_state(1)[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_views(dtype):
    l1, l2 = random_logits(2, 40, 90, dtype=dtype)
    wide = np.zeros((40, 200), dtype)
    wide[:, 7:97] = l1
    state, args = init_state(100)
    # row-strided, reversed-row and column-offset tiles; state and args as column views
    got, _, _ = fold(wide[::-1, 7:97][::-1], l2[::1], [0, 45, 90],
                     state=state[:, 10:50], args=args[:, 10:50])
    expected = pair_reference(l1.astype(np.float64), l2.astype(np.float64))
    assert_pass_close(got, expected, dtype, scale=10.0)
    assert np.isneginf(state[0, :10]).all() and (args[:, 50:] == -1).all()


def test_empty_tile_is_a_no_op():
    state, args = init_state(3)
    _core.lse_kl_update(np.zeros((3, 0)), np.zeros((3, 0)), state, args, 0)
    np.testing.assert_array_equal(state, init_state(3)[0])


def _call(l1=None, l2=None, state=None, args=None, col0=0, threads=0, n=4, v=6):
    l1 = np.zeros((n, v), np.float32) if l1 is None else l1
    l2 = np.zeros((n, v), np.float32) if l2 is None else l2
    s, a = init_state(n)
    _core.lse_kl_update(l1, l2, s if state is None else state, a if args is None else args, col0,
                        threads)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(l1=np.zeros((4, 6), np.int32), l2=np.zeros((4, 6), np.int32)), TypeError,
     "float32 or float64, got int32"),
    (dict(l1=np.zeros((4, 6), np.float16), l2=np.zeros((4, 6), np.float16)), TypeError,
     "float32 or float64, got float16"),
    (dict(l2=np.zeros((4, 6), np.float64)), TypeError, "same dtype, got float32 and float64"),
    (dict(l2=np.zeros((4, 5), np.float32)), ValueError, r"same shape, got \(4, 6\) and \(4, 5\)"),
    (dict(l1=np.zeros(6, np.float32), l2=np.zeros(6, np.float32)), ValueError, "2-d"),
    (dict(l1=[[0.0] * 6] * 4), TypeError, "l1 must be a numpy.ndarray, got list"),
    (dict(state=np.zeros((8, 5))), ValueError, r"state must have shape \(8, 4\)"),
    (dict(state=np.zeros((8, 4), np.float32)), TypeError, "state must have dtype float64"),
    (dict(args=np.zeros((2, 4), np.int32)), TypeError, "args must have dtype int64"),
    (dict(args=np.zeros((3, 4), np.int64)), ValueError, r"args must have shape \(2, 4\)"),
    (dict(state=np.zeros((4, 8)).T), ValueError, "state must be contiguous along its last axis"),
    (dict(l1=np.zeros((6, 4), np.float32).T), ValueError, "l1 must be contiguous along its last"),
    (dict(col0=-1), ValueError, "col0 must be >= 0"),
    (dict(threads=-2), ValueError, "threads must be >= 0"),
])
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _call(**kwargs)


def test_read_only_and_overlapping_state_are_rejected():
    state, args = init_state(4)
    state.flags.writeable = False
    with pytest.raises(ValueError, match="state must be writeable"):
        _call(state=state)
    overlapping = np.lib.stride_tricks.as_strided(np.zeros(16), shape=(8, 4), strides=(16, 8))
    with pytest.raises(ValueError, match="rows of state overlap"):
        _call(state=overlapping)
