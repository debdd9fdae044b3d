"""The CUDA kernel headers as NVRTC programs: the cupy backend compiles the kernels of
kernels/lse_kl.cuh and kernels/pivot_terms.cuh at run time (CuPy's RawModule), launching them
with the geometry below (the template arguments and constants of those headers)."""
from __future__ import annotations

from pathlib import Path

from ..errors import IdentirepError

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
PIVOT_THREADS = 256   # kPivotThreads of kernels/pivot_terms.cuh

#: the pivot kernel for float32 / float64 cross products
PIVOT_KERNELS = {t: f"identirep::kernels::PivotCriteriaKernel<{t}, {PIVOT_THREADS}>"
                 for t in ("float", "double")}
_MODULES = {}


def kernel_source(name: str) -> str:
    """Text of a kernel header: installed next to this package, or in a source checkout."""
    here = Path(__file__).resolve().parents[1]
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


def col_chunks(n: int) -> int:
    """Row chunks of the column kernel for a tile of n rows (ColChunks in lse_kl.cuh)."""
    return max(1, min(COL_MAX_CHUNKS, -(-n // COL_MIN_CHUNK_ROWS)))


def fused_chunks(n: int) -> int:
    """Row chunks of the fused epilogue for a tile of n rows (FusedChunks in lse_kl.cuh)."""
    return max(1, min(FUSED_MAX_CHUNKS, -(-n // FUSED_MIN_CHUNK_ROWS)))


def _program(cp, header, names):
    """The RawModule of one kernel header on CuPy's current device (compiled once)."""
    key = (header, cp.cuda.Device().id)
    if key not in _MODULES:
        src = "\n".join(line for line in kernel_source(header).splitlines()
                        if line.strip() != "#pragma once")
        _MODULES[key] = cp.RawModule(code=src, options=("-std=c++17",), name_expressions=names)
    return _MODULES[key]


def lse_kl_module(cp):
    """The epilogue kernels of lse_kl.cuh (both element types)."""
    return _program(cp, "lse_kl.cuh", [n for t in ("float", "double")
                                       for n in kernel_names(t).values()])


def pivot_module(cp):
    """The pivot kernel of pivot_terms.cuh (both cross-product types)."""
    return _program(cp, "pivot_terms.cuh", list(PIVOT_KERNELS.values()))
