"""Model files: save and load (f, g, b) with label names and metadata.

Three layouts, chosen by the path:

``NAME.safetensors`` (preferred)
    tensors ``f`` (N x M), ``g`` (V x M) and optional ``b`` (V); label names and metadata as
    JSON strings in the file's string metadata (keys ``identirep.labels`` and
    ``identirep.metadata``). Memory-mapped on load.
``NAME.npz``
    arrays ``f``, ``g``, optional ``b``, ``labels`` (a string array) and ``meta`` (a JSON string).
a directory
    ``f.npy``, ``g.npy``, optional ``b.npy``, optional ``labels.json`` (a JSON list of strings),
    ``meta.json``.

Each layout may also hold the per-input integer arrays ``tokens``, ``targets`` and
``documents`` (int64, length N; ``tokens.npy`` etc. in a directory), written by
``identirep extract`` and read into :class:`~identirep.Model` fields of those names, which
check their dtype (integers), length and range (label ids, -1 for none).

On load, ``bias`` is accepted as an alias of ``b``. Arrays load in the dtype they were stored in.
NumPy has no bfloat16 of its own: with ``ml_dtypes`` installed, bfloat16 arrays load as
``ml_dtypes.bfloat16``; without it they are widened to float32 (exactly) and
``model.metadata["converted"]`` says so. ``.npz`` and ``.npy`` cannot hold bfloat16, so such
arrays are stored there as their uint16 bit patterns, listed under ``meta["storage"]``.

Loading reads only what a model uses (``f``, ``g``, ``b``/``bias``, ``tokens``, ``targets``,
``documents``, labels, metadata); other
arrays or members are left unread. Before anything is allocated, each array's declared size
(shape x item size, from its header) is checked against the bytes that hold it and against
:data:`MAX_ARRAY_BYTES`; stored JSON is held to :data:`MAX_JSON_BYTES` and
:data:`MAX_JSON_DEPTH`. ``.npz`` members must be stored or deflated (what NumPy writes), not
encrypted; big-endian arrays load in native byte order; object arrays are never unpickled.
Whatever is wrong with a file raises :class:`~identirep.errors.IdentirepError`.
"""
from __future__ import annotations

import ast
import json
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from . import _bf16 as bf16
from .errors import IdentirepError, why
from .model import Model, label_names, masked_labels

__all__ = ["load_model", "load_models", "save_model", "load_metadata", "check_output",
           "SUPPORTED_FORMATS", "MAX_ARRAY_BYTES", "MAX_JSON_BYTES", "MAX_JSON_DEPTH",
           "MAX_NPY_HEADER_BYTES"]

SUPPORTED_FORMATS = (
    ".safetensors (preferred), .npz, or a directory of .npy files "
    "(f.npy, g.npy, optional b.npy, labels.json, meta.json)")

_LABELS_KEY = "identirep.labels"
_META_KEY = "identirep.metadata"
_STORAGE = "storage"          # reserved metadata key describing on-disk encodings
_BF16_BITS = "bfloat16_as_uint16"
_ROLES = {"f": "the embeddings, N x M", "g": "the unembeddings, V x M"}
#: the per-input integer arrays a model may carry (``Model.tokens`` etc.), stored as int64
_TEXT_KEYS = ("tokens", "targets", "documents")
_ARRAY_KEYS = ("f", "g", "b", "bias") + _TEXT_KEYS   # what a model uses; others are left unread

#: Largest array a model file may declare (shape x item size), checked before anything is
#: allocated; every array must also fit in the file that holds it.
MAX_ARRAY_BYTES = 256 * 2**30
#: Largest stored JSON text: metadata and label names (characters in .npz ``meta``).
MAX_JSON_BYTES = 64 * 2**20
#: Deepest nesting of JSON lists and objects in stored metadata.
MAX_JSON_DEPTH = 100
#: Longest .npy header (NumPy's own default limit).
MAX_NPY_HEADER_BYTES = 10_000
_DEFLATE_MAX_RATIO = 1032       # deflate expands data at most 1032-fold
_CHUNK = 8 * 2**20              # array data is read in chunks of this many bytes


# ----------------------------------------------------------------------------- helpers

def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes


def _format_of(path: Path, writing: bool) -> str:
    st = None if writing else _stat_existing(path)
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".npz"):
        if st is not None and not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise IdentirepError(f"{path} is {what}, not a {suffix} file",
                                 fix=f"give the path of a {suffix} file")
        return suffix[1:]
    if (st is not None and stat.S_ISDIR(st.st_mode)) or (
            writing and suffix == "" and not path.exists()):
        return "dir"
    if writing and path.is_dir():
        return "dir"
    what = f"'{suffix}'" if suffix else "(a file without extension)"
    raise IdentirepError(
        f"{path}: unknown model file format {what}; supported: {SUPPORTED_FORMATS}")


def _stat_existing(path: Path) -> os.stat_result:
    """os.stat of a path to read; IdentirepError when it is missing or cannot be reached."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise IdentirepError(f"{path} is a symbolic link to a missing file "
                                 f"({os.readlink(path)})", fix="point it at the file") from None
        raise IdentirepError(f"{path}: no such file or directory") from None
    except (OSError, ValueError) as e:   # a link loop, permissions, a NUL in the name
        raise IdentirepError(f"{path} cannot be opened: {getattr(e, 'strerror', None) or e}",
                             fix="give the path of a readable model file") from None


def _to_host(a, key: str):
    """(array, is_bf16): a contiguous NumPy array; bfloat16 data comes as its uint16 bits."""
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        a = a.detach().cpu().contiguous()
        if str(a.dtype) == "torch.bfloat16":
            import torch
            return a.view(torch.int16).numpy().view(np.uint16), True
        a = a.numpy()
    elif mod == "cupy":
        a = a.get()
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16), True
    if a.dtype.kind == "V":
        raise IdentirepError(f"{key} has an untyped dtype {a.dtype}; cannot store it")
    return a, False


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dumps(obj, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise IdentirepError(f"{what} must be JSON-serialisable: {e}") from None


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- save

def save_model(model: Model, path, metadata: Optional[dict] = None) -> Path:
    """Write ``model`` (f, g, bias, labels, metadata; tokens, targets and documents when it
    carries them) to ``path``.

    Parameters
    ----------
    model : Model
    path : str or Path
        The format follows the path: ``*.safetensors`` (preferred), ``*.npz``, or a directory
        (a path without extension, or an existing directory).
    metadata : dict, optional
        JSON-serialisable; merged over ``model.metadata``; the model's name is stored as
        ``metadata["name"]``.

    Returns
    -------
    Path
        The path written.
    """
    if not isinstance(model, Model):
        raise IdentirepError(f"save_model needs an identirep.Model, got {type(model).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise IdentirepError(f"metadata must be a dict, got {type(metadata).__name__}")
    path = _as_path(path)
    fmt = _format_of(path, writing=True)
    meta = dict(model.metadata)
    meta.update(metadata or {})
    meta.pop(_STORAGE, None)
    if model.name is not None:
        meta.setdefault("name", model.name)
    arrays = {"f": model.f, "g": model.g}
    if model.bias is not None:
        arrays["b"] = model.bias
    arrays.update({k: getattr(model, k) for k in _TEXT_KEYS if getattr(model, k) is not None})
    host, bits = {}, []
    for k, a in arrays.items():
        host[k], is_bits = _to_host(a, k)
        if is_bits:
            bits.append(k)
    labels = None if model.labels is None else list(model.labels)
    if fmt != "dir":
        path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        strings = {_META_KEY: _dumps(meta, "metadata")}
        if labels is not None:
            strings[_LABELS_KEY] = _dumps(labels, "labels")
        _replace_atomically(path, lambda p: _write_safetensors(p, host, bits, strings))
        return path
    if bits:
        meta[_STORAGE] = {_BF16_BITS: bits}
    meta_json = _dumps(meta, "metadata")
    if fmt == "npz":
        extra = {"meta": np.array(meta_json)}
        if labels is not None:
            extra["labels"] = np.array(labels, dtype=str)

        def write(p):
            with open(p, "wb") as fh:
                np.savez(fh, **host, **extra)
        _replace_atomically(path, write)
        return path
    path.mkdir(parents=True, exist_ok=True)
    for k, a in host.items():
        np.save(path / f"{k}.npy", a, allow_pickle=False)
    stale = ["bias.npy"] + [f"{k}.npy" for k in ("b",) + _TEXT_KEYS if k not in host]
    stale += [] if labels is not None else ["labels.json"]
    for name in stale:
        if (path / name).exists():
            (path / name).unlink()
    if labels is not None:
        (path / "labels.json").write_text(_dumps(labels, "labels"), encoding="utf-8")
    (path / "meta.json").write_text(meta_json, encoding="utf-8")
    return path


def check_output(path) -> Path:
    """Raise unless :func:`save_model` can write to ``path``: a known format, and a directory
    that exists or can be created, writable. Nothing is written; call it before a long
    computation whose result goes there."""
    path = _as_path(path)
    fmt = _format_of(path, writing=True)
    if fmt != "dir" and path.is_dir():
        raise IdentirepError(f"{path} is a directory; give a file name for the "
                             f"{path.suffix} file, or a directory path without extension")
    if fmt == "dir" and path.exists() and not path.is_dir():
        raise IdentirepError(f"{path} is a file; give a directory, or a .safetensors or .npz "
                             "file name")
    existing = path if fmt == "dir" else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IdentirepError(f"cannot write {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) or (
            path.is_file() and not os.access(path, os.W_OK)):
        raise IdentirepError(f"cannot write {path}: permission denied in {existing}")
    return path


def _write_safetensors(path: Path, host: dict, bits: list, strings: dict) -> None:
    ml = _ml_dtypes()
    if bits and ml is not None:
        host = {k: a.view(ml.bfloat16) if k in bits else a for k, a in host.items()}
    elif bits:
        # bfloat16 from torch and no ml_dtypes: NumPy cannot name the dtype, torch can.
        import torch
        import safetensors.torch
        tensors = {k: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if k in bits
                   else torch.from_numpy(a) for k, a in host.items()}
        safetensors.torch.save_file(tensors, str(path), metadata=strings)
        return
    import safetensors.numpy
    safetensors.numpy.save_file(host, str(path), metadata=strings)


# ----------------------------------------------------------------------------- load

def load_model(path, name: Optional[str] = None,
               drop_masked_labels: Union[bool, Sequence[int]] = False) -> Model:
    """Read a model written by :func:`save_model` (or by hand in one of the three layouts).

    Parameters
    ----------
    path : str or Path
        ``*.safetensors``, ``*.npz`` or a directory of ``.npy`` files, holding ``f``
        (N x M), ``g`` (V x M) and optionally ``b`` (or ``bias``, V).
    name : str, optional
        Defaults to the stored ``metadata["name"]``, else the file or directory name.
    drop_masked_labels : bool or sequence of int
        True drops the labels whose bias is -inf (masked or padded labels; refused
        otherwise); to compare models, :func:`load_models` drops the labels masked in any of
        them from all of them.

    Returns
    -------
    Model

    Only the arrays a model uses (``f``, ``g``, ``b`` or ``bias``, and ``tokens``,
    ``targets``, ``documents`` when present), ``labels`` and ``meta`` are read; other members are left unread. A damaged, truncated or foreign file, or one
    over the limits (:data:`MAX_ARRAY_BYTES`, :data:`MAX_JSON_BYTES`,
    :data:`MAX_JSON_DEPTH`), raises :class:`~identirep.errors.IdentirepError` before
    anything large is allocated.
    """
    return _model_from(_read(path), name, drop_masked_labels)


def load_models(paths, drop_masked_labels: bool = False) -> List[Model]:
    """Read models to be compared with each other. With ``drop_masked_labels``, the labels whose
    bias is -inf in any of them are dropped from every one of them, so that all keep the same
    label set; each model's ``dropped_labels`` lists them (original ids)."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not hasattr(paths, "__iter__"):
        raise IdentirepError(f"load_models needs a list of paths, got {type(paths).__name__}",
                             fix="pass [path_a, path_b, ...], or call load_model for one")
    raw = [_read(p) for p in paths]
    if not drop_masked_labels:
        return [_model_from(r, None, False) for r in raw]
    masked = np.empty(0, np.int64)
    for r in raw:
        masked = np.union1d(masked, _masked_in(r))
    return [_model_from(r, None, masked) for r in raw]


def masked_in_file(path) -> np.ndarray:
    """The ids of the labels whose bias is -inf in the model file ``path`` (masked or padded;
    none without a bias): :func:`load_models` drops the union over its files."""
    return _masked_in(_read(path))


def _masked_in(raw) -> np.ndarray:
    path, arrays = raw[0], raw[1]
    bias = arrays.get("b", arrays.get("bias"))
    if bias is None or getattr(bias, "ndim", 0) != 1:
        return np.empty(0, np.int64)
    try:
        return masked_labels(bias)
    except (TypeError, ValueError) as e:
        raise IdentirepError(f"{path}: unreadable bias ({e})") from None


def _read(path):
    path = _as_path(path)
    fmt = _format_of(path, writing=False)
    reader = {"safetensors": _read_safetensors, "npz": _read_npz, "dir": _read_dir}[fmt]
    arrays, names, labels, meta = reader(path)
    arrays, meta = _decode_bits(path, arrays, meta)
    return path, arrays, names, labels, meta, fmt


def _model_from(raw, name, drop_masked_labels) -> Model:
    path, arrays, names, labels, meta, fmt = raw
    for k in ("f", "g"):
        if k not in arrays:
            found = sorted(names) + (["labels"] if labels is not None else [])
            raise IdentirepError(
                f"{path}: no array '{k}' ({_ROLES[k]}); found {found}. A model file needs "
                "'f' (N x M) and 'g' (V x M), and optionally 'b' (V)")
    if "b" in arrays and "bias" in arrays:
        raise IdentirepError(f"{path} holds both 'b' and 'bias'; keep one of them")
    bias = arrays.get("b", arrays.get("bias"))
    if name is None:
        name = meta.get("name")
        if name is None:
            name = path.stem if fmt != "dir" else path.name
        elif isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)
        elif not isinstance(name, str):
            raise IdentirepError(f"{path}: the stored metadata 'name' is a "
                                 f"{type(name).__name__}, not a string",
                                 fix="store the name as a JSON string, or pass name=")
    try:
        return Model(arrays["f"], arrays["g"], bias, name=name, labels=labels, metadata=meta,
                     drop_masked_labels=drop_masked_labels,
                     **{k: arrays.get(k) for k in _TEXT_KEYS})
    except IdentirepError as e:
        raise IdentirepError(f"{path}: {e.reason}", fix=e.fix) from None


def load_metadata(path) -> dict:
    """The metadata stored with a model file, without reading its arrays.

    Parameters
    ----------
    path : str or Path
        A model file or directory (see :func:`load_model`).

    Returns
    -------
    dict
        The stored metadata ({} when there is none).
    """
    path = _as_path(path)
    fmt = _format_of(path, writing=False)
    if fmt == "safetensors":
        meta = _safetensors_strings(path).get(_META_KEY)
        meta = {} if meta is None else _loads(meta, f"{path}: metadata '{_META_KEY}'")
    elif fmt == "npz":
        with _open_zip(path) as zf:
            members = _npz_members(zf)
            meta = _npz_meta(zf, members, path)
    else:
        meta = _dir_json(path, "meta.json", {})
    _check_meta(meta, path)
    meta.pop(_STORAGE, None)
    return meta


def _as_path(path) -> Path:
    """``path`` as a Path; IdentirepError for what is not a path."""
    if isinstance(path, (str, os.PathLike)):
        try:
            return Path(path)
        except TypeError:
            pass
    raise IdentirepError(f"a model path must be a str or os.PathLike, got {type(path).__name__}",
                         fix="pass the path of a .safetensors or .npz file, or of a directory "
                             "of .npy files")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**20 else f"{n} bytes"


def _check_meta(meta, where) -> None:
    if not isinstance(meta, dict):
        raise IdentirepError(f"{where}: stored metadata must be a JSON object, got "
                             f"{type(meta).__name__}", fix="store the metadata as a JSON object "
                             "({...})")


def _check_labels(labels, where):
    """Stored label names, by ``Model``'s rule (``model.label_names``: strings, integers
    taken as names); None when there are none."""
    if labels is None:
        return None
    try:
        return label_names(labels)
    except IdentirepError as e:
        raise IdentirepError(f"{where}: stored labels: {e.reason}", fix=_LABELS_FIX) from None


_LABELS_FIX = "store one string per row of g (a JSON list of strings, or a 1-d str array in .npz)"


def _loads(text: str, where: str):
    """Parse stored JSON text within :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`."""
    if len(text) > MAX_JSON_BYTES:
        raise IdentirepError(f"{where} is {_gib(len(text))} of JSON, over the limit of "
                             f"{_gib(MAX_JSON_BYTES)}", fix="store less metadata")
    too_deep = IdentirepError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep",
                              fix="store flatter metadata")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except ValueError as e:
        raise IdentirepError(f"{where} is not valid JSON ({e})",
                             fix="re-save the model, or repair the JSON") from None
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise too_deep
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))
    return obj


# -------------------------------------------------------------------- load: safetensors

_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _safetensors_error(path: Path, e: Exception) -> IdentirepError:
    return IdentirepError(f"{path} is not a readable safetensors file: {why(e, 300)}",
                          fix="re-save it with safetensors or identirep.save_model")


def _safetensors_strings(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="np") as fh:
            return dict(fh.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise _safetensors_error(path, e) from None


def _read_safetensors(path: Path):
    from safetensors import safe_open
    arrays, converted = {}, {}
    try:
        with safe_open(str(path), framework="np") as fh:
            strings = dict(fh.metadata() or {})
            names = list(fh.keys())
            for k in (k for k in _ARRAY_KEYS if k in names):
                sl = fh.get_slice(k)
                dt, shape = sl.get_dtype(), sl.get_shape()
                _check_declared(f"{path}: tensor '{k}'", dt, _ST_ITEMSIZE.get(dt, 1), shape,
                                MAX_ARRAY_BYTES, os.path.getsize(path))
                if dt == "BF16" and _ml_dtypes() is None:
                    arrays[k] = bf16.to_f32(_raw_safetensors_tensor(path, k, np.uint16))
                    converted[k] = "bfloat16 -> float32 (exact; install ml_dtypes to keep bfloat16)"
                else:
                    arrays[k] = fh.get_tensor(k)
    except IdentirepError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise _safetensors_error(path, e) from None
    meta = (_loads(strings[_META_KEY], f"{path}: metadata '{_META_KEY}'")
            if _META_KEY in strings else {})
    labels = (_loads(strings[_LABELS_KEY], f"{path}: metadata '{_LABELS_KEY}'")
              if _LABELS_KEY in strings else None)
    _check_meta(meta, path)
    labels = _check_labels(labels, path)
    if converted:
        meta["converted"] = converted
    return arrays, names, labels, meta


def _raw_safetensors_tensor(path: Path, key: str, dtype) -> np.ndarray:
    """One tensor's bytes as ``dtype``, read from the safetensors header's offsets (the file
    has been checked by ``safe_open`` first)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    info = header[key]
    begin, end = info["data_offsets"]
    count = (end - begin) // np.dtype(dtype).itemsize
    a = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=8 + n + begin)
    return a.astype(dtype).reshape(info["shape"])


# ------------------------------------------------------------------ load: .npy and .npz

_NPY_MAGIC = b"\x93NUMPY"
_NPY_FIX = "re-save it with numpy.save / numpy.savez or identirep.save_model"


_OVER_LIMIT_FIX = ("check that the file is the intended one; split or shrink the arrays "
                   "(fewer inputs N)")


def _check_declared(where: str, dtype: str, itemsize: int, shape, limit: int, available: int,
                    over_limit_fix: str = _OVER_LIMIT_FIX) -> int:
    """Bytes of an array of ``shape`` x ``itemsize``; refused over ``limit`` or over the
    ``available`` bytes that hold it, before anything is allocated."""
    nbytes = span = itemsize
    for s in shape:
        nbytes *= s
        span *= max(s, 1)    # an empty array's other dimensions must be sane too
    declared = f"{where}: its header declares {dtype} {tuple(shape)} = {_gib(nbytes)}"
    if nbytes > limit:
        raise IdentirepError(f"{declared}, over the limit of {_gib(limit)}", fix=over_limit_fix)
    if span > limit:
        raise IdentirepError(f"{declared}, with a dimension beyond the limit of {_gib(limit)}",
                             fix=_NPY_FIX)
    if nbytes > available:
        raise IdentirepError(f"{declared}, but only {_gib(max(available, 0))} follow: "
                             "truncated or damaged", fix=_NPY_FIX)
    return nbytes


def _read_exact(fh, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = fh.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _npy_header(fh, where: str):
    """(dtype, shape, fortran_order, header bytes) of the .npy stream ``fh``; IdentirepError
    for anything but a plain NumPy header (object arrays included: never unpickled)."""
    start = _read_exact(fh, 8)
    if not start:
        raise IdentirepError(f"{where}: empty (0 bytes), not a .npy array", fix=_NPY_FIX)
    if len(start) < 8 or not start.startswith(_NPY_MAGIC):
        raise IdentirepError(f"{where}: not a valid .npy array (no NumPy header; foreign or "
                             "damaged data)", fix=_NPY_FIX)
    version = (start[6], start[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise IdentirepError(f"{where}: unknown .npy format version {version[0]}.{version[1]}",
                             fix=_NPY_FIX)
    size_bytes = 2 if version == (1, 0) else 4
    raw = _read_exact(fh, size_bytes)
    n = int.from_bytes(raw, "little")
    if len(raw) < size_bytes or n > MAX_NPY_HEADER_BYTES:
        what = ("truncated" if len(raw) < size_bytes else
                f"{n} bytes long, over the limit of {MAX_NPY_HEADER_BYTES}")
        raise IdentirepError(f"{where}: .npy header {what}", fix=_NPY_FIX)
    raw = _read_exact(fh, n)
    if len(raw) < n:
        raise IdentirepError(f"{where}: .npy header truncated", fix=_NPY_FIX)
    d = _npy_literal(raw, version)
    shown = raw[:60].decode("latin1").strip()
    bad = IdentirepError(f"{where}: malformed .npy header ({shown!r}"
                         f"{'...' if n > 60 else ''})", fix=_NPY_FIX)
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise bad
    shape, fortran = d["shape"], d["fortran_order"]
    if (not isinstance(shape, tuple) or len(shape) > 64 or not isinstance(fortran, bool)
            or any(type(s) is not int or s < 0 for s in shape)):
        raise bad
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dt = np.lib.format.descr_to_dtype(d["descr"])
    except Exception:  # descr is whatever the header held: any error means a bad header
        raise IdentirepError(f"{where}: the .npy header names no valid dtype "
                             f"({str(d['descr'])[:60]!r})", fix=_NPY_FIX) from None
    if dt.hasobject:
        raise IdentirepError(f"{where}: holds Python objects (dtype {dt}), which identirep "
                             "never unpickles", fix="store numeric arrays (labels as str)")
    if dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
        raise IdentirepError(f"{where}: has dtype {dt}; identirep reads plain numeric arrays",
                             fix="store a plain float array (e.g. float32)")
    return dt, shape, fortran, 8 + size_bytes + n


def _npy_literal(raw: bytes, version):
    try:
        text = raw.decode("latin1" if version < (3, 0) else "utf8")
    except UnicodeDecodeError:
        return None
    for attempt in (text, re.sub(r"(?<=\d)L\b", "", text)):   # Python 2 writers' 3L
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ast.literal_eval(attempt)
        except Exception:  # SyntaxError, ValueError, MemoryError, ...: a bad header
            continue
    return None


def _read_npy(fh, available: int, where: str, limit: int,
              over_limit_fix: str = _OVER_LIMIT_FIX) -> np.ndarray:
    """The array in .npy stream ``fh`` holding ``available`` bytes: the header's declared
    size is checked against ``limit`` and ``available`` before allocating, and the data is
    read in place (in chunks); big-endian data is converted to native byte order."""
    dt, shape, fortran, header = _npy_header(fh, where)
    nbytes = _check_declared(where, str(dt), dt.itemsize, shape, limit, available - header,
                             over_limit_fix)
    try:
        buf = np.empty(nbytes, np.uint8)
    except MemoryError:
        raise IdentirepError(f"{where}: not enough memory for {_gib(nbytes)}",
                             fix="load it on a machine with more memory") from None
    view, pos = memoryview(buf), 0
    while pos < nbytes:
        got = fh.readinto(view[pos:pos + _CHUNK])
        if not got:
            raise IdentirepError(f"{where}: truncated ({_gib(pos)} of {_gib(nbytes)} of "
                                 "array data)", fix=_NPY_FIX)
        pos += got
    a = buf.view(dt)
    a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    if not dt.isnative:
        a = a.byteswap(inplace=True).view(dt.newbyteorder("="))
    return a


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        raise IdentirepError(f"{path} is not a readable .npz file: {why(e, 200)}",
                             fix="re-save it with numpy.savez or identirep.save_model") from None


#: what reading a damaged zip archive or member raises
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError,
               NotImplementedError, ValueError, struct.error, MemoryError)


def _npz_members(zf: zipfile.ZipFile) -> dict:
    """key -> ZipInfo, keys as NumPy names them (``.npy`` dropped)."""
    return {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i
            for i in zf.infolist()}


def _npz_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str,
               limit: int = None, over_limit_fix: str = _OVER_LIMIT_FIX) -> np.ndarray:
    """One member of an .npz, checked before it is read: not encrypted, stored or deflated
    (what NumPy writes), sizes consistent with the archive and with its .npy header."""
    where = f"{path}: unreadable array '{key}' (member {info.filename})"
    limit = MAX_ARRAY_BYTES if limit is None else limit
    if info.flag_bits & 0x1:
        raise IdentirepError(f"{where}: encrypted", fix="re-save it without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise IdentirepError(
            f"{where}: zip compression method {info.compress_type} is not supported",
            fix="re-save it with numpy.savez or numpy.savez_compressed (stored or deflated)")
    archive = os.path.getsize(path)
    if (info.compress_size > archive
            or info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
            or info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 4096):
        raise IdentirepError(
            f"{where}: the zip directory declares {_gib(info.file_size)} "
            f"({_gib(info.compress_size)} compressed) in a {_gib(archive)} archive: damaged",
            fix=_NPY_FIX)
    try:
        with zf.open(info) as fh:
            a = _read_npy(fh, info.file_size, where, limit, over_limit_fix)
            if fh.read(1):    # reached the member's end: the CRC has been checked
                raise IdentirepError(f"{where}: data after the array", fix=_NPY_FIX)
    except IdentirepError:
        raise
    except _ZIP_ERRORS as e:
        raise IdentirepError(f"{where}: damaged ({why(e, 200)})", fix=_NPY_FIX) from None
    return a


def _npz_meta(zf, members: dict, path: Path):
    if "meta" not in members:
        return {}
    # a str array holds 4 bytes a character: MAX_JSON_BYTES characters at most
    a = _npz_array(zf, members["meta"], path, "meta", 4 * MAX_JSON_BYTES,
                   over_limit_fix="store less metadata")
    if a.ndim != 0 or a.dtype.kind != "U":
        raise IdentirepError(f"{path}: 'meta' must be a JSON string (a 0-d str array), got "
                             f"shape {a.shape} dtype {a.dtype}",
                             fix="store meta=np.array(json.dumps(metadata))")
    return _loads(_text(a, path, "meta"), f"{path}: 'meta'")


def _text(a: np.ndarray, path: Path, key: str):
    """str (0-d) or list of str (1-d) of a NumPy str array: its code points must be Unicode
    scalar values (no surrogates, none beyond U+10FFFF), which NumPy does not check."""
    cp = np.ascontiguousarray(a).view(np.uint32)
    bad = (cp > 0x10FFFF) | ((cp >= 0xD800) & (cp <= 0xDFFF))
    if bad.any():
        raise IdentirepError(f"{path}: '{key}' holds invalid text (code point "
                             f"{int(cp[bad].flat[0]):#x} is not a Unicode character)",
                             fix=_LABELS_FIX if key == "labels" else
                             "store meta=np.array(json.dumps(metadata))")
    return a.tolist()


def _read_npz(path: Path):
    with _open_zip(path) as zf:
        members = _npz_members(zf)
        arrays = {k: _npz_array(zf, members[k], path, k) for k in _ARRAY_KEYS if k in members}
        labels = None
        if "labels" in members:
            a = _npz_array(zf, members["labels"], path, "labels")
            if a.ndim != 1 or a.dtype.kind not in "Uiu":
                raise IdentirepError(f"{path}: 'labels' must be a 1-d str array, got shape "
                                     f"{a.shape} dtype {a.dtype}", fix=_LABELS_FIX)
            labels = _text(a, path, "labels") if a.dtype.kind == "U" else label_names(a)
        meta = _npz_meta(zf, members, path)
    _check_meta(meta, path)
    names = [k for k in members if k not in ("labels", "meta")]
    return arrays, names, labels, meta


def _regular_file(p: Path) -> int:
    """The size of ``p``, which must be a regular file (following links)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise IdentirepError(f"{p} is a symbolic link to a missing file "
                                 f"({os.readlink(p)})", fix="point it at the file") from None
        raise IdentirepError(f"{p}: no such file or directory") from None
    except OSError as e:   # a link loop, permissions, ...
        raise IdentirepError(f"{p} cannot be opened: {e.strerror or e}",
                             fix="make it a readable file") from None
    if stat.S_ISDIR(st.st_mode):
        raise IdentirepError(f"{p} is a directory, not a file", fix="make it a file")
    if not stat.S_ISREG(st.st_mode):
        raise IdentirepError(f"{p} is not a regular file (a device, pipe or socket)",
                             fix="make it a file")
    return st.st_size


def _dir_npy(p: Path, key: str) -> np.ndarray:
    size = _regular_file(p)
    try:
        with open(p, "rb") as fh:
            return _read_npy(fh, size, f"{p}: unreadable array '{key}'", MAX_ARRAY_BYTES)
    except OSError as e:
        raise IdentirepError(f"{p} cannot be read: {e.strerror or e}",
                             fix="make it a readable file") from None


def _dir_json(path: Path, name: str, default):
    p = path / name
    if not os.path.lexists(p):
        return default
    size = _regular_file(p)
    if size > MAX_JSON_BYTES:
        raise IdentirepError(f"{p} is {_gib(size)}, over the limit of {_gib(MAX_JSON_BYTES)}",
                             fix="store less in it")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise IdentirepError(f"{p} cannot be read: {e.strerror or e}",
                             fix="make it a readable file") from None
    except UnicodeDecodeError as e:
        raise IdentirepError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})",
                             fix="save it as UTF-8") from None
    return _loads(text, str(p))


def _read_dir(path: Path):
    try:
        files = sorted(os.listdir(path))
    except OSError as e:
        raise IdentirepError(f"{path} cannot be listed: {e.strerror or e}",
                             fix="make it a readable directory") from None
    names = [n[:-4] for n in files if n.endswith(".npy")]
    arrays = {k: _dir_npy(path / f"{k}.npy", k) for k in _ARRAY_KEYS if k in names}
    labels = _check_labels(_dir_json(path, "labels.json", None), path / "labels.json")
    meta = _dir_json(path, "meta.json", {})
    _check_meta(meta, path / "meta.json")
    return arrays, names, labels, meta


def _decode_bits(path: Path, arrays: dict, meta: dict):
    """Undo the bfloat16-as-uint16 encoding listed under ``meta["storage"]``."""
    storage = meta.pop(_STORAGE, None) or {}
    bits = storage.get(_BF16_BITS, []) if isinstance(storage, dict) else None
    if not isinstance(bits, list) or not all(isinstance(k, str) for k in bits):
        raise IdentirepError(
            f"{path}: malformed metadata '{_STORAGE}': {json.dumps(storage)[:80]}",
            fix=f'it must read {{"{_BF16_BITS}": ["f", "g", ...]}}, or be removed')
    bits = [k for k in bits if k in arrays]
    for k in bits:
        if arrays[k].dtype != np.uint16:
            raise IdentirepError(
                f"{path}: metadata '{_STORAGE}' lists '{k}' as bfloat16 bits, but '{k}' has "
                f"dtype {arrays[k].dtype}, not uint16",
                fix=f"remove '{k}' from metadata['{_STORAGE}']['{_BF16_BITS}']")
    ml = _ml_dtypes() if bits else None    # imported only when needed (it takes a while)
    converted = {}
    for k in bits:
        if ml is not None:
            arrays[k] = arrays[k].view(ml.bfloat16)
        else:
            arrays[k] = bf16.to_f32(arrays[k])
            converted[k] = "bfloat16 -> float32 (exact; install ml_dtypes to keep bfloat16)"
    if converted:
        meta["converted"] = converted
    return arrays, meta
