"""K x K matrices reuse one pass per pair and agree with pairwise comparisons."""
import numpy as np
import pytest

import identirep as ir
from identirep import constructions as C

from conftest import assert_close


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
