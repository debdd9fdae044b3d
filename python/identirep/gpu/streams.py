"""The caller's stream: the GPU backends run their CuPy work (and the compiled passes) on the
stream current where the caller is. CuPy arrays already run on CuPy's current stream; for torch
CUDA tensors it is torch's current stream on their device (pylibraft's cai_wrapper does the
same)."""
from __future__ import annotations

import contextlib
import functools
import warnings


def _torch_cuda_tensor(arrays):
    for a in arrays:
        if type(a).__module__.split(".")[0] == "torch" and getattr(a, "is_cuda", False):
            return a
    return None


@contextlib.contextmanager
def caller_stream(arrays):
    """Run the CuPy work inside on the caller's stream: for torch CUDA tensors, torch's current
    stream on their device (CuPy arrays already run on CuPy's current stream, the caller's)."""
    t = _torch_cuda_tensor(arrays)
    if t is None:
        yield
        return
    import cupy
    import torch
    dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    ts = torch.cuda.current_stream(dev)
    with cupy.cuda.Device(dev):
        # ExternalStream: deprecated in CuPy 14, but it never destroys the handle, while a
        # Stream.from_external without CuPy's guard for foreign streams would destroy torch's
        # stream when freed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            external = getattr(cupy.cuda, "ExternalStream", None)
            if ts.cuda_stream == 0:
                stream = cupy.cuda.Stream.null
            elif external is not None:
                stream = external(ts.cuda_stream, dev)
            else:  # the CUDA stream protocol
                stream = cupy.cuda.Stream.from_external(ts)
        with stream:
            yield


def model_arrays(values):
    """f, g and bias of every Model in ``values`` (and in lists or tuples among them)."""
    from ..model import Model
    out = []
    for v in values:
        for m in (v if isinstance(v, (list, tuple)) else (v,)):
            if isinstance(m, Model):
                out += [x for x in (m.f, m.g, m.bias) if x is not None]
    return out


def _on(arrays, fn, args, kwargs):
    if _torch_cuda_tensor(arrays) is None:
        return fn(*args, **kwargs)
    with caller_stream(arrays):
        return fn(*args, **kwargs)


def on_caller_stream(fn):
    """Decorator: run ``fn`` inside :func:`caller_stream` of the models among its arguments."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _on(model_arrays(list(args) + list(kwargs.values())), fn, args, kwargs)
    return wrapper


def on_models_stream(method):
    """Decorator of a method of an object with models ``a`` and ``b`` (PairEngine): run it
    inside :func:`caller_stream` of their arrays, the stream current when it is called."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return _on(model_arrays([self.a, self.b]), method, (self, *args), kwargs)
    return wrapper
