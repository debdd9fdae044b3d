"""Every closed-form identity of docs/design.md against brute force (float64)."""
import numpy as np
from scipy.special import logsumexp

import identirep as ir
from identirep import reference as ref
from identirep._linalg import sqrt_factor
from identirep._pair import PairEngine
from identirep.moments import Moments
from identirep.passes import numpy_pass

from helpers import assert_close, random_pair


def test_kl_identity_per_input():
    a, b = random_pair(N=97, V=31, M=4, bias=True, seed=1)
    l1, l2 = ref.logits(a), ref.logits(b)
    L1, L2 = logsumexp(l1, 1), logsumexp(l2, 1)
    p1 = np.exp(l1 - L1[:, None])
    brute = (p1 * ((l1 - L1[:, None]) - (l2 - L2[:, None]))).sum(1)
    identity = (p1 * (l1 - l2)).sum(1) - L1 + L2
    assert_close(identity, brute, atol=1e-13, what="KL12(x)")
    assert_close(ref.kl_reference(a, b).per_input_kl12, brute, atol=1e-13)


def test_bias_is_absorbed():
    a, _ = random_pair(N=40, V=11, M=3, bias=True, seed=2)
    f, g = a.augmented()
    plain = ir.Model(f, g)
    assert_close(ref.logits(a), ref.logits(plain), atol=1e-12)
    assert_close(ref.logits(a), a.numpy()[0] @ a.numpy()[1].T + a.numpy()[2], atol=1e-12)


def test_label_variance_is_a_pairwise_distance():
    a, b = random_pair(N=120, V=17, M=4, seed=3)
    lp, _ = ref.log_probs(a)
    f, g, _ = a.numpy()
    C = Moments.from_rows(f).scatter
    h = g @ sqrt_factor(C)
    for y0 in (0, 5):
        D = (lp - lp[:, [y0]]).var(0, ddof=1)
        assert_close(D * (len(f) - 1), ((h - h[y0]) ** 2).sum(1), atol=1e-10)
        assert_close(D * (len(f) - 1), np.einsum("ij,jk,ik->i", g - g[y0], C, g - g[y0]), atol=1e-10)


def test_rest_and_pivot_terms_are_quadratic_forms():
    a, b = random_pair(N=150, V=19, M=3, bias=True, seed=4)
    lp1, _ = ref.log_probs(a)
    lp2, _ = ref.log_probs(b)
    e = PairEngine(a, b)
    y0 = 7
    rest, piv, t3, valid, _ = (x[:, 0] for x in e.labels.block(np.array([y0])))
    D1 = (lp1 - lp1[:, [y0]]).var(0, ddof=1)
    D2 = (lp2 - lp2[:, [y0]]).var(0, ddof=1)
    m = np.arange(a.V) != y0
    D1[~m] = D2[~m] = 1.0  # the pivot against itself is excluded
    brute_rest = (lp1 / np.sqrt(D1) - lp2 / np.sqrt(D2)).std(0, ddof=1)
    brute_piv = (lp1[:, [y0]] / np.sqrt(D1) - lp2[:, [y0]] / np.sqrt(D2)).std(0, ddof=1)
    brute_t3 = np.abs(np.sqrt(D1) - np.sqrt(D2))
    assert not valid[y0] and valid[m].all()
    assert_close(rest[m], brute_rest[m], what="rest")
    assert_close(piv[m], brute_piv[m], what="piv")
    assert_close(t3[m], brute_t3[m], what="t3")


def test_input_side_terms_are_quadratic_forms_of_label_covariance():
    a, b = random_pair(N=80, V=41, M=3, bias=True, seed=5)
    lp1, _ = ref.log_probs(a)
    lp2, _ = ref.log_probs(b)
    cset = np.array([11, 3, 50, 77])
    rest, piv, t4, _ = ref._input_terms(lp1, lp2, ref.logits(a), ref.logits(b), cset, 1e-10)
    e = PairEngine(a, b)
    iset, t2, t4v, *_ = e.input_side(input_set=cset)
    assert list(iset) == cset.tolist()
    assert_close(t2, max(rest.max(), piv.max()))
    assert_close(t4v, t4.max())
    D = (lp1[cset[1:]] - lp1[cset[0]]).var(1, ddof=1)
    f, g, _ = a.numpy()
    Sg = np.cov(g.T)
    dfx = f[cset[1:]] - f[cset[0]]
    assert_close(D, np.einsum("ij,jk,ik->i", dfx, Sg, dfx))


def test_d_logit_is_a_trace_of_gram_matrices():
    a, b = random_pair(N=70, V=23, M=3, M2=4, bias=True, seed=6)
    f1, g1 = a.augmented()
    f2, g2 = b.augmented()
    k = np.hstack([g1 - g1.mean(0), g2 - g2.mean(0)])
    H = np.hstack([f1, -f2])
    gram = np.trace((k.T @ k) @ (H.T @ H)) / len(H)
    brute = ref.d_logit_reference(a, b).value_sq
    assert_close(gram, brute, what="trace identity")
    assert_close(PairEngine(a, b).d_logit().value_sq, brute, what="from the pass")


def test_d_svd_from_scatter_matches_data():
    a, b = random_pair(N=90, V=12, M=3, seed=7)
    r = ref.d_llv_reference(a, b, num_samples=10)
    want = ref.d_svd_reference(a, b, r.pivot, r.leave_out, r.input_set)
    got = PairEngine(a, b).d_svd(r.pivot, r.leave_out, r.input_set)
    assert_close(got.d_svd_f_per_set, want.d_svd_f_per_set)
    assert_close(got.d_svd_g, want.d_svd_g)


def test_moments_merge_equals_whole(rng):
    X = rng.standard_normal((101, 5)) * 3 + 7
    whole = Moments.from_rows(X)
    parts = [Moments.from_rows(X[i:j]) for i, j in ((0, 13), (13, 60), (60, 101))]
    for order in ([0, 1, 2], [2, 0, 1]):
        m = parts[order[0]].merge(parts[order[1]]).merge(parts[order[2]])
        assert m.n == whole.n
        assert_close(m.mean, whole.mean)
        assert_close(m.scatter, whole.scatter, atol=1e-11)


def test_pass_statistics_match_brute_force():
    a, b = random_pair(N=64, V=29, M=3, bias=True, seed=8)
    f1, g1 = a.augmented()
    f2, g2 = b.augmented()
    s = numpy_pass(f1, g1, f2, g2, rows=10)
    l1, l2 = f1 @ g1.T, f2 @ g2.T
    assert_close(s.L1, logsumexp(l1, 1))
    assert_close(s.col_m2_11, ((l1 - l1.mean(0)) ** 2).sum(0))
    assert_close(s.col_m2_12, ((l1 - l1.mean(0)) * (l2 - l2.mean(0))).sum(0), atol=1e-12)
    assert_close(s.row_m2_12, ((l1 - l1.mean(1, keepdims=True)) * (l2 - l2.mean(1, keepdims=True))).sum(1), atol=1e-10)
