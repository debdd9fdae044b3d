"""Backend registry: cpu | cuda | cupy | reference, chosen by where the arrays live.

``backend="auto"`` picks cpu for NumPy arrays and a GPU backend for CuPy / torch-CUDA arrays;
the environment variable IDENTIREP_BACKEND overrides "auto". A backend that is not available
fails loudly with what to do instead; nothing silently falls back to a slower path.
"""
from __future__ import annotations

import os

from .errors import IdentirepError

BACKENDS = ("cpu", "cuda", "cupy", "reference")


def array_location(*arrays) -> str:
    locs = set()
    for a in arrays:
        if a is None:
            continue
        mod = type(a).__module__.split(".")[0]
        if mod == "cupy" or (mod == "torch" and getattr(a, "is_cuda", False)):
            locs.add("gpu")
        else:
            locs.add("cpu")
    if len(locs) > 1:
        raise IdentirepError("some arrays are on a GPU and some on the CPU; move them to one place")
    return locs.pop() if locs else "cpu"


def resolve(backend: str, *models) -> str:
    if backend is None:
        backend = "auto"
    if backend == "auto":
        backend = os.environ.get("IDENTIREP_BACKEND", "auto") or "auto"
    if backend not in BACKENDS + ("auto",):
        raise IdentirepError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    from .model import Model
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise IdentirepError(
                f"argument {i + 1} must be an identirep.Model, got {type(m).__name__}")
    arrays = [x for m in models for x in (m.f, m.g, m.bias)]
    loc = array_location(*arrays)
    if backend == "auto":
        backend = "cpu" if loc == "cpu" else _gpu_backend()
    if backend in ("cuda", "cupy"):
        _require_gpu(backend)
    return backend


def _gpu_backend() -> str:
    from ._build import build_info
    return "cuda" if build_info().get("cuda_compiled") else "cupy"


def _require_gpu(backend: str) -> None:
    raise IdentirepError(
        f"the {backend} backend is not available in this build: GPU arrays need identirep "
        "built with CUDA (IDENTIREP_CUDA=ON pip install .) or CuPy with a visible GPU; "
        "pass NumPy arrays (or backend='cpu') to use the CPU engine")
