"""The fast engine against the float64 reference: every measure, every option."""
import numpy as np
import pytest

import identirep as ir

from helpers import assert_close, random_pair

LLV_FIELDS = ("value", "t1", "t2", "t3", "t4")


def check_llv(a, b, **kw):
    got = ir.d_llv(a, b, **kw)
    want = ir.d_llv(a, b, backend="reference", **kw)
    assert (got.pivot, got.leave_out, got.input_set) == (want.pivot, want.leave_out, want.input_set)
    for k in LLV_FIELDS:
        assert_close(getattr(got, k), getattr(want, k), what=k)
    assert got.degenerate_labels == want.degenerate_labels
    assert got.rejected_input_sets == want.rejected_input_sets
    return got


@pytest.mark.parametrize("kw", [
    {},
    {"term": "mean"},
    {"combine": "sum", "lam": 0.3},
    {"pivot": 4},
    {"leave_out": 2},
    {"pivot": 1, "leave_out": 9},
    {"num_pivots": 7, "seed": 3},
    {"sets_per_pivot": 5, "num_samples": 8},
    {"input_set": [3, 10, 200, 150, 7, 9]},
])
def test_d_llv_matches_reference(kw):
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=11)
    check_llv(a, b, num_samples=kw.pop("num_samples", 40), **kw)


def test_d_llv_paper_compat_quirk():
    a, b = random_pair(N=400, V=20, M=3, seed=12, noise=3.0)
    got = check_llv(a, b, num_samples=50, paper_compat=True)
    assert got.input_search.startswith("min over 50 paper-compat")


def test_d_llv_unequal_dimensions():
    a, b = random_pair(N=211, V=31, M=3, M2=6, seed=13)
    got = check_llv(a, b, num_samples=20)
    assert len(got.input_set) == 7


def test_degenerate_labels_are_excluded_and_listed():
    a, b = random_pair(N=250, V=40, M=4, seed=14)
    g1, g2 = a.numpy()[1], b.numpy()[1]
    for g in (g1, g2):
        g[7] = g[3]           # duplicate label
    g1[30] = 0.0
    g1[31] = 0.0              # two padding rows (zero unembeddings)
    g2[30] = 0.0
    g2[31] = 0.0
    a2, b2 = ir.Model(a.f, g1), ir.Model(b.f, g2)
    for kw in ({}, {"pivot": 3}, {"pivot": 30}, {"term": "mean"}):
        got = check_llv(a2, b2, num_samples=20, **kw)
        assert np.isfinite(got.value)
    got = ir.d_llv(a2, b2, pivot=3, num_samples=20)
    assert got.degenerate_labels == [7] and got.degenerate_pairs == 1
    got = ir.d_llv(a2, b2, pivot=30, num_samples=20)
    assert got.degenerate_labels == [31]


def test_duplicate_inputs_are_drawn_once_and_given_duplicates_are_rejected():
    a, b = random_pair(N=60, V=25, M=2, seed=15)
    f1, f2 = a.numpy()[0], b.numpy()[0]
    f1[1::2] = f1[0::2]
    f2[1::2] = f2[0::2]       # every input appears twice (as repeated LM contexts do)
    a2, b2 = ir.Model(f1, a.g), ir.Model(f2, b.g)
    got = check_llv(a2, b2, num_samples=10, sets_per_pivot=4)
    assert got.rejected_input_sets == 0
    assert "from 30 distinct inputs" in got.input_search
    assert all(i % 2 == 0 for i in got.input_set)          # first occurrences only
    for be in ("cpu", "reference"):                        # a given set with a duplicate pair
        with pytest.raises(ir.IdentirepError, match="coincide"):
            ir.d_llv(a2, b2, input_set=[0, 1, 4], backend=be)
    # the paper's draw ignores duplicates and rejects the sets that contain one
    got = check_llv(a2, b2, num_samples=20, paper_compat=True, seed=1)   # 3 sets hold a pair
    assert got.rejected_input_sets > 0


def test_kl_logit_mcca_rep_svd_match_reference():
    a, b = random_pair(N=157, V=23, M=3, bias=True, seed=16)
    for fn, fields in ((ir.kl, ("kl12", "kl21", "top1_agreement", "entropy1", "entropy2")),
                       (ir.d_logit, ("value", "value_sq")),
                       (ir.d_rep, ("value", "median", "min", "max", "followup"))):
        got, want = fn(a, b), fn(a, b, backend="reference")
        for k in fields:
            assert_close(getattr(got, k), getattr(want, k), atol=1e-14, what=f"{fn.__name__}.{k}")
    got = ir.d_svd(a, b, num_samples=30, max_sets=2000)
    want = ir.d_svd(a, b, num_samples=30, max_sets=2000, backend="reference")
    assert_close(got.d_svd_f_per_set, want.d_svd_f_per_set)
    assert_close(got.d_svd_g, want.d_svd_g)
    assert got.label_set_search == want.label_set_search == "all 1330"
    for x, y in ((a.f, b.f), (a.g, b.g)):
        assert_close(ir.mcca(x, y).correlations, ir.mcca(x, y, backend="reference").correlations,
                     atol=1e-12)


def test_d_svd_samples_label_sets_when_there_are_too_many():
    a, b = random_pair(N=157, V=40, M=4, seed=17)
    got = ir.d_svd(a, b, max_sets=25, num_samples=10)
    want = ir.d_svd(a, b, max_sets=25, num_samples=10, backend="reference")
    assert got.label_set_search == want.label_set_search == "sampled 25 of 73815"
    assert_close(got.d_svd_f_per_set, want.d_svd_f_per_set)


def test_compare_report_matches_reference_and_serialises():
    import json
    a, b = random_pair(N=157, V=23, M=3, bias=True, seed=18)
    got = ir.compare(a, b, num_samples=30)
    want = ir.compare(a, b, num_samples=30, backend="reference")
    dg, dw = got.to_dict(), want.to_dict()
    json.dumps(dg)
    for sec in ("kl", "d_llv", "d_logit", "mcca_f", "mcca_g", "d_svd", "d_rep"):
        for k, v in dw[sec].items():
            if isinstance(v, dict) and all(isinstance(x, float) for x in v.values()):
                assert dg[sec][k].keys() == v.keys(), (sec, k)
                assert_close([dg[sec][k][q] for q in v], list(v.values()), atol=1e-13,
                             what=f"{sec}.{k}")
            elif isinstance(v, float) or (isinstance(v, list) and v and isinstance(v[0], float)):
                assert_close(dg[sec][k], v, atol=1e-13, what=f"{sec}.{k}")
            else:
                assert dg[sec][k] == v, (sec, k)


def test_mcca_is_exact_canonical_correlation():
    rng = np.random.default_rng(19)
    z = rng.standard_normal((500, 2))
    x = np.hstack([z, rng.standard_normal((500, 2))])
    y = np.hstack([z @ [[2.0, 1], [0, 1]], rng.standard_normal((500, 1))])
    r = ir.mcca(x, y)
    assert r.n_components == 3
    assert_close(r.correlations[:2], [1.0, 1.0])
    assert r.correlations[2] < 0.2


def test_bias_model_equals_its_augmented_equivalent():
    a, b = random_pair(N=180, V=31, M=4, bias=True, seed=27)
    f, g = a.augmented()
    plain = ir.Model(f, g)                      # [f, 1] and [g, b]: the same distributions
    for other in (b, ir.Model(*b.augmented())):
        # (compare would refuse the augmented f: its constant column has no canonical correlation)
        e1, e2 = ir.engine(a, other), ir.engine(plain, other)
        k1, k2 = e1.kl(), e2.kl()
        d1, d2 = e1.d_llv(num_samples=20), e2.d_llv(num_samples=20)
        for x, y, k in ((k1, k2, "kl12"), (k1, k2, "kl21"), (d1, d2, "t1"), (d1, d2, "t3"),
                        (e1.d_logit(), e2.d_logit(), "value")):
            assert_close(getattr(x, k), getattr(y, k), atol=1e-12, what=k)
        assert (d1.pivot, d1.leave_out) == (d2.pivot, d2.leave_out)
