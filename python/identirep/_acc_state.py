"""Reading an ``Accumulator.state_dict()`` back: every entry parsed and checked (format,
version, sizes, the models' fingerprint, shapes, finite values, signs, the scatter matrix's
symmetry and Cauchy-Schwarz bounds, the reservoir's priorities against its rows) before
anything is assigned, so that a refused state leaves the accumulator as it was."""
from __future__ import annotations

import hashlib
import math

import numpy as np

from ._reservoir import Reservoir, has_repeats, priorities
from .errors import IdentirepError
from .model import _FLOAT_KINDS, to_numpy
from .moments import Moments

#: the state's format, in ``state_dict()["format"]`` and ``["version"]``
STATE_FORMAT = "identirep.Accumulator"
STATE_VERSION = 2
#: the pass's per-input values kept with each reservoir row (rows of ``res_values``)
ROW_KEYS = ("L1", "L2", "kl12", "kl21", "H1", "H2", "agree", "row_mean1", "row_mean2",
            "row_m2_11", "row_m2_22", "row_m2_dd")
SUM_KEYS = ("kl12", "kl21", "H1", "H2", "agree", "row_m2_dd")
COL_KEYS = ("col_mean1", "col_mean2", "col_m2_11", "col_m2_22", "col_m2_12")
#: relative slack of the Cauchy-Schwarz and symmetry checks (sums merged in float64 from
#: float32 parts round by ~1e-7 of their size)
_SLACK = 1e-5


def parse_state(state: dict, acc) -> dict:
    """The statistics of ``state`` for the accumulator ``acc`` (its sizes, seed, fingerprint
    and wanted dtype), checked: {"n", "f_dtypes", "pass_dtype", "sums", "cols", "f_max_abs",
    "moments", "reservoir"}. Raises IdentirepError, naming the entry, on anything else."""
    if not isinstance(state, dict):
        raise IdentirepError(f"a state is a dict, got {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        raise IdentirepError(f"not an accumulator state (format {state.get('format')!r})",
                             fix="load what Accumulator.state_dict() returned")
    version = scalar(state, "version", int)
    if version != STATE_VERSION:
        raise IdentirepError(f"accumulator state version {version}; this identirep reads "
                             f"version {STATE_VERSION}",
                             fix="resume with the identirep version that saved it")
    for what in ("V", "M1", "M2", "reservoir", "seed"):
        v = scalar(state, what, int)
        if v != getattr(acc, what):
            raise IdentirepError(f"the state's {what} is {v}, this accumulator's "
                                 f"{getattr(acc, what)}", fix="load it into an accumulator made alike")
    if str(state.get("fingerprint")) != acc.fingerprint():
        raise IdentirepError("the state was accumulated with other g or biases",
                             fix="load it into an accumulator of the same models")
    n = scalar(state, "n", int)
    if n < 0:
        raise IdentirepError(f"the state's n is {n}")
    complete = scalar(state, "complete", bool)
    V, D, M1, M2 = acc.V, acc.M1 + acc.M2 + 2, acc.M1, acc.M2
    dts = [str(state.get(k, "")) or None for k in ("f1_dtype", "f2_dtype")]
    pdt = str(state.get("pass_dtype", "")) or None
    if n and (any(d not in _FLOAT_KINDS for d in dts) or pdt not in ("float32", "float64")):
        raise IdentirepError(f"the state's dtypes {dts}, {pdt!r} are not float dtypes")
    if n and acc._want is not None and dts != [acc._want] * 2:
        raise IdentirepError(f"the state's f batches have dtypes {dts}, but this accumulator's "
                             f"have dtype {acc._want}", fix="load it into an accumulator made alike")
    K = len(array(state.get("res_index"), "res_index", np.int64, (None,)))
    if K > acc.reservoir or (n and not 1 <= K <= n) or (not n and K):
        raise IdentirepError(f"the state keeps {K} rows of {n} inputs in a reservoir of "
                             f"{acc.reservoir}")
    if not complete and K < acc.reservoir:
        raise IdentirepError(f"the state is not complete but keeps {K} rows, fewer than its "
                             f"reservoir of {acc.reservoir}: a reservoir drops rows only when full")
    fdt = [np.float64 if d == "float64" else np.float32 for d in dts]
    spec = {
        "sums": (np.float64, (len(SUM_KEYS),)), "f_max_abs": (np.float64, (2,)),
        "u_mean": (np.float64, (D,)), "u_scatter": (np.float64, (D, D)),
        "res_index": (np.int64, (K,)), "res_priority": (np.int64, (K,)),
        "res_f1": (fdt[0], (K, M1)), "res_f2": (fdt[1], (K, M2)),
        "res_values": (np.float64, (len(ROW_KEYS), K)),
        **{k: (np.float64, (V,)) for k in COL_KEYS}}
    a = {k: array(state.get(k), k, dt, shape) for k, (dt, shape) in spec.items()}
    for k, x in a.items():
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise IdentirepError(f"the state's {k} holds NaN or Inf values")
    idx = a["res_index"]
    if K and ((np.diff(idx) <= 0).any() or idx[0] < 0 or idx[-1] >= n):
        raise IdentirepError("the state's reservoir indices are not increasing input indices")
    _check_values(a, n, V, M1)
    pri = a["res_priority"].view(np.uint64)
    if K and not np.array_equal(priorities([a["res_f1"], a["res_f2"]], acc.seed), pri):
        raise IdentirepError("the state's reservoir priorities are not the hashes of its rows "
                             "(a changed row, priority or seed)",
                             fix="load an unaltered state_dict()")
    if K and has_repeats(pri, a["res_f1"], a["res_f2"]):
        raise IdentirepError("the state's reservoir holds the same input twice")
    res = Reservoir(idx, pri, a["res_f1"], a["res_f2"], a["res_values"], complete)
    return {"n": n, "f_dtypes": dts, "pass_dtype": pdt, "complete": complete,
            "sums": dict(zip(SUM_KEYS, (float(x) for x in a["sums"]))),
            "cols": {k: a[k] for k in COL_KEYS},
            "f_max_abs": [float(x) for x in a["f_max_abs"]],
            "moments": Moments(n, a["u_mean"], a["u_scatter"]), "reservoir": res}


def _check_values(a: dict, n: int, V: int, M1: int) -> None:
    """Signs and bounds that the sums, moments and rows of any data satisfy."""
    s = dict(zip(SUM_KEYS, a["sums"]))
    logv = math.log(V)
    for k in ("kl12", "kl21", "row_m2_dd", "agree"):
        if s[k] < 0:
            raise IdentirepError(f"the state's sums hold a negative {k} sum ({s[k]:.3g})")
    if s["agree"] > n:
        raise IdentirepError(f"the state's sums count {s['agree']:.3g} top-1 agreements "
                             f"among {n} inputs")
    for k in ("H1", "H2"):   # each entropy is in [0, log V], up to rounding
        if not -1e-3 * n <= s[k] <= (logv + 1e-3) * n:
            raise IdentirepError(f"the state's {k} sum {s[k]:.3g} is no sum of {n} "
                                 f"entropies in [0, log V = {logv:.3g}]")
    for k in ("col_m2_11", "col_m2_22"):
        if (a[k] < 0).any():
            raise IdentirepError(f"the state's {k} holds negative sums of squares")
    bound = np.sqrt(a["col_m2_11"] * a["col_m2_22"])
    if (np.abs(a["col_m2_12"]) > bound * (1 + _SLACK) + 1e-300).any():
        raise IdentirepError("the state's col_m2_12 exceeds the Cauchy-Schwarz bound "
                             "sqrt(col_m2_11 col_m2_22)")
    S = a["u_scatter"]
    d = np.diag(S)
    if (d < 0).any():
        raise IdentirepError("the state's u_scatter has a negative diagonal")
    scale = np.sqrt(np.outer(d, d))
    if (np.abs(S - S.T) > _SLACK * scale).any():
        raise IdentirepError("the state's u_scatter is not symmetric")
    if (np.abs(S) > scale * (1 + _SLACK) + 1e-300).any():
        raise IdentirepError("the state's u_scatter exceeds the Cauchy-Schwarz bound "
                             "sqrt(S_ii S_jj)")
    fmax = a["f_max_abs"]
    for k, X, sl in ((0, a["res_f1"], slice(0, M1)), (1, a["res_f2"], slice(M1, None))):
        top = float(np.abs(X).max()) if X.size else 0.0
        mean = float(np.abs(a["u_mean"][sl][:X.shape[1]]).max()) if n else 0.0
        if fmax[k] < max(top, mean * (1 - _SLACK)):
            raise IdentirepError(f"the state's f_max_abs[{k}] = {fmax[k]:.3g} is below the "
                                 f"largest |f{k + 1}| of its rows or means ({max(top, mean):.3g})")
    v = dict(zip(ROW_KEYS, a["res_values"]))
    if not np.isin(v["agree"], (0.0, 1.0)).all() or any(
            (v[k] < 0).any() for k in ("row_m2_11", "row_m2_22", "row_m2_dd")):
        raise IdentirepError("the state's res_values hold impossible per-input values")


def state_of(acc) -> dict:
    """``acc.state_dict(model=False)``: the statistics as a flat dict (copies)."""
    r = acc._res
    d = {"format": STATE_FORMAT, "version": STATE_VERSION, "V": acc.V, "M1": acc.M1,
         "M2": acc.M2, "reservoir": acc.reservoir, "seed": acc.seed, "n": acc.n,
         "complete": bool(r.complete), "f1_dtype": acc.f_dtypes[0] or "",
         "f2_dtype": acc.f_dtypes[1] or "", "pass_dtype": acc.pass_dtype or "",
         "fingerprint": acc.fingerprint(),
         "sums": np.array([acc.sums[k] for k in SUM_KEYS]),
         "f_max_abs": np.array(acc.f_max_abs, np.float64),
         "u_mean": acc.moments.mean.copy(), "u_scatter": acc.moments.scatter.copy(),
         "res_index": r.index.copy(), "res_priority": r.priority.view(np.int64).copy(),
         "res_f1": r.f1.copy(), "res_f2": r.f2.copy(), "res_values": r.values.copy()}
    d.update({k: v.copy() for k, v in acc.cols.items()})
    return d


def fingerprint_of(host) -> str:
    """blake2b of the models' g and biases (``host``: pairs of NumPy arrays or None), all of
    their values with their NumPy dtypes and shapes."""
    h = hashlib.blake2b(digest_size=16)
    for pair in host:
        for x in pair:
            if x is None:
                h.update(b"none")
                continue
            h.update(f"{x.dtype.name}{tuple(x.shape)}".encode())
            h.update(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def restore(x: np.ndarray, label) -> object:
    """A stored g or bias in its dtype as given (``label``): float16 back from its NumPy
    array, bfloat16 from its exact float32 widening as a torch tensor (kept in float32
    without torch: the values and the fingerprint are the same)."""
    label = None if label is None else str(label)
    if label == "bfloat16":
        try:
            import torch
        except ImportError:
            return x
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)
    if label in _FLOAT_KINDS:
        return x.astype(label, copy=False)
    return x


def scalar(state: dict, key: str, kind):
    """A state entry as a Python ``kind`` (int, bool, ...)."""
    if key not in state:
        raise IdentirepError(f"the state has no {key!r}", fix="load a complete state_dict()")
    v = state[key]
    try:
        v = v.item() if hasattr(v, "item") else v
        if kind is bool:
            if isinstance(v, str) or v not in (True, False, 0, 1):
                raise ValueError
            return bool(v)
        out = kind(v)
        if kind is int and out != v:
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise IdentirepError(f"the state's {key} must be {kind.__name__}, got {v!r}") from None


def array(v, key: str, dtype=None, shape=None):
    """A state entry or argument as a NumPy array of ``dtype`` and ``shape`` (None: any).
    An empty entry (JSON's []) takes the dtype and, where known, the shape asked for."""
    if v is None:
        if shape is None:
            return None
        raise IdentirepError(f"the state has no {key!r}", fix="load a complete state_dict()")
    try:
        a = to_numpy(v) if hasattr(v, "shape") else np.asarray(v)
        if a.size == 0 and shape is not None and dtype is not None:
            want = tuple(0 if s is None else s for s in shape)
            if 0 in want and (a.ndim == 1 or a.shape == want):
                a = np.empty(want, dtype)
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
