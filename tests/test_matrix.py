"""K x K matrices reuse one pass per pair and agree with pairwise comparisons."""
import numpy as np
import pytest

import identirep as ir
from identirep import constructions as C

from helpers import assert_close


def test_matrix_matches_pairwise_compare():
    base = C.random_model(N=150, V=21, M=3, seed=0, bias=True, name="base")
    models = [base, C.perturbed_copy(base, 0.3, seed=1), C.linear_transform(base, seed=2)]
    m = ir.matrix(models, num_samples=20)
    assert m.names == ["base", models[1].name, models[2].name]
    for i in range(3):
        assert m.values["kl"][i, i] == 0 and m.values["mcca_f"][i, i] == 1
        for j in range(3):
            if i == j:
                continue
            r = ir.compare(models[i], models[j], num_samples=20)
            for key, want in (("kl", r.kl.kl12), ("d_llv", r.d_llv.value), ("d_rep", r.d_rep.value),
                              ("mcca_g", r.mcca_g.value), ("max_d_svd", r.d_svd.max_d_svd)):
                assert_close(m.values[key][i, j], want, atol=1e-12, what=f"{key}[{i},{j}]")
    assert m.values["d_llv"][0, 2] < 1e-5 < m.values["d_llv"][0, 1]
    assert not np.allclose(m.values["kl"], m.values["kl"].T)     # KL is not symmetric
    csv = m.to_csv("d_llv").splitlines()
    assert len(csv) == 4 and csv[0].split(",")[1:] == m.names


def test_matrix_needs_compatible_models():
    a = C.random_model(N=50, V=9, M=2)
    with pytest.raises(ir.IdentirepError, match="at least two"):
        ir.matrix([a])
    with pytest.raises(ir.IdentirepError, match="different inputs"):
        ir.matrix([a, C.random_model(N=40, V=9, M=2)])


def test_matrix_computes_per_model_statistics_once(monkeypatch):
    """K models: moments of f and of g once per model (2K single-model products), not per pair."""
    import importlib
    eng = importlib.import_module("identirep._model_cache")
    calls = []
    orig = eng._single_moments
    monkeypatch.setattr(eng, "_single_moments",
                        lambda X, *a: calls.append(X.shape) or orig(X, *a))
    base = C.random_model(N=120, V=15, M=3, seed=3)
    models = [base] + [C.perturbed_copy(base, 0.2 * k, seed=k) for k in (1, 2, 3)]
    m = ir.matrix(models, num_samples=10)
    assert len(calls) == 2 * len(models)
    assert np.isfinite(m.values["mcca_g"]).all() and np.isfinite(m.values["d_llv"]).all()


def test_swapped_engine_equals_the_engine_of_the_swapped_pair():
    a, b = C.random_model(N=90, V=13, M=3, seed=4, bias=True), C.random_model(N=90, V=13, M=4, seed=5)
    e = ir.engine(a, b)
    e.mcca_g()                       # label moments computed before the swap are permuted too
    s, fresh = e.swapped(), ir.engine(b, a)
    assert s.stats.dtype == fresh.stats.dtype
    for x, y in ((s.mom.scatter, fresh.mom.scatter), (s.label_moments.scatter, fresh.label_moments.scatter),
                 (s.labels.A1, fresh.labels.A1), (s.labels.B12, fresh.labels.B12)):
        assert_close(x, y, atol=1e-10)
    assert_close(s.d_llv(num_samples=10).value, fresh.d_llv(num_samples=10).value)


def test_swapped_pass_keeps_its_dtype():
    a, b = C.random_model(N=60, V=9, M=2, seed=6), C.random_model(N=60, V=9, M=2, seed=7)
    a32 = ir.Model(a.f.astype(np.float32), a.g.astype(np.float32))
    e = ir.engine(a32, b)
    assert e.stats.dtype == "float32" and e.swapped().stats.dtype == "float32"
    assert e.swapped().cdt == np.float32
