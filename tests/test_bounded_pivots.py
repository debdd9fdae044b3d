"""The bounded (branch and bound) exact pivot search against the plain exact search and the
reference: same pivot, leave-out and terms; lower bounds below the criteria; honest budget."""
import importlib

import numpy as np
import pytest

import identirep as ir
from identirep import constructions

from helpers import assert_close, random_pair

E = importlib.import_module("identirep._label_side")


@pytest.fixture
def small_bounds(monkeypatch):
    """The bounded search on small vocabularies, with several tree leaves and few seeds."""
    monkeypatch.setattr(E, "EXACT_PIVOT_LIMIT", 50)
    monkeypatch.setattr(E, "BOUND_LEAF", 64)
    monkeypatch.setattr(E, "BOUND_SEED_PIVOTS", 8)


def _cases(dtype, V=700):
    out = []
    for seed, noise, dup, bias, m2 in ((0, 0.5, False, False, 6), (1, 0.01, False, True, 6),
                                       (2, 0.2, True, False, 4), (3, 0.05, True, True, 6)):
        a, b = random_pair(N=400, V=V, M=6, M2=m2, seed=seed, noise=noise, bias=bias)
        g1, g2 = a.g.astype(dtype), b.g.astype(dtype)
        if dup:  # coinciding labels: degenerate pairs, excluded from every max
            g1[:20], g2[:20] = g1[20:40], g2[20:40]
        out.append((ir.Model(a.f.astype(dtype), g1, bias=a.bias),
                    ir.Model(b.f.astype(dtype), g2, bias=b.bias)))
    return out


@pytest.mark.parametrize("open_limit", [None, 0, 10 ** 9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bounded_search_matches_the_plain_exact_search(small_bounds, monkeypatch, dtype,
                                                       open_limit):
    # open_limit 0: the tree's bounds after the hard labels' always; 10 ** 9: never (the
    # two stages run from HARD_BOUNDS_MIN_M on: lowered to these M)
    if open_limit is not None:
        monkeypatch.setattr(E, "FACTORED_BOUNDS_MIN_M", 2)
        monkeypatch.setattr(E, "HARD_BOUNDS_MIN_M", 2)
        monkeypatch.setattr(E.LabelSide, "open_limit", lambda self: open_limit)
    for a, b in _cases(dtype):
        e = ir.engine(a, b)
        got = e.label_side("max")
        want = e.label_side("max", num_pivots=a.V)
        assert "bounded search" in got[4] and want[4] == f"exact over {a.V} labels"
        assert got[:4] == want[:4] and got[5] == want[5]


def test_bounded_search_matches_the_reference(small_bounds):
    a, b = _cases(np.float64, V=300)[2]      # the reference fills a V x V table in Python
    got = ir.d_llv(a, b, num_samples=20)
    want = ir.d_llv(a, b, num_samples=20, backend="reference")
    assert (got.pivot, got.leave_out) == (want.pivot, want.leave_out)
    assert "bounded search" in got.pivot_search
    for k in ("value", "t1", "t3"):
        assert_close(getattr(got, k), getattr(want, k), what=k)
    assert got.degenerate_labels == want.degenerate_labels


def test_bounded_search_keeps_the_lowest_of_tied_pivots(small_bounds):
    # evenly spaced labels and a rotated copy: every pivot has the same criterion up to roundoff
    m, *_ = constructions.even_spaced_classifier(num_classes=120, inputs_per_class=8)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    m2 = ir.Model(m.f @ rot, m.g @ rot)
    e = ir.engine(m, m2)
    assert e.label_side("max")[:4] == e.label_side("max", num_pivots=m.V)[:4]


def test_lower_bounds_never_exceed_the_criteria(small_bounds):
    for a, b in _cases(np.float64):
        e = ir.engine(a, b)
        rng = np.random.default_rng(0)
        hard = rng.choice(a.V, 30, replace=False)
        lb = e.labels.lower_bounds(hard, rng)
        crit = e.labels.criteria(np.arange(a.V), "max")
        assert (lb <= crit * (1 + 1e-12)).all() and (lb > 0).mean() > 0.9


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hard_label_bounds_are_the_row_bounds_and_never_exceed_the_criteria(small_bounds, dtype):
    for a, b in _cases(dtype):
        e = ir.engine(a, b)
        hard = np.sort(np.random.default_rng(0).choice(a.V, 30, replace=False))
        lb = e.labels.hard_bounds(hard)
        crit = e.labels.criteria(np.arange(a.V), "max")
        assert (lb <= crit * (1 + 1e-12)).all() and (lb > 0).mean() > 0.9
        # the same bounds as the cross products' (g C) g' association gives, to rounding
        np.testing.assert_allclose(lb, e.labels.row_bounds(np.arange(a.V), hard),
                                   rtol=1e-4 if dtype == np.float32 else 1e-10)


def test_budget_reached_says_the_result_is_not_proven(small_bounds):
    a, b = _cases(np.float64)[0]
    e = ir.engine(a, b)
    y0, l, t1, t3, how, _ = e.label_side("max", bound_budget=E.BOUND_SEED_PIVOTS)
    assert "not proven exact" in how and "budget 8" in how
    # the best of the seed pivots, as the sampled search of the same seed would find it
    assert (y0, l, t1) == e.label_side("max", num_pivots=E.BOUND_SEED_PIVOTS)[:3]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_bounds_match_their_array_oracle(dtype):
    from identirep import _core
    a, b = _cases(dtype)[3]     # degenerate pairs and biases
    e = ir.engine(a, b)
    rng = np.random.default_rng(5)
    piv = np.sort(rng.choice(a.V, 90, replace=False))
    lab = np.union1d(rng.choice(a.V, 150, replace=False), piv[:10])   # some pivots are labels
    X1, X2 = e.labels.cross(piv, lab)
    got = _core.pivot_bounds(X1, X2, *e.labels.vectors(np), piv, lab, E.BOUND_KAPPA * e.tol,
                             e.labels.bound_eps())
    m2 = e.labels.pair_m2(piv, lab, X1, X2)
    second = np.sort(m2, axis=1)[:, -2]
    want = np.sqrt(np.where(np.isfinite(second), second, 0.0))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    assert (want > 0).mean() > 0.9
    with pytest.raises(ValueError, match="out of range"):
        _core.pivot_bounds(X1, X2, *e.labels.vectors(np), piv, lab + a.V, 1e-9, 0.0)


def test_pivot_budget_through_compare_matrix_and_the_cli(small_bounds, tmp_path, capsys):
    import json

    from identirep.cli import main
    a, b = _cases(np.float64)[0]
    r = ir.compare(a, b, num_samples=10, pivot_budget=8)
    assert "not proven exact" in r.d_llv.pivot_search
    assert "bounded search" in ir.compare(a, b, num_samples=10).d_llv.pivot_search
    m = ir.matrix([a, b], num_samples=10, pivot_budget=8)
    assert m.pairs[0]["pivot"] == r.d_llv.pivot
    with pytest.raises(ir.IdentirepError, match="pivot_budget must be an integer >= 1"):
        ir.d_llv(a, b, num_samples=10, pivot_budget=0)
    ir.save_model(a, tmp_path / "a.npz")
    ir.save_model(b, tmp_path / "b.npz")
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--num-samples",
                 "10", "--pivot-budget", "8", "--json"]) == 0
    assert "not proven exact" in json.loads(capsys.readouterr().out)["d_llv"]["pivot_search"]


def test_bounded_search_matches_the_plain_search_on_random_configurations(monkeypatch):
    # sizes, dimensions, dtypes, closeness (down to equivalent models), biases, coinciding
    # labels, Zipf-like label norms, tree leaf sizes and seed counts, all drawn at random
    monkeypatch.setattr(E, "EXACT_PIVOT_LIMIT", 100)
    rng = np.random.default_rng(123)
    for trial in range(40):
        V, M, M2 = int(rng.integers(300, 1500)), int(rng.integers(2, 16)), int(rng.integers(2, 16))
        N = int(rng.integers(max(M, M2) + 5, 400))
        dt = np.float32 if rng.integers(3) == 0 else np.float64
        monkeypatch.setattr(E, "BOUND_LEAF", int(rng.choice([32, 64, 256])))
        monkeypatch.setattr(E, "BOUND_SEED_PIVOTS", int(rng.choice([4, 16])))
        a, b = random_pair(N=N, V=V, M=M, M2=M2, seed=trial, noise=float(10 ** rng.uniform(-7, 0)),
                           bias=bool(rng.integers(2)))
        g1, g2 = a.g.copy(), b.g.copy()
        if rng.integers(2):
            k = int(rng.integers(1, 30))
            g1[:k], g2[:k] = g1[k:2 * k], g2[k:2 * k]
        if rng.integers(4) == 0:
            w = (1 + np.arange(V)) ** -rng.uniform(0.2, 1.0) * 5
            g1, g2 = g1 * w[:, None], g2 * w[:, None]
        e = ir.engine(ir.Model(a.f.astype(dt), g1.astype(dt), bias=a.bias),
                      ir.Model(b.f.astype(dt), g2.astype(dt), bias=b.bias))
        got = e.label_side("max", seed=trial, bound_budget=V)
        want = e.label_side("max", num_pivots=V)
        assert "bounded search" in got[4], trial
        assert got[:4] == want[:4] and got[5] == want[5], (trial, got[:4], want[:4])
