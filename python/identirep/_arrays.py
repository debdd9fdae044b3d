"""Where arrays live: host (NumPy) or a GPU (CuPy, torch CUDA tensors, anything with
``__cuda_array_interface__``), and the array module the engine's array code runs on."""
from __future__ import annotations

import numpy as np

from .errors import IdentirepError


def is_gpu_array(a) -> bool:
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        return bool(getattr(a, "is_cuda", False))
    return mod == "cupy" or hasattr(a, "__cuda_array_interface__")


def array_module(x):
    """cupy for a CuPy array, numpy otherwise: the engine keeps each model's arrays in one of
    the two (``ModelCache``) and writes its array code against this module."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def array_location(*arrays) -> str:
    locs = {"gpu" if is_gpu_array(a) else "cpu" for a in arrays if a is not None}
    if len(locs) > 1:
        raise IdentirepError("some arrays are on a GPU and some on the CPU; move them to one place")
    return locs.pop() if locs else "cpu"
