"""stream_pass against the brute-force float64 computation on the full N x V logits."""
from __future__ import annotations

import numpy as np
import pytest

from identirep import IdentirepError
from identirep._cpu_pass import stream_pass
from helpers import assert_pass_close, logits64, pair_reference, stream_reference

N, V, M1, M2 = 301, 1037, 37, 29


def make_pair(seed=0, n=N, v=V, m1=M1, m2=M2, dtype=np.float64, g_scale=0.5):
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((n, m1))
    g1 = rng.standard_normal((v, m1)) * g_scale
    f2 = rng.standard_normal((n, m2))
    if m2 <= m1:  # related models: model 2 is a noisy copy of part of model 1
        f2 = f1[:, :m2] + 0.3 * f2
    g2 = g1[:, :m2] + 0.3 * g_scale * rng.standard_normal((v, m2))
    return tuple(a.astype(dtype) for a in (f1, g1, f2, g2))


def logit_scale(f1, g1, f2, g2):
    """Per-row magnitude of the logits (the size of the terms KL and H are differences of)."""
    return np.maximum(np.abs(logits64(f1, g1)).max(axis=1), np.abs(logits64(f2, g2)).max(axis=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tiles", [(None, None), (7, 13), (64, 1037), (301, 100), (1, 1)])
def test_matches_reference(dtype, tiles):
    f1, g1, f2, g2 = make_pair()
    got = stream_pass(f1, g1, f2, g2, tile_rows=tiles[0], tile_cols=tiles[1], dtype=dtype)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), dtype, logit_scale(f1, g1, f2, g2))


def test_float64_inputs_compute_in_float64_by_default():
    f1, g1, f2, g2 = make_pair(seed=1)
    got = stream_pass(f1, g1, f2, g2)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), np.float64, logit_scale(f1, g1, f2, g2))


def test_float32_inputs():
    f1, g1, f2, g2 = make_pair(seed=2, dtype=np.float32)
    got = stream_pass(f1, g1, f2, g2, tile_rows=50, tile_cols=300)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), np.float32, logit_scale(f1, g1, f2, g2))


def test_float16_inputs():
    f1, g1, f2, g2 = make_pair(seed=3, dtype=np.float16)
    got = stream_pass(f1, g1, f2, g2, tile_rows=64, tile_cols=256)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), np.float32, logit_scale(f1, g1, f2, g2))


def test_bfloat16_inputs(bfloat16):
    f1, g1, f2, g2 = make_pair(seed=4, dtype=np.float32)
    f1, g1, f2, g2 = (a.astype(bfloat16) for a in (f1, g1, f2, g2))
    got = stream_pass(f1, g1, f2, g2, tile_rows=64, tile_cols=256)
    expected = stream_reference(*(a.astype(np.float64) for a in (f1, g1, f2, g2)))
    assert_pass_close(got, expected, np.float32, logit_scale(f1, g1, f2, g2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fortran_ordered_and_strided_inputs(dtype):
    f1, g1, f2, g2 = make_pair(seed=5)
    rng = np.random.default_rng(5)
    big_g2 = rng.standard_normal((2 * V, 3 * M2))
    big_g2[::2, ::3] = g2
    big_f1 = rng.standard_normal((N + 5, 2 * M1))
    big_f1[5:, ::2] = f1
    args = (np.asfortranarray(big_f1[5:, ::2]), np.asfortranarray(g1), f2.T.copy().T,
            big_g2[::2, ::3])
    assert args[1].flags.f_contiguous and not args[3].flags.c_contiguous
    got = stream_pass(*args, tile_rows=32, tile_cols=97, dtype=dtype)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), dtype, logit_scale(f1, g1, f2, g2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_of_magnitude_1e4(dtype):
    f1, g1, f2, g2 = make_pair(seed=6)
    g1 = g1 * (1e4 / np.abs(logits64(f1, g1)).max())
    g2 = g2 * (1e4 / np.abs(logits64(f2, g2)).max())
    got = stream_pass(f1, g1, f2, g2, tile_rows=40, tile_cols=128, dtype=dtype)
    for k in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        assert np.isfinite(got[k]).all(), k
    assert np.abs(got["L1"]).max() > 1e3
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), dtype, logit_scale(f1, g1, f2, g2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_with_gaps_of_1000(dtype):
    # Column 0 puts the labels on three levels 1000 apart (differently per model) for half of
    # the inputs: exp() of everything off the top level underflows to 0.
    f1, g1, f2, g2 = make_pair(seed=7)
    y = np.arange(V)
    f1[::2, 0] = 1.0
    f2[::2, 0] = 1.0
    g1[:, 0] = -1000.0 * (y % 3)
    g2[:, 0] = -1000.0 * ((y + 1) % 3)
    got = stream_pass(f1, g1, f2, g2, tile_rows=16, tile_cols=50, dtype=dtype)
    expected = stream_reference(f1, g1, f2, g2)
    assert expected["kl12"][::2].min() > 500  # the construction does separate the models
    assert_pass_close(got, expected, dtype, logit_scale(f1, g1, f2, g2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_identical_models_have_zero_kl(dtype):
    f1, g1, _, _ = make_pair(seed=8)
    got = stream_pass(f1, g1, f1, g1, tile_rows=33, tile_cols=200, dtype=dtype)
    np.testing.assert_array_equal(got["kl12"], 0.0)
    np.testing.assert_array_equal(got["kl21"], 0.0)
    np.testing.assert_array_equal(got["L1"], got["L2"])
    np.testing.assert_array_equal(got["H1"], got["H2"])
    assert got["top1_agree"].all()


def test_tiles_shrink_to_fit_the_workspace():
    f1, g1, f2, g2 = make_pair(seed=9)
    # Room for two 8 x 8 float64 tiles and the converted label tiles, no more.
    budget = 8 * (2 * 8 * 8 + 8 * (M1 + M2))
    got = stream_pass(f1, g1, f2, g2, tile_rows=1000, tile_cols=1000, workspace_bytes=budget)
    assert_pass_close(got, stream_reference(f1, g1, f2, g2), np.float64, logit_scale(f1, g1, f2, g2))
    with pytest.raises(IdentirepError, match="workspace_bytes"):
        stream_pass(f1, g1, f2, g2, workspace_bytes=16)


def test_progress_reaches_one():
    f1, g1, f2, g2 = make_pair(seed=10, n=50, v=70)
    seen = []
    stream_pass(f1, g1, f2, g2, tile_rows=20, tile_cols=30, progress=seen.append)
    assert len(seen) == 3 * 3
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_results_do_not_depend_on_tiling():
    f1, g1, f2, g2 = make_pair(seed=11, dtype=np.float32)
    a = stream_pass(f1, g1, f2, g2, tile_rows=301, tile_cols=1037)
    b = stream_pass(f1, g1, f2, g2, tile_rows=17, tile_cols=61)
    for k in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_epilogue_threads_do_not_change_results(threads):
    f1, g1, f2, g2 = make_pair(seed=16, n=500, v=700, dtype=np.float32)
    a = stream_pass(f1, g1, f2, g2, tile_cols=300, epilogue_threads=1)
    b = stream_pass(f1, g1, f2, g2, tile_cols=300, epilogue_threads=threads)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(IdentirepError, match="epilogue_threads"):
        stream_pass(f1, g1, f2, g2, epilogue_threads=-1)


def test_kl_is_nonnegative_and_entropy_bounded():
    f1, g1, f2, g2 = make_pair(seed=12, g_scale=0.1)
    got = stream_pass(f1, g1, f2, g2)
    assert (got["kl12"] >= -1e-12).all() and (got["kl21"] >= -1e-12).all()
    assert (got["H1"] <= np.log(V) + 1e-12).all() and (got["H1"] >= 0).all()


def test_pair_reference_agrees_with_definition():
    # The oracle itself: KL(p1||p2) = sum_y p1 (l1 - l2) - L1 + L2.
    rng = np.random.default_rng(13)
    l1, l2 = rng.standard_normal((2, 5, 40))
    ref = pair_reference(l1, l2)
    p1 = np.exp(l1 - ref["L1"][:, None])
    np.testing.assert_allclose(ref["kl12"], (p1 * (l1 - l2)).sum(1) - ref["L1"] + ref["L2"],
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad, match", [
    (lambda a: dict(f1=a["f1"][:, :5]), "dimensions"),
    (lambda a: dict(f2=a["f2"][:10]), "shared input"),
    (lambda a: dict(g2=a["g2"][:10]), "shared label"),
    (lambda a: dict(f1=a["f1"].astype(np.int64)), "dtype"),
    (lambda a: dict(g1=a["g1"][0]), "2-d"),
    (lambda a: dict(f1=list(a["f1"])), "NumPy array"),
])
def test_rejects_bad_input(bad, match):
    f1, g1, f2, g2 = make_pair(seed=14, n=20, v=30)
    kw = dict(f1=f1, g1=g1, f2=f2, g2=g2)
    kw.update(bad(kw))
    with pytest.raises(IdentirepError, match=match):
        stream_pass(**kw)


def test_nonfinite_input_gives_nan_rows_and_bad_dtype_is_rejected():
    f1, g1, f2, g2 = make_pair(seed=15, n=20, v=30)
    f1[3, 2] = np.nan
    got = stream_pass(f1, g1, f2, g2)
    assert np.isnan(got["L1"][3]) and np.isnan(got["kl12"][3])
    assert np.isfinite(np.delete(got["kl12"], 3)).all()
    with pytest.raises(IdentirepError, match="float32 or float64"):
        stream_pass(f2, g2, f2, g2, dtype=np.float16)
