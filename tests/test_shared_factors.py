"""The factorizations the engine shares between measures: the correlation Cholesky factor
(whitening, input-side factor, the pivot search's lower bounds), the triangular inverse and
product, the full-rank certificate of the whitening, LAPACK on one thread."""
import importlib

import numpy as np
import pytest

import identirep as ir
from identirep import _linalg as la

from helpers import random_pair

E = importlib.import_module("identirep._label_side")


def _scatter(X):
    Xc = X - X.mean(0)
    return Xc.T @ Xc


def _eigh_rank(S, rtol):
    d = np.diag(S)
    idx = np.flatnonzero(d > 1e-24 * d.max())
    s = 1 / np.sqrt(d[idx])
    w = np.linalg.eigvalsh(S[np.ix_(idx, idx)] * s[:, None] * s[None, :])
    return int((w > rtol * w.max()).sum())


@pytest.mark.parametrize("rtol", [1e-12, 1e-5])
def test_whitening_keeps_the_eigen_rank_rule(rtol):
    rng = np.random.default_rng(0)
    cases = []
    for n, m in ((400, 30), (70, 60), (61, 60)):        # well and badly conditioned
        cases.append(rng.standard_normal((n, m)))
    X = rng.standard_normal((300, 20))
    cases.append(np.hstack([X, X[:, :3] @ rng.standard_normal((3, 4))]))  # dependent columns
    Y = rng.standard_normal((300, 12))
    Y[:, 5] = 1.0                                                         # a constant column
    cases.append(Y)
    Z = rng.standard_normal((300, 10))
    Z[:, 9] = Z[:, 8] + 1e-4 * rng.standard_normal(300)   # an eigenvalue near the threshold
    cases.append(Z)
    for X in cases:
        S = _scatter(X)
        W = la.whiten(S, "x", rtol=rtol)
        assert W.shape == (S.shape[0], _eigh_rank(S, rtol))
        np.testing.assert_allclose(W.T @ S @ W, np.eye(W.shape[1]), atol=1e-6)


def test_whitening_reuses_the_shared_factor(monkeypatch):
    S = _scatter(np.random.default_rng(1).standard_normal((200, 15)))
    parts = la.correlation_factor(S, "x")
    keys = set(parts)
    calls = []
    cholesky = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda A: calls.append(A) or cholesky(A))
    W = la.whiten(S, "x", parts=parts)
    assert not calls                          # the given factor, not a new one
    assert set(parts) == keys                 # nothing M x M is added to the shared parts
    np.testing.assert_array_equal(la.whiten(S, "x", parts=parts), W)
    np.testing.assert_allclose(W, la.whiten(S, "x"), rtol=1e-12, atol=0)


def test_lower_inverse_by_halves(monkeypatch):
    monkeypatch.setattr(la, "TRI_INV_BLOCK", 3)
    rng = np.random.default_rng(2)
    for n in (1, 4, 7, 16, 33):
        L = np.tril(rng.standard_normal((n, n))) + 3 * np.eye(n)
        Li = la.lower_inverse(L)
        np.testing.assert_allclose(Li, np.linalg.inv(L), rtol=1e-10, atol=1e-13)
        assert not np.triu(Li, 1).any()
    with pytest.raises(np.linalg.LinAlgError):
        la.lower_inverse(np.tril(np.ones((9, 9))) - np.eye(9))


def test_sqrt_factor_from_the_correlation_factor():
    rng = np.random.default_rng(3)
    S = _scatter(rng.standard_normal((200, 12)))
    parts = la.correlation_factor(S, "g")
    c = 1 / 199
    R, lower = la.sqrt_factor_from(parts, S, c)
    assert lower
    np.testing.assert_allclose(R, la.sqrt_factor(c * S), rtol=1e-10, atol=1e-14)
    X = rng.standard_normal((200, 6))
    X[:, 2] = 0.0                           # constant column: the eigen square root, as before
    S = _scatter(X)
    R, lower = la.sqrt_factor_from(la.correlation_factor(S, "g"), S, c)
    np.testing.assert_allclose(R @ R.T, c * S, atol=1e-12)


def test_times_lower_skips_the_zero_blocks(monkeypatch):
    monkeypatch.setattr(la, "TRI_BLOCK", 2)
    rng = np.random.default_rng(4)
    for m in (3, 5, 9):
        A, R = rng.standard_normal((7, m)), np.tril(rng.standard_normal((m, m)))
        np.testing.assert_allclose(la.times_lower(A, R), A @ R, rtol=1e-12, atol=1e-12)
        got = la.times_lower(A.astype(np.float32), R)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, A.astype(np.float32) @ R, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_factored_lower_bounds_keep_the_search_exact(monkeypatch, dtype):
    monkeypatch.setattr(E, "EXACT_PIVOT_LIMIT", 50)
    monkeypatch.setattr(E, "BOUND_LEAF", 64)
    monkeypatch.setattr(E, "BOUND_SEED_PIVOTS", 8)
    monkeypatch.setattr(la, "TRI_BLOCK", 2)     # the blocked triangular product at M = 9
    monkeypatch.setattr(E, "FACTORED_BOUNDS_MIN_M", 1)   # the factored bounds at M = 9
    for seed, noise, dup in ((0, 0.5, False), (1, 1e-6, False), (2, 0.1, True)):
        a, b = random_pair(N=300, V=500, M=9, seed=seed, noise=noise, bias=seed == 1)
        g1, g2 = a.g.astype(dtype), b.g.astype(dtype)
        if dup:
            g1[:20], g2[:20] = g1[20:40], g2[20:40]
        e = ir.engine(ir.Model(a.f.astype(dtype), g1, bias=a.bias),
                      ir.Model(b.f.astype(dtype), g2, bias=b.bias))
        assert e.labels.factors() is not None
        rng = np.random.default_rng(seed)
        hard = rng.choice(a.V, 25, replace=False)
        lb = e.labels.lower_bounds(hard, rng)
        crit = e.labels.criteria(np.arange(a.V), "max")
        assert (lb <= crit * (1 + 1e-12)).all() and (lb > 0).mean() > 0.9
        # the factored products are the plain ones up to rounding
        leaf = np.sort(rng.choice(a.V, 40, replace=False))
        lab = np.concatenate([leaf, np.setdiff1d(hard, leaf)])
        np.testing.assert_allclose(e.labels.leaf_bounds(leaf, hard), e.labels.row_bounds(leaf, lab),
                                   rtol=1e-3 if dtype == np.float32 else 1e-9, atol=1e-6)
        got, want = e.label_side("max"), e.label_side("max", num_pivots=a.V)
        assert "bounded search" in got[4]
        e.labels._factors = None       # below FACTORED_BOUNDS_MIN_M: the compiled row bounds
        monkeypatch.setattr(E, "FACTORED_BOUNDS_MIN_M", 10)
        assert e.labels.factors() is None
        monkeypatch.setattr(E, "FACTORED_BOUNDS_MIN_M", 1)
        assert got[:4] == want[:4] and got[5] == want[5]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_d_svd_with_and_without_the_label_sides_factors(monkeypatch, dtype):
    """d_SVD per set (not batched) reads diag(L C_kk L') through the label side's factors
    where it keeps them, else through the models' scatter factors or C_kk itself: the same
    values as the float64 reference each way, with a constant f column (no factor) too."""
    P = importlib.import_module("identirep._pair")
    monkeypatch.setattr(P, "SVD_BATCH_MAX_M", 1)
    monkeypatch.setattr(la, "TRI_BLOCK", 2)
    a, b = random_pair(N=300, V=60, M=9, seed=5, noise=0.3)
    f1 = a.f.copy()
    f1[:, 4] = 0.5
    for fa in (a.f, f1):
        A, B = (ir.Model(f.astype(dtype), m.g.astype(dtype)) for f, m in ((fa, a), (b.f, b)))
        want = ir.d_svd(A, B, num_samples=20, max_sets=6, backend="reference")
        for min_m in (1, 100):      # the label side's factors, then none kept there
            monkeypatch.setattr(E, "FACTORED_BOUNDS_MIN_M", min_m)
            e = ir.engine(A, B)
            kept = e.labels.factors() is not None
            assert kept == (min_m == 1 and fa is a.f)
            made = []
            for c in (e.c1, e.c2):      # the f factors d_SVD makes itself (none when kept)
                monkeypatch.setattr(c, "scatter_factor", lambda w, c=c, f=c.scatter_factor:
                                    made.append(w) or f(w))
            got = e.d_svd(want.pivot, want.leave_out, want.input_set, max_sets=6)
            assert made.count("f") == (0 if kept else 2)
            assert np.isfinite(got.d_svd_f_per_set).all() and np.isfinite(got.d_svd_g)
            tol = 1e-4 if dtype == np.float32 else 1e-9
            np.testing.assert_allclose(got.d_svd_f_per_set, want.d_svd_f_per_set, rtol=tol,
                                       atol=tol)
            np.testing.assert_allclose(got.d_svd_g, want.d_svd_g, rtol=tol, atol=tol)


def test_serial_lapack_limits_blas_to_one_thread_and_restores_it():
    from threadpoolctl import threadpool_info

    def blas():
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    before = blas()
    with la.serial_lapack():
        assert set(blas()) == {1}
        with la.serial_lapack():           # nested (and concurrent) blocks share one limit
            assert set(blas()) == {1}
        assert set(blas()) == {1}
    assert blas() == before


def test_quad_diag_from_the_factor_and_parallel_singular_values(monkeypatch):
    rng = np.random.default_rng(6)
    S = _scatter(rng.standard_normal((300, 12)))
    R = np.linalg.cholesky(S)
    L = rng.standard_normal((12, 12))
    np.testing.assert_allclose(la.quad_diag(L, S, R), la.quad_diag(L, S), rtol=1e-10)
    monkeypatch.setattr(la, "PARALLEL_SVD_MIN", 4)      # the threaded path at small sizes
    Ts = [rng.standard_normal((n, n)) for n in (5, 9, 70)] + [None]
    for precise in (True, False):
        got = la.mean_singular_values(Ts, precise)
        assert got[-1] is None
        want = [np.linalg.svd(T, compute_uv=False).mean() for T in Ts[:-1]]
        np.testing.assert_allclose(got[:-1], want, rtol=1e-7)


@pytest.mark.parametrize("n", [1, 7, 2 * la.TRI_BLOCK + 3])
def test_is_upper_finds_any_entry_below_the_diagonal(monkeypatch, n):
    monkeypatch.setattr(la, "TRI_BLOCK", 4)       # several row blocks at every size
    rng = np.random.default_rng(n)
    W = np.triu(rng.standard_normal((n, n)))
    assert la.is_upper(W) and la.is_upper(np.asfortranarray(W))
    for i, j in {(n - 1, 0), (n - 1, n - 2), (1, 0), (n // 2, n // 2 - 1)}:
        if 0 <= j < i < n:
            V = W.copy()
            V[i, j] = 1e-300 if (i + j) % 2 else np.nan
            assert not la.is_upper(V), (i, j)
    assert not la.is_upper(np.ones((n, n + 1))) and not la.is_upper(list(W))
