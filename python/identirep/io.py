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

On load, ``bias`` is accepted as an alias of ``b``. Arrays load in the dtype they were stored in.
NumPy has no bfloat16 of its own: with ``ml_dtypes`` installed, bfloat16 arrays load as
``ml_dtypes.bfloat16``; without it they are widened to float32 (exactly) and
``model.metadata["converted"]`` says so. ``.npz`` and ``.npy`` cannot hold bfloat16, so such
arrays are stored there as their uint16 bit patterns, listed under ``meta["storage"]``.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from . import _bf16 as bf16
from .errors import IdentirepError
from .model import Model, masked_labels

__all__ = ["load_model", "load_models", "save_model", "load_metadata", "check_output",
           "SUPPORTED_FORMATS"]

SUPPORTED_FORMATS = (
    ".safetensors (preferred), .npz, or a directory of .npy files "
    "(f.npy, g.npy, optional b.npy, labels.json, meta.json)")

_LABELS_KEY = "identirep.labels"
_META_KEY = "identirep.metadata"
_STORAGE = "storage"          # reserved metadata key describing on-disk encodings
_BF16_BITS = "bfloat16_as_uint16"
_ROLES = {"f": "the embeddings, N x M", "g": "the unembeddings, V x M"}


# ----------------------------------------------------------------------------- helpers

def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes


def _format_of(path: Path, writing: bool) -> str:
    if not writing and not path.exists():
        raise IdentirepError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".npz":
        return "npz"
    if path.is_dir() or (writing and suffix == "" and not path.exists()):
        return "dir"
    what = f"'{suffix}'" if suffix else "(a file without extension)"
    raise IdentirepError(
        f"{path}: unknown model file format {what}; supported: {SUPPORTED_FORMATS}")


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


def _loads(text: str, path: Path, what: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise IdentirepError(f"{path}: {what} is not valid JSON ({e})") from None


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
    """Write ``model`` (f, g, bias, labels, metadata) to ``path``.

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
    path = Path(path)
    fmt = _format_of(path, writing=True)
    meta = dict(model.metadata)
    meta.update(metadata or {})
    meta.pop(_STORAGE, None)
    if model.name is not None:
        meta.setdefault("name", model.name)
    arrays = {"f": model.f, "g": model.g}
    if model.bias is not None:
        arrays["b"] = model.bias
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
    stale = ["bias.npy"] + ([] if "b" in host else ["b.npy"])
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
    path = Path(path)
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
    """
    return _model_from(_read(path), name, drop_masked_labels)


def load_models(paths, drop_masked_labels: bool = False) -> List[Model]:
    """Read models to be compared with each other. With ``drop_masked_labels``, the labels whose
    bias is -inf in any of them are dropped from every one of them, so that all keep the same
    label set; each model's ``dropped_labels`` lists them (original ids)."""
    raw = [_read(p) for p in paths]
    if not drop_masked_labels:
        return [_model_from(r, None, False) for r in raw]
    masked = np.empty(0, np.int64)
    for path, arrays, _, _, _ in raw:
        bias = arrays.get("b", arrays.get("bias"))
        if bias is not None and getattr(bias, "ndim", 0) == 1:
            try:
                masked = np.union1d(masked, masked_labels(bias))
            except (TypeError, ValueError) as e:
                raise IdentirepError(f"{path}: unreadable bias ({e})") from None
    return [_model_from(r, None, masked) for r in raw]


def _read(path):
    path = Path(path)
    fmt = _format_of(path, writing=False)
    reader = {"safetensors": _read_safetensors, "npz": _read_npz, "dir": _read_dir}[fmt]
    arrays, labels, meta = reader(path)
    return path, arrays, labels, meta, fmt


def _model_from(raw, name, drop_masked_labels) -> Model:
    path, arrays, labels, meta, fmt = raw
    for k in ("f", "g"):
        if k not in arrays:
            found = sorted(arrays) + (["labels"] if labels is not None else [])
            raise IdentirepError(
                f"{path}: no array '{k}' ({_ROLES[k]}); found {found}. A model file needs "
                "'f' (N x M) and 'g' (V x M), and optionally 'b' (V)")
    if not isinstance(meta, dict):
        raise IdentirepError(f"{path}: stored metadata must be a JSON object")
    if labels is not None and not isinstance(labels, list):
        raise IdentirepError(f"{path}: stored labels must be a list of names")
    if "b" in arrays and "bias" in arrays:
        raise IdentirepError(f"{path} holds both 'b' and 'bias'; keep one of them")
    bias = arrays.get("b", arrays.get("bias"))
    name = name if name is not None else meta.get("name", path.stem if fmt != "dir" else path.name)
    try:
        return Model(arrays["f"], arrays["g"], bias, name=name, labels=labels, metadata=meta,
                     drop_masked_labels=drop_masked_labels)
    except IdentirepError as e:
        raise IdentirepError(f"{path}: {e}") from None


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
    path = Path(path)
    fmt = _format_of(path, writing=False)
    if fmt == "safetensors":
        meta = _safetensors_strings(path).get(_META_KEY)
        meta = {} if meta is None else _loads(meta, path, "metadata")
    elif fmt == "npz":
        with _open_npz(path) as z:
            meta = _loads(str(z["meta"]), path, "meta") if "meta" in z.files else {}
    else:
        p = path / "meta.json"
        meta = _loads(p.read_text(encoding="utf-8"), p, "meta.json") if p.exists() else {}
    if not isinstance(meta, dict):
        raise IdentirepError(f"{path}: stored metadata must be a JSON object")
    meta.pop(_STORAGE, None)
    return meta


def _safetensors_strings(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="np") as fh:
            return dict(fh.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise IdentirepError(f"{path} is not a readable safetensors file: {e}") from None


def _read_safetensors(path: Path):
    from safetensors import safe_open
    ml = _ml_dtypes()
    arrays, converted = {}, {}
    try:
        with safe_open(str(path), framework="np") as fh:
            strings = dict(fh.metadata() or {})
            for k in fh.keys():
                dt = fh.get_slice(k).get_dtype()
                if dt == "BF16" and ml is None:
                    arrays[k] = bf16.to_f32(_raw_safetensors_tensor(path, k, np.uint16))
                    converted[k] = "bfloat16 -> float32 (exact; install ml_dtypes to keep bfloat16)"
                else:
                    arrays[k] = fh.get_tensor(k)
    except IdentirepError:
        raise
    except Exception as e:
        raise IdentirepError(f"{path} is not a readable safetensors file: {e}") from None
    meta = _loads(strings[_META_KEY], path, "metadata") if _META_KEY in strings else {}
    labels = _loads(strings[_LABELS_KEY], path, "labels") if _LABELS_KEY in strings else None
    if converted:
        meta["converted"] = converted
    return arrays, labels, meta


def _raw_safetensors_tensor(path: Path, key: str, dtype) -> np.ndarray:
    """One tensor's bytes as ``dtype``, read from the safetensors header's offsets."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    info = header[key]
    begin, end = info["data_offsets"]
    count = (end - begin) // np.dtype(dtype).itemsize
    a = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=8 + n + begin)
    return a.astype(dtype).reshape(info["shape"])


def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise IdentirepError(f"{path} is not a readable .npz file: {e}") from None


def _read_npz(path: Path):
    with _open_npz(path) as z:
        try:
            arrays = {k: z[k] for k in z.files if k not in ("labels", "meta")}
            labels = [str(s) for s in z["labels"].tolist()] if "labels" in z.files else None
            meta = _loads(str(z["meta"]), path, "meta") if "meta" in z.files else {}
        except ValueError as e:
            raise IdentirepError(f"{path}: unreadable array ({e})") from None
    return _decode_bits(arrays, labels, meta)


def _read_dir(path: Path):
    arrays = {}
    for p in sorted(path.glob("*.npy")):
        try:
            arrays[p.stem] = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise IdentirepError(f"{p} is not a readable .npy file: {e}") from None
    lp, mp = path / "labels.json", path / "meta.json"
    labels = _loads(lp.read_text(encoding="utf-8"), lp, "labels.json") if lp.exists() else None
    meta = _loads(mp.read_text(encoding="utf-8"), mp, "meta.json") if mp.exists() else {}
    return _decode_bits(arrays, labels, meta)


def _decode_bits(arrays: dict, labels, meta):
    if not isinstance(meta, dict):
        return arrays, labels, meta
    storage = meta.pop(_STORAGE, {}) or {}
    ml = _ml_dtypes()
    converted = {}
    for k in storage.get(_BF16_BITS, []):
        if k not in arrays:
            continue
        bits = arrays[k].view(np.uint16)
        if ml is not None:
            arrays[k] = bits.view(ml.bfloat16)
        else:
            arrays[k] = bf16.to_f32(bits)
            converted[k] = "bfloat16 -> float32 (exact; install ml_dtypes to keep bfloat16)"
    if converted:
        meta["converted"] = converted
    return arrays, labels, meta
