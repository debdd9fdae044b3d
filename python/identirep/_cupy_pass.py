"""Pass 1 on a GPU: cuBLAS GEMM tiles, then the fused CUDA epilogue.

Two backends:
- ``cuda_pass``: the compiled extension. With the pass driver built (``_core.lse_kl_pass_cuda``,
  csrc/cuda_pass.cpp) the whole tile loop (cublasGemmEx tiles, the epilogue, the overlap) is one
  compiled call; otherwise, and for operands it does not take (a pair of two float kinds, a
  float64 pair in a float32 pass, strided layouts, ``half_gemm="convert"``), the loop below
  with CuPy's GEMM tiles and the compiled epilogue ``_core.lse_kl_update_cuda``;
- ``cupy_pass``: the loop below with the same kernels (csrc/kernels/lse_kl.cuh, installed as
  identirep/kernels/lse_kl.cuh) compiled at run time by CuPy (NVRTC), for builds without CUDA.

Inputs stay where they are: CuPy arrays, torch CUDA tensors, anything with
``__cuda_array_interface__`` or DLPack (zero-copy), or host arrays (copied to the device).
float16/bfloat16 pairs (f_k, g_k) of one dtype go to cuBLAS as they are (``cublasGemmEx``,
float32 accumulation and output); other inputs are widened per tile to the compute dtype,
float64 when all four are float64, float32 otherwise. Label tiles are the outer loop and row
tiles the inner one (all N rows in one tile when they fit), so each label tile is converted once
and the column moments see their rows in order. Device memory beyond the inputs and the O(N + V)
state is bounded by ``workspace_bytes``: two logit tiles, converted operand tiles and the
column-moment scratch. Everything runs on CuPy's current stream.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import _bf16 as bf16
from .errors import CUPY_INSTALL, why
from .passes import PassStats, check_pass_shapes, finalize, init_state
from .errors import IdentirepError

DEFAULT_TILE_COLS = 4096
HALF_KINDS = ("float16", "bfloat16")
FLOAT_KINDS = HALF_KINDS + ("float32", "float64")

# Launch geometry of the NVRTC-compiled kernels (template arguments of kernels/lse_kl.cuh).
LSE_KL_THREADS = 256
COL_ROWS = 8
COL_MAX_CHUNKS = 16
COL_MIN_CHUNK_ROWS = 64
MERGE_THREADS = 256
# The fused (one-read) epilogue: LseKlSlabKernel / LseKlRowMergeKernel of kernels/lse_kl.cuh.
SLAB_COLS = 256
SLAB_THREADS = 256
SLAB_ROWS = {"float": 16, "double": 8}
ROW_FIELDS = 15
FUSED_MAX_CHUNKS = 64
FUSED_MIN_CHUNK_ROWS = 256

# cuBLAS / CUDA enums (cublas_api.h, library_types.h).
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1


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
    from ._arrays import is_gpu_array
    from .model import Model
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
                 metadata=model.metadata)


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
    from .model import common_kind
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


def cupy_pass(f1, g1, f2, g2, *, workspace_bytes: int = 1 << 30,
              tile_cols: Optional[int] = None, tile_rows: Optional[int] = None,
              progress: Optional[Callable[[float], None]] = None,
              half_gemm: str = "cublas", overlap: bool = True,
              fused_epilogue: bool = False) -> PassStats:
    """The streaming pass with the epilogue compiled at run time by CuPy (no CUDA build needed).

    f1 (N x M1), g1 (V x M1), f2 (N x M2), g2 (V x M2): device (or host) arrays of float16,
    bfloat16, float32 or float64, any strides. ``half_gemm``: "cublas" feeds float16/bfloat16
    pairs to cuBLAS as they are, "convert" widens them to float32 first. ``overlap``: run the
    epilogue of one tile on a second stream while the GEMMs of the next tile run (two pairs of
    logit tiles in the workspace; the same results, since the epilogue still sees the tiles in
    order). ``fused_epilogue``: the one-read epilogue (LseKlSlabKernel) instead of the row and
    column kernels; the same statistics up to rounding. Returns a PassStats of host NumPy
    arrays (backend "cupy").
    """
    return _gpu_pass(f1, g1, f2, g2, "cupy", workspace_bytes, tile_cols, tile_rows, progress,
                     half_gemm, overlap, fused_epilogue)


def cuda_pass(f1, g1, f2, g2, *, workspace_bytes: int = 1 << 30,
              tile_cols: Optional[int] = None, tile_rows: Optional[int] = None,
              progress: Optional[Callable[[float], None]] = None,
              half_gemm: str = "cublas", overlap: bool = True,
              fused_epilogue: bool = False, driver: bool = True,
              fused_gemm: bool = False, gemm_block_rows: int = 128,
              gemm_wgmma: bool = False) -> PassStats:
    """The streaming pass with the compiled CUDA code: the pass driver
    (``_core.lse_kl_pass_cuda``: the tile loop, cuBLAS tiles and epilogue in one call) when it
    was built and takes these operands, else CuPy's GEMM tiles and the compiled epilogue
    (``_core.lse_kl_update_cuda``); ``driver=False`` forces the latter.

    ``fused_gemm``: the driver with the fused GEMM kernel (csrc/kernels/lse_kl_gemm.cuh: the
    logits are computed and reduced on chip, never written) instead of cuBLAS tiles; float16
    or bfloat16 operands of one kind with contiguous rows, row strides a multiple of 8 and
    16-byte aligned data (``gemm_problem`` says why not), compute capability 8.0+.
    ``gemm_block_rows``: its blocks' sub-tiles, 128 rows (one block per SM) or 64 (two).
    ``gemm_wgmma``: its Hopper kernel (wgmma, sm_90a: compute capability 9.0 only, and a build
    with ``build_info()["fused_gemm_wgmma"]``) instead of the mma.sync one (sm_80+).

    Same arguments and results as :func:`cupy_pass` (backend "cuda"); needs identirep built
    with CUDA.
    """
    if fused_gemm and gemm_block_rows not in (64, 128):
        raise IdentirepError(f"gemm_block_rows must be 128 or 64, got {gemm_block_rows!r}")
    if gemm_wgmma and not fused_gemm:
        raise IdentirepError("gemm_wgmma=True is a kind of the fused GEMM: set fused_gemm=True")
    return _gpu_pass(f1, g1, f2, g2, "cuda", workspace_bytes, tile_cols, tile_rows, progress,
                     half_gemm, overlap, fused_epilogue, driver,
                     int(gemm_block_rows) if fused_gemm else 0, bool(gemm_wgmma))


def tile_shape(n, v, m1, m2, itemsize, tile_rows, tile_cols, workspace_bytes, buffers=1,
               fused=False, slack=0):
    """(rows, cols) of the logit tiles: all rows when they fit, ``tile_cols`` labels (default
    DEFAULT_TILE_COLS), shrunk until ``buffers`` pairs of logit tiles, the widened operand
    tiles (m1 + m2 columns; 0 for operands used as they are), the epilogue's scratch
    (``epilogue_scratch``) and ``slack`` bytes fit in ``workspace_bytes``."""
    for name, t in (("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if t is not None and int(t) < 1:
            raise IdentirepError(f"{name} must be >= 1, got {t}")
    tiles = 2 * buffers

    def need(r, c):
        return slack + itemsize * (tiles * r * c + (r + c) * (m1 + m2)) + 8 * sum(
            epilogue_scratch(r, c, fused))

    tc = min(v, int(tile_cols) if tile_cols else DEFAULT_TILE_COLS)
    tr = min(n, int(tile_rows)) if tile_rows else n
    while need(tr, tc) > workspace_bytes and (tr > 1 or tc > 1):
        if tile_rows is None and tr > 1:
            per_row = itemsize * (tiles * tc + m1 + m2)
            tr = max(1, min(tr // 2, (workspace_bytes - need(0, tc)) // per_row))
        elif tc > 1:
            tc = max(1, tc // 2)
        else:
            tr = max(1, tr // 2)
    if need(tr, tc) > workspace_bytes:
        raise IdentirepError(f"workspace_bytes={workspace_bytes} is too small for even one 1 x 1 "
                             f"tile; need at least {need(1, 1)} bytes")
    return tr, min(tc, 0x7FFFFFFF)


def _check_shapes(ops):
    f1, g1, f2, g2 = ops
    for a, name in zip(ops, ("f1", "g1", "f2", "g2")):
        if len(a.shape) != 2:
            raise IdentirepError(f"{name} must be a 2-d array, got shape {tuple(a.shape)}")
        if 0 in a.shape:
            raise IdentirepError(f"{name} is empty (shape {tuple(a.shape)})")
    check_pass_shapes(f1, g1, f2, g2)


def epilogue_scratch(rows, cols, fused=False):
    """float64 elements (row scratch, column scratch) of the epilogue for a rows x cols tile
    (LseKlColWorkElems, or LseKlFusedRowWorkElems and LseKlFusedColWorkElems)."""
    if not fused:
        return 0, COL_MAX_CHUNKS * 5 * cols
    return -(-cols // SLAB_COLS) * ROW_FIELDS * rows, FUSED_MAX_CHUNKS * 5 * cols


def _gpu_pass(f1, g1, f2, g2, backend, workspace_bytes, tile_cols, tile_rows, progress,
              half_gemm, overlap=True, fused=False, driver=False, gemm=0,
              wgmma=False) -> PassStats:
    """The GPU pass; gemm: 0, or the fused GEMM's block rows (128 or 64), wgmma: its
    sm_90a kernel."""
    if half_gemm not in ("cublas", "convert"):
        raise IdentirepError(f"half_gemm must be 'cublas' or 'convert', got {half_gemm!r}")
    cp = import_cupy()
    ops = [as_device(a, name) for a, name in zip((f1, g1, f2, g2), ("f1", "g1", "f2", "g2"))]
    _check_shapes(ops)
    f1, g1, f2, g2 = ops
    dt = np.dtype(np.float64 if all(o.kind == "float64" for o in ops) else np.float32)
    n, v = f1.shape[0], g1.shape[0]
    if gemm:
        from . import _core
        if not hasattr(_core, "lse_kl_pass_cuda"):
            raise IdentirepError("fused_gemm=True needs identirep built with the CUDA pass "
                                 "driver (build_info()['cuda_pass_driver'])")
        problem = gemm_problem(ops)
        if problem:
            raise IdentirepError(f"fused_gemm=True cannot take these operands: {problem}")
        if wgmma:
            problem = _core.lse_kl_gemm_wgmma_problem(cp.cuda.Device().id)
            if problem:
                raise IdentirepError(f"gemm_wgmma=True: {problem}")
        return _driver_pass(cp, driver_operands(ops, dt), n, v, dt, workspace_bytes, tile_cols,
                            tile_rows, progress, False, False, gemm=gemm, wgmma=wgmma)
    if driver and backend == "cuda" and (half_gemm == "cublas" or not any(
            o.kind in HALF_KINDS for o in ops)):
        operands = driver_operands(ops, dt)
        if operands is not None and _driver() is not None:
            return _driver_pass(cp, operands, n, v, dt, workspace_bytes, tile_cols, tile_rows,
                                progress, overlap, fused)
    pairs = [_GemmPair(cp, f, g, dt, half_gemm) for f, g in ((f1, g1), (f2, g2))]
    converted = [0 if p.half else p.f.shape[1] for p in pairs]  # widths of widened copies
    nbuf = 2 if overlap else 1
    tr, tc = tile_shape(n, v, *converted, dt.itemsize, tile_rows, tile_cols, workspace_bytes,
                        nbuf, fused)
    n_row_tiles = -(-n // tr)
    n_tiles = n_row_tiles * -(-v // tc)
    if n_tiles == 1:
        nbuf = 1  # nothing to overlap
    epilogue = (_CudaEpilogue if backend == "cuda" else _CupyEpilogue)(cp, tc, dt, tr, fused)

    state, args, row_m, col_m = _pass_state(cp, n, v)
    bufs = [[cp.empty(tr * tc, dtype=dt) for _ in range(2)] for _ in range(nbuf)]
    # GEMMs run on the caller's (current) stream, epilogues on `side`; events order each tile's
    # epilogue after its GEMMs and the GEMMs that reuse a buffer after the epilogue that read it.
    main = cp.cuda.get_current_stream()
    side = cp.cuda.Stream(non_blocking=True) if nbuf > 1 else main
    if side is not main:
        side.wait_event(main.record())
    released = [None] * nbuf

    done = 0
    for c0 in range(0, v, tc):
        c1 = min(v, c0 + tc)
        for p in pairs:
            p.set_labels(c0, c1)
        for r0 in range(0, n, tr):
            r1 = min(n, r0 + tr)
            b = done % nbuf
            l1, l2 = (w[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0) for w in bufs[b])
            if released[b] is not None:
                main.wait_event(released[b])
            pairs[0].logits(r0, r1, n_row_tiles=n_row_tiles, out=l1)
            pairs[1].logits(r0, r1, n_row_tiles=n_row_tiles, out=l2)
            if side is main:
                epilogue(l1, l2, c0, r0, state, args, row_m, col_m)
            else:
                side.wait_event(main.record())
                with side:
                    epilogue(l1, l2, c0, r0, state, args, row_m, col_m)
                released[b] = side.record()
            done += 1
            if progress is not None:
                progress(done / n_tiles)
    if side is not main:
        main.wait_event(side.record())
    return _pass_stats(state, args, row_m, col_m, backend, dt)


# ------------------------------------------------------------------ the compiled driver
def driver_reserve() -> int:
    """Bytes of the driver's workspace beyond tiles and epilogue scratch: its cuBLAS workspace
    and the alignment of its pieces (PlanWorkspace in csrc/cuda_pass.cpp)."""
    from . import _core
    return _core.cublas_workspace_bytes() + 6 * 256


def _driver():
    """_core when it has the pass driver and cuBLAS loads, None without the driver; an
    IdentirepError when the driver is built but cuBLAS cannot be loaded."""
    from . import _core
    if not hasattr(_core, "lse_kl_pass_cuda"):
        return None
    load_cublas()
    return _core


def cublas_candidates(major: int) -> list:
    """Where libcublas.so.<major> may be: its soname (loaded already by CuPy or torch, or on
    the loader's path), NVIDIA's PyPI wheels, the CUDA toolkit."""
    import glob
    import importlib.util
    import os
    name = f"libcublas.so.{major}"
    out = [name]
    spec = importlib.util.find_spec("nvidia")
    for d in (spec.submodule_search_locations or []) if spec else []:
        out += [os.path.join(d, sub, "lib", name) for sub in (f"cu{major}", "cublas")]
    roots = [os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for r in filter(None, roots):
        out += [os.path.join(r, "lib64", name)] + sorted(glob.glob(os.path.join(
            r, "targets", "*", "lib", name)))
    return [p for p in out if os.path.sep not in p or os.path.isfile(p)]


def load_cublas() -> str:
    """Load libcublas into the pass driver (once); returns its file, or raises IdentirepError
    with the places tried."""
    from . import _core
    try:
        _core.cublas_version()
        return _core.cublas_load([])  # loaded already: its file
    except RuntimeError:
        pass
    try:  # CuPy's cuBLAS, when CuPy has one, is the library the rest of the engine uses
        from cupy_backends.cuda.libs import cublas  # noqa: F401
    except Exception:
        pass
    major = _core.cublas_header_major()
    try:
        return _core.cublas_load(cublas_candidates(major))
    except RuntimeError as e:
        raise IdentirepError(
            f"the cuda backend's pass driver needs cuBLAS {major}: {e}. Install it "
            f"(pip install 'nvidia-cublas>={major},<{major + 1}', or the CUDA toolkit), or use "
            "backend='cupy'") from e


def driver_operands(ops, dt):
    """The four operands as the driver's (ptr, rows, cols, stride0, stride1, kind) tuples, or
    None when one of them needs the Python loop (a pair of two kinds, a float64 pair in a
    float32 pass, a layout with neither rows nor columns contiguous)."""
    out = []
    for f, g in (ops[0:2], ops[2:4]):
        if f.kind != g.kind or (f.kind == "float64") != (dt == np.float64):
            return None
        for x in (f, g):
            it = x.data.itemsize
            if any(st % it for st in x.data.strides):
                return None
            if _blas_layout(x.data) is None:
                return None
            out.append((x.data.data.ptr, x.shape[0], x.shape[1], x.data.strides[0] // it,
                        x.data.strides[1] // it, x.kind))
    return out


GEMM_TILE_COLS = 16384  # labels per call of the fused GEMM (fewer partial waves of blocks)


def gemm_problem(ops) -> str:
    """Why the fused GEMM cannot take these four DeviceArrays, or "" when it can."""
    kinds = {o.kind for o in ops}
    if len(kinds) != 1 or not kinds <= set(HALF_KINDS):
        return f"it takes float16 or bfloat16 operands of one kind, got {sorted(kinds)}"
    for o, name in zip(ops, ("f1", "g1", "f2", "g2")):
        rows, cols = o.shape
        s0, s1 = o.data.strides
        it = o.data.itemsize
        if cols > 1 and s1 != it:
            return f"{name} needs contiguous rows (copy it first)"
        if rows > 1 and (s0 % (8 * it) or s0 < cols * it):
            return f"the row stride of {name} ({s0 // it}) is not a multiple of 8 elements"
        if o.data.data.ptr % 16:
            return f"the data of {name} is not 16-byte aligned"
    return ""


PROGRESS_LOGITS = 1 << 35  # ~1 s of pass on an H100/H200
PROGRESS_GROUPS = 16


def label_groups(n, v, tc, progress: bool):
    """Label ranges, at label-tile boundaries, of the driver's calls: one call (the overlap
    runs across the whole pass), or with ``progress`` and above PROGRESS_LOGITS logits,
    PROGRESS_GROUPS calls with a progress report after each (each boundary costs one epilogue
    outside the overlap)."""
    tiles = -(-v // tc)
    groups = min(tiles, PROGRESS_GROUPS) if progress and n * v > PROGRESS_LOGITS else 1
    bounds = [tc * (tiles * i // groups) for i in range(groups)] + [v]
    return list(zip(bounds[:-1], bounds[1:]))


def gemm_tile_shape(n, v, tile_rows, tile_cols, workspace_bytes):
    """(rows, cols) of the fused GEMM's calls: all rows and GEMM_TILE_COLS labels (or the
    given ones), halved until its scratch fits in ``workspace_bytes``."""
    from . import _core
    for name, t in (("tile_rows", tile_rows), ("tile_cols", tile_cols)):
        if t is not None and int(t) < 1:
            raise IdentirepError(f"{name} must be >= 1, got {t}")
    tr = min(n, int(tile_rows)) if tile_rows else n
    tc = min(v, int(tile_cols)) if tile_cols else min(v, GEMM_TILE_COLS)

    def need(r, c):
        return _core.lse_kl_pass_cuda_workspace(r, c, "float32", False, False, True)

    while need(tr, tc) > workspace_bytes:
        if tile_cols is None and tc > 128:
            tc = max(128, tc // 2)
        elif tile_rows is None and tr > 1:
            tr = max(1, tr // 2)
        else:
            raise IdentirepError(
                f"workspace_bytes={workspace_bytes} is too small for the fused GEMM with "
                f"{tr} x {tc} tiles ({need(tr, tc)} bytes)")
    return tr, tc


def _driver_pass(cp, operands, n, v, dt, workspace_bytes, tile_cols, tile_rows, progress,
                 overlap, fused, gemm=0, wgmma=False) -> PassStats:
    from . import _core
    nbuf = 2 if overlap else 1
    if gemm:
        tr, tc = gemm_tile_shape(n, v, tile_rows, tile_cols, workspace_bytes)
    else:
        tr, tc = tile_shape(n, v, 0, 0, dt.itemsize, tile_rows, tile_cols, workspace_bytes,
                            nbuf, fused, driver_reserve())
    if -(-n // tr) * -(-v // tc) == 1:
        overlap = False  # nothing to overlap
    size = _core.lse_kl_pass_cuda_workspace(tr, tc, dt.name, overlap, fused, gemm != 0)
    work = cp.empty(size, dtype=cp.uint8)
    state, args, row_m, col_m = _pass_state(cp, n, v)
    stream = cp.cuda.get_current_stream()
    for c0, c1 in label_groups(n, v, tc, progress is not None):
        _core.lse_kl_pass_cuda(*operands, c0, c1, tr, tc, state.data.ptr, args.data.ptr,
                               row_m.data.ptr, col_m.data.ptr, work.data.ptr, size, dt.name,
                               overlap, fused, gemm, stream.ptr, cp.cuda.Device().id, wgmma)
        if progress is not None and c1 < v:
            stream.synchronize()
            progress(c1 / v)
    out = _pass_stats(state, args, row_m, col_m, "cuda", dt)
    if progress is not None:
        progress(1.0)
    return out


def _pass_state(cp, n, v):
    """The device state of a pass (layouts of csrc/kernels/lse_kl.h): state (8, n) with
    m = -inf, args (2, n) = -1, row moments (5, n) and column moments (5, v) zero."""
    return (*init_state(n, cp), cp.zeros((5, n), dtype=cp.float64),
            cp.zeros((5, v), dtype=cp.float64))


def _pass_stats(state, args, row_m, col_m, backend, dt) -> PassStats:
    out = finalize(state.get(), args.get())
    r, c = row_m.get(), col_m.get()
    return PassStats(L1=out["L1"], L2=out["L2"], kl12=out["kl12"], kl21=out["kl21"], H1=out["H1"],
                     H2=out["H2"], agree=out["top1_agree"], row_mean1=r[0], row_mean2=r[1],
                     row_m2_11=r[2], row_m2_22=r[3], row_m2_dd=r[4], col_mean1=c[0],
                     col_mean2=c[1], col_m2_11=c[2], col_m2_22=c[3], col_m2_12=c[4],
                     backend=backend, dtype=dt.name)


# ------------------------------------------------------------------ GEMM tiles
class _GemmPair:
    """Logit tiles f[r0:r1] @ g[c0:c1]^T of one model in the compute dtype."""

    def __init__(self, cp, f: DeviceArray, g: DeviceArray, dt, half_gemm):
        self.cp, self.f, self.g, self.dt = cp, f, g, dt
        self.half = (f.kind == g.kind and f.kind in HALF_KINDS and dt == np.float32
                     and half_gemm == "cublas")
        self.labels = None
        self.rows_cache = None

    def _prepare(self, x: DeviceArray):
        return x.data if self.half else x.widened(self.dt)

    def set_labels(self, c0, c1):
        self.labels = None  # release the previous tile before converting the next
        self.labels = self._prepare(self.g[c0:c1])

    def logits(self, r0, r1, n_row_tiles, out):
        if n_row_tiles == 1:  # one row tile: convert f once for all label tiles
            if self.rows_cache is None:
                self.rows_cache = self._prepare(self.f[r0:r1])
            rows = self.rows_cache
        else:
            rows = self._prepare(self.f[r0:r1])
        if self.half:
            gemm_ex(self.cp, rows, self.labels, out, self.f.kind)
        else:
            self.cp.matmul(rows, self.labels.T, out=out)


def _blas_layout(x):
    """("row" | "col", leading dimension) of a 2-d array whose rows (or columns) are contiguous,
    or None when it needs a copy first."""
    it = x.itemsize
    rows, cols = x.shape
    s0, s1 = x.strides
    if (cols == 1 or s1 == it) and s0 % it == 0:
        ld = s0 // it if rows > 1 else cols
        if ld >= cols and ld < 2 ** 31:
            return "row", max(ld, 1)
    if (rows == 1 or s0 == it) and s1 % it == 0:
        ld = s1 // it if cols > 1 else rows
        if ld >= rows and ld < 2 ** 31:
            return "col", max(ld, 1)
    return None


def gemm_nt_args(a, b):
    """cublasGemmEx arguments (transa, transb, m, n, k, lda, ldb, ldc) that compute the
    row-major product a @ b^T (r x c, leading dimension c) as the column-major product
    out^T (c x r) = op(b) (c x k) . op(a) (k x r); None when a or b needs a contiguous copy.
    Only .shape, .strides and .itemsize of a (r x k) and b (c x k) are read."""
    la, lb = _blas_layout(a), _blas_layout(b)
    if la is None or lb is None:
        return None
    r, k = a.shape
    c = b.shape[0]
    op_b = _CUBLAS_OP_T if lb[0] == "row" else _CUBLAS_OP_N
    op_a = _CUBLAS_OP_N if la[0] == "row" else _CUBLAS_OP_T
    return op_b, op_a, c, r, k, lb[1], la[1], c


def gemm_ex(cp, a, b, out, kind: str, beta: float = 0.0) -> None:
    """out (r x c, C-contiguous float32) = a (r x k) @ b (c x k)^T + beta out for
    float16/bfloat16 a, b (CuPy arrays; bfloat16 as uint16 bits), with cublasGemmEx: float32
    accumulation, no rounding of the inputs. Any row- or column-contiguous layout; others are
    copied."""
    from cupy.cuda import cublas, device
    if out.shape != (a.shape[0], b.shape[0]) or out.dtype != np.float32 \
            or not out.flags.c_contiguous:
        raise IdentirepError("gemm_ex: out must be a C-contiguous float32 (r, c) array")
    if _blas_layout(a) is None:
        a = cp.ascontiguousarray(a)
    if _blas_layout(b) is None:
        b = cp.ascontiguousarray(b)
    transa, transb, m, n, k, lda, ldb, ldc = gemm_nt_args(a, b)
    code = _CUDA_R_16BF if kind == "bfloat16" else _CUDA_R_16F
    one = np.ones(1, dtype=np.float32)
    zero = np.full(1, beta, dtype=np.float32)
    host_mode = getattr(cublas, "CUBLAS_POINTER_MODE_HOST", 0)
    handle = device.get_cublas_handle()
    mode = cublas.getPointerMode(handle)  # alpha and beta are host scalars
    if mode != host_mode:
        cublas.setPointerMode(handle, host_mode)
    try:
        cublas.gemmEx(handle, transa, transb, m, n, k, one.ctypes.data, b.data.ptr, code, lda,
                      a.data.ptr, code, ldb, zero.ctypes.data, out.data.ptr, _CUDA_R_32F, ldc,
                      _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
    finally:
        if mode != host_mode:
            cublas.setPointerMode(handle, mode)


def split_bf16_matmul(L, g_bits):
    """L (r x k, float32, device) @ g^T for g (c x k) given as bfloat16 bits: the exact split
    L = hi + mid + lo (``bf16.split3``) in three bfloat16 GEMMs (``gemm_ex``, float32
    accumulation, smallest part first). Every product is exact, as in a float32 GEMM of L and
    g, at three times the bfloat16 tensor-core cost instead of a float32 (non-tensor) GEMM's."""
    cp = import_cupy()
    out = cp.empty((L.shape[0], g_bits.shape[0]), dtype=cp.float32)
    for i, part in enumerate(reversed(bf16.split3(cp.ascontiguousarray(L, dtype=cp.float32)))):
        gemm_ex(cp, part, g_bits, out, "bfloat16", beta=0.0 if i == 0 else 1.0)
    return out


# ------------------------------------------------------------------ epilogues
class _CudaEpilogue:
    """The compiled epilogue: _core.lse_kl_update_cuda on CuPy's current stream; ``fused``: the
    one-read epilogue, for tiles of at most ``tr`` rows."""

    def __init__(self, cp, tc, dt, tr=1, fused=False):
        from . import _core
        if not hasattr(_core, "lse_kl_update_cuda"):
            raise IdentirepError("the cuda backend needs identirep built with CUDA "
                                 "(IDENTIREP_CUDA=ON pip install .); backend='cupy' does not")
        self.core, self.cp, self.dtype = _core, cp, np.dtype(dt).name
        rows, cols = (_core.lse_kl_cuda_fused_work_elems(tr, tc) if fused else
                      (0, _core.lse_kl_cuda_col_work_elems(tc)))
        self.work = cp.empty(cols, dtype=cp.float64)
        self.row_work = cp.empty(rows, dtype=cp.float64) if fused else None

    def __call__(self, l1, l2, c0, r0, state, args, row_m, col_m):
        n, v = l1.shape
        N, V = state.shape[1], col_m.shape[1]
        ptr = (lambda a, row0: a.data.ptr + row0 * a.itemsize)
        self.core.lse_kl_update_cuda(
            l1.data.ptr, l2.data.ptr, n, v, l1.strides[0] // l1.itemsize,
            l2.strides[0] // l2.itemsize, c0, ptr(state, r0), N, ptr(args, r0), N, self.dtype,
            self.cp.cuda.get_current_stream().ptr, row_moments=ptr(row_m, r0), row_ld=N,
            col_moments=col_m.data.ptr, col_ld=V, row0=r0, col_work=self.work.data.ptr,
            row_work=0 if self.row_work is None else self.row_work.data.ptr)


_MODULES = {}


def kernel_source(name: str) -> str:
    """Text of a kernel header: installed next to this module, or in a source checkout."""
    here = Path(__file__).resolve().parent
    for path in (here / "kernels" / name, here.parents[1] / "csrc" / "kernels" / name):
        if path.is_file():
            return path.read_text()
    raise IdentirepError(f"kernel source {name} not found next to identirep "
                         f"({here / 'kernels'}); reinstall identirep")


def kernel_names(t: str) -> dict:
    """Instantiations of the lse_kl.cuh kernels for element type ``t`` ("float" | "double")."""
    ns = "identirep::kernels::"
    return {"rows": f"{ns}LseKlKernel<{t}, {LSE_KL_THREADS}>",
            "cols": f"{ns}LseKlColKernel<{t}, {COL_ROWS}>",
            "merge": f"{ns}LseKlColMergeKernel<{t}>",
            "slab": f"{ns}LseKlSlabKernel<{t}, {SLAB_ROWS[t]}>",
            "row_merge": f"{ns}LseKlRowMergeKernel<{t}>"}


def _module(cp):
    dev = cp.cuda.Device().id
    if dev not in _MODULES:
        src = "\n".join(line for line in kernel_source("lse_kl.cuh").splitlines()
                        if line.strip() != "#pragma once")
        names = [n for t in ("float", "double") for n in kernel_names(t).values()]
        _MODULES[dev] = cp.RawModule(code=src, options=("-std=c++17",), name_expressions=names)
    return _MODULES[dev]


def col_chunks(n: int) -> int:
    """Row chunks of the column kernel for a tile of n rows (ColChunks in lse_kl.cuh)."""
    return max(1, min(COL_MAX_CHUNKS, -(-n // COL_MIN_CHUNK_ROWS)))


def fused_chunks(n: int) -> int:
    """Row chunks of the fused epilogue for a tile of n rows (FusedChunks in lse_kl.cuh)."""
    return max(1, min(FUSED_MAX_CHUNKS, -(-n // FUSED_MIN_CHUNK_ROWS)))


class _CupyEpilogue:
    """The epilogue kernels of lse_kl.cuh compiled by CuPy (NVRTC), launched as LseKl (or, with
    ``fused``, LseKlFused) does."""

    def __init__(self, cp, tc, dt, tr=1, fused=False):
        mod = _module(cp)
        names = kernel_names("float" if dt == np.float32 else "double")
        self.rows, self.cols, self.merge, self.slab, self.row_merge = (
            mod.get_function(names[k]) for k in ("rows", "cols", "merge", "slab", "row_merge"))
        rows, cols = epilogue_scratch(tr, tc, fused)
        self.work = cp.empty(cols, dtype=cp.float64)
        self.row_work = cp.empty(rows, dtype=cp.float64) if fused else None

    def __call__(self, l1, l2, c0, r0, state, args, row_m, col_m):
        i64 = np.int64
        n, v = l1.shape
        N, V = state.shape[1], col_m.shape[1]
        ld1, ld2 = i64(l1.strides[0] // l1.itemsize), i64(l2.strides[0] // l2.itemsize)
        if self.row_work is not None:
            chunks = fused_chunks(n)
            self.slab((-(-v // SLAB_COLS), chunks), (SLAB_THREADS,),
                      (l1, ld1, l2, ld2, i64(n), i64(v), self.row_work, self.work))
        else:
            self.rows((n,), (LSE_KL_THREADS,),
                      (l1, ld1, l2, ld2, i64(v), i64(c0), state[:, r0:], i64(N), args[:, r0:],
                       i64(N), row_m[:, r0:], i64(N)))
            chunks = col_chunks(n)
            self.cols((-(-v // 32), chunks), (32, COL_ROWS),
                      (l1, ld1, l2, ld2, i64(n), i64(v), self.work))
        self.merge((-(-v // MERGE_THREADS),), (MERGE_THREADS,),
                   (l1, l2, i64(n), i64(v), i64(c0), i64(chunks), self.work, col_m, i64(V),
                    i64(r0)))
        if self.row_work is not None:
            self.row_merge((-(-n // MERGE_THREADS),), (MERGE_THREADS,),
                           (i64(n), i64(v), i64(c0), self.row_work, state[:, r0:], i64(N),
                            args[:, r0:], i64(N), row_m[:, r0:], i64(N)))


# ------------------------------------------------------------------ pivot search
PIVOT_THREADS = 256   # kPivotThreads of kernels/pivot_terms.cuh
#: the pivot kernel for float32 / float64 cross products
PIVOT_KERNELS = {t: f"identirep::kernels::PivotCriteriaKernel<{t}, {PIVOT_THREADS}>"
                 for t in ("float", "double")}
_PIVOT_MODULES = {}


def _pivot_module(cp):
    dev = cp.cuda.Device().id
    if dev not in _PIVOT_MODULES:
        src = "\n".join(line for line in kernel_source("pivot_terms.cuh").splitlines()
                        if line.strip() != "#pragma once")
        _PIVOT_MODULES[dev] = cp.RawModule(code=src, options=("-std=c++17",),
                                           name_expressions=list(PIVOT_KERNELS.values()))
    return _PIVOT_MODULES[dev]


def pivot_criteria_device(X1, X2, n1, n2, A1, A2, B12, pivots, tol: float, mode: str,
                          backend: str) -> np.ndarray:
    """Best-leave-out criterion of each pivot (kernels/pivot_terms.cuh) on the GPU.

    X1, X2: device (B, V) cross products g_k(y0)' C_k g_k(y), float32 or float64 (read as they
    are; other dtypes are widened to float64); n1, n2, A1, A2, B12: device float64 (V,);
    pivots: (B,) indices.
    ``backend`` "cuda" launches the compiled kernel (``_core.pivot_criteria_cuda``), "cupy"
    the same kernel compiled by NVRTC. Returns host float64 (B,)."""
    if mode not in ("max", "mean"):
        raise IdentirepError(f"mode must be 'max' or 'mean', got {mode!r}")
    cp = import_cupy()
    xdt = cp.float32 if X1.dtype == cp.float32 and X2.dtype == cp.float32 else cp.float64
    X1, X2 = (cp.ascontiguousarray(x, dtype=xdt) for x in (X1, X2))
    B, V = X1.shape
    if X2.shape != (B, V) or any(v.shape != (V,) for v in (n1, n2, A1, A2, B12)):
        raise IdentirepError("pivot_criteria_device: X1, X2 must be (B, V) and the label "
                             "vectors (V,)")
    piv = cp.asarray(np.asarray(pivots, np.int64))
    crit = cp.empty(B, dtype=cp.float64)
    if B == 0:
        return crit.get()
    vecs = [cp.ascontiguousarray(v, dtype=cp.float64) for v in (n1, n2, A1, A2, B12)]
    if backend == "cuda":
        from . import _core
        if not hasattr(_core, "pivot_criteria_cuda"):
            raise IdentirepError("the cuda backend needs identirep built with CUDA "
                                 "(IDENTIREP_CUDA=ON pip install .); backend='cupy' does not")
        _core.pivot_criteria_cuda(X1.data.ptr, X2.data.ptr, V, V, *(v.data.ptr for v in vecs),
                                  piv.data.ptr, B, V, float(tol), mode, crit.data.ptr,
                                  cp.cuda.get_current_stream().ptr, np.dtype(xdt).name)
    else:
        kern = _pivot_module(cp).get_function(PIVOT_KERNELS["float" if xdt == cp.float32
                                                            else "double"])
        kern((B,), (PIVOT_THREADS,), (X1, np.int64(V), X2, np.int64(V), *vecs, piv, np.int64(V),
                                      np.float64(tol), np.int32(0 if mode == "max" else 1),
                                      crit))
    return crit.get()
