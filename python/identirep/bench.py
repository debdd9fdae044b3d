"""The benchmark suite behind ``identirep bench`` and ``benchmarks/bench_*.py``.

Every row is measured in the same run as its floor (the bare BLAS GEMMs of the same shapes):
rounds are interleaved (each round runs every variant once) and the ratio is the median over
rounds of time / floor, which is robust to drifts in machine load.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import numpy as np

from . import _build
from .baselines import naive_kl, paper_d_llv
from .model import Model

GPT2 = (2048, 50304, 768)
LLAMA = (1024, 32000, 2048)


def interleaved_times(fns: Dict[str, Callable], warmup: int, repeats: int, sparse=()) -> dict:
    """name -> list of seconds. Each round runs every function once; functions named in
    ``sparse`` (slow baselines) run in the first half of the rounds only and not in warm-up."""
    for _ in range(warmup):
        for name, fn in fns.items():
            if name not in sparse:
                fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if name in sparse and r >= max(1, repeats // 2):
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = _build.build_info()
    return (f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, simd {info.get('simd')}, "
            f"{datetime.date.today().isoformat()}")


def _pair(n, v, m, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((n, m), dtype=np.float32)
    f2 = (f1 + 0.5 * rng.standard_normal((n, m), dtype=np.float32)).astype(dtype)
    g1 = (rng.standard_normal((v, m), dtype=np.float32) * (3 / np.sqrt(m))).astype(dtype)
    g2 = (g1 + rng.standard_normal((v, m), dtype=np.float32) * (1 / np.sqrt(m))).astype(dtype)
    return f1.astype(dtype), g1, f2, g2


def _rows(label, shape, times, floor_key="floor", skip=(), notes=None):
    out = []
    for name, ts in times.items():
        if name == floor_key or name in skip:
            continue
        paired = statistics.median(t / f for t, f in zip(ts, times[floor_key]))
        out.append({"benchmark": label, "variant": name, "shape": shape,
                    "seconds": statistics.median(ts), "floor_seconds": statistics.median(times[floor_key]),
                    "ratio": paired, "notes": (notes or {}).get(name, "")})
    return out


def bench_stream(n, v, m, repeats=3, naive=True) -> List[dict]:
    """KL + normaliser pass (stream_pass) and the engine's pass (+ logit moments)."""
    from ._stream import stream_pass
    f1, g1, f2, g2 = _pair(n, v, m)
    out1, out2 = np.empty((n, v), np.float32), np.empty((n, v), np.float32)

    def floor():
        np.matmul(f1, g1.T, out=out1)
        np.matmul(f2, g2.T, out=out2)

    fns = {"floor": floor,
           "KL + L pass": lambda: stream_pass(f1, g1, f2, g2),
           "engine pass (+moments)": lambda: stream_pass(f1, g1, f2, g2, moments=True)}
    if naive:
        fns["naive chunked log_softmax"] = lambda: naive_kl(f1, g1, f2, g2)
    times = interleaved_times(fns, 1, repeats, sparse=("naive chunked log_softmax",))
    return _rows("stream", f"N={n} V={v} M={m} f32", times)


def bench_compare(n, v, m, repeats=3, num_pivots=256) -> List[dict]:
    """Full compare (all measures, sampled pivots) against two floors: the pass GEMMs alone,
    and every large GEMM compare performs (pass, the label Gram of [g1, g2], the sampled
    pivots' cross products)."""
    from .measures import compare
    f1, g1, f2, g2 = _pair(n, v, m)
    a, b = Model(f1, g1), Model(f2, g2)
    out1, out2 = np.empty((n, v), np.float32), np.empty((n, v), np.float32)
    piv = np.random.default_rng(0).choice(v, num_pivots, replace=False)

    def floor():
        np.matmul(f1, g1.T, out=out1)
        np.matmul(f2, g2.T, out=out2)

    def floor_all():
        floor()
        g1.T @ g1, g2.T @ g2, g1.T @ g2
        g1[piv] @ g1.T, g2[piv] @ g2.T

    times = interleaved_times({"floor": floor, "all GEMMs": floor_all,
                               "compare": lambda: compare(a, b, num_pivots=num_pivots)}, 0, repeats)
    shape = f"N={n} V={v} M={m} f32, {num_pivots} sampled pivots"
    rows = _rows("compare", shape, times, skip=("all GEMMs",),
                 notes={"compare": "floor = the pass GEMMs"})
    rows += _rows("compare", shape, times, floor_key="all GEMMs", skip=("floor",),
                  notes={"compare": "floor = pass + label Gram + pivot GEMMs"})
    return rows


def bench_pivots(v, m, n=1024, repeats=3) -> List[dict]:
    """Exact all-pivot search (4 V^2 M flops) against the bare V x V x M GEMMs of both models."""
    from .measures import engine
    f1, g1, f2, g2 = _pair(n, v, m)
    e = engine(Model(f1, g1), Model(f2, g2))
    o1, o2 = np.empty((v, v), np.float32), np.empty((v, v), np.float32)

    def floor():
        np.matmul(g1, g1.T, out=o1)
        np.matmul(g2, g2.T, out=o2)

    times = interleaved_times({"floor": floor,
                               "exact pivot search": lambda: e.label_side(num_pivots=v)}, 1, repeats)
    return _rows("pivots", f"V={v} M={m} f32", times)


def bench_paper(v=1000, n=2000, m=64) -> List[dict]:
    """A faithful port of the paper's algorithm against identirep, same choices and values
    (as many disjoint candidate input sets as N allows, as the paper's draw requires)."""
    from .measures import d_llv
    num_samples = n // (m + 1)
    f1, g1, f2, g2 = (x.astype(np.float64) for x in _pair(n, v, m))
    a, b = Model(f1, g1), Model(f2, g2)
    t0 = time.perf_counter()
    port = paper_d_llv(f1, g1, f2, g2, num_samples=num_samples)
    t_port = time.perf_counter() - t0
    times = interleaved_times({"x": lambda: d_llv(a, b, num_samples=num_samples, paper_compat=True)}, 1, 3)
    t_ir = statistics.median(times["x"])
    ours = d_llv(a, b, num_samples=num_samples, paper_compat=True)
    same = (ours.pivot, ours.leave_out, ours.input_set) == (port["pivot"], port["leave_out"], port["input_set"])
    rel = abs(ours.value - port["value"]) / abs(port["value"])
    return [{"benchmark": "paper port", "variant": "identirep d_llv (paper_compat)",
             "shape": f"N={n} V={v} M={m} f64, {num_samples} input sets", "seconds": t_ir,
             "floor_seconds": float("nan"), "ratio": float("nan"),
             "notes": f"port {t_port:.1f} s, {t_port / t_ir:.0f}x faster; same choices: {same}, "
                      f"rel. diff {rel:.1e}"}]


def run_suite(quick: bool = False, progress: Callable[[str], None] = None, repeats: int = 3) -> dict:
    say = progress or (lambda s: None)
    rows = []
    r = repeats
    steps = [("stream GPT-2", lambda: bench_stream(*GPT2, repeats=r)),
             ("stream N=1024 V=32000 M=2048", lambda: bench_stream(*LLAMA, repeats=r, naive=not quick)),
             ("compare GPT-2", lambda: bench_compare(*GPT2, repeats=r)),
             ("pivots", lambda: bench_pivots(2048, 768, repeats=r)
              + ([] if quick else bench_pivots(4096, 768, repeats=r))),
             ("paper port", lambda: bench_paper() if not quick else bench_paper(v=300, n=1000, m=32))]
    for name, fn in steps:
        say(name)
        rows += fn()
    return {"machine": machine(), "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; medians of {result.get('repeats', 3)} interleaved rounds, "
             "ratio = median over rounds of time / floor time of the same round", "",
             "| benchmark | variant | shape | median s | floor s | ratio to floor | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fl = "-" if r["floor_seconds"] != r["floor_seconds"] else f"{r['floor_seconds']:.3f}"
        ra = "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['benchmark']} | {r['variant']} | {r['shape']} | {r['seconds']:.3f} | "
                     f"{fl} | {ra} | {r['notes']} |")
    return "\n".join(lines)
