"""The vectorised draw of candidate input sets, and the input-side benchmark's machinery."""
import itertools
import math

import numpy as np
import pytest
from scipy.stats import chisquare

from identirep import sampling
from identirep.bench import bench_input


@pytest.mark.parametrize("n,size,pivots,per", [(5000, 65, 20, 30),   # rejection path
                                                (40, 30, 7, 50),      # random-keys path
                                                (12, 12, 3, 4)])      # every other input
def test_pivoted_candidates_are_valid(n, size, pivots, per):
    c, how = sampling.input_candidates(n, size, pivots, seed=3, sets_per_pivot=per)
    assert c.shape == (pivots * per, size) and c.dtype == np.int64
    assert how == f"{pivots} pivots x {per}"
    assert c.min() >= 0 and c.max() < n
    srt = np.sort(c, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all()          # no repeats, so the pivot is excluded
    piv = c[:, 0].reshape(pivots, per)
    assert (piv == piv[:, :1]).all() and len(np.unique(piv[:, 0])) == pivots
    again, _ = sampling.input_candidates(n, size, pivots, seed=3, sets_per_pivot=per)
    np.testing.assert_array_equal(c, again)            # seeded


def test_pivoted_candidates_from_a_pool_stay_in_the_pool():
    pool = np.arange(0, 300, 3)
    c, how = sampling.input_candidates(300, 9, 10, seed=1, sets_per_pivot=20, pool=pool)
    assert np.isin(c, pool).all() and "from 100 distinct inputs" in how
    srt = np.sort(c, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all()


@pytest.mark.parametrize("n,k", [(9, 3), (9, 6), (7, 7)])    # rejection, keys, keys (all)
def test_distinct_rows_draws_uniform_subsets(n, k):
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    rows = 300 * len(subsets)
    r = sampling.distinct_rows(np.random.default_rng(0), rows, n, k)
    srt = np.sort(r, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all() and r.min() >= 0 and r.max() < n
    counts = np.bincount([subsets[tuple(s)] for s in srt], minlength=len(subsets))
    if len(subsets) > 1:
        assert chisquare(counts).pvalue > 1e-4
    per_value = np.bincount(r.ravel(), minlength=n)     # each value in k/n of the rows
    assert np.abs(per_value / rows - k / n).max() < 5 * math.sqrt(k / n / rows)


def test_pivoted_candidates_exclude_the_pivot_uniformly():
    n, size, per = 10, 4, 20000
    c, _ = sampling.input_candidates(n, size, 1, seed=2, sets_per_pivot=per)
    p = c[0, 0]
    freq = np.bincount(c[:, 1:].ravel(), minlength=n) / per
    assert freq[p] == 0
    others = np.delete(freq, p)
    assert np.abs(others - (size - 1) / (n - 1)).max() < 0.02


def test_bench_input_returns_well_formed_rows():
    rows = bench_input(320, 40, 3, repeats=1, num_samples=50, sets_per_pivot=10)
    assert len(rows) == 2
    for r in rows:
        assert r["benchmark"] == "input side" and r["shape"] == "N=320 V=40 M=3 f64"
        assert r["seconds"] > 0 and r["floor_seconds"] > 0 and r["ratio"] > 0
    assert "identirep evaluated 500 sets" in rows[0]["notes"]
    assert "10x the port's 50" in rows[0]["notes"]
    assert "same choice: True" in rows[1]["notes"]


def test_bench_input_needs_room_for_the_disjoint_sets():
    with pytest.raises(ValueError, match="N >= 1000"):
        bench_input(999, 40, 4, repeats=1)


def test_bench_input_skips_with_a_reason_when_memory_is_short(monkeypatch):
    import identirep.bench as bench
    monkeypatch.setattr(bench, "_available_memory", lambda: 1 << 20)
    (row,) = bench.bench_input(1024, 64, 4, repeats=1)
    assert row["variant"] == "skipped" and "GiB available" in row["notes"]
    assert "skipped" in bench.markdown({"machine": "m", "rows": [row]})
