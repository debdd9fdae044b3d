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
from .baselines import naive_kl, paper_d_llv, paper_input_side
from .model import Model

GPT2 = (2048, 50304, 768)
#: the per-token pass at GPT-2's own vocabulary
GPT2_TOKENS = (2048, 50257, 768)
LLAMA = (1024, 32000, 2048)
#: input side: N >= 200 (M + 1) so that the paper's 200 disjoint sets fit; V of a Llama-2 vocabulary
INPUT = (16384, 32000, 64)
INPUT_QUICK = (2048, 2000, 8)
#: compare with its defaults (exact pivot search, every measure) against the KL pass alone, at
#: a Llama-2-like head with 4096 inputs; quick mode a quarter of each size but N
COMPARE_KL = (4096, 32000, 2048)
COMPARE_KL_QUICK = (2048, 8000, 512)


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
    from ._cpu_pass import stream_pass
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


def bench_token_pass(n, v, m, repeats=3, k=10) -> List[dict]:
    """The pass with each model's top-k labels per input (``topk=k``, what the per-token report
    asks of it) and without, as the engine runs it (+ logit moments) and alone (KL + L), and
    the Jensen-Shannon second pass (``jsd_pass``), against the bare GEMMs of the same shapes
    in the same rounds."""
    from ._cpu_pass import jsd_pass, stream_pass
    f1, g1, f2, g2 = _pair(n, v, m)
    out1, out2 = np.empty((n, v), np.float32), np.empty((n, v), np.float32)
    first = stream_pass(f1, g1, f2, g2)

    def floor():
        np.matmul(f1, g1.T, out=out1)
        np.matmul(f2, g2.T, out=out2)

    top = f"engine pass (+moments), topk={k}"
    fns = {"floor": floor,
           "engine pass (+moments), topk=0": lambda: stream_pass(f1, g1, f2, g2, moments=True),
           top: lambda: stream_pass(f1, g1, f2, g2, moments=True, topk=k),
           "KL + L pass, topk=0": lambda: stream_pass(f1, g1, f2, g2),
           f"KL + L pass, topk={k}": lambda: stream_pass(f1, g1, f2, g2, topk=k),
           "JSD second pass": lambda: jsd_pass(f1, g1, f2, g2, first["L1"], first["L2"])}
    times = interleaved_times(fns, 1, repeats)

    def extra(name, base):   # median over rounds of time / time without top-k, minus 1
        r = statistics.median(t / b for t, b in zip(times[name], times[base]))
        return f"{100 * (r - 1):+.1f}% over topk=0 (same rounds)"

    notes = {top: f"target <= 1.3x; {extra(top, 'engine pass (+moments), topk=0')}",
             f"KL + L pass, topk={k}": extra(f"KL + L pass, topk={k}", "KL + L pass, topk=0"),
             "JSD second pass": "given L1, L2 from the first pass; the cost of --jsd"}
    return _rows("per-token pass", f"N={n} V={v} M={m} f32", times, notes=notes)


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


def bench_compare_kl(n, v, m, repeats=3) -> List[dict]:
    """``compare`` with its defaults (every measure, the exact pivot search) against the KL pass
    alone (``engine(a, b).kl()``: the streaming pass every measure starts from), interleaved;
    the ratio is the median over rounds of compare time / KL-pass time of the same round."""
    from .measures import compare, engine
    f1, g1, f2, g2 = _pair(n, v, m)
    a, b = Model(f1, g1), Model(f2, g2)
    out = {}
    times = interleaved_times({"KL pass": lambda: engine(a, b).kl(),
                               "compare": lambda: out.__setitem__("r", compare(a, b))}, 0, repeats)
    r = out["r"]
    svd_sets = r.d_svd.num_label_sets if r.d_svd is not None else 0
    rep_sets = r.d_rep.num_sets if r.d_rep is not None else 0
    note = (f"floor = the KL pass (engine(a, b).kl()) in the same rounds; pivot search: "
            f"{r.d_llv.pivot_search}; {svd_sets} d_SVD and {rep_sets} d_rep label sets")
    return _rows("compare vs KL", f"N={n} V={v} M={m} f32", times, floor_key="KL pass",
                 notes={"compare": note})


#: the Accumulator against compare on the same data: batches of ACC_BATCH inputs
ACCUMULATOR = (16384, 32000, 256)
ACCUMULATOR_QUICK = (4096, 8000, 128)
ACC_BATCH = 1024
#: the Accumulator's default reservoir
ACC_DEFAULT_RESERVOIR = 4096


def bench_accumulator(n, v, m, repeats=3, batch=ACC_BATCH) -> List[dict]:
    """``Accumulator`` (updates with batches of ``batch`` inputs, then ``compute``) against
    ``compare`` of the whole arrays, both with their defaults, interleaved; the ratio is the
    median over rounds of accumulator time / compare time of the same round. Like for like:
    a reservoir of every input (``reservoir=n``: the same input side as compare); where n
    exceeds the default reservoir (4096), the default too (an estimated input side)."""
    from .accumulate import Accumulator
    from .measures import compare
    f1, g1, f2, g2 = _pair(n, v, m)
    a, b = Model(f1, g1), Model(f2, g2)
    sizes = sorted({n, min(n, ACC_DEFAULT_RESERVOIR)}, reverse=True)
    phases = {k: {"updates": [], "compute": []} for k in sizes}

    def accumulate(k):
        t0 = time.perf_counter()
        acc = Accumulator(g1, g2, reservoir=k)
        for i in range(0, n, batch):
            acc.update(f1[i:i + batch], f2[i:i + batch])
        t1 = time.perf_counter()
        acc.compute()
        phases[k]["updates"].append(t1 - t0)
        phases[k]["compute"].append(time.perf_counter() - t1)

    def name(k):
        return (f"Accumulator, batches of {batch}, reservoir {k}"
                + (" (every input: like for like)" if k >= n else " (input side sampled)"))
    fns = {"compare": lambda: compare(a, b)}
    fns.update({name(k): (lambda k=k: accumulate(k)) for k in sizes})
    times = interleaved_times(fns, 0, repeats)
    notes = {name(k): f"floor = compare of the whole arrays; updates "
                      f"{statistics.median(phases[k]['updates']):.2f} s, compute "
                      f"{statistics.median(phases[k]['compute']):.2f} s" for k in sizes}
    return _rows("accumulator vs compare", f"N={n} V={v} M={m} f32", times, floor_key="compare",
                 notes=notes)


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


def bench_bounded_pivots(v, m, n=2048, repeats=3) -> List[dict]:
    """The default exact pivot search beyond EXACT_PIVOT_LIMIT labels (branch and bound) and
    the plain exact search (every pivot's row), against the bare V x V x M GEMMs of both
    models (in blocks of 256 rows, so that the floor does not write two V x V arrays). Both
    searches must choose the same pivot and leave-out."""
    from .measures import engine
    f1, g1, f2, g2 = _pair(n, v, m)
    e = engine(Model(f1, g1), Model(f2, g2))
    blk = 256   # the V x V products in row blocks into one buffer, as the search forms them
    buf = np.empty((blk, v), np.float32)

    def floor():
        for g in (g1, g2):
            for i0 in range(0, v, blk):
                np.matmul(g[i0:i0 + blk], g.T, out=buf[:min(blk, v - i0)])

    out = {}
    times = interleaved_times({
        "floor": floor,
        "bounded exact search (default)": lambda: out.__setitem__("bounded", e.label_side()),
        "plain exact search": lambda: out.__setitem__("plain", e.label_side(num_pivots=v))},
        0, repeats, sparse=("plain exact search",))
    same = out["bounded"][:4] == out["plain"][:4]
    note = f"{out['bounded'][4]}; same pivot, leave-out and terms as the plain search: {same}"
    return _rows("pivots", f"N={n} V={v} M={m} f32", times,
                 notes={"bounded exact search (default)": note})


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


def _log_likelihoods(f, g, chunk=512):
    """log p(y|x), V x N float64: the matrix ``baselines.log_likelihoods`` builds, computed
    in chunks of inputs (scipy's log_softmax over labels) so that memory stays at the output."""
    from scipy.special import log_softmax
    out = np.empty((g.shape[0], f.shape[0]))
    for i in range(0, f.shape[0], chunk):
        out[:, i:i + chunk] = log_softmax(g @ f[i:i + chunk].T, axis=0)
    return out


def _available_memory():
    """Bytes of memory available now (Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            kb = next(int(l.split()[1]) for l in fh if l.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError):
        return None


def bench_input(n, v, m, repeats=3, num_samples=200, sets_per_pivot=100, seed=0) -> List[dict]:
    """The input side of d_LLV: the paper port's search over its ``num_samples`` disjoint
    candidate sets against identirep's search over ``num_samples * sets_per_pivot`` sets.

    Timed, interleaved (each round runs every variant once; the ratio is the median over
    rounds of time / port time of the same round):
      - ``baselines.paper_input_side``, the port's own input-side code (``paper_d_llv`` calls
        it): draw the disjoint sets, evaluate them one by one on the materialised V x N
        log-likelihood matrices, keep one, its terms. Building those matrices (O(N V M), N x V
        memory) is not timed;
      - ``PairEngine.input_side(num_samples, sets_per_pivot)`` on an engine whose pass is
        done (the pass is not timed): the draw from the distinct inputs, the label-covariance
        factors, every candidate's criterion, the choice, its terms;
      - the same on the port's very sets (``sets_per_pivot=1, paper_compat=True``), which
        also checks that identirep chooses the port's set, with the same t2.

    Float64 on both sides: the port is float64 throughout (``baselines``) and identirep's
    float64 engine is its exact mode, so the same-choice check compares like with like
    (a float32 port would also differ from identirep's float32 engine by roundoff, and near
    ties could then flip the choice). The cost is memory: the two V x N float64 matrices take
    16 N V bytes (8.4 GB at the default N=16384, V=32000). N=16384 is the smallest power of
    two with room for 200 disjoint sets of M + 1 = 65 inputs (N >= 13000); V=32000 is the
    Llama-2 vocabulary; the port's cost per set grows with V, identirep's does not.
    """
    from .measures import engine
    if n < num_samples * (m + 1):
        raise ValueError(f"the port's {num_samples} disjoint sets of M + 1 = {m + 1} inputs "
                         f"need N >= {num_samples * (m + 1)}, got N={n}")
    need, free = 16 * n * v, _available_memory()
    if free is not None and need > 0.8 * free:
        return [{"benchmark": "input side", "variant": "skipped", "shape": f"N={n} V={v} M={m} f64",
                 "seconds": float("nan"), "floor_seconds": float("nan"), "ratio": float("nan"),
                 "notes": f"the port's log-likelihoods need {need / 2**30:.1f} GiB, "
                          f"{free / 2**30:.1f} GiB available; run benchmarks/bench_input.py "
                          "with a smaller --shape"}]
    f1, g1, f2, g2 = (x.astype(np.float64) for x in _pair(n, v, m))
    e = engine(Model(f1, g1), Model(f2, g2))
    lp1, lp2 = _log_likelihoods(f1, g1), _log_likelihoods(f2, g2)

    port = paper_input_side(lp1, lp2, m, num_samples, seed)
    same = e.input_side(num_samples=num_samples, seed=seed, paper_compat=True)
    ours = e.input_side(num_samples=num_samples, seed=seed, sets_per_pivot=sets_per_pivot)
    same_choice = same[0] == [int(i) for i in port[0]]
    rel = abs(same[1] - port[1].max()) / abs(port[1].max())
    n_port, n_same, n_ours = num_samples, same[4], ours[4]
    k_port = f"paper port ({n_port} sets)"
    k_ours = f"identirep input_side ({n_ours} sets)"
    k_same = f"identirep input_side (the port's {n_same} sets)"
    times = interleaved_times({
        k_port: lambda: paper_input_side(lp1, lp2, m, num_samples, seed),
        k_ours: lambda: e.input_side(num_samples=num_samples, seed=seed,
                                     sets_per_pivot=sets_per_pivot),
        k_same: lambda: e.input_side(num_samples=num_samples, seed=seed, paper_compat=True),
    }, 0, repeats)
    floor = f"floor = the paper port's input side over its {n_port} disjoint sets, one by one"
    return _rows("input side", f"N={n} V={v} M={m} f64", times, floor_key=k_port, notes={
        k_ours: f"{floor}; identirep evaluated {n_ours} sets ({num_samples} pivots x "
                f"{sets_per_pivot}), {n_ours / n_port:.0f}x the port's {n_port}; "
                f"t2 {ours[1]:.4g} (port's {port[1].max():.4g})",
        k_same: f"{floor}; same {n_same} sets (paper_compat): same choice: {same_choice}, "
                f"t2 rel. diff {rel:.1e}"})


def run_suite(quick: bool = False, progress: Callable[[str], None] = None, repeats: int = 3) -> dict:
    say = progress or (lambda s: None)
    rows = []
    r = repeats
    steps = [("stream GPT-2", lambda: bench_stream(*GPT2, repeats=r)),
             ("stream N=1024 V=32000 M=2048", lambda: bench_stream(*LLAMA, repeats=r, naive=not quick)),
             ("per-token pass GPT-2", lambda: bench_token_pass(*GPT2_TOKENS, repeats=r)),
             ("compare GPT-2", lambda: bench_compare(*GPT2, repeats=r)),
             ("compare vs KL pass", lambda: bench_compare_kl(*(COMPARE_KL_QUICK if quick else COMPARE_KL),
                                                             repeats=r)),
             ("accumulator vs compare", lambda: bench_accumulator(
                 *(ACCUMULATOR_QUICK if quick else ACCUMULATOR), repeats=r)),
             ("pivots", lambda: bench_pivots(2048, 768, repeats=r)
              + ([] if quick else bench_pivots(4096, 768, repeats=r))),
             ("bounded pivot search", lambda: bench_bounded_pivots(8192, 128, repeats=r) if quick
              else bench_bounded_pivots(16384, 256, repeats=r)),
             ("paper port", lambda: bench_paper() if not quick else bench_paper(v=300, n=1000, m=32)),
             ("input side", lambda: bench_input(*(INPUT_QUICK if quick else INPUT), repeats=r)),
             ("per-token report vs stored logits", lambda: [
                 row for shape in (PER_TOKEN_QUICK if quick else PER_TOKEN)
                 for row in bench_per_token(*shape, repeats=r, memory=not quick)])]
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
        ra = "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.3g}x"
        lines.append(f"| {r['benchmark']} | {r['variant']} | {r['shape']} | {r['seconds']:.3f} | "
                     f"{fl} | {ra} | {r['notes']} |")
    return "\n".join(lines)


#: the per-token report against stored logits: 4096 positions (8 texts of 512 tokens) at the
#: GPT-2 and Llama-3 vocabularies; quick mode one smaller case
PER_TOKEN = ((4096, 50304, 768), (4096, 128256, 2048))
PER_TOKEN_QUICK = ((1024, 50304, 768),)
#: rows of logits per chunk in the stored-logits approach and in its floor
PER_TOKEN_ROWS = 512


def _lm_pair(n, v, m, seed=0, context=512):
    """Two random float32 models carrying a text: texts of ``context`` positions, random
    targets (-1 at each text's last position), tokens the previous targets."""
    from .model import Model
    f1, g1, f2, g2 = _pair(n, v, m, seed)
    rng = np.random.default_rng(seed + 1)
    targets = rng.integers(0, v, n)
    targets[context - 1::context] = -1
    tokens = np.roll(targets, 1)
    tokens[::context] = rng.integers(0, v, len(tokens[::context]))
    docs = np.arange(n) // context
    text = dict(tokens=tokens, targets=targets, documents=docs)
    return Model(f1, g1, name="reference", **text), Model(f2, g2, name="compared", **text)


def _per_token_variants(a, b, path, logits_dtype, jsd, gemm="numpy"):
    """name -> callable of the per-token variants (the identirep report and the stored-logits
    approach's two halves), for timing and for the memory children."""
    from .baselines import stored_logits_compare, stored_logits_write
    from .measures import engine
    from .tokens import engine_token_report
    out = {}
    rows = PER_TOKEN_ROWS

    def ours(with_jsd):
        return lambda: out.__setitem__("report", engine_token_report(
            engine(a, b, "cpu", topk=10), with_jsd))

    def stored_compare(with_jsd):
        return lambda: out.__setitem__("stored", stored_logits_compare(
            b.f, b.g, path, b.targets, rows=rows, dtype=logits_dtype, jsd=with_jsd, gemm=gemm))

    fns = {"identirep per-token report": ours(False),
           "stored logits: write reference": lambda: stored_logits_write(
               a.f, a.g, path, rows=rows, dtype=logits_dtype, gemm=gemm),
           "stored logits: compare against them": stored_compare(False)}
    if jsd:
        fns["identirep per-token report + JSD"] = ours(True)
        fns["stored logits: compare + JSD"] = stored_compare(True)
    return fns, out


def _process_memory():
    """(VmRSS, VmHWM) of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            d = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in fh
                 if l.startswith(("VmRSS:", "VmHWM:"))}
        return d["VmRSS"], d["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


def per_token_memory_child(variant, n, v, m, path, logits_dtype, jsd, gemm="numpy") -> dict:
    """Run one per-token variant once in this (fresh) process and measure its memory: the
    peak resident set while it runs, over the resident set before it (inputs built, torch
    and the compiled core loaded). The peak is reset first (/proc/self/clear_refs), so it is
    the variant's own."""
    import torch  # noqa: F401 - loaded before the measurement, as the variants use it
    a, b = _lm_pair(n, v, m)
    fns, _ = _per_token_variants(a, b, path, logits_dtype, jsd, gemm)
    before = _process_memory()
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        pass
    fns[variant]()
    after = _process_memory()
    if before is None or after is None:
        return {"variant": variant, "peak_bytes": None, "extra_bytes": None}
    return {"variant": variant, "rss_before": before[0], "peak_bytes": after[1],
            "extra_bytes": after[1] - before[0] if reset else None, "peak_reset": reset}


def _memory_in_subprocess(variant, n, v, m, path, logits_dtype, jsd, gemm="numpy") -> dict:
    import json
    import subprocess
    import sys
    code = ("import json, sys; from identirep.bench import per_token_memory_child as c; "
            "print(json.dumps(c(*json.loads(sys.argv[1]))))")
    args = json.dumps([variant, n, v, m, str(path), logits_dtype, jsd, gemm])
    r = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if r.returncode != 0:
        return {"variant": variant, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_per_token(n, v, m, repeats=3, logits_dtype="float32", jsd=True, memory=True,
                    tmpdir=None, gemm="numpy") -> List[dict]:
    """identirep's per-token report (the pass with top-10 ids and the report:
    ``engine(a, b, topk=10)`` + ``tokens.engine_token_report``; with ``jsd`` also its second
    pass) against the materialising approach of llama.cpp's ``--kl-divergence``: the
    reference model's log-probabilities computed and written to a file (N x V ``logits_dtype``,
    float32 or float16), then the compared model's logits, chunk by chunk, with KL both ways,
    log p of the targets, top-10 ids and the top tokens' probabilities read against the
    stored ones (float32, ``PER_TOKEN_ROWS`` positions per chunk; the GEMMs by ``gemm``'s BLAS:
    "numpy", the library of identirep's pass and of the floor, or "torch"; the rest by
    torch). Timed in interleaved
    rounds with the floor: both models' logit GEMMs (``PER_TOKEN_ROWS`` rows at a time into
    one buffer). With ``memory``, each variant also runs once alone in a fresh process for its
    peak resident memory over the process's before it. The notes give the file sizes: the
    two identirep model files (safetensors, f and g float32, the text's int64 arrays) against
    the stored log-probabilities."""
    import tempfile

    from .io import save_model
    try:
        import torch  # noqa: F401
    except ImportError:
        return [{"benchmark": "per-token", "variant": "skipped", "shape": f"N={n} V={v} M={m}",
                 "seconds": float("nan"), "floor_seconds": float("nan"), "ratio": float("nan"),
                 "notes": "the stored-logits baseline needs torch (pip install 'identirep[hf]')"}]
    a, b = _lm_pair(n, v, m)
    rows = PER_TOKEN_ROWS
    buf = np.empty((rows, v), np.float32)

    def floor():
        for f, g in ((a.f, a.g), (b.f, b.g)):
            for r0 in range(0, n, rows):
                np.matmul(f[r0:r0 + rows], g.T, out=buf[:min(rows, n - r0)])

    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        path = os.path.join(d, "reference.logprobs")
        fns, out = _per_token_variants(a, b, path, logits_dtype, jsd, gemm)
        write = fns["stored logits: write reference"]
        write()    # the compare variants read the file: it exists before the first round
        times = interleaved_times({"floor": floor, **fns}, 0, repeats)
        logits_bytes = os.path.getsize(path)
        model_bytes = 0
        for mod, name in ((a, "a.safetensors"), (b, "b.safetensors")):
            save_model(mod, os.path.join(d, name))
            model_bytes += os.path.getsize(os.path.join(d, name))
        mem = ({name: _memory_in_subprocess(name, n, v, m, path, logits_dtype, jsd, gemm)
                for name in fns} if memory else {})
    write_t = times["stored logits: write reference"]
    both = {False: [w + c for w, c in zip(write_t, times["stored logits: compare against them"])]}
    times["stored logits: both halves"] = both[False]
    if jsd:
        both[True] = [w + c for w, c in zip(write_t, times["stored logits: compare + JSD"])]
        times["stored logits: both halves + JSD"] = both[True]
    rep, st = out["report"], out["stored"]
    agree = abs(rep.kl12_mean - float(np.mean(st["kl12"]))) / rep.kl12_mean
    files = (f"files: identirep's two model files {model_bytes / 2**20:.0f} MiB, stored "
             f"{logits_dtype} log-probabilities {logits_bytes / 2**20:.0f} MiB "
             f"({logits_bytes / model_bytes:.0f}x)")
    notes = {}
    for name in times:
        parts = []
        info = mem.get(name)
        if info and info.get("extra_bytes") is not None:
            parts.append(f"peak RSS {info['extra_bytes'] / 2**20:.0f} MiB over the process's "
                         f"{info['rss_before'] / 2**20:.0f} MiB before it")
        elif info and "error" in info:
            parts.append(f"memory not measured: {info['error']}")
        if name.startswith("identirep"):
            with_jsd = name.endswith("JSD")
            ratio = statistics.median(t / o for t, o in zip(times[name], both[with_jsd]))
            parts.append(f"{ratio:.2f}x the stored-logits approach's both halves"
                         + (" + JSD" if with_jsd else "") + " in the same rounds")
        elif name.startswith("stored logits: both"):
            parts.append("write + compare" + (" + JSD" if name.endswith("JSD") else "")
                         + ", summed per round")
        notes[name] = "; ".join(parts)
    notes["identirep per-token report"] += (
        f"; {files}; mean KL12 {rep.kl12_mean:.6g} (stored logits: rel. diff {agree:.1e})")
    shape = (f"N={n} V={v} M={m} f32, logits stored as {logits_dtype}, stored-logits GEMMs "
             f"by {gemm}")
    return _rows("per-token", shape, times, notes=notes)
