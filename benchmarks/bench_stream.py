"""Benchmark of the streaming pass (identirep._cpu_pass.stream_pass) against its GEMM floor.

For each shape (N inputs, V labels, M dimensions, both models of the same shape) prints:
  floor    two bare np.matmul GEMMs (f1 g1^T, f2 g2^T) into preallocated N x V outputs;
  tiled    (--parts) the same GEMMs through the tiles and workspace stream_pass uses;
  epilogue (--parts) the epilogue alone over the floor's outputs, tile by tile;
  stream   stream_pass (GEMM tiles + fused epilogue), and its ratio to the floor;
  naive    row chunks of the logits through scipy.special.log_softmax (NumPy KL and L).
Times are medians over --repeats rounds after --warmup rounds; each round runs every variant once,
so "paired" (the median over rounds of time / floor time of the same round) is robust to drifts
in machine load. The naive baseline runs in the first half of the rounds only.

    python benchmarks/bench_stream.py                       # GPT-2 shape
    python benchmarks/bench_stream.py --shape 1024,32000,2048
    python benchmarks/bench_stream.py --shape gpt2 llama2 --tile-cols 2048
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics

import numpy as np

import identirep
from identirep import _core
from identirep._cpu_pass import _tile_shape, default_epilogue_threads, stream_pass
from identirep.passes import init_state
from identirep.baselines import naive_kl as naive
from identirep.bench import interleaved_times

PRESETS = {"gpt2": (2048, 50304, 768), "llama2": (1024, 32000, 2048)}


def parse_shape(text: str):
    if text in PRESETS:
        return PRESETS[text]
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must be N,V,M or one of {list(PRESETS)}")
    return tuple(int(p) for p in parts)


def tiled_gemms(f1, g1, f2, g2, tr, tc):
    """The GEMM half of stream_pass alone (same tiles, same workspace, no epilogue)."""
    n, v = f1.shape[0], g1.shape[0]
    ws1 = np.empty(tr * tc, f1.dtype)
    ws2 = np.empty(tr * tc, f1.dtype)
    for c0 in range(0, v, tc):
        c1 = min(v, c0 + tc)
        g1t, g2t = g1[c0:c1].T, g2[c0:c1].T
        for r0 in range(0, n, tr):
            r1 = min(n, r0 + tr)
            size = (r1 - r0) * (c1 - c0)
            np.matmul(f1[r0:r1], g1t, out=ws1[:size].reshape(r1 - r0, c1 - c0))
            np.matmul(f2[r0:r1], g2t, out=ws2[:size].reshape(r1 - r0, c1 - c0))


def epilogue_only(l1, l2, tr, tc, threads):
    """The epilogue half of stream_pass alone, over logits already in memory."""
    n, v = l1.shape
    state, args = init_state(n)
    for c0 in range(0, v, tc):
        for r0 in range(0, n, tr):
            _core.lse_kl_update(l1[r0:r0 + tr, c0:c0 + tc], l2[r0:r0 + tr, c0:c0 + tc],
                                state[:, r0:r0 + tr], args[:, r0:r0 + tr], c0, threads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", nargs="+", type=parse_shape, default=[PRESETS["gpt2"]],
                   help="N,V,M or a preset (gpt2 = 2048,50304,768; llama2 = 1024,32000,2048)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--tile-rows", type=int, default=None)
    p.add_argument("--tile-cols", type=int, default=None)
    p.add_argument("--workspace-bytes", type=int, default=256 << 20)
    p.add_argument("--epilogue-threads", type=int, default=None,
                   help="OpenMP threads of the epilogue (0: all; default: stream_pass's choice)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-naive", action="store_true", help="skip the scipy baseline")
    p.add_argument("--parts", action="store_true",
                   help="also time the tiled GEMMs alone and the epilogue alone")
    a = p.parse_args(argv)

    info = identirep.build_info()
    threads = default_epilogue_threads() if a.epilogue_threads is None else a.epilogue_threads
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, OpenMP threads {info['openmp_max_threads']}, "
          f"simd {info['simd']}, epilogue threads {threads}")
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "OPENBLAS_", "GOMP_"))}
    if env:
        print(f"# {env}")
    dt = np.dtype(a.dtype)
    for n, v, m in a.shape:
        rng = np.random.default_rng(0)
        f1, f2 = (rng.standard_normal((n, m), dtype=np.float32).astype(dt) for _ in range(2))
        g1, g2 = (0.05 * rng.standard_normal((v, m), dtype=np.float32).astype(dt)
                  for _ in range(2))
        tr, tc = _tile_shape(n, v, m, m, dt.itemsize, a.tile_rows, a.tile_cols,
                             a.workspace_bytes)
        flops = 4.0 * n * v * m
        print(f"\nN={n} V={v} M={m} {dt.name}, tiles {tr} x {tc}, {flops / 1e9:.0f} GFLOP")

        out1 = np.empty((n, v), dt)
        out2 = np.empty((n, v), dt)

        def floor():
            np.matmul(f1, g1.T, out=out1)
            np.matmul(f2, g2.T, out=out2)

        fns = {"floor": floor}
        if a.parts:
            fns["tiled"] = lambda: tiled_gemms(f1, g1, f2, g2, tr, tc)
            fns["epilogue"] = lambda: epilogue_only(out1, out2, tr, tc, threads)
        fns["stream"] = lambda: stream_pass(
            f1, g1, f2, g2, tile_rows=a.tile_rows, tile_cols=a.tile_cols,
            workspace_bytes=a.workspace_bytes, dtype=dt, epilogue_threads=threads)
        if not a.no_naive:
            fns["naive"] = lambda: naive(f1, g1, f2, g2)
        times = interleaved_times(fns, a.warmup, a.repeats, sparse=("naive",))

        t_floor = statistics.median(times["floor"])
        print(f"{'':<8} {'median':>9}   {'GFLOP/s':>8}   {'/ floor':>7}   {'paired':>6}")
        for name, ts in times.items():
            t = statistics.median(ts)
            paired = statistics.median(x / f for x, f in zip(ts, times["floor"]))
            rate = (f"{n * v / t / 1e9:6.2f} G pairs/s" if name == "epilogue"
                    else f"{flops / t / 1e9:8.1f}")
            print(f"{name:<8} {t:>8.3f}s   {rate:>8}   {t / t_floor:>6.3f}x   {paired:>5.3f}x")


if __name__ == "__main__":
    main()
