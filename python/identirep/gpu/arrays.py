"""Device arrays of the GPU backends: zero-copy views of GPU arrays (CuPy, torch CUDA tensors,
anything with ``__cuda_array_interface__`` or DLPack), device copies of host ones, and the
augmented operands of a model ([f, 1], [g, b]). bfloat16 is held as its uint16 bit patterns
(``DeviceArray``), whether or not this CuPy has a bfloat16 dtype; the compiled entry points take
it so (uint16 or int16 arrays are bfloat16 bits to them)."""
from __future__ import annotations

import numpy as np

from .. import _bf16 as bf16
from ..errors import CUPY_INSTALL, IdentirepError, why

HALF_KINDS = ("float16", "bfloat16")
FLOAT_KINDS = HALF_KINDS + ("float32", "float64")


def import_cupy():
    """CuPy, or an IdentirepError that says what to install."""
    try:
        import cupy
    except ImportError as e:
        raise IdentirepError(f"the GPU backends need CuPy, which is not installed: "
                             f"{CUPY_INSTALL}") from e
    return cupy


class DeviceArray:
    """A device array and its float kind; bfloat16 is held as its uint16 bit patterns, so that
    it works whether or not this CuPy has a bfloat16 dtype."""

    __slots__ = ("data", "kind")

    def __init__(self, data, kind: str):
        self.data = data
        self.kind = kind

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, key) -> "DeviceArray":
        return DeviceArray(self.data[key], self.kind)

    def widened(self, dtype):
        """This array as a float32/float64 CuPy array (a copy unless it already is one)."""
        if self.kind == "bfloat16":
            out = bf16.to_f32(self.data)
            return out if dtype == np.float32 else out.astype(dtype)
        return self.data.astype(dtype, copy=False)


def as_device(a, name: str = "array") -> DeviceArray:
    """Zero-copy view of a GPU array (CuPy, torch, __cuda_array_interface__, DLPack), or a
    device copy of a host array, with its float kind."""
    if isinstance(a, DeviceArray):
        return a
    cp = import_cupy()
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        import torch
        t = a.detach()
        kind = str(t.dtype).replace("torch.", "")
        if kind == "bfloat16":
            t = t.view(torch.int16)
        data = cp.from_dlpack(t) if t.is_cuda else cp.asarray(t.numpy())
    elif isinstance(a, cp.ndarray):
        data, kind = a, a.dtype.name
    elif hasattr(a, "__cuda_array_interface__"):
        data = cp.asarray(a)
        kind = data.dtype.name
    elif hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray):
        data = cp.from_dlpack(a)
        kind = data.dtype.name
    else:
        host = np.asarray(a)
        kind = host.dtype.name
        data = cp.asarray(host.view(np.uint16) if kind == "bfloat16" else host)
    if kind not in FLOAT_KINDS:
        raise IdentirepError(f"{name} has dtype {kind}; the GPU pass needs floating-point "
                             f"arrays ({', '.join(FLOAT_KINDS)})")
    if kind == "bfloat16" and data.dtype != cp.uint16:
        data = data.view(cp.uint16)
    return DeviceArray(data, kind)


def on_device(model):
    """``model`` with its arrays on the current GPU (itself when they are there already): CuPy
    arrays (bfloat16 as CuPy's ml_dtypes bfloat16 where its kernels take it, else torch CUDA
    tensors), or torch CUDA tensors for torch ones where torch has CUDA. One copy of each
    array; the engine then runs every product there."""
    from .._arrays import is_gpu_array
    from ..model import Model
    arrays = [model.f, model.g, model.bias]
    if all(x is None or is_gpu_array(x) for x in arrays):
        return model
    cp = import_cupy()

    def move(x):
        if x is None or is_gpu_array(x):
            return x
        if type(x).__module__.split(".")[0] == "torch":
            import torch
            if torch.cuda.is_available():
                return _torch_to_device(cp, torch, x.detach())
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                return _bfloat16_on_device(cp, x.view(torch.int16).numpy().view(np.uint16))
            x = x.numpy()
        host = np.asarray(x)
        if host.dtype.name == "bfloat16":
            return _bfloat16_on_device(cp, host.view(np.uint16))
        return cp.asarray(host)

    return Model(*(move(x) for x in arrays), name=model.name, labels=model.labels,
                 metadata=model.metadata, tokens=model.tokens, targets=model.targets,
                 documents=model.documents)


def _bfloat16_on_device(cp, bits):
    """bfloat16 bit patterns (host uint16) as a device bfloat16 array: CuPy's (ml_dtypes; its
    support is checked on one element), or torch's where CuPy has none."""
    try:
        import ml_dtypes
        dt = np.dtype(ml_dtypes.bfloat16)
        x = cp.asarray(bits).view(dt)
        bool(cp.isfinite(x.reshape(-1)[:1]).all())  # what Model checks; CuPy < 14 cannot
        return x
    except MemoryError:
        raise
    except Exception as e:  # no ml_dtypes, or a CuPy without bfloat16 kernels
        reason = why(e)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _torch_to_device(cp, torch, torch.from_numpy(bits.view(np.int16))).view(
            torch.bfloat16)
    raise IdentirepError(f"cannot put bfloat16 arrays on the GPU: this CuPy has no bfloat16 "
                         f"({reason}) and torch with CUDA is not installed; convert the model "
                         "to float32, or install ml_dtypes for CuPy 14+")


def _torch_to_device(cp, torch, t):
    """A torch tensor copied to CuPy's current GPU, the copy finished: CuPy's stream reads it
    next."""
    t = t.to(f"cuda:{cp.cuda.Device().id}")
    torch.cuda.current_stream(t.device).synchronize()
    return t


def device_augmented(model):
    """(f, g) of a Model on the device with the bias absorbed: f' = [f, 1], g' = [g, b], as
    Model.augmented(None) makes them: in the kind f, g and b share, else all widened to the
    kind that holds the three (common_kind), so that no value is rounded and the pair keeps one
    kind (the compiled pass takes it).

    Without a bias, zero-copy views; with one, copies (rows padded for the fused GEMM)."""
    from ..model import common_kind
    f = as_device(model.f, "f")
    g = as_device(model.g, "g")
    if model.bias is None:
        return f, g
    cp = import_cupy()
    b = as_device(model.bias, "bias")
    if f.kind == g.kind == b.kind:
        one = 0x3F80 if f.kind == "bfloat16" else 1  # bfloat16 bits of 1.0
        return (DeviceArray(_with_column(cp, f.data, one), f.kind),
                DeviceArray(_with_column(cp, g.data, b.data), f.kind))
    kind = common_kind(f.kind, g.kind, b.kind)
    dt = np.dtype(kind)
    return (DeviceArray(_with_column(cp, f.widened(dt), 1), kind),
            DeviceArray(_with_column(cp, g.widened(dt), b.widened(dt)), kind))


def _with_column(cp, a, col):
    """[a, col] (r x (m + 1)) as a view of an array whose rows are padded to a multiple of 8
    elements, which the fused GEMM needs (16-byte rows for 16-bit kinds)."""
    r, m = a.shape
    out = cp.zeros((r, -(-(m + 1) // 8) * 8), a.dtype)
    out[:, :m] = a
    out[:, m] = col
    return out[:, :m + 1]
