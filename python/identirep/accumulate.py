"""Mergeable statistics of a model pair (``Accumulator``): every measure of ``compare`` from
batches of inputs, in O(V + M^2 + reservoir) memory whatever the number of inputs.

Each ``update`` runs the streaming pass on a batch against the fixed g1, g2 (and biases) and
folds what the measures read (docs/design.md, "Mergeable statistics"):
- sums over inputs of KL both ways (clipped at 0 per input), entropies, top-1 agreement and
  the label-centred squares of l1 - l2 (``passes.PassSums``);
- the input moments of every label's logits (Chan's update, ``moments.merge_stats``);
- the moments of u(x) = [f1, f2, L1, L2] (``Moments``, Chan's update);
- a reservoir of input rows for the input side: the ``reservoir`` distinct inputs of lowest
  priority, a seeded hash of the rows' content, kept in arrival order with the pass's
  per-input values. The kept set depends on neither batching nor merge order, and identical
  rows coincide, so that when it holds every distinct input, ``compute`` draws compare's
  candidate input sets.

``merge(other)`` is exact: ``other``'s inputs come after this one's.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence

import numpy as np

from . import _rules as rules
from ._arrays import is_gpu_array
from ._cpu_pass import cpu_pass
from ._label_side import EXACT_PIVOT_LIMIT
from ._linalg import host_native, scatter_blocks
from ._model_cache import ModelCache
from ._pair import PairEngine
from .errors import IdentirepError
from .measures import _report_from_engine, check_compare_options
from .model import (_FLOAT_KINDS, Model, _dtype_name, check_array, check_logit_scale,
                    check_pair, common_kind, max_abs, to_numpy)
from .moments import Moments, merge_stats
from .passes import PassStats, PassSums
from .results import Report

#: the state's format, in ``state_dict()["format"]`` and ``["version"]``
STATE_FORMAT = "identirep.Accumulator"
STATE_VERSION = 1
#: the pass's per-input values kept with each reservoir row (rows of ``res_values``)
ROW_KEYS = ("L1", "L2", "kl12", "kl21", "H1", "H2", "agree", "row_mean1", "row_mean2",
            "row_m2_11", "row_m2_22", "row_m2_dd")
SUM_KEYS = ("kl12", "kl21", "H1", "H2", "agree", "row_m2_dd")
COL_KEYS = ("col_mean1", "col_mean2", "col_m2_11", "col_m2_22", "col_m2_12")
#: rows hashed per block (bounded temporaries)
_HASH_ROWS = 512
#: rows of each g in the models' fingerprint
FINGERPRINT_ROWS = 256


class Accumulator:
    """Sufficient statistics of a model pair over batches of inputs, mergeable and resumable.

    Parameters
    ----------
    g1, g2 : array (V x M1), (V x M2)
        The models' label vectors (NumPy or torch CPU arrays), fixed for every batch.
    bias1, bias2 : array (V), optional
        The models' biases (absorbed as ``compare`` absorbs them: ``[f, 1]``, ``[g, b]``).
    reservoir : int
        Most distinct input rows kept for the input side of d_LLV (and d_SVD's input set).
    seed : int
        Seeds the reservoir's priorities (a hash of each row's content).
    dtype : optional
        The dtype of every f batch (float16, bfloat16, float32 or float64; f1's and f2's);
        default: each model's first batch's.
    labels : sequence of str, optional
        The V label names.
    names : (str, str)
        The models' names in the report.

    Notes
    -----
    ``compute(**options)`` equals ``compare`` of the concatenated inputs (same options) for
    every measure, up to rounding, when the reservoir holds every distinct input
    (``complete``). Otherwise the input side is an estimate: its candidate input sets are
    drawn from the kept rows, a seeded uniform sample of the distinct inputs, so d_LLV's t2,
    t4 and input set, and d_SVD's ``d_svd_g``, come from a sample (the report's ``notes``
    say so). KL's per-input arrays are not kept (``per_input_kl12`` is None).
    """

    def __init__(self, g1, g2, bias1=None, bias2=None, *, reservoir: int = 4096, seed: int = 0,
                 dtype=None, labels: Optional[Sequence[str]] = None,
                 names=(None, None)):
        for x, nm in ((g1, "g1"), (g2, "g2"), (bias1, "bias1"), (bias2, "bias2")):
            _check_host(x, nm)
        rules.check_count("reservoir", reservoir)
        rules.check_options(seed)
        if not isinstance(names, (tuple, list)) or len(names) != 2:
            raise IdentirepError(f"names must be a pair (name1, name2), got {names!r}")
        self.reservoir, self.seed = int(reservoir), int(seed)
        self._want = None if dtype is None else _dtype_label(dtype)
        # the models with one stand-in input: their checks (g, bias, labels, names) and the
        # logit-scale check's stand-in f (its largest magnitude set to the largest seen)
        self._models = [Model(np.zeros((1, g.shape[1] if getattr(g, "ndim", 0) == 2 else 1)),
                              g, b, name=nm, labels=labels)
                        for g, b, nm in ((g1, bias1, names[0]), (g2, bias2, names[1]))]
        check_pair(*self._models)
        a, b = self._models
        self.V, self.M1, self.M2 = a.V, a.M, b.M
        need = max(a.M, b.M) + 1
        if self.reservoir < need:
            raise IdentirepError(
                f"reservoir={reservoir} keeps fewer inputs than one input diversity set of "
                f"d_LLV needs (max(M1, M2) + 1 = {need})",
                fix=f"keep at least {need} (the default 4096; each kept input costs M1 + M2 "
                    "+ 14 numbers)")
        self._fingerprint = None
        self._g_aug = [None, None]
        self._g_cache = {}
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        V, D = self.V, self.M1 + self.M2 + 2
        self.n = 0
        self.f_dtypes = [None, None]   # the f batches' dtypes (names), fixed by the first batch
        self.pass_dtype = None         # "float32" or "float64", as compare's pass
        self.sums = dict.fromkeys(SUM_KEYS, 0.0)
        self.cols = {k: np.zeros(V) for k in COL_KEYS}
        self.moments = Moments(0, np.zeros(D), np.zeros((D, D)))
        self.f_max_abs = [0.0, 0.0]
        self.complete = True           # no distinct input was left out of the reservoir
        self.res_index = np.empty(0, np.int64)
        self.res_priority = np.empty(0, np.uint64)
        self.res_f1 = np.empty((0, self.M1))
        self.res_f2 = np.empty((0, self.M2))
        self.res_values = np.empty((len(ROW_KEYS), 0))

    def __repr__(self) -> str:
        return (f"Accumulator(n={self.n}, V={self.V}, M1={self.M1}, M2={self.M2}, "
                f"reservoir {len(self.res_index)}/{self.reservoir}"
                f"{'' if self.complete else ', sampled'})")

    @property
    def kept(self) -> int:
        """Distinct input rows in the reservoir."""
        return len(self.res_index)

    # ------------------------------------------------------------------ update
    def update(self, f1, f2, targets=None) -> "Accumulator":
        """Fold a batch of inputs: f1 (B x M1) and f2 (B x M2), one row per input, NumPy or
        torch CPU arrays of the same dtypes as every other batch.

        Parameters
        ----------
        f1, f2 : array
            The batch's representations of both models (rows: the same inputs).
        targets : None
            Per-token statistics are not accumulated; leave it out.

        Returns
        -------
        Accumulator
            ``self``.
        """
        if targets is not None:
            raise IdentirepError("the Accumulator does not keep per-token statistics "
                                 "(targets)", fix="leave targets out; compare the per-token "
                                                  "report on a sample with compare")
        for x, nm in ((f1, "f1"), (f2, "f2")):
            _check_host(x, nm)
            check_array(x, f"{nm} (a batch of embeddings)", 2)
        for x, nm, M in ((f1, "f1", self.M1), (f2, "f2", self.M2)):
            if x.shape[1] != M:
                raise IdentirepError(f"{nm} has {x.shape[1]} dimensions but g{nm[1]} has {M}")
        if f1.shape[0] != f2.shape[0]:
            raise IdentirepError(f"f1 and f2 must have one row per input of the batch: "
                                 f"{f1.shape[0]} vs {f2.shape[0]} rows")
        kinds = [_dtype_label(x) for x in (f1, f2)]
        want = [self._want or k for k in kinds] if self.n == 0 else self.f_dtypes
        for k, w, nm in zip(kinds, want, ("f1", "f2")):
            if k != w:
                raise IdentirepError(f"{nm} has dtype {k}, but the accumulator's {nm} batches "
                                     f"have dtype {w}", fix=f"convert the batch to {w}")
        raw = [to_numpy(f1), to_numpy(f2)]
        native = [host_native(x) for x in raw]
        fmax = [max(m, max_abs(x)) for m, x in zip(self.f_max_abs, native)]
        self._check_scale(fmax, large_only=True, kinds=kinds)
        if self.n == 0:
            self.f_dtypes = kinds
        augmented = [self._augment(k, x) for k, x in enumerate(raw)]
        stats = cpu_pass(augmented[0], self._g_aug[0], augmented[1], self._g_aug[1])
        self.pass_dtype = stats.dtype
        self._fold(stats, native, fmax)
        return self

    def _check_scale(self, fmax, large_only=False, kinds=None) -> None:
        """``check_logit_scale`` of the models with f's largest magnitudes ``fmax``."""
        for m, v, k in zip(self._models, fmax, kinds or self.f_dtypes):
            m.f = np.zeros((1, m.M), np.float64 if k == "float64" else np.float32)
            m.f[0, 0] = v
        check_logit_scale(*self._models, large_only=large_only)

    def _augment(self, k: int, f: np.ndarray) -> np.ndarray:
        """f (and, once, g) of model k with the bias absorbed, as ``Model.augmented(None)``."""
        m = self._models[k]
        g = to_numpy(m.g)
        if m.bias is None:
            self._g_aug[k] = g
            return f
        b = to_numpy(m.bias)
        kinds = {x.dtype.name for x in (f, g, b)}
        dt = f.dtype if len(kinds) == 1 else np.dtype(common_kind(*kinds))
        if self._g_aug[k] is None or self._g_aug[k].dtype != dt:
            self._g_aug[k] = np.hstack([g.astype(dt, copy=False), b.astype(dt)[:, None]])
        return np.hstack([f.astype(dt, copy=False), np.ones((f.shape[0], 1), dt)])

    def _fold(self, stats: PassStats, native, fmax) -> None:
        """Fold one batch's pass and rows into the state."""
        B = len(stats.kl12)
        t = PassSums.of(stats)
        for k in SUM_KEYS:
            self.sums[k] += getattr(t, k)
        self.cols = _merged_cols(self.n, self.cols, B, {k: getattr(stats, k) for k in COL_KEYS})
        cdt = np.float32 if stats.dtype == "float32" else np.float64
        n, mu, S = scatter_blocks([native[0], native[1], stats.L1[:, None], stats.L2[:, None]],
                                  dtype=cdt)
        batch = Moments.from_parts(n, mu, S)
        if self.n == 0:
            self.moments = batch
        else:
            self.moments.merge_in_place(batch)
        values = np.stack([np.asarray(getattr(stats, k), np.float64) for k in ROW_KEYS])
        pri = self._priority(native)
        self._keep(pri, np.arange(self.n, self.n + B, dtype=np.int64), native[0], native[1],
                   values)
        self.f_max_abs = fmax
        self.n += B

    # ------------------------------------------------------------------ reservoir
    def _priority(self, rows) -> np.ndarray:
        """Per input, a seeded 64-bit hash of its rows' content (both models' bits)."""
        B = rows[0].shape[0]
        h = np.zeros(B, np.uint64)
        for k, X in enumerate(rows):
            words = _words(X)
            mult = _multipliers(self.seed, k, words.shape[1])
            for i in range(0, B, _HASH_ROWS):
                h[i:i + _HASH_ROWS] += (words[i:i + _HASH_ROWS].astype(np.uint64)
                                        * mult).sum(1, dtype=np.uint64)
        return _mix64(h ^ np.uint64(_seed_word(self.seed)))

    def _keep(self, pri, idx, F1, F2, values) -> None:
        """Fold candidate rows (their priorities, input indices after every kept one, rows
        and per-input values) into the reservoir: the ``reservoir`` distinct contents of
        lowest (priority, first input index), in input order."""
        K = self.reservoir
        old = len(self.res_index)
        if old == K:   # full: only rows at or below the largest kept priority can enter
            enter = pri <= self.res_priority.max()
            if not enter.all():
                self.complete = False
            pri, idx, F1, F2, values = (pri[enter], idx[enter], F1[enter], F2[enter],
                                        values[:, enter])
        if not len(pri):
            return
        allp = np.concatenate([self.res_priority, pri])
        alli = np.concatenate([self.res_index, idx])
        order = np.lexsort((alli, allp))

        def row(j):   # the content of candidate j of the concatenation
            return ((self.res_f1[j], self.res_f2[j]) if j < old else
                    (F1[j - old], F2[j - old]))
        sp = allp[order]
        dup = np.zeros(len(order), bool)
        same = np.r_[False, sp[1:] == sp[:-1]]
        # each position's first position of equal priority (the earliest input of a hash)
        first = np.maximum.accumulate(np.where(same, 0, np.arange(len(sp))))
        for p in np.flatnonzero(same):   # equal hashes: the same content, or a collision
            mine = row(order[p])
            for q in range(first[p], p):
                if not dup[q] and all(np.array_equal(x, y) for x, y in
                                      zip(mine, row(order[q]))):
                    dup[p] = True
                    break
        order = order[~dup]
        if len(order) > K:
            self.complete = False
            order = order[:K]
        keep = np.zeros(len(allp), bool)
        keep[order] = True
        ko, kn = keep[:old], keep[old:]
        if ko.all() and not kn.any():
            return
        self.res_priority = np.concatenate([self.res_priority[ko], pri[kn]])
        self.res_index = np.concatenate([self.res_index[ko], idx[kn]])
        self.res_f1 = _rows_cat(self.res_f1[ko], F1[kn])
        self.res_f2 = _rows_cat(self.res_f2[ko], F2[kn])
        self.res_values = np.concatenate([self.res_values[:, ko], values[:, kn]], axis=1)

    # ------------------------------------------------------------------ merge
    def merge(self, other: "Accumulator") -> "Accumulator":
        """Fold ``other``'s statistics into this one, as if its inputs came after these.

        Parameters
        ----------
        other : Accumulator
            Made with the same g1, g2, biases, reservoir size, seed and f dtypes.

        Returns
        -------
        Accumulator
            ``self``.
        """
        if not isinstance(other, Accumulator):
            raise IdentirepError(f"merge takes an Accumulator, got {type(other).__name__}")
        self._check_same(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self._load(other._state())
            return self
        if other.f_dtypes != self.f_dtypes:
            raise IdentirepError(f"the accumulators' f batches have dtypes {self.f_dtypes} and "
                                 f"{other.f_dtypes}", fix="feed both the same dtypes")
        for k in SUM_KEYS:
            self.sums[k] += other.sums[k]
        self.cols = _merged_cols(self.n, self.cols, other.n, other.cols)
        self.moments.merge_in_place(other.moments)
        self.complete = self.complete and other.complete
        self._keep(other.res_priority, other.res_index + self.n, other.res_f1, other.res_f2,
                   other.res_values)
        self.f_max_abs = [max(x, y) for x, y in zip(self.f_max_abs, other.f_max_abs)]
        self.pass_dtype = self.pass_dtype or other.pass_dtype
        self.n += other.n
        return self

    def _check_same(self, other: "Accumulator") -> None:
        for what in ("V", "M1", "M2", "reservoir", "seed"):
            if getattr(self, what) != getattr(other, what):
                raise IdentirepError(
                    f"the accumulators differ in {what}: {getattr(self, what)} vs "
                    f"{getattr(other, what)}", fix="merge accumulators made alike")
        if other._models[0].g is not self._models[0].g or \
                other._models[1].g is not self._models[1].g:
            if self.fingerprint() != other.fingerprint():
                raise IdentirepError("the accumulators were made with different g or biases",
                                     fix="merge accumulators of the same model pair")

    def fingerprint(self) -> str:
        """A hash of the models' g and biases (states of other models are refused): their
        dtypes and shapes, FINGERPRINT_ROWS evenly spaced rows of each g and every bias, so
        that it costs O(M + V), not a read of g."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            for m in self._models:
                for x in (m.g, m.bias):
                    if x is None:
                        h.update(b"none")
                        continue
                    h.update(f"{_dtype_label(x)}{tuple(x.shape)}".encode())
                    x = to_numpy(x)
                    if x.ndim == 2:
                        x = x[np.unique(np.linspace(0, x.shape[0] - 1, FINGERPRINT_ROWS)
                                        .astype(np.int64))]
                    x = np.ascontiguousarray(x)
                    h.update(x.view(np.uint8).reshape(-1).data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ compute
    def compute(self, **options) -> Report:
        """Every measure of ``compare`` from the statistics.

        Parameters
        ----------
        **options
            ``compare``'s options (lam, combine, term, num_samples, seed, num_pivots,
            sets_per_pivot, paper_compat, max_label_sets, rep_sets, pivot_budget).

        Returns
        -------
        Report
            As ``compare`` of the concatenated inputs; ``notes`` say what is estimated
            (the input side when the reservoir does not hold every distinct input) and that
            KL's per-input arrays are not kept.
        """
        check_compare_options(**options)
        if self.n < 2:
            raise IdentirepError(f"the accumulator has seen {self.n} input"
                                 f"{'' if self.n == 1 else 's'}; the measures need at least 2",
                                 fix="update it with batches of inputs first")
        self._check_scale(self.f_max_abs)
        every = self.complete and self.kept == self.n
        if options.get("paper_compat") and not every:
            raise IdentirepError(
                f"paper_compat draws input sets from all N={self.n} inputs, repeats included, "
                f"and the accumulator keeps {self.kept} distinct rows",
                fix="leave paper_compat out, or keep every input (reservoir >= N, no repeats)")
        e = self.engine()
        report = _report_from_engine(e, backend="cpu", **options)
        # what depends on g alone, for the next compute
        self._g_cache = {"dtype": self.pass_dtype, "label": e._label_mom,
                         **{k: {x: v for x, v in c._cache.items() if x in _G_KEYS}
                            for k, c in enumerate((e.c1, e.c2))}}
        return dataclasses.replace(report, N=self.n, notes=report.notes + self._notes(options))

    def engine(self) -> PairEngine:
        """The ``PairEngine`` of the statistics (its per-input arrays: the kept rows')."""
        if self.n == 0:
            raise IdentirepError("the accumulator has seen no input",
                                 fix="update it with batches of inputs first")
        cdt = np.float32 if self.pass_dtype == "float32" else np.float64
        M1, M2 = self.M1, self.M2
        mom = Moments(self.n, self.moments.mean.copy(), self.moments.scatter.copy())
        caches = []
        for k, (m, F, sl) in enumerate(((self._models[0], self.res_f1, slice(0, M1)),
                                        (self._models[1], self.res_f2, slice(M1, M1 + M2)))):
            rows = Model(F, m.g, m.bias, name=m.name, labels=m.labels)
            c = ModelCache.from_statistics(rows, self.n, self.res_index, mom.mean[sl],
                                           mom.scatter[sl, sl], self.f_max_abs[k], cdt)
            if self._g_cache.get("dtype") == self.pass_dtype:
                c._cache.update(self._g_cache[k])
            caches.append(c)
        v = dict(zip(ROW_KEYS, self.res_values))
        v["agree"] = v["agree"] > 0.5
        stats = PassStats(**v, **self.cols, backend="cpu", dtype=self.pass_dtype,
                          sums=PassSums(self.n, **self.sums))
        e = PairEngine.from_statistics(caches[0].model, caches[1].model, stats, mom, caches)
        if self._g_cache.get("dtype") == self.pass_dtype:
            e._label_mom = self._g_cache["label"]
        return e

    def _notes(self, options) -> list:
        notes = [f"from statistics accumulated over {self.n} inputs: KL's per-input arrays "
                 "are not kept"]
        if self.complete:
            notes.append(f"input side: candidate sets drawn from all {self.kept} distinct "
                         "inputs (the reservoir holds every one), as compare draws them")
        else:
            notes.append(
                f"input side estimated: d_LLV's t2, t4 and input set and d_SVD's d_svd_g come "
                f"from candidate sets drawn from a seeded sample of {self.kept} of about "
                f"{self.distinct_estimate():.3g} distinct inputs (the reservoir), not from all")
        if (self.V > EXACT_PIVOT_LIMIT and options.get("num_pivots") is None
                and options.get("term", "max") == "max"):
            notes.append("bounded pivot search: its bounds project f's scatter instead of f, "
                         "so the number of pivots it evaluates may differ from compare's")
        return notes

    def distinct_estimate(self) -> float:
        """The number of distinct inputs: exact while the reservoir holds every one, else
        the k-th minimum value estimate (k - 1) / (largest kept priority / 2^64)."""
        if self.complete:
            return float(self.kept)
        tau = (float(self.res_priority.max()) + 1.0) / 2.0 ** 64
        return (self.kept - 1) / tau

    # ------------------------------------------------------------------ state
    def state_dict(self, model: bool = True) -> dict:
        """The state as a flat dict of NumPy arrays and Python scalars (torch- and
        JSON-friendly once converted), with its format and version.

        Parameters
        ----------
        model : bool
            Also hold g1, g2 and the biases (``from_state_dict`` then needs nothing else);
            without them the state is O(V + M^2 + reservoir) and loads into an accumulator of
            the same models.

        Returns
        -------
        dict
        """
        d = self._state()
        if model:
            for k, m in enumerate(self._models, 1):
                for key, x in ((f"g{k}", m.g), (f"bias{k}", m.bias)):
                    if x is not None:
                        d[key] = to_numpy(x)
                        d[key + "_dtype"] = d[key].dtype.name
                d[f"name{k}"] = m.name or ""
        return d

    def _state(self) -> dict:
        d = {"format": STATE_FORMAT, "version": STATE_VERSION, "V": self.V, "M1": self.M1,
             "M2": self.M2, "reservoir": self.reservoir, "seed": self.seed, "n": self.n,
             "complete": bool(self.complete), "f1_dtype": self.f_dtypes[0] or "",
             "f2_dtype": self.f_dtypes[1] or "", "pass_dtype": self.pass_dtype or "",
             "fingerprint": self.fingerprint(),
             "sums": np.array([self.sums[k] for k in SUM_KEYS]),
             "f_max_abs": np.array(self.f_max_abs, np.float64),
             "u_mean": self.moments.mean.copy(), "u_scatter": self.moments.scatter.copy(),
             "res_index": self.res_index.copy(),
             "res_priority": self.res_priority.view(np.int64).copy(),
             "res_f1": self.res_f1.copy(), "res_f2": self.res_f2.copy(),
             "res_values": self.res_values.copy()}
        d.update({k: v.copy() for k, v in self.cols.items()})
        return d

    def load_state_dict(self, state: dict) -> "Accumulator":
        """Replace the statistics by a ``state_dict()`` of an accumulator of the same models.

        Parameters
        ----------
        state : dict
            As ``state_dict`` returns it (arrays may be NumPy arrays, torch tensors or lists).

        Returns
        -------
        Accumulator
            ``self``.
        """
        self._load(state)
        return self

    @classmethod
    def from_state_dict(cls, state: dict, g1=None, g2=None, bias1=None, bias2=None,
                        labels=None) -> "Accumulator":
        """An accumulator from a ``state_dict()`` (which holds g1, g2 and the biases unless
        it was made with ``model=False``: then pass them).

        Returns
        -------
        Accumulator
        """
        if not isinstance(state, dict):
            raise IdentirepError(f"a state is a dict, got {type(state).__name__}")
        if g1 is None or g2 is None:
            if "g1" not in state or "g2" not in state:
                raise IdentirepError("this state holds no g1, g2 (state_dict(model=False))",
                                     fix="pass g1, g2 (and the biases) of its models")
            g1, g2, bias1, bias2 = (
                _array(state.get(k), k, state.get(k + "_dtype") if k in state else None)
                for k in ("g1", "g2", "bias1", "bias2"))
        names = tuple(str(state.get(k, "")) or None for k in ("name1", "name2"))
        acc = cls(_array(g1, "g1"), _array(g2, "g2"), _array(bias1, "bias1"),
                  _array(bias2, "bias2"), reservoir=_scalar(state, "reservoir", int),
                  seed=_scalar(state, "seed", int), labels=labels, names=names)
        return acc.load_state_dict(state)

    def _load(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise IdentirepError(f"a state is a dict, got {type(state).__name__}")
        if state.get("format") != STATE_FORMAT:
            raise IdentirepError(f"not an accumulator state (format {state.get('format')!r})",
                                 fix="load what Accumulator.state_dict() returned")
        version = _scalar(state, "version", int)
        if version != STATE_VERSION:
            raise IdentirepError(f"accumulator state version {version}; this identirep reads "
                                 f"version {STATE_VERSION}",
                                 fix="resume with the identirep version that saved it")
        for what in ("V", "M1", "M2", "reservoir", "seed"):
            v = _scalar(state, what, int)
            if v != getattr(self, what):
                raise IdentirepError(f"the state's {what} is {v}, this accumulator's "
                                     f"{getattr(self, what)}",
                                     fix="load it into an accumulator made alike")
        if str(state.get("fingerprint")) != self.fingerprint():
            raise IdentirepError("the state was accumulated with other g or biases",
                                 fix="load it into an accumulator of the same models")
        n = _scalar(state, "n", int)
        if n < 0:
            raise IdentirepError(f"the state's n is {n}")
        V, D, M1, M2 = self.V, self.M1 + self.M2 + 2, self.M1, self.M2
        dts = [str(state.get(k, "")) or None for k in ("f1_dtype", "f2_dtype")]
        pdt = str(state.get("pass_dtype", "")) or None
        if n and (any(d not in _FLOAT_KINDS for d in dts) or pdt not in ("float32", "float64")):
            raise IdentirepError(f"the state's dtypes {dts}, {pdt!r} are not float dtypes")
        K = len(_array(state.get("res_index"), "res_index", np.int64, (None,)))
        if K > self.reservoir or (n and not 1 <= K <= n):
            raise IdentirepError(f"the state keeps {K} rows of {n} inputs in a reservoir of "
                                 f"{self.reservoir}")
        fdt = [np.float64 if d == "float64" else np.float32 for d in dts]
        arrays = {
            "sums": (np.float64, (len(SUM_KEYS),)), "f_max_abs": (np.float64, (2,)),
            "u_mean": (np.float64, (D,)), "u_scatter": (np.float64, (D, D)),
            "res_index": (np.int64, (K,)), "res_priority": (np.int64, (K,)),
            "res_f1": (fdt[0], (K, M1)), "res_f2": (fdt[1], (K, M2)),
            "res_values": (np.float64, (len(ROW_KEYS), K)),
            **{k: (np.float64, (V,)) for k in COL_KEYS}}
        a = {k: _array(state.get(k), k, dt, shape) for k, (dt, shape) in arrays.items()}
        for k, x in a.items():
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise IdentirepError(f"the state's {k} holds NaN or Inf values")
        if K and (np.diff(a["res_index"]) <= 0).any() or K and (
                a["res_index"][0] < 0 or a["res_index"][-1] >= n):
            raise IdentirepError("the state's reservoir indices are not increasing input "
                                 "indices")
        self.n, self.f_dtypes, self.pass_dtype = n, dts, pdt
        self.complete = bool(_scalar(state, "complete", bool))
        self.sums = dict(zip(SUM_KEYS, (float(x) for x in a["sums"])))
        self.cols = {k: a[k] for k in COL_KEYS}
        self.f_max_abs = [float(x) for x in a["f_max_abs"]]
        self.moments = Moments(n, a["u_mean"], a["u_scatter"])
        self.res_index, self.res_priority = a["res_index"], a["res_priority"].view(np.uint64)
        self.res_f1, self.res_f2, self.res_values = a["res_f1"], a["res_f2"], a["res_values"]


#: the ModelCache entries that depend on g alone (kept between computes)
_G_KEYS = ("g", "Rg", "Cg", "Wg", "HR")


def _merged_cols(nA: int, a: dict, nB: int, b: dict) -> dict:
    """Chan's update of the label moments (``COL_KEYS``) of two shards, ``a`` first."""
    pairs = {(0, 0): "col_m2_11", (1, 1): "col_m2_22", (0, 1): "col_m2_12"}
    _, means, m2 = merge_stats(nA, (a["col_mean1"], a["col_mean2"]),
                               {p: a[k] for p, k in pairs.items()},
                               nB, (b["col_mean1"], b["col_mean2"]),
                               {p: b[k] for p, k in pairs.items()})
    return {"col_mean1": means[0], "col_mean2": means[1],
            **{k: m2[p] for p, k in pairs.items()}}


def _check_host(x, name: str) -> None:
    if x is not None and is_gpu_array(x):
        raise IdentirepError(f"{name} is a GPU array; the Accumulator runs on the CPU backend",
                             fix="pass host arrays (tensor.cpu(), cupy.asnumpy)")


def _dtype_label(x) -> str:
    """The float dtype's name of an array or dtype (torch's without 'torch.')."""
    if hasattr(x, "shape"):
        name = _dtype_name(x)
    else:
        try:
            name = np.dtype(x).name
        except TypeError:
            name = str(x)
    name = name.replace("torch.", "")
    if name not in _FLOAT_KINDS:
        raise IdentirepError(f"dtype must be one of {', '.join(_FLOAT_KINDS)}, got {name}")
    return name


def _words(X: np.ndarray) -> np.ndarray:
    """The rows of X as uint32 words (zero-padded to a multiple of 4 bytes)."""
    b = np.ascontiguousarray(X).view(np.uint8).reshape(X.shape[0], -1)
    pad = -b.shape[1] % 4
    if pad:
        b = np.hstack([b, np.zeros((b.shape[0], pad), np.uint8)])
    return b.view(np.uint32)


def _multipliers(seed: int, which: int, width: int) -> np.ndarray:
    rng = np.random.default_rng([seed, which, 0x1DE7])
    return rng.integers(1, 2 ** 63, width, dtype=np.uint64) | np.uint64(1)


def _seed_word(seed: int) -> int:
    return int(np.random.default_rng([seed, 2, 0x1DE7]).integers(0, 2 ** 63, dtype=np.uint64))


def _mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _rows_cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of a then b, in b's dtype when a has none yet."""
    if not len(a):
        return np.ascontiguousarray(b)
    return np.concatenate([a, b.astype(a.dtype, copy=False)])


def _scalar(state: dict, key: str, kind):
    if key not in state:
        raise IdentirepError(f"the state has no {key!r}", fix="load a complete state_dict()")
    v = state[key]
    try:
        v = v.item() if hasattr(v, "item") else v
        if kind is bool:
            if v not in (True, False, 0, 1):
                raise ValueError
            return bool(v)
        out = kind(v)
        if kind is int and out != v:
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise IdentirepError(f"the state's {key} must be {kind.__name__}, got {v!r}") from None


def _array(v, key: str, dtype=None, shape=None):
    """A state entry or argument as a NumPy array of ``dtype`` and ``shape`` (None: any)."""
    if v is None:
        if shape is None:
            return None
        raise IdentirepError(f"the state has no {key!r}", fix="load a complete state_dict()")
    try:
        a = to_numpy(v) if hasattr(v, "shape") else np.asarray(v)
        if dtype is not None:
            if dtype in (np.int64,) and a.dtype.kind == "f":
                raise ValueError
            a = np.array(a, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise IdentirepError(f"the state's {key} is not an array of {np.dtype(dtype).name}") \
            from None
    if shape is not None and (a.ndim != len(shape) or any(
            s is not None and s != t for s, t in zip(shape, a.shape))):
        raise IdentirepError(f"the state's {key} has shape {a.shape}, expected "
                             f"{tuple('any' if s is None else s for s in shape)}")
    return a

