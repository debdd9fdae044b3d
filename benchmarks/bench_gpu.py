"""Benchmark of the GPU streaming passes against their GEMM floor, bfloat16 inputs.

For each shape (N inputs, V labels, M dimensions, both models of the same shape):
  floor   two bare bfloat16 GEMMs f1 g1^T, f2 g2^T into one preallocated N x V output: the
          faster of cupy.matmul (where this CuPy has a working bfloat16 dtype) and torch.matmul
          (where torch has CUDA), the table says which: the analytic floor;
  gemm    the GEMM tiles the default pass runs (cublasGemmEx, bfloat16 in, float32 out; the
          tiles of the overlapped pass), no epilogue;
  epilogue  the compiled epilogue alone over the same tiles (row and column kernels), and in
          brackets the fused one-read epilogue over the fused pass's tiles;
  cuda    identirep's cuda pass (GEMM tiles + compiled epilogue with row/column moments,
          the epilogue of each tile overlapped with the next tile's GEMMs on a second stream),
          through the compiled pass driver (one call for the whole tile loop);
  serial  the cuda pass without the overlap (one stream, all N rows per tile);
  fused   the cuda pass with the fused one-read epilogue (fused_epilogue=True), overlapped;
  gemm-fused  the cuda pass with the logits computed and reduced in one kernel (experimental
          until a GPU has confirmed it: fused_gemm=True, csrc/kernels/lse_kl_gemm.cuh, no
          logit in memory), with blocks of
          128 rows (one per SM) and of 64 (two per SM), mma.sync (sm_80+), then wgmma (the
          sm_90a kernel, gemm_wgmma=True; "-" where it cannot run); a second table gives
          each kernel's time without its epilogue too (the timing probe
          _core.lse_kl_gemm_mainloop_cuda, one launch over N x V): the GEMMs' share of it.
          Each kernel (and its probe) is first checked against the cuBLAS driver in a process
          of its own (--gemm-check) and timed only if it passes, after every other column of
          every shape: one that faults would leave this process's CUDA context unusable;
  cupy    the cupy pass (a Python tile loop: CuPy's cuBLAS tiles, the same epilogue kernels
          compiled by NVRTC, overlapped);
  torch   naive: row chunks of float32 logits through torch.log_softmax, KL both ways;
  liger   Liger-Kernel's LigerFusedLinearJSD(jsd_beta=0), forward under no_grad (forward KL;
          it also computes the input gradient, as it always does), when liger_kernel imports.
Times are CUDA-event medians over --repeats after --warmup runs; "x" columns are ratios to the
floor. A column that fails is noted under the table and the others are still measured.
"mem" is the peak extra device memory of the cuda passes (CuPy pool growth from an empty pool,
inputs excluded; for the fused GEMM the largest of its kernels) and of the torch baselines
(max_memory_allocated above the inputs).
A first table reads each shape against the pass targets: the fastest configuration's ratio
to the floor (<= 1.25x at M >= 1536, <= 1.5x below), its peak extra memory (<= 1 GiB) and the
cupy pass against the cuda pass (<= 2x).
``--sweep`` adds a second table: the cuda pass for several label-tile widths, overlapped, serial
and with the fused epilogue, to choose the defaults from.

    python benchmarks/bench_gpu.py                          # the four LM shapes below
    python benchmarks/bench_gpu.py --shape 16384,50304,768 --repeats 5 --out table.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import cupy as cp

import identirep
from identirep import _bf16 as bf16
from identirep import _core
from identirep.gpu import cublas, cuda_backend, cupy_backend, plans
from identirep.gpu.arrays import DeviceArray
from identirep.gpu.state import pass_state
from identirep.errors import why

SHAPES = [(16384, 50304, 768), (16384, 151936, 1536), (16384, 262144, 2304),
          (16384, 128256, 4096)]
SWEEP_COLS = (1024, 2048, 4096, 8192)
#: the fused GEMM kernels by row key: (table name, gemm_block_rows, gemm_wgmma)
GEMM_KINDS = {"gemm_fused": ("mma.sync 128", 128, False),
              "gemm_fused64": ("mma.sync 64", 64, False),
              "gemm_wg": ("wgmma 128", 128, True), "gemm_wg64": ("wgmma 64", 64, True)}
SWEEP_VARIANTS = {"overlap": {}, "serial": {"overlap": False},
                  "fused": {"fused_epilogue": True}}


def parse_shape(text):
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("shape must be N,V,M")
    return tuple(parts)


def cuda_ms(fn, warmup, repeats):
    """Median milliseconds of fn() between CUDA events on CuPy's current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def torch_ms(torch, fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_inputs(n, v, m, seed):
    rs = cp.random.RandomState(seed)
    f = rs.standard_normal((n, m), dtype=cp.float32)
    g = rs.standard_normal((v, m), dtype=cp.float32) * float(3.0 / np.sqrt(m))  # stays float32
    return (DeviceArray(bf16.from_f32(f), "bfloat16"),
            DeviceArray(bf16.from_f32(g), "bfloat16"))


def cupy_bfloat16():
    """The bfloat16 dtype when this CuPy supports it (CuPy 14 with ml_dtypes), else None."""
    try:
        import ml_dtypes
        dt = np.dtype(ml_dtypes.bfloat16)
        cp.empty(1, dt)
        return dt
    except Exception:
        return None


def pool_peak(fn):
    """Bytes the CuPy pool grows by while fn() runs, starting from no cached blocks."""
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    pool.free_all_blocks()
    before = pool.total_bytes()
    fn()
    cp.cuda.Device().synchronize()
    return pool.total_bytes() - before


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_shape(n, v, m, args, torch, row):
    """Fill ``row`` with the timings of one shape (what was measured stays if a step fails)."""
    f1, g1 = make_inputs(n, v, m, 1)
    f2, g2 = make_inputs(n, v, m, 2)
    # the floor: the faster of CuPy's and torch's bfloat16 GEMMs (each where it works)
    bf = cupy_bfloat16()
    if bf is not None:
        def cupy_floor():
            ops = [x.data.view(bf) for x in (f1, g1, f2, g2)]
            out = cp.empty((n, v), bf)

            def floor():
                cp.matmul(ops[0], ops[1].T, out=out)
                cp.matmul(ops[2], ops[3].T, out=out)
            return cuda_ms(floor, args.warmup, args.repeats)
        measure(row, ("floor", "cupy"), cupy_floor)   # CuPy's bfloat16 support has gaps
    if torch is not None:
        def torch_floor():
            tops = torch_bf16(torch, (f1, g1, f2, g2))
            tout = torch.empty((n, v), dtype=torch.bfloat16, device="cuda")

            def floor():
                torch.matmul(tops[0], tops[1].T, out=tout)
                torch.matmul(tops[2], tops[3].T, out=tout)
            return torch_ms(torch, floor, args.warmup, args.repeats)
        measure(row, ("floor", "torch"), torch_floor)
    floors = {k[1]: t for k, t in row.items() if isinstance(k, tuple) and k[0] == "floor"}
    if floors:
        row["floor_by"] = min(floors, key=floors.get)
        row["floor"] = floors[row["floor_by"]]
    # the tiles of the default (overlapped) pass driver, and of its fused epilogue
    tr, tc = driver_tiles(n, v, args)

    def gemm_tiles_ms():
        ws = cp.empty(tr * tc, cp.float32)

        def gemm_tiles():
            for c0 in range(0, v, tc):
                c1 = min(v, c0 + tc)
                for r0 in range(0, n, tr):
                    r1 = min(n, r0 + tr)
                    out = ws[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
                    for f, g in ((f1, g1), (f2, g2)):
                        cublas.gemm_ex(cp, f.data[r0:r1], g.data[c0:c1], out, "bfloat16")
        return cuda_ms(gemm_tiles, args.warmup, args.repeats)  # the tiles go with ws
    measure(row, "gemm", gemm_tiles_ms)
    if identirep.build_info()["cuda_compiled"]:
        measure(row, "epilogue", lambda: epilogue_ms(n, v, tr, tc, args))
        measure(row, "epilogue_fused", lambda: epilogue_ms(
            n, v, *driver_tiles(n, v, args, fused=True), args, fused=True))
    kw = dict(workspace_bytes=args.workspace, tile_cols=args.tile_cols)
    if identirep.build_info()["cuda_pass_driver"]:
        run = (lambda: cuda_backend.cuda_pass(f1, g1, f2, g2, **kw))
        measure(row, "mem", lambda: pool_peak(run))
        measure(row, "cuda", lambda: cuda_ms(run, args.warmup, args.repeats))
        measure(row, "serial", lambda: cuda_ms(
            lambda: cuda_backend.cuda_pass(f1, g1, f2, g2, overlap=False, **kw), args.warmup,
            args.repeats))
        fused = (lambda: cuda_backend.cuda_pass(f1, g1, f2, g2, fused_epilogue=True, **kw))
        measure(row, "mem_fused", lambda: pool_peak(fused))
        measure(row, "fused", lambda: cuda_ms(fused, args.warmup, args.repeats))
        if args.sweep:
            for tc in SWEEP_COLS:
                for variant, opts in SWEEP_VARIANTS.items():
                    measure(row, ("sweep", tc, variant), lambda: cuda_ms(
                        lambda: cuda_backend.cuda_pass(f1, g1, f2, g2,
                                                       workspace_bytes=args.workspace,
                                                       tile_cols=tc, **opts),
                        args.warmup, args.repeats))
    cupy_run = (lambda: cupy_backend.cupy_pass(f1, g1, f2, g2, **kw))
    # the first run compiles the NVRTC kernels, outside the timing
    measure(row, "cupy", lambda: (cupy_run(), cuda_ms(cupy_run, args.warmup, args.repeats))[1])
    if torch is not None and not args.no_torch:
        measure(row, ["torch", "torch_mem"], lambda: naive_torch(torch, (f1, g1, f2, g2), args))
        liger = liger_jsd(torch, (f1, g1, f2, g2), args)
        if isinstance(liger, str):
            row["liger_why"] = liger
        else:
            row["liger"], row["liger_mem"] = liger


def driver_tiles(n, v, args, fused=False):
    """(rows, cols) of the tiles of the pass driver's default (overlapped) bfloat16 pass."""
    return plans.cuda_tiles(n, v, "float32", None, args.tile_cols, args.workspace, True, fused,
                            False)[:2]


def bench_gemm_kind(n, v, m, key, args, row):
    """Time one fused GEMM kernel (``key`` of GEMM_KINDS) on one shape into ``row``: its pass,
    peak memory and the kernel without its epilogue."""
    _, rows, wgmma = GEMM_KINDS[key]
    f1, g1 = make_inputs(n, v, m, 1)
    f2, g2 = make_inputs(n, v, m, 2)
    run = (lambda: cuda_backend.cuda_pass(f1, g1, f2, g2, fused_gemm=True, gemm_block_rows=rows,
                                gemm_wgmma=wgmma, workspace_bytes=args.workspace))
    measure(row, ("mem_gemm", key), lambda: pool_peak(run))
    measure(row, key, lambda: cuda_ms(run, args.warmup, args.repeats))
    measure(row, ("mainloop", key), lambda: mainloop_ms(rows, wgmma, (f1, g1, f2, g2), args))


def mainloop_ms(rows, wgmma, arrays, args):
    """The fused GEMM kernel without its epilogue (the timing probe), one launch over N x V."""
    ops = [x.data for x in arrays]   # DeviceArrays: bfloat16 as its bits
    return cuda_ms(lambda: _core.lse_kl_gemm_mainloop_cuda(
        *ops, gemm=rows, wgmma=wgmma, stream=cp.cuda.get_current_stream().ptr),
        args.warmup, args.repeats)


def measure(row, key, fn):
    """row[key] = fn() (for a list of keys, fn() gives one value per key), or the failure noted
    in row["errors"]: a column that fails leaves the others measured."""
    try:
        value = fn()
    except Exception as e:
        name = "/".join(str(k) for k in (key if isinstance(key, (list, tuple)) else [key]))
        row.setdefault("errors", []).append(f"{name}: {why(e, 200)}")
        return
    if isinstance(key, list):
        row.update(zip(key, value))
    else:
        row[key] = value


#: gemm_check's exit status for a kernel that cannot run on this GPU (wgmma off compute
#: capability 9.0), and for a GPU taken by another process (exclusive-process mode)
NOT_RUN, BUSY = 3, 4


def gemm_check(rows, wgmma):
    """Exit status 0 when the fused GEMM kernel of this kind gives the cuBLAS driver's results
    on a small bfloat16 pair (odd sizes, two row and two label tiles), 1 when it does not,
    NOT_RUN when it cannot run here, BUSY when another process holds the GPU; the last line
    printed says why."""
    try:
        cp.zeros(1)   # this process's CUDA context first: refused while another holds the GPU
    except cp.cuda.runtime.CUDARuntimeError as e:
        print(f"{type(e).__name__}: {e}", flush=True)
        return BUSY if e.status == CUDA_ERROR_DEVICES_UNAVAILABLE else 1
    if wgmma:
        problem = _core.lse_kl_gemm_wgmma_problem(cp.cuda.Device().id)
        if problem:
            print(f"not run: {problem}", flush=True)
            return NOT_RUN
    f1, g1 = make_inputs(777, 9001, 72, 1)
    f2, g2 = make_inputs(777, 9001, 40, 2)
    kw = dict(tile_rows=400, tile_cols=5000)
    want = cuda_backend.cuda_pass(f1, g1, f2, g2, **kw)
    got = cuda_backend.cuda_pass(f1, g1, f2, g2, fused_gemm=True, gemm_block_rows=rows,
                                 gemm_wgmma=wgmma, **kw)
    # the timing probe (the kernel without its epilogue) too, then the pass again: the same
    mainloop_ms(rows, wgmma, (f1, g1, f2, g2), argparse.Namespace(warmup=0, repeats=1))
    again = cuda_backend.cuda_pass(f1, g1, f2, g2, fused_gemm=True, gemm_block_rows=rows,
                         gemm_wgmma=wgmma, **kw)
    bad = []
    for k in ("L1", "L2", "kl12", "kl21", "col_mean1", "col_m2_12"):
        a, b = np.asarray(getattr(got, k)), np.asarray(getattr(want, k))
        if not np.array_equal(a, np.asarray(getattr(again, k)), equal_nan=True):
            bad.append(f"{k} differs after the timing probe")
        scale = max(float(np.abs(b).max()), 1.0)
        if not (np.isfinite(a).all() and np.abs(a - b).max() <= 1e-4 * scale):
            bad.append(f"{k} differs by {float(np.nanmax(np.abs(a - b))):.3g} (scale {scale:.3g})")
    print("; ".join(bad) if bad else "ok", flush=True)
    return 1 if bad else 0


def gemm_check_command(rows, wgmma):
    return [sys.executable, os.path.abspath(__file__), "--gemm-check", f"{rows},{int(wgmma)}"]


def check_gemm_kernels(timeout=60):
    """(kinds whose check passed, notes on the others): each fused GEMM kernel is first run in
    a process of its own (gemm_check; all at once, ``timeout`` seconds for all), so that one
    that faults or hangs costs only its own columns, not every later measurement of this
    process. Called before this process uses CUDA; checks that found the GPU busy (a GPU in
    exclusive-process mode takes one process at a time) run again one after another, within
    the same ``timeout``."""
    if not identirep.build_info()["cuda_pass_driver"]:
        return [], ["fused GEMM kernels: built without the CUDA pass driver"]
    deadline = time.monotonic() + timeout
    results = _run_checks(list(GEMM_KINDS), deadline)
    for key in [k for k, (rc, _) in results.items() if rc == BUSY]:
        results.update(_run_checks([key], deadline))
    ok, notes = [], []
    for key, (rc, last) in results.items():
        if rc == 0:
            ok.append(key)
        elif rc is None:
            notes.append(f"{key}: not timed: its check did not finish within {timeout} s")
        elif rc == NOT_RUN:
            notes.append(f"{key}: not run ({last.removeprefix('not run: ')})")
        else:
            notes.append(f"{key}: not timed: its check failed (exit {rc}): {last}")
    return ok, notes


#: cudaErrorDevicesUnavailable: a GPU in exclusive-process mode held by another process
CUDA_ERROR_DEVICES_UNAVAILABLE = 46


def _run_checks(keys, deadline):
    """{key: (exit status, or None if it had not finished at ``deadline`` (time.monotonic),
    last output line)} of the checks of these kinds, run at once."""
    if time.monotonic() >= deadline:
        return {k: (None, "") for k in keys}
    procs = {k: subprocess.Popen(gemm_check_command(*GEMM_KINDS[k][1:]), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for k in keys}
    out = {}
    for key, p in procs.items():
        try:
            text, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out[key] = (None, "")
            continue
        out[key] = (p.returncode, (text.strip().splitlines() or ["no output"])[-1][:300])
    return out


def epilogue_ms(n, v, tr, tc, args, fused=False):
    """The compiled epilogue alone over the pass's tiles (one random tile pair reused): what
    the pass adds to its GEMM tiles when nothing overlaps."""
    rows, cols = (_core.lse_kl_cuda_fused_work_elems(tr, tc) if fused else
                  (0, _core.lse_kl_cuda_col_work_elems(tc)))
    col_work = cp.empty(cols, cp.float64)
    row_work = cp.empty(rows, cp.float64) if fused else None
    rs = cp.random.RandomState(3)
    l1 = rs.standard_normal((tr, tc), dtype=cp.float32)
    l2 = rs.standard_normal((tr, tc), dtype=cp.float32)
    state, args_, row_m, col_m = pass_state(cp, n, v)

    def run():
        stream = cp.cuda.get_current_stream().ptr
        for c0 in range(0, v, tc):
            for r0 in range(0, n, tr):
                r, c = min(tr, n - r0), min(tc, v - c0)
                rows = slice(r0, r0 + r)
                _core.lse_kl_update_cuda(l1[:r, :c], l2[:r, :c], state[:, rows], args_[:, rows],
                                         c0, row_moments=row_m[:, rows], col_moments=col_m,
                                         row0=r0, col_work=col_work, row_work=row_work,
                                         stream=stream)
    return cuda_ms(run, args.warmup, args.repeats)


def torch_bf16(torch, arrays):
    return [torch.from_dlpack(x.data.view(cp.int16)).view(torch.bfloat16) for x in arrays]


def peak_torch(torch, run):
    """Peak bytes torch allocates above what it holds while run() runs."""
    cp.cuda.Device().synchronize()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def liger_jsd(torch, arrays, args):
    """(ms, peak bytes) of LigerFusedLinearJSD(jsd_beta=0) forward, or why it could not run."""
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except Exception as e:  # not installed, or no Triton for this GPU
        return f"liger_kernel unavailable ({type(e).__name__}: {e})"
    f1, g1, f2, g2 = torch_bf16(torch, arrays)
    jsd = LigerFusedLinearJSD(jsd_beta=0.0)

    def run():
        with torch.no_grad():
            return jsd(f1, g1, f2, g2, None)   # shift_labels: none
    try:
        mem = peak_torch(torch, run)
        return torch_ms(torch, run, args.warmup, args.repeats), mem
    except Exception as e:  # e.g. out of memory: it holds an N x V float32 loss buffer
        torch.cuda.empty_cache()
        return f"liger failed ({why(e, 120)})"


def naive_torch(torch, arrays, args):
    f1, g1, f2, g2 = torch_bf16(torch, arrays)
    n, v = f1.shape[0], g1.shape[0]
    chunk = max(1, (1 << 30) // (4 * v))

    def run():
        kl12 = torch.empty(n, device="cuda")
        kl21 = torch.empty(n, device="cuda")
        for r0 in range(0, n, chunk):
            lp1 = torch.log_softmax((f1[r0:r0 + chunk] @ g1.T).float(), dim=-1)
            lp2 = torch.log_softmax((f2[r0:r0 + chunk] @ g2.T).float(), dim=-1)
            d = lp1 - lp2
            kl12[r0:r0 + chunk] = (lp1.exp() * d).sum(-1)
            kl21[r0:r0 + chunk] = -(lp2.exp() * d).sum(-1)
        return kl12, kl21
    mem = peak_torch(torch, run)
    return torch_ms(torch, run, args.warmup, args.repeats), mem


def fmt_ms(row, key):
    if key not in row:
        return "-"
    floor = row.get("floor")
    ratio = f" ({row[key] / floor:.2f}x)" if floor else ""
    return f"{row[key]:.1f}{ratio}"


def table(rows):
    lines = ["| N x V x M | floor ms (TFLOP/s) | gemm tiles ms | epilogue ms (fused) | "
             "cuda pass ms | serial ms | fused pass ms | gemm-fused pass ms "
             "(mma.sync 128 / 64-row blocks; wgmma 128 / 64) | "
             "cupy pass ms | torch naive ms | liger fused JSD ms | peak extra GiB (cuda / fused "
             "/ gemm-fused / torch / liger) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        floor = (f"{r['floor']:.1f} ({r['flop'] / r['floor'] / 1e9:.0f}, {r['floor_by']})"
                 if "floor" in r else "- (no bfloat16 matmul)")
        gemm_mem = [r[("mem_gemm", k)] for k in GEMM_KINDS if ("mem_gemm", k) in r]
        if gemm_mem:
            r = {**r, "mem_gemm": max(gemm_mem)}
        mem = " / ".join(f"{r[k] / 2 ** 30:.2f}" if k in r else "-"
                         for k in ("mem", "mem_fused", "mem_gemm", "torch_mem", "liger_mem"))
        epi = f"{fmt_ms(r, 'epilogue')} ({fmt_ms(r, 'epilogue_fused')})"
        gemm_fused = (f"{fmt_ms(r, 'gemm_fused')} / {fmt_ms(r, 'gemm_fused64')}; "
                      f"{fmt_ms(r, 'gemm_wg')} / {fmt_ms(r, 'gemm_wg64')}")
        cells = " | ".join([fmt_ms(r, "gemm"), epi] + [fmt_ms(r, k) for k in (
            "cuda", "serial", "fused")] + [gemm_fused] + [fmt_ms(r, k) for k in (
            "cupy", "torch", "liger")])
        lines.append(f"| {r['shape']} | {floor} | {cells} | {mem} |")
        notes += [f"{r['shape']}: {r[k]}" for k in ("liger_why", "error") if k in r]
        notes += [f"{r['shape']}: {e}" for e in r.get("errors", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


def gemm_table(rows):
    """The fused GEMM kernels: the pass, and the kernel without its epilogue (the timing
    probe: GEMMs and tile stores alone), ms (ratio to the floor)."""
    if not any(("mainloop", k) in r for r in rows for k in GEMM_KINDS):
        return ""
    head = " | ".join(f"{name} pass / no epilogue" for name, _, _ in GEMM_KINDS.values())
    lines = ["fused GEMM kernels: the pass, and the kernel without its epilogue (one launch)", "",
             f"| N x V x M | {head} |", "|---|" + "---|" * len(GEMM_KINDS)]
    for r in rows:
        cells = " | ".join(f"{fmt_ms(r, k)} / {fmt_ms(r, ('mainloop', k))}"
                           for k in GEMM_KINDS)
        lines.append(f"| {r['shape']} | {cells} |")
    return "\n".join(lines)


def sweep_table(rows):
    """The cuda pass by label-tile width and variant, ms (ratio to the floor)."""
    keys = [(tc, v) for tc in SWEEP_COLS for v in SWEEP_VARIANTS]
    if not any(("sweep", *keys[0]) in r for r in rows):
        return ""
    head = " | ".join(f"{tc} {v}" for tc, v in keys)
    lines = ["cuda pass by tile_cols (all rows per tile that fit the workspace)", "",
             f"| N x V x M | {head} |", "|---|" + "---|" * len(keys)]
    for r in rows:
        cells = " | ".join(fmt_ms(r, ("sweep", *k)) for k in keys)
        lines.append(f"| {r['shape']} | {cells} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=parse_shape, nargs="*", default=SHAPES)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workspace", type=int, default=1 << 30, help="workspace_bytes of the passes")
    p.add_argument("--tile-cols", type=int, default=None)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also time the cuda pass for tile_cols "
                   f"in {SWEEP_COLS}: {', '.join(SWEEP_VARIANTS)}")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--gemm-check", default=None, metavar="ROWS,WGMMA",
                   help="only check one fused GEMM kernel against the cuBLAS driver (exit 0 or 1)")
    args = p.parse_args()
    if args.gemm_check:
        rows, wgmma = (int(x) for x in args.gemm_check.split(","))
        raise SystemExit(gemm_check(rows, bool(wgmma)))
    args.gemm_ok, gemm_notes = check_gemm_kernels()
    torch = None if args.no_torch else import_torch()
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    head = (f"{dev['name'].decode()} | CuPy {cp.__version__} | identirep "
            f"{identirep.build_info()['version']} | bfloat16 inputs | median of {args.repeats}")
    if gemm_notes:
        head += "\n\nfused GEMM kernel checks: " + "; ".join(gemm_notes)
    rows = []
    for n, v, m in args.shape:
        t0 = time.perf_counter()
        row = {"shape": f"{n} x {v} x {m}", "flop": 4.0 * n * v * m}
        rows.append(row)
        try:
            bench_shape(n, v, m, args, torch, row)
        except Exception as e:  # keep what was measured, and go on with the next shape
            row["error"] = f"stopped: {why(e, 200)}"
        emit(report(head, rows), args.out, quiet=True)  # the tables so far survive a crash
        free_pool(row)
        print(f"{n} x {v} x {m}: {time.perf_counter() - t0:.1f} s", flush=True)
    # identirep's own GEMM kernels after everything else: one that faults leaves this
    # process's CUDA context unusable, one that hangs the step's time used up
    for i, key in enumerate(args.gemm_ok):
        for (n, v, m), row in zip(args.shape, rows):
            try:
                bench_gemm_kind(n, v, m, key, args, row)
            except Exception as e:
                row.setdefault("errors", []).append(f"{key}: stopped: {why(e, 200)}")
            emit(report(head, rows), args.out, quiet=True)
            free_pool(row)
        broken = context_problem()
        if broken:   # later kinds would only repeat this kind's fault: say whose it was
            rest = ", ".join(args.gemm_ok[i + 1:]) or "none"
            head += (f"\n\nthe CUDA context was unusable after timing {key} ({broken}); "
                     f"not timed after it: {rest}")
            break
    emit(report(head, rows), args.out)


def context_problem():
    """Why this process's CUDA context cannot be used any more (a kernel fault is sticky), or
    ""."""
    try:
        cp.cuda.Device().synchronize()
        cp.zeros(1).sum().item()
    except Exception as e:
        return why(e, 200)
    return ""


def free_pool(row):
    """Return CuPy's cached blocks to the device (after a fault this may fail too: noted)."""
    try:
        cp.get_default_memory_pool().free_all_blocks()
    except Exception as e:
        row.setdefault("errors", []).append(f"freeing the memory pool: {why(e, 200)}")


#: the pass configurations a user can choose (cuda_pass options), by row key: what the
#: targets are read against, with the row key of its peak memory where measured
PASS_CHOICES = {"cuda": ("default", "mem"), "serial": ("overlap=False", None),
                "fused": ("fused_epilogue=True", "mem_fused"),
                **{k: (f"fused_gemm=True ({name})", ("mem_gemm", k))
                   for k, (name, _, _) in GEMM_KINDS.items()},
                **{("sweep", tc, v): (", ".join([f"tile_cols={tc}"] + [
                    f"{a}={b}" for a, b in opts.items()]), None)
                   for tc in SWEEP_COLS for v, opts in SWEEP_VARIANTS.items()}}


def pass_target(m):
    """The target ratio of the pass to its floor: 1.25x at M >= 1536, 1.5x below."""
    return 1.25 if m >= 1536 else 1.5


def targets_table(rows):
    """Each shape against the targets: the fastest pass configuration and its ratio to the
    floor, its peak extra memory (<= 1 GiB), and the cupy pass against the cuda pass (<= 2x)."""
    lines = ["targets: the fastest pass configuration against the floor (<= 1.25x at M >= 1536,"
             " <= 1.5x below), its peak extra memory (<= 1 GiB), the cupy pass against the cuda"
             " pass (<= 2x)", "",
             "| N x V x M | fastest pass | ratio to floor | target | met | peak extra GiB | "
             "cupy / cuda | met |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        timed = {k: r[k] for k in PASS_CHOICES if k in r}
        if "floor" not in r or not timed:
            lines.append(f"| {r['shape']} | - | - | - | - | - | - | - |")
            continue
        best = min(timed, key=timed.get)
        name, mem_key = PASS_CHOICES[best]
        ratio, target = timed[best] / r["floor"], pass_target(int(r["shape"].split(" x ")[-1]))
        mem = f"{r[mem_key] / 2 ** 30:.2f}" if mem_key in r else "-"
        mem_ok = "" if mem_key not in r else (" (ok)" if r[mem_key] <= 2 ** 30 else " (over)")
        cupy = (f"{r['cupy'] / r['cuda']:.2f}", "yes" if r["cupy"] <= 2 * r["cuda"] else "no") \
            if "cupy" in r and "cuda" in r else ("-", "-")
        lines.append(f"| {r['shape']} | {name} | {ratio:.2f}x | {target}x | "
                     f"{'yes' if ratio <= target else 'no'} | {mem}{mem_ok} | {cupy[0]} | "
                     f"{cupy[1]} |")
    return "\n".join(lines)


def report(head, rows):
    extra = [t for t in (gemm_table(rows), sweep_table(rows)) if t]
    return "\n\n".join([head, targets_table(rows), table(rows)] + extra)


def emit(text, out=None, quiet=False):
    """Print a table (unless ``quiet``) and, when ``out`` is given, write it there."""
    if not quiet:
        print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
