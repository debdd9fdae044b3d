"""Benchmark of the whole engine on a GPU at language-model scale, bfloat16 inputs.

At N=16384, V=128256, M=4096 (the shapes of the GPU targets) by default, for each GPU backend
("cuda" when compiled, "cupy"):
  compare sampled   identirep.compare with 256 sampled pivots (all measures);
  compare default   identirep.compare as it runs by default: the bounded exact pivot search;
  compare exact     the same with the plain exact search over all V pivots (--exact);
  phases            one sampled compare split into its steps (pass, engine set-up, label side,
                    input side, d_SVD, d_rep, mCCA of f and g), and the share of its dense
                    algebra (every cupy.linalg call: Cholesky, inverses, eigenvalues; by kind
                    and size);
  pivots bounded    PairEngine.label_side() (the bounded exact search) on an engine whose pass
                    is done, and
  pivots plain      PairEngine.label_side over all V pivots, both against
  pivot floor       the bare V x V x M GEMMs of the plain search, g_k[block] @ g_k^T for both
                    models over the same pivot blocks, in bfloat16 and in float32 (the
                    precision of the engine's cross products, which for bfloat16 models are
                    three bfloat16 GEMMs of an exact float32 split: 3x the bfloat16 floor at
                    best).
Wall-clock seconds with the device synchronised, median of --repeats after one warm-up run
(which also compiles the NVRTC kernels). A step that fails gives a "stopped" row with its
error, and the next step runs. The "target" column reads each row against the engine's
targets, set for N=16384, V=128256, M=4096: compare under 1 s with sampled pivots and under
3 s with the exact search, the exact pivot search within 1.5x its bf16 GEMM floor. Writes a
markdown table (--out).

    python benchmarks/bench_gpu_compare.py --out compare.md
    python benchmarks/bench_gpu_compare.py --shape 16384,50304,768 --exact
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import cupy as cp

import identirep as ir
from bench_gpu import cupy_bfloat16, emit, import_torch, make_inputs, parse_shape
from identirep import build_info
from identirep.errors import why
from identirep.measures import engine as make_engine


def wall(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_array(x, torch):
    """A bfloat16 array identirep.Model accepts: a torch tensor (zero-copy) or a CuPy array."""
    if torch is not None:
        return torch.from_dlpack(x.data.view(cp.int16)).view(torch.bfloat16)
    bf = cupy_bfloat16()
    if bf is None:
        raise SystemExit("bfloat16 models need torch with CUDA, or CuPy with ml_dtypes")
    return x.data.view(bf)


#: the cupy.linalg functions dense_algebra_timer times
DENSE_ALGEBRA = ("cholesky", "inv", "eigh", "eigvalsh", "svd", "solve", "qr")


@contextlib.contextmanager
def dense_algebra_timer():
    """Times every cupy.linalg call made inside (device synchronised around each): yields a
    dict {(name, shape): [calls, seconds]}, the cuSOLVER share of the steps timed inside."""
    spent = {}
    saved = {name: getattr(cp.linalg, name) for name in DENSE_ALGEBRA if hasattr(cp.linalg, name)}

    def timed(name, fn):
        def call(a, *args, **kwargs):
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            r = fn(a, *args, **kwargs)
            cp.cuda.Device().synchronize()
            entry = spent.setdefault((name, "x".join(map(str, a.shape))), [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
            return r
        return call
    try:
        for name, fn in saved.items():
            setattr(cp.linalg, name, timed(name, fn))
        yield spent
    finally:
        for name, fn in saved.items():
            setattr(cp.linalg, name, fn)


def phases(a, b, backend):
    """Seconds of each step of one compare with sampled pivots."""
    out = {}

    def timed(name, fn):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        r = fn()
        cp.cuda.Device().synchronize()
        out[name] = time.perf_counter() - t0
        return r

    e = timed("pass + engine set-up", lambda: make_engine(a, b, backend))
    d = timed("d_llv (label + input side)", lambda: e.d_llv(num_pivots=256))
    timed("d_svd", lambda: e.d_svd(d.pivot, d.leave_out, d.input_set, 2, 0))
    timed("d_rep", lambda: e.d_rep(None, 2, 1, 0))
    timed("mcca f + g", lambda: (e.mcca_f(), e.mcca_g()))
    return out


def pivot_floor(e, torch, dtype):
    """Seconds of the bare pivot-search GEMMs g[block] @ g^T (both models, the engine's blocks)."""
    from identirep._label_side import PIVOT_BLOCK_BYTES_DEVICE, PIVOT_BLOCK_DEVICE
    V = e.V
    step = max(1, min(PIVOT_BLOCK_DEVICE,
                      PIVOT_BLOCK_BYTES_DEVICE // (2 * V * cp.dtype(e.cdt).itemsize)))
    if dtype == "bfloat16" and torch is not None:
        gs = [torch.from_dlpack(G).to(torch.bfloat16) for G in (e.G1, e.G2)]
        buf = torch.empty((step, V), dtype=torch.bfloat16, device="cuda")
        mm = (lambda G, i0: torch.matmul(G[i0:i0 + step], G.T, out=buf[:min(step, V - i0)]))
    elif dtype == "bfloat16":
        bf = cupy_bfloat16()
        if bf is None:
            return float("nan")
        gs = [G.astype(bf) for G in (e.G1, e.G2)]
        buf = cp.empty((step, V), dtype=bf)
        mm = (lambda G, i0: cp.matmul(G[i0:i0 + step], G.T, out=buf[:min(step, V - i0)]))
    else:
        gs = [G.astype(cp.float32, copy=False) for G in (e.G1, e.G2)]
        buf = cp.empty((step, V), dtype=cp.float32)
        mm = (lambda G, i0: cp.matmul(G[i0:i0 + step], G.T, out=buf[:min(step, V - i0)]))

    def run():
        for i0 in range(0, V, step):
            for G in gs:
                mm(G, i0)
        if torch is not None:
            torch.cuda.synchronize()
    return wall(run, 1)


def bench(n, v, m, args, torch):
    """Rows (backend, shape, what, seconds, notes, target), yielded as they are measured, for
    each GPU backend in turn (bench_backend)."""
    f1, g1 = make_inputs(n, v, m, 1)
    f2, g2 = make_inputs(n, v, m, 2)
    a = ir.Model(model_array(f1, torch), model_array(g1, torch), name="a")
    b = ir.Model(model_array(f2, torch), model_array(g2, torch), name="b")
    shape = f"N={n} V={v} M={m} bf16"
    backends = (["cuda"] if build_info()["cuda_compiled"] else []) + ["cupy"]
    for be in backends:
        yield from bench_backend(a, b, be, be == backends[0], shape, v, args, torch)
        cp.get_default_memory_pool().free_all_blocks()


#: the shape the engine's targets are set for
TARGET_SHAPE = (16384, 128256, 4096)


def bench_backend(a, b, be, pivots, shape, v, args, torch):
    """The rows (backend, shape, what, seconds, notes, target) of one backend; a step that
    fails yields a "stopped" row and the next one runs (in this order: what the targets need
    first)."""
    on_target = (a.N, a.V, a.M) == TARGET_SHAPE

    def met_here(ok, target):
        """The target column: at the target shape, the target and whether the row meets it."""
        return f"{target}: {'yes' if ok else 'no'}" if on_target else ""

    def sampled():
        t = wall(lambda: ir.compare(a, b, num_pivots=256, backend=be), args.repeats)
        yield (be, shape, "compare, 256 sampled pivots", t, "", met_here(t < 1.0, "< 1 s"))

    def split():
        with dense_algebra_timer() as dense:
            ph = phases(a, b, be)
        yield (be, shape, "phases of one sampled compare", sum(ph.values()),
               "; ".join(f"{k} {s:.3f} s" for k, s in ph.items()), "")
        yield (be, shape, "of which dense algebra (cupy.linalg)",
               sum(t for _, t in dense.values()),
               "; ".join(f"{n} x {name} {shp} {t:.3f} s" for (name, shp), (n, t)
                         in sorted(dense.items(), key=lambda kv: -kv[1][1])), "")

    def default():
        rep = {}
        t = wall(lambda: rep.__setitem__("r", ir.compare(a, b, backend=be)), args.repeats)
        yield (be, shape, "compare, default (bounded exact pivot search)", t,
               rep["r"].d_llv.pivot_search, met_here(t < 3.0, "< 3 s"))

    def exact():
        t = wall(lambda: ir.compare(a, b, num_pivots=v, backend=be), 1, warmup=0)
        yield (be, shape, f"compare, exact pivots ({v})", t, "", met_here(t < 3.0, "< 3 s"))

    def pivot_search():
        e = make_engine(a, b, be)
        out = {}
        tb = wall(lambda: out.__setitem__("bounded", e.label_side()), 1)
        t = wall(lambda: out.__setitem__("plain", e.label_side(num_pivots=v)), 1, warmup=0)
        fb, f32 = pivot_floor(e, torch, "bfloat16"), pivot_floor(e, torch, "float32")
        same = out["bounded"][:4] == out["plain"][:4]
        yield (be, shape, "bounded exact pivot search (default)", tb,
               f"{out['bounded'][4]}; same choice as the plain search: {same}; "
               f"bf16 GEMM floor {fb:.3f} s ({tb / fb:.2f}x), "
               f"float32 GEMM floor {f32:.3f} s ({tb / f32:.2f}x)",
               met_here(tb <= 1.5 * fb, "<= 1.5x the bf16 GEMM floor"))
        yield (be, shape, f"plain exact pivot search ({v} pivots)", t,
               f"bf16 GEMM floor {fb:.3f} s ({t / fb:.2f}x), "
               f"float32 GEMM floor {f32:.3f} s ({t / f32:.2f}x)",
               met_here(t <= 1.5 * fb, "<= 1.5x the bf16 GEMM floor"))

    steps = [("compare, 256 sampled pivots", sampled), ("phases", split),
             ("compare, default", default)]
    steps += [("compare, exact pivots", exact)] if args.exact else []
    steps += [("pivot search", pivot_search)] if pivots else []
    for what, step in steps:
        try:
            yield from step()
        except Exception as e:
            yield (be, shape, f"{what}: stopped", float("nan"), why(e, 200), "")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=parse_shape, nargs="*", default=[(16384, 128256, 4096)])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exact", action="store_true", help="also compare with exact pivots")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args()
    torch = import_torch()
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    lines = [f"{dev['name'].decode()} | CuPy {cp.__version__} | identirep "
             f"{build_info()['version']} | wall seconds, median of {args.repeats}", "",
             "| backend | shape | what | seconds | target | notes |", "|---|---|---|---|---|---|"]
    for n, v, m in args.shape:
        for be, shape, what, t, note, target in bench(n, v, m, args, torch):
            lines.append(f"| {be} | {shape} | {what} | {t:.3f} | {target} | {note} |")
            print(lines[-1], flush=True)
            emit("\n".join(lines), args.out, quiet=True)   # what was measured survives a crash
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
