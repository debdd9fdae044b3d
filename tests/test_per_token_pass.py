"""Per-token quantities of the streaming pass: each model's top-k labels per input (the
compiled epilogue's top-k state, ``stream_pass(topk=)``, ``cpu_pass``, ``numpy_pass``,
``engine``), the Jensen-Shannon second pass (``_core.jsd_update``, ``jsd_pass``) and their
oracle ``reference.per_token_reference``."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import identirep as ir
from identirep import _core, measures
from identirep._cpu_pass import MAX_TOPK, cpu_pass, jsd_pass, stream_pass
from identirep.errors import IdentirepError
from identirep.passes import init_state, numpy_pass
from identirep.reference import per_token_reference
from helpers import PASS_RTOL, assert_close, random_pair


def brute_topk(x, k):
    """Labels of each row by decreasing value, ties to the lower label (a stable sort), NaN
    never listed (-1 in the slots the finite and infinite values do not fill)."""
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    order = np.where(np.isnan(np.take_along_axis(x, order, 1)), -1, order)
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)


def fold_topk(l1, l2, cuts, k, threads=0):
    """Feed the label tiles [cuts[j], cuts[j+1]) in order with top-k state; returns the
    (values, ids) state and the log-sum-exp state."""
    n = l1.shape[0]
    state, args = init_state(n)
    vals = np.full((2, n, k), -np.inf)
    ids = np.full((2, n, k), -1, np.int64)
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        _core.lse_kl_update(l1[:, c0:c1], l2[:, c0:c1], state, args, c0, threads,
                            topk_values=vals, topk_ids=ids)
    return vals, ids, state, args


def check_state(l, vals, ids, k):
    """ids are the brute-force top-k and vals the logits they name (-inf in empty slots)."""
    want = brute_topk(l.astype(np.float64), k)
    np.testing.assert_array_equal(ids, want)
    got = np.where(want >= 0, np.take_along_axis(l.astype(np.float64), np.maximum(want, 0), 1),
                   -np.inf)
    np.testing.assert_array_equal(vals, got)


def tied_logits(seed, n, v, dtype, levels=5):
    """Logits on a coarse grid: exact ties everywhere, across every tile boundary."""
    rng = np.random.default_rng(seed)
    l1 = rng.integers(0, levels, (n, v)).astype(dtype)
    l2 = rng.integers(0, levels, (n, v)).astype(dtype)
    return l1, l2


# ------------------------------------------------------------------ the epilogue's top-k
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 7), v=st.integers(1, 260), k=st.integers(1, 12), data=st.data(),
       tied=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_topk_state_equals_a_stable_sort_under_any_tiling(n, v, k, data, tied, dtype):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, v - 1), max_size=8)) if v > 1 else []))
    if tied:
        l1, l2 = tied_logits(v + k, n, v, dtype)
    else:
        rng = np.random.default_rng(v + k)
        l1 = (3 * rng.standard_normal((n, v))).astype(dtype)
        l2 = (l1 + rng.standard_normal((n, v))).astype(dtype)
    vals, ids, _, _ = fold_topk(l1, l2, [0] + cuts + [v], k)
    check_state(l1, vals[0], ids[0], k)
    check_state(l2, vals[1], ids[1], k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["random", "tied", "nan and -inf blocks"])
@pytest.mark.parametrize("k", [1, 10, 70])
def test_topk_state_over_wide_tiles(dtype, kind, k):
    # tile rows of many blocks and chunks, where the block maxima bound the candidates
    n, v = 6, 40000
    if kind == "tied":
        l1, l2 = tied_logits(k, n, v, dtype, levels=3)
    else:
        rng = np.random.default_rng(k)
        l1 = (3 * rng.standard_normal((n, v))).astype(dtype)
        l2 = (l1 + rng.standard_normal((n, v))).astype(dtype)
    if kind == "nan and -inf blocks":
        l1[:, :300] = np.nan
        l1[0, 300:] = -np.inf
        l1[1, ::2] = np.nan
        l2[:, 5000:9000] = -np.inf
        l2[2] = np.nan
        l2[3, :39990] = np.nan
    for cuts in ([0, v], [0, 1, 257, 16384, 16385, 33000, v]):
        vals, ids, _, _ = fold_topk(l1, l2, cuts, k)
        check_state(l1, vals[0], ids[0], k)
        check_state(l2, vals[1], ids[1], k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_ties_across_tile_boundaries_keep_the_lower_labels(dtype):
    # row 0: 5.0 at labels 3, 7, 10, 11 (tiles [0, 5), [5, 8), [8, 12)); k = 3 keeps 3, 7, 10
    # row 1: every label equal: the first k labels
    l1 = np.zeros((2, 12), dtype)
    l1[0, [3, 7, 10, 11]] = 5.0
    l2 = np.full((2, 12), -2.5, dtype)
    l2[0, 11] = 1.0          # the last label alone on top, then ties from the first tile
    vals, ids, _, args = fold_topk(l1, l2, [0, 5, 8, 12], 3)
    np.testing.assert_array_equal(ids[0], [[3, 7, 10], [0, 1, 2]])
    np.testing.assert_array_equal(ids[1], [[11, 0, 1], [0, 1, 2]])
    np.testing.assert_array_equal(vals[0], [[5, 5, 5], [0, 0, 0]])
    np.testing.assert_array_equal(ids[:, :, 0], args)   # the argmax, same tie rule


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_never_enters_and_infinities_do(dtype):
    l1 = np.array([[np.nan, 1.0, np.nan, 2.0, -np.inf, 0.5],
                   [np.nan] * 6,
                   [np.nan, -np.inf, np.nan, -np.inf, np.inf, np.nan]], dtype)
    l2 = l1[::-1].copy()
    vals, ids, _, _ = fold_topk(l1, l2, [0, 1, 3, 6], 4)
    np.testing.assert_array_equal(ids[0], [[3, 1, 5, 4], [-1] * 4, [4, 1, 3, -1]])
    check_state(l1, vals[0], ids[0], 4)
    check_state(l2, vals[1], ids[1], 4)


def test_k_beyond_the_labels_leaves_empty_slots():
    l1, l2 = tied_logits(3, 4, 5, np.float64)
    vals, ids, _, _ = fold_topk(l1, l2, [0, 2, 5], 8)
    assert (ids[:, :, 5:] == -1).all() and np.isneginf(vals[:, :, 5:]).all()
    check_state(l1, vals[0], ids[0], 8)


@pytest.mark.parametrize("threads", [1, 2])
def test_topk_with_threads_and_row_views(threads):
    # rows in parallel; the state as a view [:, r0:r1] of a bigger (2, N, k) array
    rng = np.random.default_rng(5)
    l1 = rng.standard_normal((300, 400)).astype(np.float32)
    l2 = rng.standard_normal((300, 400)).astype(np.float32)
    vals = np.full((2, 310, 6), -np.inf)
    ids = np.full((2, 310, 6), -1, np.int64)
    state, args = init_state(300)
    for c0 in range(0, 400, 128):
        _core.lse_kl_update(l1[:, c0:c0 + 128], l2[:, c0:c0 + 128], state, args, c0, threads,
                            topk_values=vals[:, 5:305], topk_ids=ids[:, 5:305])
    check_state(l1, vals[0, 5:305], ids[0, 5:305], 6)
    check_state(l2, vals[1, 5:305], ids[1, 5:305], 6)
    assert (ids[:, :5] == -1).all() and (ids[:, 305:] == -1).all()


def test_topk_leaves_the_other_state_bitwise_unchanged():
    rng = np.random.default_rng(6)
    l1 = rng.standard_normal((50, 700))
    l2 = l1 + rng.standard_normal((50, 700))
    _, _, s_top, a_top = fold_topk(l1, l2, [0, 300, 700], 10)
    state, args = init_state(50)
    for c0, c1 in ((0, 300), (300, 700)):   # the original positional signature
        _core.lse_kl_update(l1[:, c0:c1], l2[:, c0:c1], state, args, c0, 0, None, None, 0)
    np.testing.assert_array_equal(s_top, state)
    np.testing.assert_array_equal(a_top, args)


def _topk_call(n=4, v=6, k=3, **kw):
    l = np.zeros((n, v))
    state, args = init_state(n)
    kw.setdefault("topk_values", np.full((2, n, k), -np.inf))
    kw.setdefault("topk_ids", np.full((2, n, k), -1, np.int64))
    _core.lse_kl_update(l, l, state, args, 0, **kw)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(topk_ids=None), ValueError, "go together"),
    (dict(topk_values=None), ValueError, "go together"),
    (dict(topk_values=np.zeros((2, 5, 3))), ValueError, r"shape \(2, 4, k\)"),
    (dict(topk_values=np.zeros((2, 4, 0)), topk_ids=np.zeros((2, 4, 0), np.int64)),
     ValueError, "k >= 1"),
    (dict(topk_ids=np.full((2, 4, 2), -1, np.int64)), ValueError, "k as in topk_values"),
    (dict(topk_values=np.zeros((2, 4, 3), np.float32)), TypeError, "float64, got float32"),
    (dict(topk_ids=np.zeros((2, 4, 3), np.int32)), TypeError, "int64, got int32"),
    (dict(topk_values=np.zeros((8, 3))), ValueError, r"shape \(2, 4, k\)"),
    (dict(topk_values=np.zeros((2, 3, 4)).transpose(0, 2, 1)), ValueError, "C-contiguous"),
    (dict(topk_values=np.zeros((2, 4, 6))[:, :, ::2]), ValueError, "C-contiguous"),
    (dict(topk_values=np.lib.stride_tricks.as_strided(np.zeros(12), (2, 4, 3), (0, 24, 8))),
     ValueError, "blocks of topk_values overlap"),
    (dict(topk_values=np.zeros((2, 8, 3))[:, :4],
          topk_ids=np.zeros((2, 4, 3), np.int64)), ValueError, "same layout"),
    (dict(topk_values=[[0.0]]), TypeError, "topk_values must be a numpy.ndarray"),
])
def test_topk_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        _topk_call(**kw)


def test_read_only_topk_state_is_refused():
    ids = np.full((2, 4, 3), -1, np.int64)
    ids.flags.writeable = False
    with pytest.raises(ValueError, match="topk_ids must be writeable"):
        _topk_call(topk_ids=ids)


# ------------------------------------------------------------------ the pass's top-k
def _operands(seed=0, n=120, v=300, m=6, dtype=np.float64, tied=False):
    rng = np.random.default_rng(seed)
    if tied:   # small integer operands: exactly tied logits in float32 and float64 alike
        f1, g1 = rng.integers(-2, 3, (n, m)), rng.integers(-2, 3, (v, m))
        f2, g2 = rng.integers(-2, 3, (n, m)), rng.integers(-2, 3, (v, m))
    else:
        f1, g1 = rng.standard_normal((n, m)), rng.standard_normal((v, m))
        f2 = f1 + 0.3 * rng.standard_normal((n, m))
        g2 = g1 + 0.3 * rng.standard_normal((v, m))
    return tuple(x.astype(dtype) for x in (f1, g1, f2, g2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tiles", [(None, None), (7, 13), (1, 1), (2, 3), (120, 299)])
def test_stream_pass_topk_equals_the_brute_force(dtype, tiles):
    ops = _operands(1, dtype=dtype, tied=True)
    got = stream_pass(*ops, topk=10, tile_rows=tiles[0], tile_cols=tiles[1])
    l1 = ops[0].astype(np.float64) @ ops[1].astype(np.float64).T   # exact (small integers)
    l2 = ops[2].astype(np.float64) @ ops[3].astype(np.float64).T
    np.testing.assert_array_equal(got["topk1"], brute_topk(l1, 10))
    np.testing.assert_array_equal(got["topk2"], brute_topk(l2, 10))
    assert got["topk1"].dtype == np.int64 and got["topk1"].shape == (120, 10)


def test_topk_is_clamped_to_the_labels():
    ops = _operands(2, n=9, v=7)
    got = stream_pass(*ops, topk=50, tile_cols=3)
    assert got["topk1"].shape == (9, 7)
    np.testing.assert_array_equal(np.sort(got["topk2"], axis=1), np.tile(np.arange(7), (9, 1)))


def test_topk_zero_is_bitwise_the_pass_without_it():
    ops = _operands(3, dtype=np.float32)
    plain = stream_pass(*ops, moments=True, tile_rows=50, tile_cols=64)
    top = stream_pass(*ops, moments=True, tile_rows=50, tile_cols=64, topk=5)
    assert "topk1" not in plain and "topk2" not in plain
    for key, val in plain.items():
        np.testing.assert_array_equal(top[key], val, err_msg=key)
    assert stream_pass(*ops, topk=0).keys() == stream_pass(*ops).keys()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_stream_pass_refuses_a_bad_topk(bad):
    with pytest.raises(IdentirepError, match="topk must be an integer >= 0"):
        stream_pass(*_operands(4, n=5, v=8), topk=bad)


def test_stream_pass_bounds_topk():
    ops = _operands(4, n=5, v=8)
    assert stream_pass(*ops, topk=MAX_TOPK)["topk1"].shape == (5, 8)
    with pytest.raises(IdentirepError, match=f"at most the {MAX_TOPK} largest") as err:
        stream_pass(*ops, topk=MAX_TOPK + 1)
    assert "topk <=" in err.value.fix


def test_pass_stats_carry_topk_and_swap_it():
    ops = _operands(5, dtype=np.float32)
    s = cpu_pass(*ops, topk=4)
    n = numpy_pass(*(x.astype(np.float64) for x in ops), rows=37, topk=4)
    # float32 and float64 logits can order near-equal labels differently: compare where the
    # float64 logits are well separated
    l1 = ops[0].astype(np.float64) @ ops[1].astype(np.float64).T
    gap = np.diff(-np.sort(-l1, axis=1)[:, :5], axis=1).min(axis=1)
    sure = gap < -1e-4
    np.testing.assert_array_equal(s.topk1[sure], n.topk1[sure])
    assert sure.mean() > 0.9
    sw = s.swapped()
    assert sw.topk1 is s.topk2 and sw.topk2 is s.topk1
    assert cpu_pass(*ops).topk1 is None and numpy_pass(*ops).topk2 is None


def test_numpy_pass_topk_equals_the_compiled_pass_in_float64():
    ops = _operands(6, tied=True)
    s = cpu_pass(*ops, topk=7, tile_rows=11, tile_cols=17)
    n = numpy_pass(*ops, rows=13, topk=7)
    np.testing.assert_array_equal(s.topk1, n.topk1)
    np.testing.assert_array_equal(s.topk2, n.topk2)


def test_engine_passes_topk_on_and_gpu_backends_refuse_it(monkeypatch):
    a, b = random_pair(N=40, V=30, M=4, seed=1, bias=True)
    e = measures.engine(a, b, topk=3)
    ref = per_token_reference(a, b, k=3, jsd=False)
    np.testing.assert_array_equal(e.stats.topk1, ref["top1"])
    np.testing.assert_array_equal(e.stats.topk2, ref["top2"])
    assert measures.engine(a, b).stats.topk1 is None
    with pytest.raises(IdentirepError, match="topk must be an integer >= 0"):
        measures.engine(a, b, topk=-2)
    for backend in ("cuda", "cupy"):
        monkeypatch.setattr(measures, "resolve", lambda *args, _b=backend: _b)
        with pytest.raises(IdentirepError, match="runs on the CPU backend") as err:
            measures.engine(a, b, backend=backend, topk=10)
        assert "backend='cpu'" in err.value.fix


# ------------------------------------------------------------------ Jensen-Shannon
def _jsd_rows(lp1, lp2, dtype=np.float64):
    """jsd_update on one tile of log-probabilities (L = 0)."""
    lp1, lp2 = np.atleast_2d(np.asarray(lp1, dtype)), np.atleast_2d(np.asarray(lp2, dtype))
    out = np.zeros(lp1.shape[0])
    _core.jsd_update(lp1, lp2, np.zeros(len(out)), np.zeros(len(out)), out)
    return out


def test_jsd_terms_are_accurate_where_the_plain_formula_cancels():
    # one label's term 0.5 p1 log(p1/m) + 0.5 p2 log(p2/m) against 50-digit arithmetic, over
    # differences from 1e-12 (where the plain formula keeps no digit) to 700 nats and both
    # sides of the formula's switch at 1.1
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    worst = 0.0
    for lp1 in (-1e-3, -0.7, -5.0, -30.0):
        for a in (0.0, 1e-12, 1e-7, 1e-3, 0.2, 1.0, 1.0999, 1.1, 1.1001, 2.5, 20.0, 700.0):
            for lp2 in (lp1 - a, lp1 + a):
                got = _jsd_rows([lp1], [lp2])[0]
                p1, p2 = mpmath.e ** mpmath.mpf(lp1), mpmath.e ** mpmath.mpf(lp2)
                m = (p1 + p2) / 2
                want = (p1 * mpmath.log(p1 / m) + p2 * mpmath.log(p2 / m)) / 2
                if want == 0:
                    assert got == 0.0
                    continue
                worst = max(worst, float(abs(got - want) / want))
    assert worst < 1e-14


def test_jsd_of_zero_probabilities_and_disjoint_supports():
    # p = 0 terms count 0; a label only one model can produce gives 0.5 p log 2; two
    # disjoint distributions give log 2; identical ones exactly 0
    p = np.array([0.5, 0.25, 0.25, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log(q)
        got = _jsd_rows([lp, lp, np.log([1.0, 0.0, 0.0, 0.0])],
                        [lp, lq, np.log([0.0, 1.0, 0.0, 0.0])])
    m = (p + q) / 2
    # by hand: label 0 gives 0.5 * 0.5 log 2, label 1 0.5 * 0.25 log 2, label 2
    # 0.5 (0.25 log(0.25/0.375) + 0.5 log(0.5/0.375)), label 3 0.5 * 0.5 log 2
    want = 0.5 * (0.5 * np.log(2) + 0.25 * np.log(2) + 0.25 * np.log(0.25 / m[2])
                  + 0.5 * np.log(0.5 / m[2]) + 0.5 * np.log(2))
    assert got[0] == 0.0
    assert got[1] == pytest.approx(want, rel=1e-15)
    assert got[2] == pytest.approx(np.log(2), rel=1e-15)


def test_jsd_nan_in_is_nan_out():
    assert np.isnan(_jsd_rows([[np.nan, -1.0]], [[-1.0, -1.0]])).all()
    out = np.zeros(2)
    l = np.zeros((2, 3))
    _core.jsd_update(l, l, np.array([np.nan, np.log(3)]), np.full(2, np.log(3)), out)
    assert np.isnan(out[0]) and out[1] == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_jsd_pass_equals_the_reference(dtype, bias):
    a, b = random_pair(N=150, V=400, M=6, seed=2, bias=bias, noise=0.7)
    if dtype == np.float32:
        a = ir.Model(a.f.astype(dtype), a.g.astype(dtype),
                     bias=None if a.bias is None else a.bias.astype(dtype))
        b = ir.Model(b.f.astype(dtype), b.g.astype(dtype),
                     bias=None if b.bias is None else b.bias.astype(dtype))
    f1, g1 = a.augmented(None)
    f2, g2 = b.augmented(None)
    s = stream_pass(f1, g1, f2, g2)
    got = jsd_pass(f1, g1, f2, g2, s["L1"], s["L2"], tile_rows=41, tile_cols=97)
    want = per_token_reference(a, b, jsd=True)["jsd"]
    assert (want > 1e-3).all()
    # float64: to 1e-10 of the reference; float32 logits: the pass's float32 tolerance
    assert_close(got, want, dtype, rtol=PASS_RTOL[np.dtype(dtype)], what="jsd")
    assert (got <= np.log(2)).all()


def test_jsd_pass_same_for_any_tiling_and_threads():
    ops = _operands(7, n=60, v=500)
    s = stream_pass(*ops)
    a = jsd_pass(*ops, s["L1"], s["L2"])
    b = jsd_pass(*ops, s["L1"], s["L2"], tile_rows=1, tile_cols=7, epilogue_threads=2)
    np.testing.assert_allclose(b, a, rtol=1e-13)
    seen = []
    jsd_pass(*ops, s["L1"], s["L2"], tile_rows=30, tile_cols=250, progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("kw, match", [
    (dict(L1=np.zeros(3)), r"L1 must be a real \(N,\) = \(60,\) array"),
    (dict(L2=np.zeros((60, 1))), r"L2 must be a real \(N,\)"),
    (dict(L1=np.array(["a"] * 60)), "L1 must be a real"),
    (dict(epilogue_threads=-1), "epilogue_threads must be >= 0"),
    (dict(tile_cols=0), "tile_cols must be >= 1"),
])
def test_jsd_pass_argument_errors(kw, match):
    ops = _operands(8, n=60, v=50)
    args = dict(L1=np.zeros(60), L2=np.zeros(60))
    args.update(kw)
    with pytest.raises(IdentirepError, match=match):
        jsd_pass(*ops, **args)


def _jsd_call(n=4, v=5, **kw):
    args = dict(l1=np.zeros((n, v)), l2=np.zeros((n, v)), L1=np.zeros(n), L2=np.zeros(n),
                out=np.zeros(n))
    args.update(kw)
    _core.jsd_update(**args)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(l1=np.zeros((4, 5), np.float32)), TypeError, "same dtype, got float32 and float64"),
    (dict(l1=np.zeros((4, 5), np.int64), l2=np.zeros((4, 5), np.int64)), TypeError,
     "float32 or float64, got int64"),
    (dict(l2=np.zeros((4, 6))), ValueError, "same shape"),
    (dict(L1=np.zeros(5)), ValueError, r"jsd_update: L1 must have shape \(4,\)"),
    (dict(L2=np.zeros(4, np.float32)), TypeError, "L2 must have dtype float64"),
    (dict(out=np.zeros(8)[::2]), ValueError, "out must be contiguous"),
    (dict(out=[0.0] * 4), TypeError, "out must be a numpy.ndarray"),
    (dict(threads=-1), ValueError, "threads must be >= 0"),
    (dict(l1=np.zeros((5, 4)).T, l2=np.zeros((5, 4)).T), ValueError,
     "jsd_update: l1 must be contiguous along its last axis"),
])
def test_jsd_update_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        _jsd_call(**kw)


def test_jsd_update_read_only_out_and_empty_tiles():
    out = np.zeros(4)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _jsd_call(out=out)
    out = np.ones(3)
    _core.jsd_update(np.zeros((3, 0)), np.zeros((3, 0)), np.zeros(3), np.zeros(3), out)
    np.testing.assert_array_equal(out, 1.0)


# ------------------------------------------------------------------ the oracle
def with_targets(model, targets):
    """``model`` with per-input ``targets``."""
    try:
        return ir.Model(model.f, model.g, bias=model.bias, targets=targets)
    except TypeError:   # a Model without the field: the attribute the oracle reads
        object.__setattr__(model, "targets", np.asarray(targets, np.int64))
        return model


def test_reference_by_its_definitions():
    a, b = random_pair(N=12, V=9, M=3, seed=3, bias=True)
    t = np.array([0, 8, -1, 3, 3, 5, 1, 2, -1, 7, 6, 4])
    a = with_targets(a, t)
    r = per_token_reference(a, b, k=4)
    l1 = a.f @ a.g.T + a.bias
    l2 = b.f @ b.g.T + b.bias
    for i in range(12):   # one input at a time, from the definitions
        p1 = np.exp(l1[i]) / np.exp(l1[i]).sum()
        p2 = np.exp(l2[i]) / np.exp(l2[i]).sum()
        assert r["L1"][i] == pytest.approx(np.log(np.exp(l1[i]).sum()), rel=1e-14)
        assert r["kl12"][i] == pytest.approx((p1 * np.log(p1 / p2)).sum(), rel=1e-10)
        assert r["kl21"][i] == pytest.approx((p2 * np.log(p2 / p1)).sum(), rel=1e-10)
        assert list(r["top1"][i]) == sorted(range(9), key=lambda y: -l1[i, y])[:4]
        assert r["p2_of_top1"][i] == pytest.approx(p2[int(np.argmax(l1[i]))], rel=1e-14)
        assert r["p1_of_top2"][i] == pytest.approx(p1[int(np.argmax(l2[i]))], rel=1e-14)
        if t[i] >= 0:
            assert r["logp1"][i] == pytest.approx(np.log(p1[t[i]]), rel=1e-13)
        else:
            assert np.isnan(r["logp1"][i])
        m = (p1 + p2) / 2
        jsd = 0.5 * (p1 * np.log(p1 / m)).sum() + 0.5 * (p2 * np.log(p2 / m)).sum()
        assert r["jsd"][i] == pytest.approx(jsd, rel=1e-10)
    assert np.isnan(r["logp2"]).all()            # the second model carries no targets
    assert r["top1"].dtype == np.int64 and r["top1"].shape == (12, 4)
    assert "jsd" not in per_token_reference(a, b, jsd=False)
    assert per_token_reference(a, b, k=30)["top2"].shape == (12, 9)


def test_the_pass_equals_the_reference_per_token():
    a, b = random_pair(N=200, V=150, M=5, seed=4, bias=True)
    f1, g1 = a.augmented(None)
    f2, g2 = b.augmented(None)
    got = stream_pass(f1, g1, f2, g2, topk=10, tile_rows=64, tile_cols=40)
    ref = per_token_reference(a, b, k=10)
    np.testing.assert_array_equal(got["topk1"], ref["top1"])
    np.testing.assert_array_equal(got["topk2"], ref["top2"])
    for key in ("L1", "L2"):
        assert_close(got[key], ref[key], rtol=PASS_RTOL[np.dtype(np.float64)], what=key)
    for key in ("kl12", "kl21"):
        assert_close(np.maximum(got[key], 0), ref[key], rtol=PASS_RTOL[np.dtype(np.float64)],
                     atol=1e-14, what=key)
    assert np.allclose(ref["L1"], logsumexp(f1 @ g1.T, axis=1))


@pytest.mark.parametrize("kw, match", [(dict(k=0), "k must be an integer >= 1"),
                                       (dict(jsd="yes"), "jsd must be True or False")])
def test_reference_argument_errors(kw, match):
    a, b = random_pair(N=10, V=6, M=2)
    with pytest.raises(IdentirepError, match=match):
        per_token_reference(a, b, **kw)


# ------------------------------------------------------------------ the benchmark's row
def test_bench_rows_of_the_per_token_pass():
    from identirep.bench import bench_token_pass
    rows = bench_token_pass(40, 300, 8, repeats=1, k=3)
    names = [r["variant"] for r in rows]
    assert names == ["engine pass (+moments), topk=0", "engine pass (+moments), topk=3",
                     "KL + L pass, topk=0", "KL + L pass, topk=3", "JSD second pass"]
    assert all(r["seconds"] > 0 and r["ratio"] > 0 for r in rows)
    assert "over topk=0 (same rounds)" in rows[1]["notes"]
