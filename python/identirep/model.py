"""The model type: embeddings f (N x M), unembeddings g (V x M), optional bias b (V)."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from dataclasses import InitVar, dataclass, field
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import IdentirepError, IdentirepWarning

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


def _dtype_name(a) -> str:
    return str(getattr(a, "dtype", type(a).__name__))


#: how a -inf bias is explained, and what to do about it
MASKED_LABELS = (
    "bias is -inf for {count} label(s) (ids {ids}): masked or padded labels, which the model "
    "never predicts; their log-probabilities are -inf, so the log-likelihood measures are "
    "undefined for them. Drop them: "
    "drop_masked_labels=True (Model, load_model), or --drop-masked-labels (identirep compare, "
    "matrix: the labels masked in either model are dropped from both)")


def first_ids(ids, n: int = 10) -> str:
    """Label ids for a message: the first ``n``, then how many more."""
    ids = [int(i) for i in ids]
    more = f", ... {len(ids) - n} more" if len(ids) > n else ""
    return "[" + ", ".join(str(i) for i in ids[:n]) + more + "]"


def masked_labels(bias) -> np.ndarray:
    """The sorted ids of the labels whose bias is -inf (masked or padded labels); any array
    library, None for no bias."""
    if bias is None:
        return np.empty(0, np.int64)
    return np.flatnonzero(_host_values(bias) == -np.inf).astype(np.int64)


def _host_values(a) -> np.ndarray:
    """``a`` as a NumPy array of a dtype that holds its values exactly: floats as they are
    (bfloat16 as float32), anything else as float64. Never a narrower float: a float64 of
    1e300 cast to float32 would overflow to inf (and -1e300 read as a masked label)."""
    x = to_numpy(a)
    if x.dtype.name == "bfloat16":
        return x.astype(np.float32)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _take_rows(a, keep: np.ndarray):
    """Rows ``keep`` of an array of any library, in it."""
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        import torch
        return a[torch.as_tensor(keep, device=a.device)]
    if mod == "cupy":
        import cupy
        return a[cupy.asarray(keep)]
    return np.asarray(a)[keep]


def check_array(a, name: str, ndim: int, masked_ok: bool = False) -> None:
    """Validate shape, dtype and finiteness of one input array (any array library); with
    ``masked_ok``, -inf entries are allowed (a bias: masked labels)."""
    shape = getattr(a, "shape", None)
    if shape is None:
        raise IdentirepError(f"{name} must be an array, got {type(a).__name__}")
    if len(shape) != ndim:
        want = "a 2-d array (rows x dimensions)" if ndim == 2 else "a 1-d array"
        raise IdentirepError(f"{name} must be {want}, got shape {tuple(shape)}")
    if any(s == 0 for s in shape):
        raise IdentirepError(f"{name} is empty (shape {tuple(shape)})")
    dname = _dtype_name(a).replace("torch.", "")
    if dname not in _FLOAT_KINDS:
        raise IdentirepError(
            f"{name} has dtype {dname}; identirep needs floating-point arrays "
            f"({', '.join(_FLOAT_KINDS)}). Convert with .astype(np.float32)")
    if not _all_finite(a):
        if masked_ok and _all_finite_or_minus_inf(a):
            return
        raise IdentirepError(f"{name} contains NaN or Inf values; clean the data first")


def _from_list(a, name: str, rows: str):
    """A nested list or tuple as a NumPy array (else ``a`` as it is); a ragged one (rows of
    different lengths) is refused."""
    if not isinstance(a, (list, tuple)):
        return a
    try:
        return np.asarray(a)
    except (TypeError, ValueError):
        raise IdentirepError(f"{name} is a ragged nested list (rows of different lengths or "
                             "mixed types)", fix=f"give {rows}") from None


def label_names(labels) -> list:
    """The label names as a list of strings: a sequence (list, tuple, 1-d array) of strings;
    integers are taken as names too ("17"). Anything else is refused, naming the first bad
    entry."""
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise IdentirepError(f"labels must be a 1-d sequence of names, got an array of shape "
                             f"{labels.shape}", fix="give one string per label (V of them)")
    if isinstance(labels, (str, bytes, dict)) or not isinstance(labels, (Sequence, np.ndarray)):
        raise IdentirepError(f"labels must be a sequence of names (one string per label), got "
                             f"{type(labels).__name__}",
                             fix="pass a list of V strings, e.g. the token strings")
    out = []
    for i, s in enumerate(labels):
        if isinstance(s, str):
            out.append(str(s))
        elif isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)):
            out.append(str(int(s)))
        else:
            raise IdentirepError(f"labels[{i}] is {type(s).__name__} {s!r:.60}, not a name",
                                 fix="give a flat list of V strings, one per label")
    return out


def _all_finite_or_minus_inf(a) -> bool:
    x = _host_values(a)
    return bool((np.isfinite(x) | (x == -np.inf)).all())


def _all_finite(a) -> bool:
    mod = type(a).__module__.split(".")[0]
    if mod == "numpy" or isinstance(a, np.ndarray):
        if a.dtype.name == "bfloat16":
            return bool(np.isfinite(a.astype(np.float32)).all())
        return bool(np.isfinite(a).all())
    if mod == "cupy":
        import cupy
        return bool(cupy.isfinite(a).all())
    if mod == "torch":
        import torch
        return bool(torch.isfinite(a).all())
    return bool(np.isfinite(np.asarray(a, dtype=np.float64)).all())


#: what each per-input array holds, for messages
_PER_INPUT = {
    "tokens": "the input token (a label id) at each position, -1 for none",
    "targets": "the observed label (next token) of each input, -1 for none",
    "documents": "the index of the text each position belongs to, non-decreasing",
}


def per_input(a, name: str, N: int, V: Optional[int], low: int) -> Optional[np.ndarray]:
    """A per-input integer array (``tokens``, ``targets``, ``documents``) as int64 of length
    ``N`` with values in [low, V) (no upper bound when ``V`` is None), None for None; any
    array library or a list. ``documents`` must be non-decreasing."""
    if a is None:
        return None
    what = _PER_INPUT[name]
    fix = f"give {name} as N = {N} integers: {what}"
    if isinstance(a, (list, tuple)):
        a = _from_list(a, name, f"{N} integers")
    if getattr(a, "shape", None) is None or isinstance(a, (str, bytes)):
        raise IdentirepError(f"{name} must be an array of integers, got {type(a).__name__}",
                             fix=fix)
    x = to_numpy(a)
    if x.ndim != 1 or x.shape[0] != N:
        raise IdentirepError(f"{name} has shape {x.shape}, but the model has N = {N} inputs "
                             f"(rows of f)", fix=fix)
    if x.dtype.kind not in "iu":
        raise IdentirepError(f"{name} has dtype {x.dtype}; it must hold integers (label or "
                             "text ids)", fix=fix + " (an integer dtype, e.g. int64)")
    if N:
        lo, hi = int(x.min()), int(x.max())      # Python ints: no uint64/int64 wrap-around
        top = V if V is not None else np.iinfo(np.int64).max
        if lo < low or hi >= top:
            bad = int(np.flatnonzero((x < low) | (x >= top))[0])
            allowed = f"[{low}, {V})" if V is not None else f"[{low}, 2^63 - 1)"
            raise IdentirepError(f"{name}[{bad}] is {int(x[bad])}, outside {allowed}",
                                 fix=fix)
    x = x.astype(np.int64)
    if name == "documents" and N > 1 and (np.diff(x) < 0).any():
        bad = int(np.flatnonzero(np.diff(x) < 0)[0]) + 1
        raise IdentirepError(f"documents decreases at position {bad} ({int(x[bad - 1])} then "
                             f"{int(x[bad])}); positions must come text by text, in order",
                             fix=fix)
    return x


@dataclass(eq=False)
class Model:
    """A softmax-family model evaluated on a shared set of inputs and labels.

    ``p(y|x) = softmax_y(f(x) . g(y) + b(y))``. ``f`` holds one row per input (N x M),
    ``g`` one row per label (V x M), ``bias`` one value per label (optional).
    Arrays may live in NumPy (CPU engine) or on a GPU (CuPy / torch CUDA tensors).
    ``metadata`` holds free-form facts about where the arrays came from (extraction
    settings, storage conversions); :func:`identirep.save_model` stores it with the arrays.

    A bias of -inf marks a masked or padded label, which the model never predicts; such a
    model is refused unless ``drop_masked_labels`` is given: ``True`` drops those labels (their
    rows of g, bias and labels), a sequence of label ids drops these too (to keep the label
    set of a model compared with this one: :func:`identirep.io.load_models` does this).
    ``dropped_labels`` holds the original ids of the dropped labels, and
    ``metadata["masked_labels_dropped"]`` records them.

    Three optional per-input arrays (keyword arguments; int64 of length N once validated)
    tie the inputs to a text: ``tokens``, the input token (a label id) at each position;
    ``targets``, the observed label of each input (for a language model the next token of
    the same text, for a classifier the true class), -1 where there is none (a text's last
    position); ``documents``, the text each position belongs to, non-decreasing. Dropping
    labels renumbers ``tokens`` and ``targets``; a token or target whose label is dropped
    becomes -1, and ``metadata["masked_labels_dropped"]`` counts them (``tokens_lost``,
    ``targets_lost``). ``metadata["tokenizer"]`` (``{"sha256": ..., "size": ...}``), when
    present, identifies the tokenizer: :func:`check_pair` refuses two models whose
    tokenizers or texts differ.
    """

    f: object
    g: object
    bias: Optional[object] = None
    name: Optional[str] = None
    labels: Optional[Sequence[str]] = field(default=None, repr=False)
    metadata: dict = field(default_factory=dict, repr=False)
    drop_masked_labels: InitVar[Union[bool, Sequence[int]]] = False
    tokens: Optional[np.ndarray] = field(default=None, repr=False)
    targets: Optional[np.ndarray] = field(default=None, repr=False)
    documents: Optional[np.ndarray] = field(default=None, repr=False)
    dropped_labels: np.ndarray = field(init=False, repr=False,
                                       default_factory=lambda: np.empty(0, np.int64))

    def __post_init__(self, drop_masked_labels):
        self.f = _from_list(self.f, "f (embeddings)", "one row of M numbers per input")
        self.g = _from_list(self.g, "g (unembeddings)", "one row of M numbers per label")
        self.bias = _from_list(self.bias, "bias", "one number per label")
        if self.name is not None and not isinstance(self.name, str):
            raise IdentirepError(f"name must be a string or None, got {type(self.name).__name__} "
                                 f"{self.name!r}", fix=f"pass name=str(...), e.g. {str(self.name)!r}")
        check_array(self.f, "f (embeddings)", 2)
        check_array(self.g, "g (unembeddings)", 2)
        if self.f.shape[1] != self.g.shape[1]:
            raise IdentirepError(
                f"f has {self.f.shape[1]} dimensions but g has {self.g.shape[1]}; "
                "f(x) and g(y) must live in the same space (M)")
        if self.bias is not None:
            check_array(self.bias, "bias", 1, masked_ok=True)
            if self.bias.shape[0] != self.g.shape[0]:
                raise IdentirepError(
                    f"bias has {self.bias.shape[0]} entries but g has {self.g.shape[0]} labels")
        if self.labels is not None:
            self.labels = label_names(self.labels)
            if len(self.labels) != self.g.shape[0]:
                raise IdentirepError(
                    f"{len(self.labels)} label names given for {self.g.shape[0]} labels")
        if self.metadata is None:
            self.metadata = {}
        if not isinstance(self.metadata, dict):
            raise IdentirepError(
                f"metadata must be a dict, got {type(self.metadata).__name__}")
        V = self.V
        self.tokens = per_input(self.tokens, "tokens", self.N, V, -1)
        self.targets = per_input(self.targets, "targets", self.N, V, -1)
        self.documents = per_input(self.documents, "documents", self.N, None, 0)
        self._drop_masked(drop_masked_labels)
        if self.V < 2:
            raise IdentirepError("a model needs at least 2 labels")

    def _drop_masked(self, drop) -> None:
        masked = masked_labels(self.bias) if self.bias is not None else np.empty(0, np.int64)
        if isinstance(drop, (bool, np.bool_)):
            drop = bool(drop)
        elif drop is not None and (isinstance(drop, (str, bytes, dict))
                                   or not hasattr(drop, "__iter__")):
            raise IdentirepError(
                f"drop_masked_labels must be True, False or a sequence of label ids, got "
                f"{type(drop).__name__} {drop!r}")
        if drop is False or drop is None:
            if len(masked):
                raise IdentirepError(MASKED_LABELS.format(count=len(masked),
                                                          ids=first_ids(masked)))
            return
        V = self.V
        ids = masked
        if drop is not True:
            try:
                given = np.asarray(list(drop))
            except (TypeError, ValueError):
                given = np.asarray([None])     # ragged or mixed: refused below
            if given.ndim != 1 or given.size and (given.dtype.kind not in "iu" or given.min() < 0
                                                  or given.max() >= V):
                raise IdentirepError(
                    f"drop_masked_labels must be True, False or label ids in [0, {V}), got "
                    f"{first_ids(given) if given.ndim == 1 and given.dtype.kind in 'iu' else repr(drop):.200}")
            ids = np.union1d(masked, given.astype(np.int64))
        if not len(ids):
            return
        keep = np.setdiff1d(np.arange(V), ids)
        if len(keep) < 2:
            raise IdentirepError(
                f"dropping the {len(ids)} masked labels leaves {len(keep)} of the V={V} labels; "
                "a model needs at least 2")
        self.g = _take_rows(self.g, keep)
        if self.bias is not None:
            self.bias = _take_rows(self.bias, keep)
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep.tolist()]
        self.dropped_labels = ids
        self.metadata = dict(self.metadata)
        record = {
            "count": len(ids), "V_before": V, "ids": ids.tolist(),
            "why": "bias -inf (masked or padded) here or in a model compared with this one"}
        new_id = np.full(V + 1, -1, np.int64)    # new_id[-1] = -1: "none" stays "none"
        new_id[keep] = np.arange(len(keep))
        for k in ("tokens", "targets"):
            old = getattr(self, k)
            if old is not None:
                setattr(self, k, new_id[old])
                record[f"{k}_lost"] = int(((old >= 0) & (new_id[old] < 0)).sum())
        self.metadata["masked_labels_dropped"] = record

    @property
    def N(self) -> int:
        return int(self.f.shape[0])

    @property
    def V(self) -> int:
        return int(self.g.shape[0])

    @property
    def M(self) -> int:
        return int(self.f.shape[1])

    def augmented(self, dtype=np.float64):
        """(f, g) as NumPy arrays with the bias absorbed: f' = [f, 1], g' = [g, b].

        ``dtype=None`` keeps the stored float dtypes (no copy without a bias; with one, f', g'
        in the kind f, g and b share, else in the kind that holds all three: common_kind)."""
        f = to_numpy(self.f, dtype)
        g = to_numpy(self.g, dtype)
        if self.bias is None:
            return f, g
        b = to_numpy(self.bias, dtype)
        kinds = {x.dtype.name for x in (f, g, b)}
        dt = f.dtype if len(kinds) == 1 else np.dtype(common_kind(*kinds))
        return (np.hstack([f.astype(dt, copy=False), np.ones((f.shape[0], 1), dt)]),
                np.hstack([g.astype(dt, copy=False), b.astype(dt)[:, None]]))

    def numpy(self, dtype=np.float64):
        """(f, g, bias) as NumPy arrays of ``dtype`` (bias may be None)."""
        b = None if self.bias is None else to_numpy(self.bias, dtype)
        return to_numpy(self.f, dtype), to_numpy(self.g, dtype), b

    def __repr__(self) -> str:
        b = ", bias" if self.bias is not None else ""
        return f"Model({self.name or 'unnamed'}: N={self.N}, V={self.V}, M={self.M}{b})"


def common_kind(*kinds: str) -> str:
    """The float kind that holds every value of these kinds: the kind they share, else
    float64 when one is float64, else float32 (float16 and bfloat16 fit in it)."""
    if len(set(kinds)) == 1:
        return kinds[0]
    return "float64" if "float64" in kinds else "float32"


#: the largest bound on |logit| (sqrt(M) max |f| x sqrt(M) max |g| + max |b|) whose squares
#: and variances can be summed without overflow, by the dtype the logits are computed in. The
#: same limit holds for f and g on their own (sqrt(M) max |f|, sqrt(M) max |g|): the measures
#: sum their squares and products too (second moments, scatter matrices), in the same dtype.
#: Its reciprocal is the floor of each nonzero scale, below which the squares underflow (to
#: subnormal numbers or 0) and the variances lose their digits.
LOGIT_LIMIT = {"float64": 1e100, "float32": 1e15}
#: models whose input-dependent logits (sqrt(M) max |f| x sqrt(M) max |g|) stay below this
#: are refused: log-normalisers (about log V) round by eps log V, which swamps logit
#: differences this small. float32: at 3e-3 d_LLV moves by ~2e-4, at 3e-2 by 4e-6 against
#: float64 (its agreement is 1e-5); float64: at 3e-7 the engine and the reference differ by
#: 6e-9, at 3e-11 by 5e-5, at 3e-19 one of them finds every label pair degenerate
MIN_LOGIT_SPREAD = {"float64": 1e-6, "float32": 1e-2}


def max_abs(a) -> float:
    """max |a| as a float64 number, where the array lives (NaN for an unknown array type)."""
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        return float(a.detach().abs().max().double().item()) if a.numel() else 0.0
    if mod == "cupy":
        return float(abs(a).max()) if a.size else 0.0
    if mod == "numpy" or isinstance(a, np.ndarray):
        x = a.astype(np.float32) if a.dtype.name == "bfloat16" else a
        return float(max(x.max(), -x.min())) if x.size else 0.0   # no |x| copy
    return float("nan")


def _compute_kind(m) -> str:
    """"float64" when ``m.augmented(None)`` is float64 (f and g float64; with a bias, one of
    f, g and the bias: ``common_kind``), else "float32", from the arrays' dtype names."""
    f64 = [_dtype_name(x).endswith("float64")
           for x in ((m.f, m.g) if m.bias is None else (m.f, m.g, m.bias))]
    return "float64" if (all(f64) if m.bias is None else any(f64)) else "float32"


def check_logit_scale(a: "Model", b: "Model", large_only: bool = False,
                      spread: bool = True, only: Optional[int] = None) -> None:
    """Refuse models whose logits, f or g are too large or too small to be squared and summed
    in the dtype the pair is computed in (float64 when both models' are: ``_compute_kind``),
    naming the scale: an f entry of 1e200, or a float32 g
    entry of 1e20 next to a tiny f, would overflow into inf and NaN terms; logits that vary
    by less than MIN_LOGIT_SPREAD are lost in the log-normalisers' rounding. The logits'
    bound must stay within LOGIT_LIMIT, their input-dependent part sqrt(M) max |f| x sqrt(M)
    max |g| above MIN_LOGIT_SPREAD, and sqrt(M) max |f|, sqrt(M) max |g| each within
    [1 / LOGIT_LIMIT, LOGIT_LIMIT] of the dtype (a zero array aside: that is a constant,
    refused by the measures that need variation). A fix is offered only where it works.
    ``large_only``: only the limits that more data can never lift (too large: a stream's
    batch, checked with the largest magnitudes seen so far). ``spread=False``: not the
    logits' spread; ``only`` = 0 or 1: that model alone, in the pair's compute dtype
    (``logit_spread_failure``)."""
    spread_on = spread
    # the pair's compute dtype, as the pass takes it: float64 only when both models' are
    kind = "float64" if all(_compute_kind(m) == "float64" for m in (a, b)) else "float32"
    with np.errstate(over="ignore", invalid="ignore"):
        for k, (m, nm) in enumerate(((a, "first"), (b, "second"))):
            if only is not None and k != only:
                continue
            fs, gs = (max_abs(x) * np.sqrt(x.shape[1]) for x in (m.f, m.g))
            if not (np.isfinite(fs) and np.isfinite(gs)) and np.isnan(fs + gs):
                continue            # an array type whose maximum is not read here
            bias = 0.0 if m.bias is None else max_abs(m.bias)
            bound = fs * gs + bias
            own = _compute_kind(m) == "float64"
            said = (kind if own == (kind == "float64") else
                    f"{kind} (the pair's compute dtype: the other model is not float64)")
            limit = LOGIT_LIMIT[kind]
            spread = fs * gs          # the input-dependent part of the logits
            f64 = LOGIT_LIMIT["float64"]
            cast = ((", or cast the other model's arrays to float64 too" if own else
                     ", or cast f and g to float64") + " (limits 1e-100 to 1e100)"
                    if kind == "float32" and bound <= f64
                    and MIN_LOGIT_SPREAD["float64"] <= spread else "")
            parts = f"sqrt(M) max |f| {fs:.3g} x sqrt(M) max |g| {gs:.3g}" + (
                f" + max |b| {bias:.3g}" if bias else "")
            if not bound <= limit:
                size = (f"{bound:.3g}" if np.isfinite(bound) else
                        f"1e{np.log10(fs) + np.log10(gs):.0f}")
                raise IdentirepError(
                    f"the {nm} model's logits reach about {size} ({parts}), beyond the "
                    f"{limit:.0e} that {said} sums of squared log-likelihoods allow; rescale f "
                    "and g to their trained scale (the measures are not invariant to the "
                    f"logits' scale){cast}, or check the data for corrupted values")
            # logits too small to resolve: neither balancing nor (below 1e-6) float64 helps
            if spread_on and not large_only and 0 < spread < MIN_LOGIT_SPREAD[kind]:
                raise IdentirepError(
                    f"the {nm} model's logits vary with the input by at most about "
                    f"{spread:.3g} (sqrt(M) max |f| {fs:.3g} x sqrt(M) max |g| {gs:.3g}), "
                    f"below the {MIN_LOGIT_SPREAD[kind]:.0e} that {said} resolves: "
                    f"log-normalisers (about log V) round by ~{np.finfo(kind).eps:.0e} of "
                    "themselves, which swamps differences this small (balancing f against g "
                    "leaves them as they are)",
                    fix=(("cast the other model's arrays to float64 too" if own else
                          "cast f and g to float64") + " (limit 1e-6), or "
                         if kind == "float32" and spread >= MIN_LOGIT_SPREAD["float64"] else "")
                    + "rescale f and g to their trained scale (the measures are not invariant "
                      "to the logits' scale)")
            # a factor too large first (its squares overflow), then one too small
            for what, scale, other in sorted((("f", fs, gs), ("g", gs, fs)),
                                             key=lambda x: x[1] <= limit):
                if scale <= limit and (large_only or not 0 < scale < 1 / limit):
                    continue
                # the logits are within the limits: so are f c and g / c with c = sqrt(gs /
                # fs), both sqrt(fs gs), unless a bias makes the logits
                c = np.sqrt(gs) / np.sqrt(fs)
                side = (f"beyond the {limit:.0e} that {said} sums of its squares (its second "
                        "moments) allow" if scale > limit else
                        f"below the {1 / limit:.0e} under which {said} sums of its squares "
                        "(its second moments) underflow")
                raise IdentirepError(
                    f"the {nm} model's {what} reaches {scale / np.sqrt(m.M):.3g} (sqrt(M) max "
                    f"|{what}| {scale:.3g}), {side}, though its logits stay within the limits "
                    f"(sqrt(M) max |{'g' if what == 'f' else 'f'}| is {other:.3g})",
                    fix=f"balance the factors: f * c and g / c with c = {c:.3g} leave every "
                        "logit unchanged (and every measure but d_rep, which is in squared "
                        f"units of f and scales by c^2){cast}")


def logit_spread_failure(a: "Model", b: "Model") -> Optional[IdentirepError]:
    """``check_logit_scale``'s objection when it is only that a model's logits vary too little
    to resolve (f and g each within the limits of the pair's compute dtype, so their moments,
    mCCA and d_rep, are exact enough): returned, for the measures that read the logits to fail
    with; None when there is none. Any other objection raises, as ``check_logit_scale``
    raises it for that model (a model with both: its spread, which balancing cannot lift),
    before a spread objection of the other model."""
    found = None
    for k in (0, 1):
        try:
            check_logit_scale(a, b, only=k)
            continue
        except IdentirepError as err:
            full = err
        try:
            check_logit_scale(a, b, spread=False, only=k)
        except IdentirepError:
            raise full from None
        found = found or full
    return found


def to_numpy(a, dtype=None) -> np.ndarray:
    """Copy-free where possible conversion of NumPy/CuPy/torch arrays to NumPy."""
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        a = a.get()
    elif mod == "torch":
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a


def tokenizer_fingerprint(m: Model) -> Optional[str]:
    """``m.metadata["tokenizer"]["sha256"]`` when it is there (a string), else None."""
    tok = m.metadata.get("tokenizer") if isinstance(m.metadata, dict) else None
    sha = tok.get("sha256") if isinstance(tok, dict) else None
    return sha if isinstance(sha, str) and sha else None


def _token(labels, i: int) -> str:
    return repr(labels[i]) if labels is not None and 0 <= i < len(labels) else "(none)"


#: False inside ``allow_tokenizer_mismatch()``: check_pair then compares label ids as they are
_TOKENIZER_CHECK: contextvars.ContextVar = contextvars.ContextVar("identirep_tokenizer_check",
                                                                  default=True)
#: how to compare models whose tokenizers differ anyway (the fixes and notes name it)
MISMATCH_OVERRIDE = ("check_tokenizer=False (compare, matrix), "
                     "identirep.allow_tokenizer_mismatch() (any measure), "
                     "--allow-tokenizer-mismatch (identirep compare, matrix)")


@contextlib.contextmanager
def allow_tokenizer_mismatch(allow: bool = True) -> Iterator[None]:
    """Within the block, pairs whose tokenizers' vocabularies or label names differ are
    compared by label id as they are (``check_pair`` refuses them otherwise); the per-input
    ``tokens`` must still be equal, and N and V too. For a measure called on its own
    (``kl``, ``d_llv``, ``engine`` ..., which say what differs in an ``IdentirepWarning``:
    their results have no notes) and the ``Accumulator``; ``compare`` and ``matrix`` take
    ``check_tokenizer=False``. It holds for this thread (a context variable);
    ``identirep.dask.matrix`` passes it on to its workers.

    Parameters
    ----------
    allow : bool
        False leaves the check as it is around the block (a flag passed through): on, unless
        an enclosing ``allow_tokenizer_mismatch()`` turned it off, which a nested False does
        not undo (``compare(check_tokenizer=True)``, the default, inside such a block
        compares the pair by label id)."""
    if not isinstance(allow, bool):
        raise IdentirepError(f"allow must be True or False, got {allow!r:.60}")
    token = _TOKENIZER_CHECK.set(not allow and _TOKENIZER_CHECK.get())
    try:
        yield
    finally:
        _TOKENIZER_CHECK.reset(token)


def tokenizer_option(fn):
    """Decorator of ``compare`` and ``matrix``: their keyword ``check_tokenizer`` (default
    True; False runs the call within :func:`allow_tokenizer_mismatch`)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        check = kwargs.get("check_tokenizer", True)
        if not isinstance(check, bool):
            raise IdentirepError(f"check_tokenizer must be True or False, got {check!r:.60}",
                                 fix="check_tokenizer=False compares models whose tokenizers "
                                     "differ by token id")
        with allow_tokenizer_mismatch(not check):
            return fn(*args, **kwargs)
    return call


def tokenizer_checked() -> bool:
    """Whether ``check_pair`` refuses pairs whose tokenizers' vocabularies (or label names)
    differ: True but within :func:`allow_tokenizer_mismatch`."""
    return _TOKENIZER_CHECK.get()


def _vocabulary(a: Model, b: Model) -> Tuple[str, str]:
    """Whether two models' vocabularies (ordered token strings) are "equal", "differ" or
    are "unknown" (neither the labels nor the fingerprints' vocabulary parts of both), and
    where they first differ."""
    la, lb = a.labels, b.labels
    if la is not None and lb is not None:
        if list(la) == list(lb):
            return "equal", ""
        i = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
        return "differ", (f"token id {i} is {_token(la, i)} in the first and {_token(lb, i)} "
                          "in the second (the first token that differs)")
    ta, tb = (m.metadata.get("tokenizer") for m in (a, b))
    va, vb = ((t.get("parts") or {}).get("vocabulary") if isinstance(t, dict) else None
              for t in (ta, tb))
    which = "both models" if la is None and lb is None else "one model"
    if va is not None and vb is not None and va == vb:
        return "equal", ""
    if (va is not None and vb is not None) or a.V != b.V:
        return "differ", (f"the token strings are not stored with {which}, so the first "
                          "differing token cannot be named")
    return "unknown", (f"the token strings are not stored with {which}, so whether the "
                       "vocabularies differ cannot be told")


def _tokenizer_head(a: Model, b: Model) -> str:
    ta, tb = a.metadata["tokenizer"], b.metadata["tokenizer"]
    sizes = (f"{ta.get('size', '?')} and {tb.get('size', '?')} tokens"
             if ta.get("size") != tb.get("size") else f"{ta.get('size', '?')} tokens each")
    return (f"the models' tokenizers differ (fingerprints {tokenizer_fingerprint(a)[:12]}... "
            f"and {tokenizer_fingerprint(b)[:12]}..., {sizes})")


def check_same_tokenizer(a: Model, b: Model) -> None:
    """Refuse two models whose tokenizers' vocabularies differ: both carry a tokenizer
    fingerprint (``metadata["tokenizer"]["sha256"]``, written by ``identirep extract``), the
    two differ, and so do the ordered token strings (``labels``, else the fingerprints'
    ``vocabulary`` parts); the message names the first token id whose string differs.
    Tokenizers with the same strings whose settings differ (special tokens, normalisation,
    pre-tokenisation, merges, or the tokenizers library's serialisation of them) pass: the
    texts are compared by their ``tokens`` (:func:`check_same_texts`), and
    :func:`tokenizer_note` says what differs. Models without a fingerprint pass, and so does
    every pair within :func:`allow_tokenizer_mismatch`.

    Parameters
    ----------
    a, b : Model

    Raises
    ------
    IdentirepError
        When the vocabularies differ, or cannot be compared (no strings, no parts).
    """
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa is None or fb is None or fa == fb or not tokenizer_checked():
        return
    state, detail = _vocabulary(a, b)
    if state == "equal":
        return
    raise IdentirepError(
        f"{_tokenizer_head(a, b)}: {detail}",
        fix="extract both models with the same tokenizer (identirep extract reads it from each "
            "model directory: copy one tokenizer's files over the other's), or, to compare "
            f"them by token id all the same: {MISMATCH_OVERRIDE}")


def tokenizer_note(a: Model, b: Model) -> Optional[str]:
    """A note for the report of a pair that ``check_pair`` let through though its tokenizers
    differ (None when they do not): settings that differ with equal token strings, or,
    within :func:`allow_tokenizer_mismatch`, vocabularies or label names that differ."""
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa is not None and fb is not None and fa != fb:
        state, detail = _vocabulary(a, b)
        if state != "equal":
            return (f"{_tokenizer_head(a, b)}: {detail}; compared by token id all the same, "
                    "as asked")
        ta, tb = a.metadata["tokenizer"], b.metadata["tokenizer"]
        schemes = [t.get("scheme", 1) for t in (ta, tb)]
        if schemes[0] != schemes[1]:
            return (f"{_tokenizer_head(a, b)}, though their {a.V} token strings are equal: "
                    f"the fingerprints were made by different schemes ({schemes[0]} and "
                    f"{schemes[1]}; scheme 2 leaves the padding token out), so whether the "
                    "settings differ is not known; extract both with this version to tell")
        parts = [k.replace("_", " ") for k in ("special_tokens", "pipeline")
                 if isinstance(ta.get("parts"), dict) and isinstance(tb.get("parts"), dict)
                 and ta["parts"].get(k) != tb["parts"].get(k)]
        what = (f" ({', '.join(parts)})" if parts else "")
        texts = ("both models' input tokens are equal (checked), so the texts tokenized "
                 "alike" if a.tokens is not None and b.tokens is not None else
                 "the models do not both carry their input tokens, so whether the texts "
                 "tokenized alike is not checked")
        return (f"{_tokenizer_head(a, b)}, though their {a.V} token strings are equal: their "
                f"settings differ{what} (special tokens, normalisation, pre-tokenisation or "
                f"merges, or how the tokenizers library wrote them); {texts}")
    la, lb = a.labels, b.labels
    if la is not None and lb is not None and list(la) != list(lb):
        i = next(i for i, (x, y) in enumerate(zip(la, lb)) if x != y)
        return (f"the label names differ (label {i} is {la[i]!r} in the first and {lb[i]!r} "
                "in the second); compared by label id all the same, as asked")
    return None


def warn_tokenizer_note(a: Model, b: Model) -> None:
    """For a measure called on its own (its result has no notes): what ``tokenizer_note``
    says of the pair, as an IdentirepWarning."""
    note = tokenizer_note(a, b)
    if note:
        warnings.warn(f"{note} (a measure called on its own carries no notes; compare's and "
                      "matrix's do)", IdentirepWarning, stacklevel=_outside_stacklevel())


def _outside_stacklevel() -> int:
    """``warnings.warn``'s stacklevel, called from the function that called this, of the
    first frame outside this package: the line of the caller's code that asked."""
    import os
    import sys
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def check_same_texts(a: Model, b: Model) -> None:
    """Refuse two models (of equal N) extracted on different texts: both carry ``tokens``
    (or ``documents``) and they differ; the message names the first position that differs."""
    for key, what in (("tokens", "input tokens"), ("documents", "text boundaries")):
        x, y = getattr(a, key), getattr(b, key)
        if x is None or y is None or np.array_equal(x, y):
            continue
        i = int(np.flatnonzero(x != y)[0])
        where = ("" if a.documents is None else f", text {int(a.documents[i])}")
        if key == "tokens":
            shown = (f"token {int(x[i])} {_token(a.labels, int(x[i]))} in the first and "
                     f"{int(y[i])} {_token(b.labels, int(y[i]))} in the second")
        else:
            shown = f"text {int(x[i])} in the first and text {int(y[i])} in the second"
        raise IdentirepError(
            f"the models were extracted on different texts: their {what} first differ at "
            f"position {i}{where}: {shown}",
            fix="extract both models from the same text file with the same options "
                "(--max-length, the same tokenizer)")


def check_pair(a: Model, b: Model, same_dim: bool = False, what: str = "") -> None:
    """Two models must share the inputs and the labels (and M when ``same_dim``): the same
    tokenizer vocabulary where both name one (:func:`check_same_tokenizer`), the same label
    names where both carry them, and the same texts where both carry them
    (:func:`check_same_texts`). Within :func:`allow_tokenizer_mismatch` vocabularies and
    label names may differ (N, V and the texts may not)."""
    for m, nm in ((a, "first"), (b, "second")):
        if not isinstance(m, Model):
            raise IdentirepError(f"the {nm} argument must be an identirep.Model, got {type(m).__name__}")
    da, db = a.dropped_labels, b.dropped_labels
    if len(da) and len(db) and not np.array_equal(da, db):
        # label id y means another token in each: ids after the first dropped one shifted
        raise IdentirepError(
            f"the models dropped different labels (ids {first_ids(da)} vs {first_ids(db)}), so "
            "their label ids no longer name the same labels",
            fix="drop the same labels from both: identirep.io.load_models drops the union of "
                "every model's masked labels, or pass that union as drop_masked_labels to each")
    check_same_tokenizer(a, b)
    if a.N != b.N:
        texts = ""
        if a.tokens is not None and b.tokens is not None:
            n = min(a.N, b.N)
            diff = np.flatnonzero(a.tokens[:n] != b.tokens[:n])
            texts = (f" (their input tokens first differ at position {int(diff[0])})"
                     if len(diff) else f" (the first {n} input tokens agree)")
        raise IdentirepError(
            f"the models were evaluated on different inputs: N={a.N} vs N={b.N}{texts}; "
            "both f arrays must have one row per shared input, in the same order")
    if a.V != b.V:
        raise IdentirepError(
            f"the models have different label sets: V={a.V} vs V={b.V}; "
            "they must share the labels (tokenizer), in the same order")
    if (a.labels is not None and b.labels is not None and list(a.labels) != list(b.labels)
            and tokenizer_checked()):
        bad = next(i for i, (x, y) in enumerate(zip(a.labels, b.labels)) if x != y)
        raise IdentirepError(
            f"label order differs at index {bad}: {a.labels[bad]!r} vs {b.labels[bad]!r}",
            fix="reorder one model's g rows so the labels match, or, to compare the models by "
                f"label id all the same: {MISMATCH_OVERRIDE}")
    check_same_texts(a, b)
    if same_dim and a.M != b.M:
        raise IdentirepError(
            f"{what or 'this measure'} needs models of equal representation dimension, "
            f"got M={a.M} and M={b.M}")
