"""A strict NumPy-backed stand-in for CuPy: runs the engine's device branches on a CPU.

Its arrays (``ndarray``: module "cupy", not a NumPy subclass) wrap a NumPy array and fail
where CuPy fails: implicit conversion to NumPy (``__array__`` raises, so ``np.asarray``, host
indexing by a device array, ``host[...] = device`` and the compiled core refuse them), host
arrays (ndim > 0) mixed into device operators, ufuncs, CuPy functions or ``device[...] =``
(only ``asarray`` / ``array`` copy host data over; host index arrays are taken, as CuPy copies
them), and anything outside the CuPy subset listed here (each name exists in CuPy:
tests/emulation/test_device_paths_on_cpu.py checks them against an installed CuPy). Reductions give 0-d device
arrays, as CuPy's do. Failed factorisations raise LinAlgError only under
``cupyx.errstate(linalg="raise")`` and give a wrong result otherwise, as CuPy's do. Streams run
deferred work as late as their events allow. ``RawModule`` runs the kernels in the SIMT
emulator's library (``load_kernel_library``), checking each argument against the kernel's
parameter types.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import sys
import time
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

#: CuPy functions forwarded to NumPy's of the same name (strict about host arrays)
FUNCTIONS = """zeros ones empty full zeros_like ones_like empty_like full_like arange eye
ascontiguousarray asfortranarray copy concatenate stack hstack vstack reshape transpose
expand_dims squeeze broadcast_to atleast_1d atleast_2d where clip dot outer diag diagonal trace
sum prod mean var std max min amax amin argmax argmin any all cumsum sort argsort partition
argpartition unique nonzero flatnonzero argwhere count_nonzero take take_along_axis
searchsorted isin union1d array_equal allclose einsum""".split()
#: CuPy ufuncs (operators and NumPy ufuncs on device arrays resolve to these names)
UFUNCS = """add subtract multiply divide true_divide floor_divide remainder power negative
positive absolute abs sqrt square exp log log1p expm1 sign floor ceil rint maximum minimum fmax
fmin isfinite isnan isinf equal not_equal less less_equal greater greater_equal logical_and
logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_xor invert left_shift
right_shift matmul""".split()
DTYPES = """float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64
bool_""".split()
LINALG = ("eigh", "eigvalsh", "svd")
#: those whose failures cuSOLVER reports through its info (raised under cupyx.errstate), and
#: what they return otherwise: potrf leaves a finite partial factor, getrs divides by 0
LINALG_CHECKED = {"cholesky": np.tril, "inv": lambda a: np.full(a.shape, np.nan)}
#: ndarray methods whose results stay on the device
DEVICE_METHODS = """reshape ravel flatten copy view transpose swapaxes squeeze fill sum prod
max min mean var std any all argmax argmin cumsum partition sort argsort nonzero dot diagonal
trace clip round conj""".split()

_state = {"linalg": "ignore"}   # cupyx.errstate(linalg=...)


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _unwrap(x, lists=True):
    """The NumPy array behind a device array; host arrays of ndim > 0 are refused (and, with
    ``lists=False``, Python sequences, which CuPy ufuncs refuse too)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise _unsupported(x)
    if isinstance(x, (list, tuple)):
        if not lists:
            raise _unsupported(x)
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    """NumPy results as device arrays (NumPy scalars as 0-d arrays, as CuPy returns them)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _forward(fn, name, ufunc=False):
    """CuPy's ``name``: NumPy's ``fn`` on the arrays behind device arguments (a ufunc's
    arguments must be arrays or scalars)."""
    def call(*args, **kwargs):
        args = [_unwrap(a, lists=not ufunc) for a in args]
        return _wrap(fn(*args, **{k: _unwrap(v) for k, v in kwargs.items()}))
    call.__name__ = name
    return call


def _device_method(name):
    def method(self, *args, **kwargs):
        return _wrap(getattr(self._a, name)(*_unwrap(args),
                                            **{k: _unwrap(v) for k, v in kwargs.items()}))
    method.__name__ = name
    return method


class ndarray(NDArrayOperatorsMixin):
    """A device array: a NumPy array that only explicit transfers leave."""
    __module__ = "cupy"
    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray):
        self._a = a

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and self._a.dtype == np.dtype(dtype):
            return self
        return ndarray(self._a.astype(dtype, order=order))

    def get(self, stream=None, order="C", out=None, blocking=True):
        """The explicit device -> host copy."""
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    @property
    def __cuda_array_interface__(self):
        """Its host buffer described as CuPy describes device memory (version 3): the compiled
        entry points read it, and run their argument checks on it (a launch would need a
        GPU)."""
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "version": 3,
                "data": (a.ctypes.data if a.size else 0, not a.flags.writeable),
                "strides": None if a.flags.c_contiguous else a.strides}

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if not hasattr(cupy, ufunc.__name__):
            return NotImplemented
        out = kwargs.pop("out", None)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        if out is not None:
            for o in out:
                if not isinstance(o, ndarray):
                    raise _unsupported(o)
            kwargs["out"] = tuple(o._a for o in out)
        res = getattr(ufunc, method)(*(_unwrap(x, lists=False) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func, types, args, kwargs):
        try:
            impl = functools.reduce(getattr, func.__module__.split(".")[1:] + [func.__name__],
                                    cupy)
        except AttributeError:
            return NotImplemented
        if not all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return impl(*args, **kwargs)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return _wrap(self._a[tuple(k._a if isinstance(k, ndarray) else k for k in key)])

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        self._a[tuple(k._a if isinstance(k, ndarray) else k for k in key)] = \
            _unwrap(value, lists=False)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return f"fake_cupy.{self._a!r}"


for _name in DEVICE_METHODS:
    setattr(ndarray, _name, _device_method(_name))


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """Device arrays as they are (cast when ``dtype`` differs); host data copied over."""
    if isinstance(a, ndarray):
        return a.astype(dtype, copy=bool(copy)) if dtype is not None else a
    return ndarray(np.array(a, dtype=dtype, order=order or "K"))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        obj = obj._a
    return ndarray(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    return a.get(order=order, out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)


def _checked(name):
    """CuPy's linalg ``name``: a failure raises only under cupyx.errstate(linalg="raise"),
    and gives a wrong result otherwise."""
    def call(a):
        try:
            return ndarray(getattr(np.linalg, name)(a._a))
        except np.linalg.LinAlgError:
            if _state["linalg"] == "raise":
                raise
            return ndarray(LINALG_CHECKED[name](a._a))
    call.__name__ = name
    return call


@contextlib.contextmanager
def errstate(*, divide=None, over=None, under=None, invalid=None, linalg=None):
    old = _state["linalg"]
    if linalg is not None:
        _state["linalg"] = linalg
    try:
        yield
    finally:
        _state["linalg"] = old


class _Context:
    """A context manager with synchronize(), like CuPy's streams and devices."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class Event:
    """A stream event: the point of its stream's work when it was recorded."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.stream, self.at, self.time = None, None, None

    def record(self, stream=None):
        self.stream = stream or get_current_stream()
        self.at = self.stream.issued
        self.time = time.perf_counter()

    def synchronize(self):
        if self.stream is not None:
            self.stream._run(self.at)


_current = []   # the streams entered (``with stream:``), innermost last


class Stream(_Context):
    """A stream. Array operations run at once, in program order; work a test defers to the
    current stream (``_defer``) runs only when an event recorded after it is waited on (or at
    synchronize), as late as CUDA allows: a missing wait shows as work done too late."""
    null = None

    def __init__(self, non_blocking=False):
        self.ptr = 0
        self.issued, self.done, self.pending = 0, 0, []

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()
        return False

    def _defer(self, work):
        self.pending.append(work)
        self.issued += 1

    def _run(self, upto=None):
        """Runs the deferred work issued before point ``upto`` (all of it by default)."""
        upto = self.issued if upto is None else upto
        while self.done < upto:
            self.pending.pop(0)()
            self.done += 1

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        if event.stream is None:
            raise AssertionError("waiting on an event that was never recorded")
        event.stream._run(event.at)

    def synchronize(self):
        self._run()


def get_elapsed_time(start, end):
    """Milliseconds between two recorded events (host clock: work runs when issued here)."""
    if start.time is None or end.time is None:
        raise AssertionError("elapsed time of an event that was never recorded")
    return 1e3 * (end.time - start.time)


def get_current_stream():
    return _current[-1] if _current else Stream.null


Stream.null = Stream()


class Device(_Context):
    def __init__(self, device=0):
        self.id = int(device)


#: the SIMT emulator's kernel library (simt/launch_kernels.cpp, a ctypes.CDLL), which
#: RawModule's kernels run on; None: RawModule is unavailable
kernel_library = None

#: numpy types of RawKernel arguments by the library's parameter codes (arrays: their dtype)
_ARRAY_CODES = {"F": np.float32, "D": np.float64, "Q": np.int64}
_SCALAR_CODES = {"f": (np.float32, "c_float"), "d": (np.float64, "c_double"),
                 "q": (np.int64, "c_longlong"), "i": (np.int32, "c_int")}


class RawKernel:
    """A kernel of RawModule, run by the SIMT emulator on the CPU. Stricter than CuPy, which
    passes any array as a pointer and converts scalars by their NumPy type: here an array must
    have the dtype the parameter points to and a scalar the parameter's exact NumPy type, so a
    wrong argument fails instead of reading garbage."""

    def __init__(self, name):
        import ctypes
        sig = kernel_library.simt_signature(name.encode())
        if sig is None:
            raise AssertionError(f"no kernel {name!r} in the emulator's library")
        self.name, self.signature, self._ct = name, sig.decode(), ctypes

    def __call__(self, grid, block, args, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        ct = self._ct
        if len(args) != len(self.signature):
            raise AssertionError(f"{self.name}: {len(args)} arguments for "
                                 f"{len(self.signature)} parameters")
        values = []
        for k, (a, code) in enumerate(zip(args, self.signature)):
            if code in _ARRAY_CODES or code == "P":
                if not isinstance(a, ndarray):
                    raise AssertionError(f"{self.name}: argument {k} must be a device array")
                if code != "P" and a.dtype != _ARRAY_CODES[code]:
                    raise AssertionError(f"{self.name}: argument {k} is {a.dtype}, the kernel "
                                         f"reads {np.dtype(_ARRAY_CODES[code])}")
                values.append(ct.c_void_p(a._a.ctypes.data))
            else:
                want, ctype = _SCALAR_CODES[code]
                if type(a) is not want:
                    raise AssertionError(f"{self.name}: argument {k} is {type(a).__name__}, "
                                         f"the kernel takes {want.__name__}")
                values.append(getattr(ct, ctype)(a.item()))
        params = (ct.c_void_p * len(values))(*(ct.cast(ct.pointer(v), ct.c_void_p)
                                               for v in values))
        g = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        b = tuple(int(x) for x in block) + (1,) * (3 - len(block))
        if not (0 < g[0] < 2**31 and 0 < g[1] <= 65535 and 0 < g[2] <= 65535
                and min(b) > 0 and b[0] * b[1] * b[2] <= 1024 and b[2] <= 64):
            raise AssertionError(f"{self.name}: launch configuration {g} x {b} outside CUDA's "
                                 "limits")
        rc = kernel_library.simt_launch(self.name.encode(), *g, *b, params, len(values))
        if rc != 0:
            raise AssertionError(f"{self.name}: launch refused ({rc})")


class RawModule:
    """cupy.RawModule over the emulator's kernel library: every kernel asked for must be among
    the name expressions, as CuPy needs for templates."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if kernel_library is None:
            raise NotImplementedError("RawModule needs fake_cupy.kernel_library (the emulator)")
        self.names = list(name_expressions or [])

    def get_function(self, name):
        if name not in self.names:
            raise AssertionError(f"{name!r} is not among the name expressions")
        return RawKernel(name)


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # for importlib.util.find_spec
    m.__dict__.update(attrs)
    return m


cupy = _module(
    "cupy", ndarray=ndarray, asarray=asarray, array=array, asnumpy=asnumpy, dtype=np.dtype,
    RawModule=RawModule, RawKernel=RawKernel, __version__="stand-in",
    inf=np.inf, nan=np.nan, newaxis=None,
    **{n: getattr(np, n) for n in DTYPES},
    **{n: _forward(getattr(np, n), n) for n in FUNCTIONS},
    **{n: _forward(getattr(np, n), n, ufunc=True) for n in UFUNCS})
def _undefined(fn):
    """CuPy's ``empty``: memory nobody wrote holds garbage (0xff bytes: NaN, -1), as a
    GPU's does, so that code that reads it before writing it fails; 256-byte aligned, as
    cudaMalloc's memory is."""
    def call(*args, **kwargs):
        a = fn(*args, **kwargs)._a   # its shape, dtype and strides (memory order)
        raw = np.full(a.nbytes + 256, 0xFF, np.uint8)
        return ndarray(np.ndarray(a.shape, a.dtype, buffer=raw, offset=-raw.ctypes.data % 256,
                                  strides=a.strides))
    call.__name__ = fn.__name__
    return call


cupy.empty, cupy.empty_like = _undefined(cupy.empty), _undefined(cupy.empty_like)


class RandomState:
    """cupy.random.RandomState: seeded device arrays (NumPy's stream of numbers, not CuPy's)."""

    def __init__(self, seed=None):
        self._rs = np.random.RandomState(seed)

    def standard_normal(self, size=None, dtype=float):
        return ndarray(np.asarray(self._rs.standard_normal(size), dtype=dtype))


class MemoryPool:
    """cupy.get_default_memory_pool(): nothing is cached here."""

    def free_all_blocks(self, stream=None):
        pass

    def total_bytes(self):
        return 0

    def used_bytes(self):
        return 0


_pool = MemoryPool()
cupy.random = _module("cupy.random", RandomState=RandomState)
cupy.get_default_memory_pool = lambda: _pool
cupy.linalg = _module("cupy.linalg",
                      **{n: _forward(getattr(np.linalg, n), n) for n in LINALG},
                      **{n: _checked(n) for n in LINALG_CHECKED})
cupy.cuda = _module("cupy.cuda", Device=Device, Stream=Stream, Event=Event,
                    get_current_stream=get_current_stream, get_elapsed_time=get_elapsed_time,
                    runtime=_module("cupy.cuda.runtime", getDeviceCount=lambda: 1,
                                    getDeviceProperties=lambda device: {
                                        "name": b"CuPy stand-in (CPU)", "major": 9,
                                        "minor": 0, "totalGlobalMem": 80 << 30}))
cupyx = _module("cupyx", errstate=errstate)
cuda_libs = _module("cupy_backends.cuda.libs", cublas=_module("cublas"),
                    cusolver=_module("cusolver"))


def install(monkeypatch=None):
    """Make ``import cupy`` (and cupyx, and the CUDA libraries ``_backends.cupy_problem``
    imports) give the stand-in (for good without ``monkeypatch``); returns its ``cupy``."""
    for name, mod in (("cupy", cupy), ("cupy.linalg", cupy.linalg), ("cupy.cuda", cupy.cuda),
                      ("cupy.random", cupy.random),
                      ("cupyx", cupyx), ("cupy_backends", _module("cupy_backends")),
                      ("cupy_backends.cuda", _module("cupy_backends.cuda")),
                      ("cupy_backends.cuda.libs", cuda_libs)):
        if monkeypatch is None:
            sys.modules[name] = mod
        else:
            monkeypatch.setitem(sys.modules, name, mod)
    if monkeypatch is not None:
        monkeypatch.setitem(_state, "linalg", "ignore")
    return cupy


def load_kernel_library(path):
    """Load the emulator's kernel library (simt/launch_kernels.cpp) for RawModule."""
    import ctypes
    global kernel_library
    lib = ctypes.CDLL(str(path))
    lib.simt_signature.restype = ctypes.c_char_p
    lib.simt_signature.argtypes = [ctypes.c_char_p]
    lib.simt_launch.restype = ctypes.c_int
    lib.simt_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    kernel_library = lib
    return lib
