"""d_rep: the follow-up paper's estimator, its condition-number rule, its spread, and what it
must show: equivalent < noisy copy < unrelated, stably across seeds and input precisions."""
import numpy as np
import pytest

import identirep as ir
from identirep.baselines import followup_d_rep
from identirep.errors import IdentirepError

from helpers import assert_close, random_pair


def _family(N=800, V=200, M=6, seed=0):
    """(base, an equivalent copy, a noisy copy, an unrelated model)."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((N, M))
    g = rng.standard_normal((V, M)) * 2 / np.sqrt(M)
    B = rng.standard_normal((M, M)) + 2 * np.eye(M)
    Bi = np.linalg.inv(B).T
    noisy_f = f @ B + 0.1 * rng.standard_normal((N, M))
    noisy_g = g @ Bi + 0.1 * 2 / np.sqrt(M) * rng.standard_normal((V, M)) @ Bi
    return (ir.Model(f, g, name="base"), ir.Model(f @ B, g @ Bi, name="equivalent"),
            ir.Model(noisy_f, noisy_g, name="noisy"),
            ir.Model(rng.standard_normal((N, M)), rng.standard_normal((V, M)) * 2 / np.sqrt(M),
                     name="unrelated"))


@pytest.mark.parametrize("M2", [4, 6])
def test_followup_number_equals_a_port_of_the_followup_code(M2):
    a, b = random_pair(N=200, V=40, M=4, M2=M2, seed=3)
    for P, C, seed in ((7, 15, 0), (3, 4, 5)):
        got = ir.d_rep(a, b, num_pivots=P, sets_per_pivot=C, seed=seed)
        want = followup_d_rep(a.f, b.f, a.g, b.g, P, C, seed)
        assert got.num_sets == P * C and got.singular_sets == 0
        assert_close(got.followup, want, what="followup")


def test_d_rep_orders_equivalent_noisy_unrelated_for_every_seed():
    base, eq, noisy, unrel = _family()
    scale = float((base.f ** 2).sum(1).mean())
    for seed in range(4):
        v = [ir.d_rep(base, m, seed=seed).value for m in (eq, noisy, unrel)]
        assert 0.0 <= v[0] <= 1e-10 * scale, v
        assert v[0] < v[1] < v[2] / 3, (seed, v)


def test_d_rep_is_stable_across_seeds_and_input_precisions():
    base, _, noisy, unrel = _family()
    for other in (noisy, unrel):
        by_seed = [ir.d_rep(base, other, seed=s).value for s in range(5)]
        assert max(by_seed) / min(by_seed) < 1.5, by_seed
        ref = ir.d_rep(base, other, seed=0).value
        for dt in (np.float32, np.float16):
            lo = [ir.Model(m.f.astype(dt), m.g.astype(dt), name=m.name) for m in (base, other)]
            assert abs(ir.d_rep(*lo, seed=0).value / ref - 1) < 0.05, dt


def test_without_the_rule_near_duplicate_labels_rule_the_mean():
    """Two labels with near-duplicate unembeddings make the sets holding both ill-conditioned
    (cond ~ 1/eps): the rule leaves them out and says how many; without it they rule."""
    base, _, noisy, _ = _family()
    clean = ir.d_rep(base, noisy).value
    for eps in (1e-6, 1e-9):
        g1, g2 = base.g.copy(), noisy.g.copy()
        g1[1], g2[1] = g1[0] + eps, g2[0] + eps * 1.5
        a, b = ir.Model(base.f, g1), ir.Model(noisy.f, g2)
        r = ir.d_rep(a, b)
        both = np.array([{0, 1} <= set(s) for s in r.sets])
        assert both.any()
        assert not (both & np.isfinite(r.per_set) & (r.cond_per_set <= r.cond_threshold)).any()
        assert r.excluded_sets + r.singular_sets >= both.sum()
        assert r.value < 2 * clean
        unruled = ir.d_rep(a, b, max_cond=None)
        assert unruled.value > 1e3 * clean


def test_spread_and_counts_are_reported():
    a, b = random_pair(N=300, V=60, M=4, seed=1)
    r = ir.d_rep(a, b, num_pivots=10, sets_per_pivot=10)
    q = r.quantiles
    assert r.min <= q["q05"] <= q["q25"] <= q["q50"] == r.median <= q["q75"] <= q["q95"] <= r.max
    assert r.used_sets + r.excluded_sets + r.singular_sets == r.num_sets == 100
    used = r.per_set[r.cond_per_set <= r.cond_threshold]
    assert_close(r.value, used.mean())
    assert r.cond_threshold == pytest.approx(np.median(r.cond_per_set))
    strict = ir.d_rep(a, b, num_pivots=10, sets_per_pivot=10, max_cond=r.cond_threshold / 2)
    assert strict.used_sets < r.used_sets


@pytest.mark.parametrize("M2", [3, 5])
def test_engine_matches_reference_with_unequal_dims_biases_and_unsquared(M2):
    a, b = random_pair(N=150, V=30, M=4, M2=M2, seed=2, bias=True)
    got = ir.d_rep(a, b, num_pivots=6, sets_per_pivot=4, unsquared=True)
    want = ir.d_rep(a, b, num_pivots=6, sets_per_pivot=4, unsquared=True, backend="reference")
    for k in ("value", "followup", "unsquared", "median"):
        assert_close(getattr(got, k), getattr(want, k), what=k)
    assert got.unsquared ** 2 <= got.value * (1 + 1e-12)   # Jensen, per set and in the mean


@pytest.mark.parametrize("bad", [0.5, "max", -1.0, True])
def test_bad_max_cond_is_refused(bad):
    a, b = random_pair(N=60, V=20, M=3)
    with pytest.raises(IdentirepError, match="max_cond"):
        ir.d_rep(a, b, max_cond=bad)
