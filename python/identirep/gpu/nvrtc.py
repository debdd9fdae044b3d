"""The CUDA kernel headers as NVRTC programs: the cupy backend compiles the kernels of
kernels/lse_kl.cuh and kernels/pivot_terms.cuh at run time (CuPy's RawModule) and launches them
with the geometry of their launch table (kernels/launch_table.h, read here through
``_core.launch_table()``: the numbers the compiled launchers use, in every build)."""
from __future__ import annotations

import re
from pathlib import Path

from .. import _core
from ..errors import IdentirepError

#: the launch table of the kernels (kernels/launch_table.h): threads, chunks, slab shapes
LAUNCH = _core.launch_table()
#: the kernel headers installed with identirep (identirep/kernels), which include each other
KERNEL_HEADERS = ("launch_table.h", "lse_kl.cuh", "lse_kl_gemm.cuh", "gemm_primitives.cuh",
                  "pivot_terms.cuh")
#: the pivot kernel for float32 / float64 cross products
PIVOT_KERNELS = {t: f"identirep::kernels::PivotCriteriaKernel<{t}, {LAUNCH['pivot_threads']}>"
                 for t in ("float", "double")}
_INCLUDE = re.compile(r'\s*#\s*include\s*[<"]([\w.]+)[>"]')
_MODULES = {}


def kernel_source(name: str) -> str:
    """Text of a kernel header: installed next to this package, or in a source checkout."""
    here = Path(__file__).resolve().parents[1]
    for path in (here / "kernels" / name, here.parents[1] / "csrc" / "kernels" / name):
        if path.is_file():
            return path.read_text()
    raise IdentirepError(f"kernel source {name} not found next to identirep "
                         f"({here / 'kernels'}); reinstall identirep")


def kernel_program(name: str) -> str:
    """The NVRTC program of a kernel header: its text with the kernel headers it includes
    written in place (each once, as ``#pragma once`` has it), so that NVRTC needs no include
    path and CuPy's cache of compiled modules is keyed on every line compiled. CUDA and standard
    headers stay where they are, behind the headers' ``__CUDACC_RTC__`` guards."""
    seen = set()

    def expand(header):
        seen.add(header)
        out = []
        for line in kernel_source(header).splitlines():
            m = _INCLUDE.match(line)
            if m and m[1] in KERNEL_HEADERS:
                out += expand(m[1]) if m[1] not in seen else []
            elif line.strip() != "#pragma once":
                out.append(line)
        return out
    return "\n".join(expand(name)) + "\n"


def kernel_names(t: str) -> dict:
    """Instantiations of the lse_kl.cuh kernels for element type ``t`` ("float" | "double")."""
    ns = "identirep::kernels::"
    return {"rows": f"{ns}LseKlKernel<{t}, {LAUNCH['lse_kl_threads']}>",
            "cols": f"{ns}LseKlColKernel<{t}, {LAUNCH['col_rows']}>",
            "merge": f"{ns}LseKlColMergeKernel<{t}>",
            "slab": f"{ns}LseKlSlabKernel<{t}, {LAUNCH['slab_rows_' + t]}>",
            "row_merge": f"{ns}LseKlRowMergeKernel<{t}>"}


def _program(cp, header, names):
    """The RawModule of one kernel header on CuPy's current device (compiled once)."""
    key = (header, cp.cuda.Device().id)
    if key not in _MODULES:
        _MODULES[key] = cp.RawModule(code=kernel_program(header), options=("-std=c++17",),
                                     name_expressions=names)
    return _MODULES[key]


def lse_kl_module(cp):
    """The epilogue kernels of lse_kl.cuh (both element types)."""
    return _program(cp, "lse_kl.cuh", [n for t in ("float", "double")
                                       for n in kernel_names(t).values()])


def pivot_module(cp):
    """The pivot kernel of pivot_terms.cuh (both cross-product types)."""
    return _program(cp, "pivot_terms.cuh", list(PIVOT_KERNELS.values()))
