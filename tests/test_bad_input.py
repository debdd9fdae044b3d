"""Bad input gets a clear IdentirepError, never a crash or a silent NaN."""
import sys

import numpy as np
import pytest

import identirep as ir
from identirep import IdentirepError

from helpers import random_pair


def model(N=50, V=10, M=3, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return ir.Model(rng.standard_normal((N, M)), rng.standard_normal((V, M)), **kw)


@pytest.mark.parametrize("f,g,msg", [
    (np.ones(5), np.ones((4, 2)), "2-d array"),
    (np.ones((5, 2)), np.ones(4), "2-d array"),
    (np.ones((5, 2), int), np.ones((4, 2)), "dtype int64"),
    (np.zeros((0, 2)), np.ones((4, 2)), "empty"),
    (np.ones((5, 2)), np.ones((4, 3)), "same space"),
    (np.array([[1.0, np.nan]] * 5), np.ones((4, 2)), "NaN or Inf"),
    (np.ones((5, 2)), np.array([[np.inf, 1.0]] * 4), "NaN or Inf"),
    (np.ones((5, 2)), np.ones((1, 2)), "at least 2 labels"),
    ("abc", np.ones((4, 2)), "must be an array"),
])
def test_model_validation(f, g, msg):
    with pytest.raises(IdentirepError, match=msg):
        ir.Model(f, g)


def test_bias_validation():
    with pytest.raises(IdentirepError, match="bias has 3 entries but g has 10 labels"):
        model(bias=np.zeros(3))
    with pytest.raises(IdentirepError, match="label names given"):
        model(labels=["a", "b"])


def test_mismatched_pairs():
    with pytest.raises(IdentirepError, match="different inputs: N=50 vs N=40"):
        ir.kl(model(), model(N=40))
    with pytest.raises(IdentirepError, match="different label sets: V=10 vs V=12"):
        ir.d_llv(model(), model(V=12))
    names = [str(i) for i in range(10)]
    with pytest.raises(IdentirepError, match="label order differs at index 0"):
        ir.kl(model(labels=names), model(labels=names[::-1]))
    assert ir.d_rep(model(), model(M=4)).num_sets > 0    # A is M1 x M2: unequal dims work
    with pytest.raises(IdentirepError, match="d_SVD needs models of equal representation dimension"):
        ir.d_svd(model(), model(M=4))
    with pytest.raises(IdentirepError, match="identirep.Model"):
        ir.kl(np.ones((3, 3)), model())


def test_too_few_inputs_or_labels():
    with pytest.raises(IdentirepError, match="N >= M \\+ 2"):
        ir.d_llv(model(N=5, M=4), model(N=5, M=4))
    with pytest.raises(IdentirepError, match="at least 3 labels"):
        ir.d_llv(model(V=2), model(V=2))


def test_all_equal_labels():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((40, 2))
    g = np.tile([[1.0, 2.0]], (6, 1))
    with pytest.raises(IdentirepError, match="every label pair is degenerate"):
        ir.d_llv(ir.Model(f, g), ir.Model(f * 2, g))
    with pytest.raises(IdentirepError, match="every label pair is degenerate"):
        ir.d_llv(ir.Model(f, g), ir.Model(f * 2, g), backend="reference")


def test_constant_features():
    a, b = random_pair(N=60, V=9, M=3)
    f = a.numpy()[0]
    f[:, 1] = 4.0
    # a constant column lowers the rank: mCCA is taken on the column space, and says so
    for be in ("cpu", "reference"):
        r = ir.compare(ir.Model(f, a.g), b, num_samples=5, backend=be)
        assert not r.failures and r.mcca_f.rank1 == 2 and r.mcca_f.n_components == 2
        assert ir.mcca(f, b.f, backend=be).rank1 == 2
        with pytest.raises(IdentirepError, match="no column that varies"):
            ir.mcca(np.ones((60, 3)), b.f, backend=be)
    same = ir.Model(np.ones((60, 3)), a.g)
    for be in ("cpu", "reference"):
        with pytest.raises(IdentirepError, match="constant across inputs"):
            ir.d_llv(same, same, backend=be)


def test_bad_options():
    a, b = random_pair(N=60, V=9, M=2)
    for kw, msg in (({"combine": "min"}, "combine"), ({"term": "median"}, "term"),
                    ({"lam": -1.0}, "lam"), ({"pivot": 9}, "pivot"), ({"leave_out": -1}, "leave_out"),
                    ({"pivot": 2, "leave_out": 2}, "different"),
                    ({"input_set": [1, 2]}, "input_set must be 3"),
                    ({"input_set": [1, 1, 2]}, "distinct"), ({"num_samples": 0}, "num_samples"),
                    ({"paper_compat": True, "num_samples": 50}, "lower num_samples"),
                    ({"backend": "tpu"}, "unknown backend")):
        with pytest.raises(IdentirepError, match=msg):
            ir.d_llv(a, b, **kw)
    with pytest.raises(IdentirepError, match="n_components"):
        ir.mcca(a.f, b.f, n_components=5)
    with pytest.raises(IdentirepError, match="same samples"):
        ir.mcca(a.f, b.f[:10])
    with pytest.raises(IdentirepError, match="sets must be"):
        ir.d_rep(a, b, sets=[[0, 1]])


def test_gpu_backend_fails_loudly_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as on a machine without CuPy
    a, b = random_pair(N=60, V=9, M=2)
    with pytest.raises(IdentirepError, match="backend='cuda' is not available"):
        ir.kl(a, b, backend="cuda")


def test_no_silent_nan_on_extreme_logits():
    a, b = random_pair(N=80, V=15, M=3, scale=1e4, seed=3)
    r = ir.compare(a, b, num_samples=10)
    for v in (r.kl.kl12, r.kl.kl21, r.d_llv.value, r.d_logit.value, r.mcca_f.value):
        assert np.isfinite(v)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("pivot,leave_out,msg", [
    (-1, 2, "pivot must be a label index"), (10, 2, "pivot must be a label index"),
    (1, 10, "leave_out must be a label index"), (1.0, 2, "pivot must be a label index"),
    (3, 3, "must differ"),
])
def test_d_svd_rejects_bad_pivot_and_leave_out(backend, pivot, leave_out, msg):
    a, b = model(seed=1), model(seed=2)
    with pytest.raises(IdentirepError, match=msg):
        ir.d_svd(a, b, pivot=pivot, leave_out=leave_out, input_set=[0, 1, 2, 3], backend=backend)


def test_masked_labels_are_refused_with_the_fix_or_dropped():
    rng = np.random.default_rng(4)
    f, g, b = rng.standard_normal((30, 3)), rng.standard_normal((8, 3)), rng.standard_normal(8)
    b[[2, 5]] = -np.inf
    with pytest.raises(IdentirepError) as e:
        ir.Model(f, g, b)
    msg = str(e.value)
    for part in ("bias is -inf for 2 label(s) (ids [2, 5])", "masked or padded",
                 "drop_masked_labels=True", "--drop-masked-labels"):
        assert part in msg
    names = list("abcdefgh")
    m = ir.Model(f, g, b, labels=names, drop_masked_labels=True)
    keep = [0, 1, 3, 4, 6, 7]
    assert m.V == 6 and m.dropped_labels.tolist() == [2, 5]
    assert np.array_equal(m.g, g[keep]) and np.array_equal(m.bias, b[keep])
    assert m.labels == [names[i] for i in keep]
    assert m.metadata["masked_labels_dropped"]["ids"] == [2, 5]
    # a compared model's masked labels go too, with or without a bias here
    assert ir.Model(f, g, b, drop_masked_labels=[7]).dropped_labels.tolist() == [2, 5, 7]
    assert ir.Model(f, g, drop_masked_labels=[7]).V == 7
    assert ir.Model(f, g, drop_masked_labels=True).dropped_labels.size == 0
    for bad in (np.nan, np.inf):       # not a mask: still refused
        b2 = np.zeros(8)
        b2[3] = bad
        with pytest.raises(IdentirepError, match="bias contains NaN or Inf"):
            ir.Model(f, g, b2, drop_masked_labels=True)
    with pytest.raises(IdentirepError, match="label ids in \\[0, 8\\)"):
        ir.Model(f, g, b, drop_masked_labels=[8])
    with pytest.raises(IdentirepError, match="leaves 1 of the V=8 labels"):
        ir.Model(f, g, np.r_[[0.0], np.full(7, -np.inf)], drop_masked_labels=True)


def test_models_that_dropped_different_labels_are_refused():
    """Label id y names another label in each model once they dropped different labels (ids
    after the first dropped one shift), whatever their tokenizer facts say; the same drop
    is compared."""
    rng = np.random.default_rng(5)
    f, g = rng.standard_normal((30, 3)), rng.standard_normal((10, 3))
    a = ir.Model(f, g, drop_masked_labels=[3])
    b = ir.Model(f + 0.1, g, drop_masked_labels=[7])
    with pytest.raises(IdentirepError, match=r"dropped different labels \(ids \[3\] vs \[7\]\)"):
        ir.compare(a, b, num_samples=10)
    with pytest.raises(IdentirepError, match="dropped different labels"):
        ir.kl(a, b)
    same = ir.Model(f + 0.1, g, drop_masked_labels=[3])
    assert ir.kl(a, same).kl12 >= 0


def test_logits_too_small_to_resolve_are_refused():
    from identirep import constructions as C
    from identirep.model import MIN_LOGIT_SPREAD
    FLOAT32_MIN_LOGIT_SPREAD = MIN_LOGIT_SPREAD["float32"]
    a = C.random_model(N=300, V=30, M=8, seed=0)
    b = C.perturbed_copy(a, 0.3, seed=1)

    def pair(s, dt):
        return (ir.Model((a.f * s).astype(dt), a.g.astype(dt)),
                ir.Model((b.f * s).astype(dt), b.g.astype(dt)))
    # at f x 1e-8 the float32 pass's normalisers swamp the logits (d_LLV 0.85 against 0.33)
    for s in (1e-8, 1e-4):
        with pytest.raises(IdentirepError, match="that float32 resolves") as e:
            ir.d_llv(*pair(s, np.float32), num_samples=20)
        # the cast is offered only where float64 resolves them (logit bound 2.7e-3, not 2.7e-7)
        assert ("cast f and g to float64" in e.value.fix) == (s == 1e-4)
    ir.d_llv(*pair(1e-4, np.float64), num_samples=20)          # float64 resolves these
    # just above the floor (logit bound 2.7e-2) float32 agrees with float64 within 1e-5
    s = 1e-3
    A, _ = pair(s, np.float32)
    spread = float(np.abs(A.f).max() * np.abs(A.g).max() * A.M)
    assert FLOAT32_MIN_LOGIT_SPREAD < spread < 3 * FLOAT32_MIN_LOGIT_SPREAD
    got = ir.d_llv(*pair(s, np.float32), num_samples=20).value
    want = ir.d_llv(*pair(s, np.float64), num_samples=20).value
    assert abs(got / want - 1) < 1e-5
    # float64: at f x 1e-20 the engine gave 866 where the reference found every pair degenerate
    with pytest.raises(IdentirepError, match="below the 1e-06 that float64 resolves") as e:
        ir.d_llv(*pair(1e-20, np.float64), num_samples=20)
    assert "cast" not in e.value.fix
    # just above its floor the engine and the reference agree to 1e-8
    A, B = pair(1e-5, np.float64)
    assert MIN_LOGIT_SPREAD["float64"] < float(np.abs(A.f).max() * np.abs(A.g).max() * A.M)
    got, want = (ir.d_llv(A, B, num_samples=20, backend=be).value for be in ("cpu", "reference"))
    assert abs(got / want - 1) < 1e-8
