"""Mergeable statistics of a model pair (``Accumulator``): every measure of ``compare`` from
batches of inputs, in O(V + M^2 + reservoir) memory whatever the number of inputs.

Each ``update`` runs the streaming pass on a batch against the fixed g1, g2 (and biases) and
folds what the measures read (docs/design.md, "Mergeable statistics"):
- sums over inputs of KL both ways (clipped at 0 per input), entropies, top-1 agreement and
  the label-centred squares of l1 - l2 (``passes.PassSums``);
- the input moments of every label's logits (Chan's update, ``moments.merge_stats``);
- the moments of u(x) = [f1, f2, L1, L2] (``Moments``, Chan's update);
- a reservoir of input rows for the input side (``_reservoir``): the ``reservoir`` distinct
  inputs of lowest priority, a seeded hash of the rows' content, kept in arrival order with
  the pass's per-input values. The kept set depends on neither batching nor merge order, and
  identical rows coincide, so that when it holds every distinct input, ``compute`` draws
  compare's candidate input sets.

``merge(other)`` is exact: ``other``'s inputs come after this one's. ``state_dict`` and its
checks on loading are in ``_acc_state``.
"""
from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np

from . import _rules as rules
from ._acc_state import (COL_KEYS, ROW_KEYS, STATE_FORMAT, STATE_VERSION, SUM_KEYS, array,
                         fingerprint_of, parse_state, restore, scalar, state_of)
from ._arrays import is_gpu_array
from ._cpu_pass import cpu_pass
from ._linalg import host_native, scatter_blocks
from ._model_cache import ModelCache
from ._pair import PairEngine
from ._reservoir import Reservoir, priorities
from .errors import IdentirepError
from .measures import _report_from_engine, check_compare_options
from .model import (_FLOAT_KINDS, Model, _dtype_name, check_array, check_logit_scale,
                    check_pair, common_kind, logit_spread_failure, max_abs, to_numpy)
from .moments import Moments, merge_stats
from .passes import PassStats, PassSums
from .results import Report

__all__ = ["Accumulator", "STATE_FORMAT", "STATE_VERSION"]


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
    t4 and input set, and d_SVD's ``d_svd_g``, come from a sample; and where the bounded
    pivot search (beyond 4096 labels) stops at ``pivot_budget`` before proving its minimum,
    the label side may differ too (the report's ``notes`` say which). KL's per-input arrays
    are not kept (``per_input_kl12`` is None).
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
        # g and the biases as NumPy arrays, widened once (bfloat16 to float32), their dtypes'
        # names as given, and the augmented [g, b] per compute dtype (made at the first batch)
        self._g_dtype = [_dtype_label(m.g) for m in self._models]
        self._host = [(to_numpy(m.g), None if m.bias is None else to_numpy(m.bias))
                      for m in self._models]
        self._g_aug = {}
        # the logit-scale check's stand-ins: g and the bias by their largest magnitudes
        # (read once), f by the largest seen (``_check_scale``)
        self._scale = [SimpleNamespace(
            M=m.M, f=None, bias=None if b is None else np.array(
                [max_abs(b)], np.float64 if b.dtype == np.float64 else np.float32),
            g=np.full((1, m.M), max_abs(g), np.float64 if g.dtype == np.float64 else np.float32))
            for m, (g, b) in zip(self._models, self._host)]
        self._fingerprint = None
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
        self._res = Reservoir.empty(self.M1, self.M2, len(ROW_KEYS))

    def empty_like(self) -> "Accumulator":
        """An empty accumulator of the same models and settings, as the constructor would
        make it, that shares this one's g, its host copies, its fingerprint (computed here
        once) and what ``compute`` keeps of g: nothing is checked, widened or hashed again.

        Returns
        -------
        Accumulator
        """
        self.fingerprint()
        new = copy.copy(self)
        new._scale = [SimpleNamespace(**vars(s)) for s in self._scale]
        new._reset()
        return new

    def __repr__(self) -> str:
        return (f"Accumulator(n={self.n}, V={self.V}, M1={self.M1}, M2={self.M2}, "
                f"reservoir {self.kept}/{self.reservoir}"
                f"{'' if self.complete else ', sampled'})")

    @property
    def kept(self) -> int:
        """Distinct input rows in the reservoir."""
        return len(self._res.index)

    @property
    def complete(self) -> bool:
        """Whether the reservoir holds every distinct input seen."""
        return self._res.complete

    # the reservoir's arrays: input indices (increasing), priorities, rows, per-input values
    res_index = property(lambda self: self._res.index)
    res_priority = property(lambda self: self._res.priority)
    res_f1 = property(lambda self: self._res.f1)
    res_f2 = property(lambda self: self._res.f2)
    res_values = property(lambda self: self._res.values)

    # ------------------------------------------------------------------ update
    def update(self, f1, f2, targets=None) -> "Accumulator":
        """Fold a batch of inputs: f1 (B x M1) and f2 (B x M2), one row per input, NumPy or
        torch CPU arrays of the same dtypes as every other batch. A refused batch leaves the
        statistics as they were.

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
        (a1, h1), (a2, h2) = (self._augment(k, x) for k, x in enumerate(raw))
        self._fold(cpu_pass(a1, h1, a2, h2), native, fmax, kinds)
        return self

    def _check_scale(self, fmax, large_only=False, kinds=None, partial=False):
        """``check_logit_scale`` of the models with f's largest magnitudes ``fmax``;
        ``partial``: ``logit_spread_failure`` (returned: logits too small to resolve)."""
        for m, v, k in zip(self._scale, fmax, kinds or self.f_dtypes):
            m.f = np.zeros((1, m.M), np.float64 if k == "float64" else np.float32)
            m.f[0, 0] = v
        if partial:
            return logit_spread_failure(*self._scale)
        check_logit_scale(*self._scale, large_only=large_only)
        return None

    def _augment(self, k: int, f: np.ndarray):
        """(f, g) of model k with the bias absorbed, as ``Model.augmented(None)``; [g, b] is
        made once per compute dtype."""
        g, b = self._host[k]
        if b is None:
            return f, g
        kinds = {x.dtype.name for x in (f, g, b)}
        dt = f.dtype if len(kinds) == 1 else np.dtype(common_kind(*kinds))
        if (k, dt.name) not in self._g_aug:
            self._g_aug[k, dt.name] = np.hstack([g.astype(dt, copy=False), b.astype(dt)[:, None]])
        return (np.hstack([f.astype(dt, copy=False), np.ones((f.shape[0], 1), dt)]),
                self._g_aug[k, dt.name])

    def _fold(self, stats: PassStats, native, fmax, kinds) -> None:
        """Fold one batch's pass and rows into the state: everything is computed first, then
        assigned, so that a failure leaves the state as it was."""
        B = len(stats.kl12)
        t = PassSums.of(stats)
        sums = {k: self.sums[k] + getattr(t, k) for k in SUM_KEYS}
        cols = _merged_cols(self.n, self.cols, B, {k: getattr(stats, k) for k in COL_KEYS})
        cdt = np.float32 if stats.dtype == "float32" else np.float64
        n, mu, S = scatter_blocks([native[0], native[1], stats.L1[:, None], stats.L2[:, None]],
                                  dtype=cdt)
        batch = Moments.from_parts(n, mu, S)
        values = np.stack([np.asarray(getattr(stats, k), np.float64) for k in ROW_KEYS])
        res = self._res.folded(self.reservoir, priorities(native, self.seed),
                               np.arange(self.n, self.n + B, dtype=np.int64), native[0],
                               native[1], values)
        if self.n == 0:
            self.moments = batch
        else:
            self.moments.merge_in_place(batch)
        self.sums, self.cols, self._res, self.f_max_abs = sums, cols, res, fmax
        self.f_dtypes, self.pass_dtype = kinds, stats.dtype
        self.n += B

    # ------------------------------------------------------------------ merge
    def merge(self, other: "Accumulator") -> "Accumulator":
        """Fold ``other``'s statistics into this one, as if its inputs came after these.

        Parameters
        ----------
        other : Accumulator
            Made with the same g1, g2, biases, labels, names, reservoir size, seed and f
            dtypes.

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
        want = self.f_dtypes if self.n else [self._want] * 2 if self._want else other.f_dtypes
        if other.f_dtypes != want:
            raise IdentirepError(f"the accumulators' f batches have dtypes {want} and "
                                 f"{other.f_dtypes}", fix="feed both the same dtypes")
        if self.n == 0:
            self.n, self.f_dtypes, self.pass_dtype = other.n, list(other.f_dtypes), other.pass_dtype
            self.sums, self.cols = dict(other.sums), {k: v.copy() for k, v in other.cols.items()}
            self.moments = Moments(other.n, other.moments.mean.copy(),
                                   other.moments.scatter.copy())
            self.f_max_abs, self._res = list(other.f_max_abs), other._res
            return self
        o = other._res
        res = self._res.folded(self.reservoir, o.priority, o.index + self.n, o.f1, o.f2,
                               o.values, o.complete)
        cols = _merged_cols(self.n, self.cols, other.n, other.cols)
        self.moments.merge_in_place(other.moments)
        for k in SUM_KEYS:
            self.sums[k] += other.sums[k]
        self.cols, self._res = cols, res
        self.f_max_abs = [max(x, y) for x, y in zip(self.f_max_abs, other.f_max_abs)]
        self.n += other.n
        return self

    def _check_same(self, other: "Accumulator") -> None:
        for what in ("V", "M1", "M2", "reservoir", "seed"):
            if getattr(self, what) != getattr(other, what):
                raise IdentirepError(
                    f"the accumulators differ in {what}: {getattr(self, what)} vs "
                    f"{getattr(other, what)}", fix="merge accumulators made alike")
        for what, get in (("labels", lambda m: m.labels), ("names", lambda m: m.name)):
            mine, theirs = ([get(m) for m in acc._models] for acc in (self, other))
            if [None if x is None else list(x) for x in mine] != \
                    [None if x is None else list(x) for x in theirs]:
                raise IdentirepError(f"the accumulators differ in their {what}",
                                     fix="merge accumulators made alike")
        if any(x is not y for m, o in zip(self._models, other._models)
               for x, y in ((m.g, o.g), (m.bias, o.bias))):
            if self.fingerprint() != other.fingerprint():
                raise IdentirepError("the accumulators were made with different g or biases",
                                     fix="merge accumulators of the same model pair")

    def fingerprint(self) -> str:
        """A hash (blake2b) of the models' g and biases, all of their values: states of
        other models are refused. Computed once, at the first call. The hash reads the
        values as NumPy holds them (bfloat16 widened to float32, exactly), so a bfloat16 g
        and its float32 widening hash alike."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self._host)
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
            (the input side when the reservoir does not hold every distinct input, the label
            side when a bounded pivot search stopped at its budget from a sample) and that
            KL's per-input arrays are not kept.
        """
        check_compare_options(**options)
        if self.n < 2:
            raise IdentirepError(f"the accumulator has seen {self.n} input"
                                 f"{'' if self.n == 1 else 's'}; the measures need at least 2",
                                 fix="update it with batches of inputs first")
        # logits too small to resolve: KL, d_LLV, d_logit fail with the reason (as compare)
        spread = self._check_scale(self.f_max_abs, partial=True)
        if options.get("paper_compat") and not self.every_input:
            raise IdentirepError(
                f"paper_compat draws input sets from all N={self.n} inputs, repeats included, "
                f"and the accumulator keeps {self.kept} distinct rows",
                fix="leave paper_compat out, or keep every input (reservoir >= N, no repeats)")
        e = self.engine()
        e.logit_failure = spread
        report = _report_from_engine(e, backend="cpu", **options)
        # what depends on g alone, for the next compute
        self._g_cache = {"dtype": self.pass_dtype, "label": e._label_cross,
                         **{k: {x: v for x, v in c._cache.items() if x in _G_KEYS}
                            for k, c in enumerate((e.c1, e.c2))}}
        return dataclasses.replace(report, N=self.n,
                                   notes=report.notes + self._notes(options, report))

    @property
    def every_input(self) -> bool:
        """Whether the reservoir holds every input (complete, no input repeated): then the
        kept rows are f itself."""
        return self.complete and self.kept == self.n

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
            rows = copy.copy(m)    # the checked model, with the kept rows (checked) as f
            rows.f = F
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
            e._label_cross = self._g_cache["label"]
        return e

    def _notes(self, options, report) -> list:
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
        search = report.d_llv.pivot_search if report.d_llv is not None else ""
        if self.every_input or "bounded search" not in search and "not proven" not in search:
            return notes
        if "not proven exact" in search:
            notes.append(
                "label side may differ from compare: the bounded pivot search stopped at its "
                "budget (pivot_budget) before proving its minimum, so its pivot is the best of "
                "the pivots it evaluated, in an order set by a random projection of f in "
                "compare but of f's scatter here (not every input row is kept); the pivot, "
                "leave-out, t1, t3 and d_SVD's label sets may differ. A larger pivot_budget "
                "makes both exact")
        else:
            notes.append("bounded pivot search: its bounds project f's scatter instead of f, "
                         "so the number of pivots it evaluates may differ from compare's "
                         "(its choice is the same proven minimum)")
        return notes

    def distinct_estimate(self) -> float:
        """The number of distinct inputs: exact while the reservoir holds every one, else
        the k-th minimum value estimate (k - 1) / (largest kept priority / 2^64)."""
        return self._res.distinct_estimate()

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
            for k, (m, (g, b)) in enumerate(zip(self._models, self._host), 1):
                d[f"g{k}"], d[f"g{k}_dtype"] = g, self._g_dtype[k - 1]
                if b is not None:
                    d[f"bias{k}"], d[f"bias{k}_dtype"] = b, _dtype_label(m.bias)
                d[f"name{k}"] = m.name or ""
        return d

    def _state(self) -> dict:
        return state_of(self)

    def load_state_dict(self, state: dict) -> "Accumulator":
        """Replace the statistics by a ``state_dict()`` of an accumulator of the same models.
        Every entry is checked before anything is replaced: a refused state leaves the
        accumulator as it was.

        Parameters
        ----------
        state : dict
            As ``state_dict`` returns it (arrays may be NumPy arrays, torch tensors or lists).

        Returns
        -------
        Accumulator
            ``self``.
        """
        p = parse_state(state, self)
        self.n, self.f_dtypes, self.pass_dtype = p["n"], p["f_dtypes"], p["pass_dtype"]
        self.sums, self.cols, self.f_max_abs = p["sums"], p["cols"], p["f_max_abs"]
        self.moments, self._res = p["moments"], p["reservoir"]
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
            if g1 is not None or g2 is not None or bias1 is not None or bias2 is not None:
                raise IdentirepError("from_state_dict takes g1 and g2 (and their biases) "
                                     "together, or none of them (the state's own)",
                                     fix="pass both g1 and g2, or neither")
            if "g1" not in state or "g2" not in state:
                raise IdentirepError("this state holds no g1, g2 (state_dict(model=False))",
                                     fix="pass g1, g2 (and the biases) of its models")
            g1, g2, bias1, bias2 = (restore(array(state.get(k), k), state.get(k + "_dtype"))
                                    if k in state else None
                                    for k in ("g1", "g2", "bias1", "bias2"))
        names = tuple(str(state.get(k, "")) or None for k in ("name1", "name2"))
        acc = cls(g1, g2, bias1, bias2, reservoir=scalar(state, "reservoir", int),
                  seed=scalar(state, "seed", int), labels=labels, names=names)
        return acc.load_state_dict(state)


#: the ModelCache entries that depend on g alone (kept between computes)
_G_KEYS = ("g", "Rg", "Wg", "HR")


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
