"""The cupy backend's own launch code on the CPU: identirep's NVRTC launches (_CupyEpilogue,
pivot_criteria_device) through the CuPy stand-in (tests/fake_cupy.py), whose RawModule runs the
real kernels in the SIMT emulator's library (launch_kernels.cpp), checked against the compiled
CPU kernels. Run by tests/test_kernels_on_cpu.py in its own process (an emulator failure ends
the process):

    python cupy_backend_case.py LIBRARY pass|pivots|compare [options as JSON]

Exit status 0: every result matched; 1: a mismatch (printed); 3: the emulator failed."""
import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import fake_cupy  # noqa: E402

fake_cupy.load_kernel_library(sys.argv[1])
cp = fake_cupy.install()

from identirep import _bf16 as bf16  # noqa: E402
from identirep import _core  # noqa: E402
from identirep import _cupy_pass as gp  # noqa: E402
from identirep.passes import cpu_pass  # noqa: E402
from test_gpu import field_errors, logit_scale, make_pair  # noqa: E402


def emulated_gemm_ex(cp, a, b, out, kind, beta=0.0):
    x, y = ((bf16.to_f32(t) if kind == "bfloat16" else t.astype(np.float32)) for t in (a, b))
    prod = x @ y.T
    out[...] = prod if beta == 0.0 else prod + np.float32(beta) * out


def run_pass(kind="float32", fused=False, overlap=True, half_gemm="cublas", n=40, v=37,
             **tiles):
    gp.gemm_ex = emulated_gemm_ex
    f1, g1, f2, g2 = make_pair(11, n=n, v=v, m1=9, m2=6)
    if kind == "bfloat16":
        host = [bf16.to_f32(bf16.from_f32(x.astype(np.float32))) for x in (f1, g1, f2, g2)]
        ops = [gp.DeviceArray(cp.asarray(bf16.from_f32(x)), kind) for x in host]
    else:
        host = [x.astype(kind) for x in (f1, g1, f2, g2)]
        ops = [cp.asarray(x) for x in host]
    got = gp.cupy_pass(*ops, fused_epilogue=fused, overlap=overlap, half_gemm=half_gemm,
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
    rng = np.random.default_rng(31)
    B, V = 37, 503
    n1, n2 = (rng.random(V) + 1.0 for _ in range(2))
    X1, X2 = ((0.3 * rng.standard_normal((B, V))).astype(xdtype) for _ in range(2))
    A1, A2 = rng.random(V), rng.random(V)
    B12 = 0.5 * np.sqrt(A1 * A2) * rng.standard_normal(V)
    piv = rng.choice(V, B, replace=False)
    X1[0, 5] = 0.5 * (n1[5] + n1[piv[0]])   # a degenerate pair
    want = _core.pivot_criteria(X1, X2, n1, n2, A1, A2, B12, piv, 1e-5, mode)
    dev = [cp.asarray(x) for x in (X1, X2, n1, n2, A1, A2, B12)]
    if strided:   # column-major cross products, float32 label vectors: converted for the kernel
        dev = ([cp.asfortranarray(x) for x in dev[:2]] +
               [cp.asarray(x, dtype=np.float32) for x in dev[2:]])
        want = _core.pivot_criteria(X1, X2, *(x.astype(np.float32).astype(np.float64)
                                              for x in (n1, n2, A1, A2, B12)), piv, 1e-5, mode)
    got = gp.pivot_criteria_device(*dev, piv, 1e-5, mode, "cupy")
    got = got.get() if isinstance(got, fake_cupy.ndarray) else np.asarray(got)
    ok = np.allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
    return {} if ok else {"crit": float(np.nanmax(np.abs(got - want)))}


def run_compare(dtype="float64", bias=True, M2=4):
    """identirep.compare with backend "cupy" end to end (pass, pivot kernel, engine) against
    the CPU engine."""
    import identirep as ir
    from conftest import random_pair
    from identirep import _backends
    _backends.gpu_backend = lambda: "cupy"
    a, b = random_pair(N=301, V=53, M=5, M2=M2, bias=bias, seed=7)
    dev = [ir.Model(cp.asarray(m.f, dtype=dtype), cp.asarray(m.g, dtype=dtype),
                    bias=None if m.bias is None else cp.asarray(m.bias, dtype=dtype))
           for m in (a, b)]
    host = [ir.Model(m.f.astype(dtype), m.g.astype(dtype),
                     bias=None if m.bias is None else m.bias.astype(dtype)) for m in (a, b)]
    opts = dict(num_samples=30, max_label_sets=100, rep_sets=30)
    got, want = ir.compare(*dev, **opts), ir.compare(*host, **opts)
    rtol = 1e-10 if dtype == "float64" else 1e-5
    bad = {}
    if got.backend != "cupy":
        bad["backend"] = got.backend
    for name in ("kl", "d_llv", "d_logit", "mcca_f", "mcca_g", "d_svd", "d_rep"):
        g, w = getattr(got, name), getattr(want, name)
        if g is None or w is None:   # d_svd, d_rep need M1 == M2
            if (g is None) != (w is None):
                bad[name] = (g, w)
            continue
        g, w = g.to_dict(), w.to_dict()
        for k, wv in w.items():
            if k.endswith("seconds"):
                continue
            gv = g[k]
            if isinstance(wv, float) or (isinstance(wv, list) and wv and
                                         isinstance(wv[0], float)):
                if not np.allclose(gv, wv, rtol=rtol, atol=1e-12):
                    bad[f"{name}.{k}"] = (gv, wv)
            elif gv != wv:
                bad[f"{name}.{k}"] = (gv, wv)
    return bad


if __name__ == "__main__":
    what, opts = sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    bad = {"pass": run_pass, "pivots": run_pivots, "compare": run_compare}[what](**opts)
    print(json.dumps(bad))
    sys.exit(1 if bad else 0)
