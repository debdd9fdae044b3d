"""The worker side of ``identirep.dask``: what its tasks run on the workers, and what a worker
keeps between the tasks of a run (models read from files, Accumulator prototypes), let go of
when the run ends."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from .errors import IdentirepError

#: the models a worker keeps loaded between tasks (most recently used first out last)
KEEP_MODELS = 2

_LOADED: "OrderedDict[tuple, SimpleNamespace]" = OrderedDict()
_LOCK = threading.Lock()
#: a lock per model being read (a worker's threads read each model once)
_READING: "dict[tuple, threading.Lock]" = {}
#: the runs this worker was told are over (the most recent ``_FINISHED_KEPT``): a task of
#: theirs that still runs keeps nothing for later
_FINISHED: "OrderedDict[str, None]" = OrderedDict()
_FINISHED_KEPT = 1024


def _finish(token: str) -> None:
    """Under ``_LOCK``: mark the run ``token`` over."""
    _FINISHED[token] = None
    while len(_FINISHED) > _FINISHED_KEPT:
        _FINISHED.popitem(last=False)


def _signature(path: str) -> tuple:
    """What says a model file is the one described: size and modification time of the file,
    or of each file in a directory of .npy files."""
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        return tuple((n, *_stamp(os.path.join(path, n))) for n in names)
    return _stamp(path)


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _loaded(token: str, k: int, path: str, masked, signature=None) -> SimpleNamespace:
    """Model k of the run ``token``, read on this worker or kept from an earlier task of that
    run (the ``KEEP_MODELS`` most recent), with its caches per compute dtype."""
    key = (token, k)
    with _LOCK:
        entry = _LOADED.get(key)
        if entry is not None:
            _LOADED.move_to_end(key)
            return entry
        reading = _READING.setdefault(key, threading.Lock())
    with reading:     # one read of a model at a time: a worker's other threads wait for it
        with _LOCK:
            entry = _LOADED.get(key)
        try:
            return entry if entry is not None else _read_model(token, key, path, masked,
                                                               signature)
        finally:
            with _LOCK:
                _READING.pop(key, None)


def _read_model(token: str, key: tuple, path: str, masked, signature) -> SimpleNamespace:
    from .io import load_model
    if signature is not None and _signature(path) != signature:
        raise IdentirepError(f"{path} changed while the matrix was computed (its size or "
                             "modification time differs from when it was first read)",
                             fix="leave the model files unchanged until the matrix is done")
    before = _signature(path)
    model = load_model(path, drop_masked_labels=masked)
    return _keep(_LOADED, key, token, SimpleNamespace(model=model, caches={}, signature=before,
                                                      lock=threading.Lock()))


def _keep(cache: OrderedDict, key, run: str, value):
    """``value``, kept in ``cache`` (the ``KEEP_MODELS`` most recent) unless the run ``run``
    is over (it failed while this task ran: nothing would let go of it)."""
    with _LOCK:
        if run not in _FINISHED:
            cache[key] = value
            while len(cache) > KEEP_MODELS:
                cache.popitem(last=False)
    return value


def _forget(token: str) -> None:
    """Let go of the models this worker keeps for the run ``token``, and keep none that a
    task of that run, still running, reads later."""
    with _LOCK:
        _finish(token)
        for key in [key for key in _LOADED if key[0] == token]:
            del _LOADED[key]


def _masked_task(path: str) -> np.ndarray:
    from .io import masked_in_file
    return masked_in_file(path)


def _describe_task(token: str, k: int, path: str, masked, first: str, checked: bool) -> dict:
    """What the client needs of model k: its name, shape, the dtype its pass runs in, the
    file's signature, its ``_check_key``, and for k > 0 the IdentirepError of ``check_pair``
    (model 0, model k) or None (the client checks the other pairs whose keys differ by
    ``_check_task`` before any pair runs); nothing of N or V size. ``checked``: the
    tokenizer check is on (``allow_tokenizer_mismatch`` holds in the caller's thread, not
    here)."""
    from .model import allow_tokenizer_mismatch, check_pair
    e = _loaded(token, k, path, masked)
    m = e.model
    problem = None
    if k > 0:
        m0 = _loaded(token, 0, first, masked).model
        with allow_tokenizer_mismatch(not checked):
            try:
                check_pair(m0, m)
            except IdentirepError as err:
                problem = err
    return dict(name=m.name, N=m.N, V=m.V, M=m.M, float64=_in_float64(m), problem=problem,
                dropped_labels=np.asarray(m.dropped_labels), signature=e.signature,
                check_key=_check_key(m))


def _check_key(m) -> tuple:
    """What ``check_pair`` reads of a model, in digests: two models with equal keys pass
    ``check_pair`` against each other (the client then needs no check task for their pair)."""
    import hashlib
    import json

    def digest(x):
        if x is None:
            return None
        if isinstance(x, np.ndarray):
            raw = (x.dtype.str + repr(x.shape)).encode() + np.ascontiguousarray(x).tobytes()
        else:     # JSON: no two lists of labels (or metadata) share a text
            raw = json.dumps(x, sort_keys=True, default=repr).encode()
        return hashlib.sha256(raw).hexdigest()
    tok = m.metadata.get("tokenizer") if isinstance(m.metadata, dict) else None
    return (m.N, m.V, digest(None if m.labels is None else list(m.labels)),
            digest(m.tokens), digest(m.documents), digest(np.asarray(m.dropped_labels)),
            digest(tok))


def _check_task(token: str, ij, files: dict, masked, checked: bool):
    """``check_pair`` of models i and j (``files``: k -> (path, signature)) on this worker:
    its IdentirepError, or None."""
    from .model import allow_tokenizer_mismatch, check_pair
    models = [_loaded(token, k, files[k][0], masked, files[k][1]).model for k in ij]
    with allow_tokenizer_mismatch(not checked):
        try:
            check_pair(*models)
        except IdentirepError as err:
            return err
    return None


def _in_float64(m) -> bool:
    """Whether ``m.augmented(None)`` is float64, from the dtypes of one row of f, g and the
    bias (no copy of f or g)."""
    from .model import common_kind, to_numpy
    parts = [m.f[:1], m.g[:1]] + ([] if m.bias is None else [m.bias[:1]])
    kinds = [to_numpy(x, None).dtype.name for x in parts]
    if m.bias is None:
        return kinds == ["float64", "float64"]
    return (kinds[0] if len(set(kinds)) == 1 else common_kind(*kinds)) == "float64"


def _cache_of(entry: SimpleNamespace, cdt):
    from ._model_cache import ModelCache
    cdt = np.dtype(cdt).type
    with entry.lock:
        if cdt not in entry.caches:
            entry.caches[cdt] = ModelCache(entry.model, cdt)
        return entry.caches[cdt]


def _statistics_task(token: str, k: int, path: str, signature, masked, cdt) -> dict:
    """Model k's O(M^2) statistics at compute dtype ``cdt`` (``ModelCache.small_statistics``)."""
    return _cache_of(_loaded(token, k, path, masked, signature), cdt).small_statistics()


def _pairs_task(token: str, pairs, files: dict, masked, statistics: dict, opts: dict,
                checked: bool) -> tuple:
    """Both directions of each pair (i, j) of ``pairs`` (in pair order): ``_matrix.
    pair_cells`` of the pair's pass, on this worker, each model read once for all of them
    (``files``: k -> (path, signature)), their statistics taken from ``statistics`` ((i, j)
    -> {compute dtype: (statistics of i, of j)}). Returns ({pair: (cells, the pair's
    ``tokenizer_note``)}, None), or at the first pair that raises, (the results before it,
    (that pair, its exception))."""
    entries, cells = {}, {}
    for ij in pairs:
        try:
            for k in ij:
                if k not in entries:
                    path, sig = files[k]
                    entries[k] = _loaded(token, k, path, masked, sig)
            cells[ij] = _pair_cells([entries[k] for k in ij], ij, statistics[ij], opts, checked)
        except Exception as e:  # noqa: BLE001 - raised by the client, in pair order
            return cells, (ij, e)
    return cells, None


def _pair_cells(entries, ij, statistics: dict, opts: dict, checked: bool) -> tuple:
    """The pair's cells and its ``tokenizer_note`` (the client checked the pair before the
    run: ``_describe_task``, ``_check_task``)."""
    from ._matrix import pair_cells
    from .measures import _engine
    from .model import allow_tokenizer_mismatch, logit_spread_failure, tokenizer_note
    from .progress import silenced

    def caches(cdt):
        out = []
        for entry, shared in zip(entries, statistics.get(np.dtype(cdt).name, (None, None))):
            c = _cache_of(entry, cdt)
            if shared is not None:
                c.adopt(shared)
            out.append(c)
        return tuple(out)
    a, b = entries[0].model, entries[1].model
    with silenced(), allow_tokenizer_mismatch(not checked):
        e = _engine(a, b, "cpu", caches=caches, logit_failure=logit_spread_failure(a, b))
        return pair_cells(e, *ij, opts), tokenizer_note(a, b)


# ----------------------------------------------------------------------------- compare

_PROTOTYPES: "OrderedDict[str, object]" = OrderedDict()


def _accumulator(model: tuple):
    """An empty Accumulator of ``model`` = (its key, (g1, g2, bias1, bias2), its options):
    made from this process's prototype of that key (g checked, widened and hashed once per
    worker, not once per task)."""
    from .accumulate import Accumulator
    key, g, cfg = model
    with _LOCK:
        proto = _PROTOTYPES.get(key)
    if proto is None:
        proto = _keep(_PROTOTYPES, key, key, Accumulator(*g, **cfg))
    return proto.empty_like()


def _chunk_state_task(model: tuple, f1, f2) -> dict:
    """The statistics of one chunk of inputs (``Accumulator.state_dict`` without g)."""
    return _accumulator(model).update(f1, f2).state_dict(model=False)


def _merge_states_task(model: tuple, *states) -> dict:
    """Consecutive chunks' statistics merged in their order (the first chunk's inputs
    first)."""
    acc = _accumulator(model).load_state_dict(states[0])
    for s in states[1:]:
        acc.merge(_accumulator(model).load_state_dict(s))
    return acc.state_dict(model=False)


def _compute_task(model: tuple, state: dict, opts: dict):
    with _silenced():
        return _accumulator(model).load_state_dict(state).compute(**opts)


def _silenced():
    from .progress import silenced
    return silenced()


def _forget_prototype(key: str) -> None:
    with _LOCK:
        _finish(key)
        _PROTOTYPES.pop(key, None)
