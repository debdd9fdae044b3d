"""The cupy backend's own launch code on the CPU: identirep's NVRTC launches (NvrtcEpilogue,
pivot_criteria_device) through the CuPy stand-in (fake_cupy.py), whose RawModule runs the
real kernels in the SIMT emulator's library (launch_kernels.cpp), checked against the compiled
CPU kernels. Run by test_kernels_on_cpu.py in its own process (an emulator failure ends
the process):

    python cupy_backend_case.py LIBRARY pass|pivots|compare [options as JSON]

Exit status 0: every result matched; 1: a mismatch (printed); 3: the emulator failed."""
import json
import sys
from pathlib import Path

import numpy as np

EMULATION = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(EMULATION), str(EMULATION.parent)]

import fake_cupy  # noqa: E402

fake_cupy.load_kernel_library(sys.argv[1])
cp = fake_cupy.install()

from identirep import _core  # noqa: E402
from identirep.gpu import cublas, cupy_backend, pivots  # noqa: E402
from identirep._cpu_pass import cpu_pass  # noqa: E402
from helpers import field_errors, logit_scale, pivot_problem  # noqa: E402
from standins import emulated_gemm_ex, pass_operands  # noqa: E402


def run_pass(kind="float32", fused=False, overlap=True, half_gemm="cublas", n=40, v=37,
             **tiles):
    cublas.gemm_ex = emulated_gemm_ex
    host, ops = pass_operands(cp, kind, n, v)
    got = cupy_backend.cupy_pass(*ops, fused_epilogue=fused, overlap=overlap, half_gemm=half_gemm,
                       **tiles)
    exact = [x.astype(np.float64) for x in host]
    want = cpu_pass(*exact)
    errs = field_errors(got, want, logit_scale(*exact))
    rtol = 1e-12 if kind == "float64" else 1e-5
    bad = {k: e for k, e in errs.items() if not e <= rtol}
    wrong = int(np.count_nonzero(got.agree != want.agree))
    if wrong:
        bad["agree"] = wrong
    return bad


def run_pivots(xdtype="float64", mode="max", strided=False):
    X1, X2, n1, n2, A1, A2, B12, piv = pivot_problem(xdtype, 503)
    want = _core.pivot_criteria(X1, X2, n1, n2, A1, A2, B12, piv, 1e-5, mode)
    dev = [cp.asarray(x) for x in (X1, X2, n1, n2, A1, A2, B12)]
    if strided:   # column-major cross products, float32 label vectors: converted for the kernel
        dev = ([cp.asfortranarray(x) for x in dev[:2]] +
               [cp.asarray(x, dtype=np.float32) for x in dev[2:]])
        want = _core.pivot_criteria(X1, X2, *(x.astype(np.float32).astype(np.float64)
                                              for x in (n1, n2, A1, A2, B12)), piv, 1e-5, mode)
    got = pivots.pivot_criteria_device(*dev, piv, 1e-5, mode, "cupy")
    got = got.get() if isinstance(got, fake_cupy.ndarray) else np.asarray(got)
    ok = np.allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
    return {} if ok else {"crit": float(np.nanmax(np.abs(got - want)))}


def run_compare(dtype="float64", bias=True, M2=4):
    """identirep.compare with backend "cupy" end to end (pass, pivot kernel, engine) against
    the CPU engine (an AssertionError on a difference)."""
    import identirep as ir
    from identirep import _backends
    from standins import OPTS, assert_same_results, device_models
    _backends.gpu_backend = lambda: "cupy"
    dt = np.dtype(dtype).type
    dev, host = device_models(cp, dt, N=301, V=53, M=5, M2=M2, bias=bias, seed=7)
    got, want = ir.compare(*dev, **OPTS), ir.compare(*host, **OPTS)
    assert got.backend == "cupy"
    assert_same_results(got, want, dt)
    return {}


if __name__ == "__main__":
    what, opts = sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    bad = {"pass": run_pass, "pivots": run_pivots, "compare": run_compare}[what](**opts)
    print(json.dumps(bad))
    sys.exit(1 if bad else 0)
