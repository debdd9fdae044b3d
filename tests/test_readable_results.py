"""Numbers that mean what they say: mCCA on rank-deficient data, reports that carry every
measure that could be computed (and why not the others), what each result is, results as
numbers, and human output that stays short."""
import json
import math

import numpy as np
import pytest

import identirep as ir
from identirep.errors import IdentirepError

from helpers import random_pair

BACKENDS = ("cpu", "reference")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mcca_of_data_with_a_duplicated_column_is_on_its_column_space(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    X[:, 4] = X[:, 1]
    r = ir.mcca(X, X, backend=backend)
    assert (r.rank1, r.rank2, r.n_components) == (4, 4, 4)
    assert r.value == pytest.approx(1.0, abs=1e-12)
    # a linearly dependent column, and a linear map of the data: still its column space
    Y = X.copy()
    Y[:, 4] = X[:, 0] - 2 * X[:, 3]
    r = ir.mcca(Y @ rng.standard_normal((5, 5)), X, backend=backend)
    assert (r.rank1, r.rank2) == (4, 4) and r.value == pytest.approx(1.0, abs=1e-10)
    # n_components beyond the ranks: the mean stays over the meaningful components
    assert ir.mcca(X, X, n_components=5, backend=backend).n_components == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_mcca_counts_the_correlations_that_the_sample_count_forces_to_one(backend):
    rng = np.random.default_rng(2)
    # 4 samples of unrelated 2-d data: centred, they span 3 dimensions, so two 2-d column
    # spaces share at least one direction whatever the data
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    r = ir.mcca(x, y, backend=backend)
    assert r.trivially_one == 1 and r.correlations[0] == pytest.approx(1.0, abs=1e-12)
    assert ir.mcca(rng.standard_normal((5, 2)), rng.standard_normal((5, 2)),
                   backend=backend).trivially_one == 0
    assert ir.mcca(x, y, n_components=1, backend=backend).trivially_one == 1


def test_compare_says_when_mcca_of_g_is_one_by_the_label_count():
    # a 4-class classifier with 2-d representations, as in the width experiment: mCCA of g
    # over 4 labels has one correlation of 1 whatever the models
    rng = np.random.default_rng(3)
    a = ir.Model(rng.standard_normal((300, 2)), rng.standard_normal((4, 2)))
    b = ir.Model(rng.standard_normal((300, 2)), rng.standard_normal((4, 2)))
    for be in ("cpu", "reference"):
        r = ir.compare(a, b, backend=be)
        assert (r.mcca_g.trivially_one, r.mcca_f.trivially_one) == (1, 0), be
    from identirep.report import report_rows
    detail = {name: text for name, _, text in report_rows(r)}
    assert "1 of them 1 by the sample count alone (4 samples" in detail["mCCA g"]
    assert "sample count" not in detail["mCCA f"]
    assert json.loads(json.dumps(r.to_dict()))["mcca_g"]["trivially_one"] == 1


def test_mcca_rank_rule_follows_the_stated_tolerance():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 4))
    for rel, rank in ((1e-4, 4), (1e-8, 3)):   # variance ratio rel^2 against rtol 1e-12
        Z = X.copy()
        Z[:, 3] = X[:, 0] + rel * X[:, 3]
        for be in BACKENDS:
            r = ir.mcca(Z, X, backend=be)
            assert r.rank1 == rank and r.rank_rtol == 1e-12, (rel, be, r)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_constant_column_is_constant_at_any_offset_in_engine_and_reference(dtype):
    # rows of g all equal: its centred columns are rounding (~1e-16 of the values) in
    # float64, which must not count as variation (the engine once gave mcca_g 0.53)
    a, b = random_pair(N=40, V=30, M=4, seed=3)
    const = ir.Model(b.f.astype(dtype), np.tile(b.g[:1] + 3.7, (30, 1)).astype(dtype))
    A = ir.Model(a.f.astype(dtype), a.g.astype(dtype))
    for be in BACKENDS:
        r = ir.compare(A, const, num_samples=5, backend=be)
        assert r.mcca_g is None and "no column that varies" in r.failures["mcca_g"].reason
    with pytest.raises(IdentirepError, match="g2 has no column that varies"):
        ir.engine(A, const).mcca_g()
    # one constant column among varying ones is left out of the rank, as by the reference
    X = np.random.default_rng(4).standard_normal((50, 4)).astype(dtype)
    X[:, 2] = dtype(1e8 / 3)
    for be in BACKENDS:
        assert ir.mcca(X, X, backend=be).rank1 == 3
    # a column shifted far from zero keeps its variation (mCCA is affine invariant), next
    # to a column of small spread
    rng = np.random.default_rng(5)
    x = np.c_[rng.standard_normal(300), 1e-4 * rng.standard_normal(300)]
    y = x @ rng.standard_normal((2, 2)) + rng.standard_normal((300, 2))
    shifted = x + np.array([1e9, 0.0])
    for be in BACKENDS:
        want = ir.mcca(x, y, backend=be)
        got = ir.mcca(shifted, y, backend=be)
        assert got.rank1 == want.rank1 == 2
        assert got.value == pytest.approx(want.value, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_failing_measure_does_not_sink_compare(backend):
    a, b = random_pair(N=200, V=40, M=4, seed=2)
    g = a.g.copy()
    g[:, 3] = g[:, 2]                         # a duplicated g column: d_rep has no set
    r = ir.compare(ir.Model(a.f, g, name="dup"), b, num_samples=20, backend=backend)
    assert r.d_rep is None and set(r.failures) == {"d_rep"}
    assert "singular" in r.failures["d_rep"].reason and "row space" in r.failures["d_rep"].fix
    for m in (r.kl, r.d_llv, r.d_logit, r.mcca_f, r.mcca_g, r.d_svd):
        assert m is not None and math.isfinite(float(m))
    assert r.mcca_g.rank1 == 3
    d = json.loads(json.dumps(r.to_dict()))
    assert d["d_rep"] is None and d["failures"]["d_rep"]["fix"]
    from identirep.report import report_rows
    rows = {row[0]: row for row in report_rows(r)}
    assert rows["d_rep"][1] == "not computed" and "fix:" in rows["d_rep"][2]


def test_each_failure_says_its_own_fix():
    a, b = random_pair(N=5, V=6, M=6, seed=3)
    r = ir.compare(a, b, num_samples=2)
    f = r.failures
    assert set(f) == {"d_llv", "d_svd", "d_rep"}
    assert "N >= M + 2" in f["d_llv"].reason and "at least 8 distinct inputs" in f["d_llv"].fix
    assert "d_LLV could not be computed" in f["d_svd"].reason
    assert "V=6" in f["d_rep"].reason and "V >= M1 + 1" in f["d_rep"].fix
    with pytest.raises(IdentirepError, match="; fix: evaluate the models on at least 8"):
        ir.d_llv(a, b)


def test_unequal_dimensions_give_every_measure_but_d_svd():
    a, b = random_pair(N=200, V=40, M=3, M2=5, seed=3)
    r = ir.compare(a, b, num_samples=20)
    assert set(r.failures) == {"d_svd"} and "M1=3, M2=5" in r.failures["d_svd"].reason
    assert r.d_rep is not None and r.mcca_f.n_components == 3


def test_each_result_says_what_it_is_and_is_a_number():
    a, b = random_pair(N=150, V=30, M=3, seed=4)
    r = ir.compare(a, b, num_samples=20)
    kinds = {"kl": "distance", "d_llv": "distance", "d_logit": "distance",
             "mcca_f": "similarity", "mcca_g": "similarity", "d_svd": "distance",
             "d_rep": "distance"}
    d = r.to_dict()
    for name, kind in kinds.items():
        res = getattr(r, name)
        assert res.meaning.kind == kind and d[name]["meaning"]["kind"] == kind
        assert d[name]["meaning"]["invariance"] and isinstance(d[name]["meaning"]["metric"], bool)
        assert float(res) == d[name]["value"] == res.value
        assert (res < float(res) + 1) and (res >= float(res)) and not (res > float(res))
    assert "grows with V" in r.d_logit.meaning.scale
    assert float(ir.kl(a, b)) == ir.kl(a, b).kl12


def test_human_output_is_short_and_json_complete():
    a, b = random_pair(N=150, V=300, M=4, seed=5)
    r = ir.compare(a, b, num_samples=20)
    assert len(repr(r.d_rep)) < 1000 and len(repr(r)) < 4000
    assert len(r.to_dict()["d_rep"]["sets"]) == r.d_rep.num_sets
    from identirep.sampling import label_sets
    _, how = label_sets(np.arange(32000), 257, 2, 0)
    assert len(how) < 40 and "e6" in how, how


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_rep_options_are_refused(bad):
    a, b = random_pair(N=60, V=20, M=3)
    with pytest.raises(IdentirepError):
        ir.compare(a, b, num_samples=5, rep_sets=0)
    with pytest.raises(IdentirepError):
        ir.d_rep(a, b, max_cond=bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_logits_and_zero_pivots_have_their_own_messages(backend, recwarn):
    a, b = random_pair(N=80, V=20, M=3, seed=6)
    big = ir.Model(a.f * 1e200, a.g)
    for fn in (ir.compare, ir.kl, ir.d_llv, ir.d_logit, ir.d_rep):
        with pytest.raises(IdentirepError, match=r"logits reach about .*e\+200.*rescale"):
            fn(big, b, backend=backend)
    f32 = ir.Model((a.f * 1e16).astype(np.float32), a.g.astype(np.float32))
    with pytest.raises(IdentirepError, match="float32"):
        ir.kl(f32, b, backend=backend)
    for fn in (ir.compare, ir.d_llv):
        with pytest.raises(IdentirepError, match="num_pivots must be an integer >= 1"):
            fn(a, b, num_pivots=0, backend=backend)
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("opts", [dict(seed=-1), dict(seed=1.5), dict(num_samples=2.5),
                                  dict(num_samples=None), dict(num_samples=10**7),
                                  dict(sets_per_pivot=0), dict(pivot_budget=0)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_counts_and_seeds_are_refused_before_any_work(opts, backend):
    a, b = random_pair(N=60, V=20, M=3)
    with pytest.raises(IdentirepError, match="must be an integer|at most"):
        ir.compare(a, b, backend=backend, **opts)
    if backend == "cpu":
        with pytest.raises(IdentirepError, match="must be an integer|at most"):
            ir.matrix([a, b], **opts)
    if "seed" in opts:
        for fn in (ir.d_rep, ir.d_svd, ir.d_llv):
            with pytest.raises(IdentirepError, match="seed must be an integer >= 0"):
                fn(a, b, backend=backend, **opts)


def test_float32_engine_mcca_rank_rule_keeps_real_directions_and_drops_dependent_ones():
    # full-rank g whose smallest correlation eigenvalue is ~7e-6 of the largest: every
    # direction is real, as the float64 reference says; float32 sums leave ~1e-7 on a
    # dependent column, which the float32 rule (1e-6) drops
    a, b = random_pair(N=900, V=700, M=300, seed=7, noise=0.3)
    A, B = (ir.Model(m.f.astype(np.float32), m.g.astype(np.float32)) for m in (a, b))
    e = ir.engine(A, B)
    got, want = e.mcca_g(), ir.mcca(A.g, B.g, backend="reference")
    assert (got.rank1, got.rank2) == (want.rank1, want.rank2) == (300, 300)
    assert got.rank_rtol == 1e-6 and abs(got.value - want.value) <= 1e-5 * want.value
    f = a.f.copy()
    f[:, 299], f[:, 298] = f[:, 0], 2 * f[:, 1] - f[:, 2]
    e = ir.engine(ir.Model(f.astype(np.float32), A.g), B)
    assert e.mcca_f().rank1 == 298
