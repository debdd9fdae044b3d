"""Properties: invariance under invertible linear maps, symmetry, identical models."""
import numpy as np
from hypothesis import given, settings, strategies as st

import identirep as ir
from identirep import constructions as C

from helpers import random_pair


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), M=st.integers(2, 6), bias=st.booleans())
def test_linear_map_leaves_distribution_and_llv_unchanged(seed, M, bias):
    a = C.random_model(N=200, V=37, M=M, scale=2.0, seed=seed, bias=bias)
    b = C.linear_transform(a, seed=seed + 1)
    r = ir.compare(a, b, num_samples=50, seed=seed)
    assert r.kl.kl12 < 1e-9 and r.kl.kl21 < 1e-9
    assert r.d_llv.t1 < 1e-5 and r.d_llv.t2 < 1e-5, r.d_llv
    assert r.d_llv.value < 1e-5
    assert r.d_logit.value < 1e-6 * (1 + np.sqrt(r.d_logit.value_sq))
    assert r.mcca_f.value > 1 - 1e-9 and r.mcca_g.value > 1 - 1e-9
    assert r.d_svd.max_d_svd < 1e-8
    assert r.d_rep.value < 1e-12 * (1 + (a.numpy()[0] ** 2).sum(1).mean())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-5, 5))
def test_label_independent_shift_of_logits_changes_nothing(seed, shift):
    a = C.random_model(N=150, V=29, M=3, seed=seed)
    f, g, _ = a.numpy()
    # a constant added to every label's logit (per input) leaves p(y|x) unchanged
    b = ir.Model(np.hstack([f, np.full((len(f), 1), shift)]), np.hstack([g, np.ones((len(g), 1))]))
    assert ir.kl(a, b).kl12 < 1e-10
    assert ir.d_logit(a, b).value < 1e-9


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_d_llv_is_symmetric(seed):
    a, b = random_pair(N=120, V=19, M=3, seed=seed)
    ab = ir.d_llv(a, b, num_samples=30, seed=seed)
    ba = ir.d_llv(b, a, num_samples=30, seed=seed)
    assert abs(ab.value - ba.value) <= 1e-9 * ab.value
    assert (ab.pivot, ab.leave_out, ab.input_set) == (ba.pivot, ba.leave_out, ba.input_set)


def test_identical_models_have_zero_kl_and_distance():
    a, _ = random_pair(N=100, V=15, M=3, bias=True)
    b = ir.Model(a.f.copy(), a.g.copy(), bias=a.bias.copy())
    r = ir.compare(a, b, num_samples=20)
    assert r.kl.kl12 == 0.0 and r.kl.kl21 == 0.0
    assert r.d_llv.value <= 1e-7 and r.d_logit.value == 0.0
    assert r.kl.top1_agreement == 1.0
