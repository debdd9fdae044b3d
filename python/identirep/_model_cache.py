"""Statistics of one model alone (``ModelCache``: moments of f and of g, their whitenings,
the input-side factor), computed once and shared by every pair the model is part of, and the
pair moments built from them (only the pair's cross blocks are new products)."""
from __future__ import annotations

import math

import numpy as np

from ._arrays import array_module, is_gpu_array
from ._linalg import (correlation_factor, host_native, scatter_blocks, sqrt_factor,
                      sqrt_factor_from, times_lower, whiten)
from ._rules import MCCA_RANK_RTOL
from .errors import IdentirepError
from .model import Model, to_numpy
from .moments import Moments


class ModelCache:
    """Statistics of one model alone, computed once and shared by every pair it is part of
    (``matrix``): moments of f and of g, their whitenings and the input-side factor.
    ``cdt`` is the compute dtype of the BLAS products (the pair pass's).

    ``F`` holds the rows of f the engine reads one by one (the input side, d_SVD's input
    set): every input here; ``from_statistics`` makes a cache of some rows (``rows``, their
    input indices) and f's moments over all ``n_inputs`` inputs."""

    def __init__(self, model: Model, cdt=np.float64):
        self.model, self.cdt = model, np.dtype(cdt).type
        self.n_inputs, self.rows, self.f_max_abs = model.N, None, None
        # f and g stay where they live, in their float32/float64 storage (half types widened to
        # float32; no V x M float64 copies); rows that enter small dense algebra are converted
        # when taken
        # f_bits, g_bits: a device f's and g's bfloat16 bits (None for other kinds), for
        # tensor-core products at float32 accuracy (scatter_blocks, LabelSide.cross)
        self.f_bits = self.g_bits = None
        if is_gpu_array(model.f):
            from .gpu.arrays import as_device
            f, g = as_device(model.f, "f"), as_device(model.g, "g")
            self.F, self.G = _device_native(f), _device_native(g)
            self.f_bits, self.g_bits = (x.data if x.kind == "bfloat16" else None for x in (f, g))
        else:
            self.F, self.G = host_native(model.f), host_native(model.g)
        self.xp = array_module(self.F)
        self.bias = None if model.bias is None else to_numpy(model.bias, np.float64)
        self._cache = {}

    @classmethod
    def from_statistics(cls, model: Model, n_inputs: int, rows, mean, scatter, f_max_abs,
                        cdt=np.float64) -> "ModelCache":
        """The cache of a model known by its statistics: ``model.f`` holds only the rows
        ``rows`` (sorted input indices, distinct inputs) of f, ``mean`` and ``scatter`` are
        f's moments over all ``n_inputs`` inputs and ``f_max_abs`` its largest magnitude."""
        c = cls(model, cdt)
        c.n_inputs, c.rows, c.f_max_abs = int(n_inputs), np.asarray(rows, np.int64), f_max_abs
        c._cache["f"] = (np.asarray(mean, np.float64), np.asarray(scatter, np.float64))
        return c

    def local(self, idx) -> np.ndarray:
        """Rows of ``F`` of the inputs ``idx`` (input indices; the same indices when F holds
        every input)."""
        idx = np.asarray(idx, np.int64)
        if self.rows is None:
            return idx
        pos = np.minimum(np.searchsorted(self.rows, idx), max(len(self.rows) - 1, 0))
        missing = idx[self.rows[pos] != idx] if len(self.rows) else idx
        if missing.size:
            raise IdentirepError(
                f"input {int(missing.flat[0])} is not among the {len(self.rows)} input rows "
                f"kept of the {self.n_inputs} inputs", fix="choose inputs among the kept rows, "
                "or keep every distinct input (a larger reservoir)")
        return pos

    def f_constant(self) -> bool:
        """Whether f does not vary across inputs (``_pair.constant_features``'s rule), from
        the moments of a cache made ``from_statistics``."""
        mean, S = self.f_moments
        sd = np.sqrt(np.maximum(np.diag(S), 0.0) / self.n_inputs)
        return float(sd.max()) <= 1e-12 * float(self.f_max_abs)

    def input_projection(self, rng, dim: int):
        """M x ``dim`` T with g T coordinates whose squared distances approximate the label
        side's S(y, y0) (``LabelSide.label_coords``): Fc' P for Gaussian P (N x dim) / sqrt(dim)
        over every input (also from statistics that kept every input's row), or, from
        statistics of some rows, R P with R R' = f's scatter and P Gaussian (M x dim) /
        sqrt(dim): the same distribution, another draw."""
        xp = self.xp
        if self.rows is None or len(self.rows) == self.n_inputs:
            # every input's row (from statistics: every input kept, in input order), so the
            # same P and product as for the model itself; the mean as f_moments takes it
            P = xp.asarray(rng.standard_normal((self.n_inputs, dim)) / math.sqrt(dim),
                           dtype=self.cdt)
            mean_f = xp.asarray(self.f_moments[0] if self.rows is None else
                                to_numpy(self.F.mean(0, dtype=np.float64)), dtype=self.cdt)
            return self.F.T.astype(self.cdt, copy=False) @ P - mean_f[:, None] * P.sum(0)[None, :]
        R = self.scatter_factor("f")
        if R is None:
            R = sqrt_factor(self.f_moments[1], xp)
        P = rng.standard_normal((R.shape[1], dim)) / math.sqrt(dim)
        return xp.asarray(R @ P, dtype=self.cdt)

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def release(self, key: str) -> None:
        """Forget the statistic ``key`` (made again when next asked for)."""
        self._cache.pop(key, None)

    def small_statistics(self) -> dict:
        """Every statistic of O(M^2) size that takes O(M^3) work or more (moments of f and g,
        their correlation factors, whitenings, an input-side root that is not a scaled
        Cholesky factor), computed now where it can be: for another process's cache of the
        same model (``adopt``), which then makes only O(M^2) products of them and the N x M
        input factor. One that fails is left out: the pair that needs it raises, with its own
        names for the models, as it would here."""
        steps = [lambda: self.f_moments, lambda: self.g_moments]
        for w in ("f", "g"):
            steps += [lambda w=w: self.correlation(w, w), lambda w=w: self.whitening(w, w)]
        # the input-side root: kept only where it is an eigen square root (O(M^3)); the
        # Cholesky case is found safe here and its O(M^2) product made again where used
        steps.append(lambda: self.input_root)
        for step in steps:
            try:
                step()
            except (IdentirepError, ArithmeticError, np.linalg.LinAlgError):
                pass
        return {k: v for k, v in self._cache.items() if k != "H"}

    def adopt(self, statistics: dict) -> None:
        """Take the statistics another cache of the same model at the same compute dtype
        computed (``small_statistics``) instead of computing them again."""
        for k, v in statistics.items():
            self._cache.setdefault(k, v)

    @property
    def f_moments(self):
        """(mean, scatter) of f over inputs."""
        return self._get("f", lambda: _single_moments(self.F, self.cdt, self.f_bits))

    @property
    def g_moments(self):
        """(mean, scatter) of g over labels."""
        return self._get("g", lambda: _single_moments(self.G, self.cdt, self.g_bits))

    @property
    def rank_rtol(self) -> float:
        """mCCA's rank rule at this compute dtype (``_rules.MCCA_RANK_RTOL``)."""
        return MCCA_RANK_RTOL["float64" if self.cdt == np.float64 else "float32"]

    def correlation(self, which: str, what: str) -> dict:
        """``_linalg.correlation_factor`` of f's or g's scatter: the Cholesky factor of the
        correlation matrix, shared by the whitening and (g) the input-side factor."""
        mean, S = self.f_moments if which == "f" else self.g_moments
        n = self.n_inputs if which == "f" else len(self.G)
        return self._get("R" + which, lambda: correlation_factor(S, what, self.xp, n, mean))

    def scatter_factor(self, which: str):
        """Lower-triangular R with R R' = f's or g's scatter (float64, where the model lives),
        the correlation Cholesky factor scaled by the standard deviations; None when a column
        is constant or the Cholesky factorisation failed. A new array on each call (O(M^2)
        work), not kept: one M x M array less per model and side."""
        try:
            parts = self.correlation(which, which)
        except IdentirepError:
            return None
        if parts["L"] is None or len(parts["idx"]) != len(parts["d"]):
            return None
        return self.xp.asarray(np.sqrt(parts["d"]))[:, None] * parts["L"]

    def whitening(self, which: str, what: str):
        S = (self.f_moments if which == "f" else self.g_moments)[1]
        return self._get("W" + which, lambda: whiten(S, what, self.xp, self.rank_rtol,
                                                     parts=self.correlation(which, what)))

    @property
    def input_root(self):
        """(R, lower): R R' = the label covariance of g (M x M; ``lower``: R is
        lower-triangular), the root of ``input_factor``. Kept only when it is not the scaled
        Cholesky factor of g's correlation (an O(M^2) product, made again when needed)."""
        if "HR" in self._cache:
            return self._cache["HR"]
        S = self.g_moments[1]
        c = 1.0 / (self.model.V - 1)
        try:
            parts = self.correlation("g", "g")
        except IdentirepError:   # g constant: the plain factor (zeros), as before
            parts = {"L": None, "idx": (), "d": np.diag(S)}
        R, lower = sqrt_factor_from(parts, S, c, self.xp)
        if not lower:     # an eigen square root: O(M^3), kept
            self._cache["HR"] = (R, lower)
        return R, lower

    @property
    def input_factor(self):
        """(H, |H|^2 per row), H = f R with R R' the label covariance of g: squared distances
        between rows of H are the input-side D(x, x0) (docs/design.md)."""
        def make():
            R, lower = self.input_root
            H = times_lower(self.F, R) if lower else self.F @ R
            return H, (H * H).sum(1)
        return self._get("H", make)


def _device_native(x):
    """A DeviceArray as a CuPy float32/float64 array (half types widened to float32)."""
    return x.data if x.kind in ("float32", "float64") else x.widened(np.float32)


def _single_moments(X, cdt, bits=None):
    _, (mean,), S = scatter_blocks([X], dtype=cdt, bits=[bits])
    return mean, S[0, 0]


def pair_moments(c1: ModelCache, c2: ModelCache, extra=(), which: str = "f") -> Moments:
    """Moments of [x1, x2, *extra] (x = f or g) from the models' cached own blocks and the
    pair's cross blocks (the only products computed here)."""
    X1, X2 = (c1.F, c2.F) if which == "f" else (c1.G, c2.G)
    bits = [c1.f_bits, c2.f_bits] if which == "f" else [c1.g_bits, c2.g_bits]
    own1, own2 = (c1.f_moments, c2.f_moments) if which == "f" else (c1.g_moments, c2.g_moments)
    k = 2 + len(extra)
    pairs = [(p, q) for p in range(k) for q in range(p, k) if (p, q) not in ((0, 0), (1, 1))]
    extra = [np.asarray(e, np.float64).reshape(len(e), -1) for e in extra]
    means = [own1[0], own2[0]] + [e.mean(0) for e in extra]
    extra = [c1.xp.asarray(e) for e in extra]     # next to f: the products run where f lives
    n, means, S = scatter_blocks([X1, X2, *extra], pairs, c1.cdt, means=means,
                                 bits=bits + [None] * len(extra))
    S[0, 0], S[1, 1] = own1[1], own2[1]
    return Moments.from_parts(n, means, S)


def label_cross(c1: ModelCache, c2: ModelCache):
    """The cross scatter block of g1 and g2 over labels (M1 x M2, float64): the block
    ``pair_moments(c1, c2, which="g")`` would hold, without assembling the (M1 + M2)^2 matrix
    whose diagonal blocks the caches already hold."""
    own1, own2 = c1.g_moments, c2.g_moments
    _, _, S = scatter_blocks([c1.G, c2.G], [(0, 1)], c1.cdt, means=[own1[0], own2[0]],
                             bits=[c1.g_bits, c2.g_bits])
    return S[0, 1]


def permuted_moments(m: Moments, order) -> Moments:
    """The moments of the same variables in the order ``order``."""
    return Moments(m.n, m.mean[order], m.scatter[np.ix_(order, order)])
