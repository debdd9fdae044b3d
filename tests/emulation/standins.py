"""Stand-ins of the GPU work for the CPU emulation of the GPU code (tests/emulation), on the
CuPy stand-in's arrays (fake_cupy.py): what needs a GPU, done on the host with identirep's
compiled CPU kernels, so that the Python around it runs as on a GPU. Tests import these from
here, never from each other."""
from __future__ import annotations

import dataclasses

import numpy as np

import identirep as ir
from identirep import _bf16 as bf16
from identirep import _core
from identirep._cpu_pass import cpu_pass
from identirep.gpu.arrays import DeviceArray

import fake_cupy
from helpers import AGREEMENT_RTOL, assert_close, make_pair, random_pair

#: compare / matrix options: fewer d_SVD and d_rep sets than by default (each set is a few
#: small device operations)
OPTS = dict(num_samples=30, max_label_sets=100, rep_sets=30)


def host_pass(backend, f1, g1, f2, g2, *, progress=None):
    """A stand-in for both backends' passes: the compiled CPU pass of the device operands'
    host copies."""
    ops = []
    for x in (f1, g1, f2, g2):
        assert isinstance(x, DeviceArray) and isinstance(x.data, fake_cupy.ndarray)
        ops.append(bf16.to_f32(x.data.get()) if x.kind == "bfloat16" else x.data.get())
    return dataclasses.replace(cpu_pass(*ops, progress=progress), backend=backend)


def host_pivot_criteria(cp, calls):
    """A stand-in for ``gpu.pivots.pivot_criteria_device``: its conversions, then the compiled
    CPU kernel on host copies; appends each call's backend to ``calls``."""
    def pivot_criteria(X1, X2, n1, n2, A1, A2, B12, pivots, tol, mode, backend):
        xdt = np.float32 if X1.dtype == X2.dtype == np.float32 else np.float64
        X1, X2 = (cp.ascontiguousarray(x, dtype=xdt).get() for x in (X1, X2))
        vecs = [cp.ascontiguousarray(v, dtype=np.float64).get() for v in (n1, n2, A1, A2, B12)]
        calls.append(backend)
        return _core.pivot_criteria(X1, X2, *vecs, np.asarray(pivots, np.int64), tol, mode)
    return pivot_criteria


def device_models(cp, dtype=np.float64, **kw):
    """(device models, CPU models) of the same values in ``dtype``."""
    a, b = random_pair(**kw)
    return [model_on(cp, m, dtype) for m in (a, b)], [model_on(np, m, dtype) for m in (a, b)]


def model_on(xp, m, dtype=np.float64, bias_dtype=None):
    """Model ``m`` with its arrays in ``xp`` (NumPy, or the stand-in's device) as ``dtype``
    (the bias as ``bias_dtype``, default ``dtype``)."""
    bias = None if m.bias is None else xp.asarray(m.bias, dtype=bias_dtype or dtype)
    return ir.Model(xp.asarray(m.f, dtype=dtype), xp.asarray(m.g, dtype=dtype), bias=bias,
                    name=m.name)


def result_fields(r, prefix=""):
    """Every field of a result, nested results flattened, internal arrays included."""
    out = {}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if dataclasses.is_dataclass(v):
            out.update(result_fields(v, f"{prefix}{f.name}."))
        elif not f.name.endswith("seconds"):
            out[prefix + f.name] = v
    return out


def assert_same_results(got, want, dtype=np.float64):
    """The same results, on the host: floats and float arrays within the dtype's tolerance,
    everything else exactly."""
    got, want = result_fields(got), result_fields(want)
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert not isinstance(g, fake_cupy.ndarray), f"{k} is left on the device"
        if isinstance(w, (float, np.ndarray)) or (isinstance(w, list) and w
                                                  and isinstance(w[0], float)):
            assert_close(g, w, rtol=AGREEMENT_RTOL[dtype], atol=1e-12, what=k)
        elif isinstance(w, dict) and w and all(isinstance(v, float) for v in w.values()):
            assert g.keys() == w.keys(), k          # e.g. d_rep's quantiles: floats by name
            for q in w:
                assert_close(g[q], w[q], rtol=AGREEMENT_RTOL[dtype], atol=1e-12, what=f"{k}.{q}")
        elif k != "backend":
            assert g == w, k


class HostEpilogue:
    """The epilogue kernels' update (the compiled CPU kernel) on host copies of a tile and of
    the device state, written back: stands in for both backends' epilogues, as work of the
    current stream (on a second stream it runs as late as its events allow)."""
    calls = []

    def __init__(self, cp, tc, dt, tr=1, fused=False):
        self.cp = cp

    def __call__(self, l1, l2, c0, r0, state, args, row_m, col_m):
        def work():
            n = l1.shape[0]
            s, a, rm, cm = (x.get() for x in (state, args, row_m, col_m))
            _core.lse_kl_update(l1.get(), l2.get(), s[:, r0:r0 + n], a[:, r0:r0 + n], c0, 1,
                                rm[:, r0:r0 + n], cm, r0)
            for dev_x, host_x in zip((state, args, row_m, col_m), (s, a, rm, cm)):
                dev_x[...] = self.cp.asarray(host_x)
            self.calls.append((l1.shape, c0, r0))
        stream = self.cp.cuda.get_current_stream()
        if stream is self.cp.cuda.Stream.null:
            work()
        else:
            stream._defer(work)


def host_lse_kl_update_cuda(l1, l2, state, args, col0, row_moments=None, col_moments=None,
                            row0=0, col_work=None, row_work=None, stream=0):
    """A stand-in for the compiled epilogue ``_core.lse_kl_update_cuda`` on the CuPy stand-in's
    arrays: the compiled CPU epilogue on their host buffers, in place."""
    _core.lse_kl_update(l1._a, l2._a, state._a, args._a, col0, 1,
                        None if row_moments is None else row_moments._a,
                        None if col_moments is None else col_moments._a, row0)


def emulated_gemm_ex(cp, a, b, out, kind, beta=0.0):
    """cublasGemmEx of two half operands (bfloat16 as bits): float32 products of the exact
    values, summed in float32."""
    x, y = ((bf16.to_f32(t) if kind == "bfloat16" else t.astype(np.float32)) for t in (a, b))
    prod = x @ y.T
    out[...] = prod if beta == 0.0 else prod + np.float32(beta) * out


def pass_operands(cp, kind, n, v):
    """(host values, device operands) of a pass of make_pair(11) in ``kind`` (bfloat16 as
    DeviceArrays of its bits, the host values those of the rounded operands)."""
    f1, g1, f2, g2 = make_pair(11, n=n, v=v, m1=9, m2=6)
    if kind == "bfloat16":
        host = [bf16.to_f32(bf16.from_f32(x.astype(np.float32))) for x in (f1, g1, f2, g2)]
        return host, [DeviceArray(cp.asarray(bf16.from_f32(x)), kind) for x in host]
    host = [x.astype(kind) for x in (f1, g1, f2, g2)]
    return host, [cp.asarray(x) for x in host]


def emulated_pass_driver(real):
    """A stand-in for the compiled pass driver ``_core.lse_kl_pass_cuda`` on the CuPy
    stand-in's arrays: the driver's own argument checks (``real``, the compiled function, over
    an empty label range: every check, no device; None in a build without it) on their host
    buffers, then its tiles (label tiles outer, row tiles inner) with logits as cuBLAS makes
    them (float32 products of the exact values summed in float32; float64 for a float64 pass)
    through the compiled CPU epilogue, into the pass state in place. The fused GEMM's calls get
    the same logits."""

    def driver(f1, g1, f2, g2, state, args, row_moments, col_moments, workspace, c_begin, c_end,
               tile_rows, tile_cols, *, overlap=True, fused=False, gemm=0, wgmma=False,
               stream=0):
        ops = (f1, g1, f2, g2)
        if real is not None:
            real(*ops, state, args, row_moments, col_moments, workspace, c_begin, c_begin,
                 tile_rows, tile_cols, overlap=overlap, fused=fused, gemm=gemm, wgmma=wgmma,
                 stream=stream)
        f64 = all(x.dtype == np.float64 for x in ops)
        vals = [bf16.to_f32(x._a) if x.dtype == np.uint16 else
                x._a.astype(np.float64 if f64 else np.float32) for x in ops]
        n, v = f1.shape[0], g1.shape[0]
        tr, tc = min(tile_rows, n), min(tile_cols, v)
        for c0 in range(c_begin, c_end, tc):
            c1 = min(c_end, c0 + tc)
            for r0 in range(0, n, tr):
                rows = slice(r0, min(n, r0 + tr))
                l1, l2 = (f[rows] @ g[c0:c1].T for f, g in ((vals[0], vals[1]),
                                                             (vals[2], vals[3])))
                _core.lse_kl_update(l1, l2, state._a[:, rows], args._a[:, rows], c0, 1,
                                    row_moments._a[:, rows], col_moments._a, r0)
    return driver
