"""Benchmark of ``identirep.dask.matrix`` on a LocalCluster against ``identirep.matrix`` in
one process, on the same K model files (float32, random, N inputs, V labels, M dimensions).

For each (K, N) prints:
  one process   load_models + identirep.matrix in a fresh process (spawned, so that its peak
                RSS is its own): seconds and peak RSS (VmHWM);
  dask          identirep.dask.matrix(paths) on a LocalCluster of --workers processes of one
                thread each, restarted and warmed (identirep imported) before each run (not
                timed): seconds, the ratio to the one-process run of the same round, and
                the peak RSS of each worker process (VmHWM), with an idle worker's in
                parentheses.
Times are medians over --repeats interleaved rounds (each round runs both once); the ratio is
the median over rounds of dask / one process. The results are checked equal.

    python benchmarks/bench_dask.py                       # K = 4, 8; N = 2048, 8192
    python benchmarks/bench_dask.py --k 8 --n 4096 --v 8000 --m 64 --repeats 5
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import statistics
import tempfile
import time

import numpy as np

import identirep as ir
import identirep.dask as idk
from identirep.bench import machine

OPTS = dict(num_samples=50, seed=0)


def write_models(directory, K, N, V, M, seed=0):
    """K float32 models: a shared base plus noise of growing size, each in its own file."""
    r = np.random.default_rng(seed)
    f = r.standard_normal((N, M), dtype=np.float32)
    g = r.standard_normal((V, M), dtype=np.float32) / np.sqrt(M)
    paths = []
    for k in range(K):
        fk = f + 0.1 * k * r.standard_normal((N, M), dtype=np.float32)
        gk = g + 0.1 * k * r.standard_normal((V, M), dtype=np.float32) / np.sqrt(M)
        b = r.standard_normal(V).astype(np.float32)
        paths.append(str(ir.save_model(ir.Model(fk, gk, b, name=f"m{k}"),
                                       os.path.join(directory, f"m{k}.safetensors"))))
    return paths


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: since its exec, unlike getrusage's maxrss,
    which a spawned process inherits from its parent)."""
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kib / 1024


def _one_process(paths, out):
    t0 = time.perf_counter()
    res = ir.matrix(ir.io.load_models(paths), **OPTS)
    out.put((time.perf_counter() - t0, _peak_rss_mib(),
             {k: v.tolist() for k, v in res.values.items()}))


def one_process(paths):
    """(seconds, peak RSS in MiB, values) of load_models + matrix in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one_process, args=(paths, q))
    p.start()
    while True:
        try:
            seconds, rss, values = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise SystemExit(f"the one-process run died (exit code {p.exitcode})")
    p.join()
    return seconds, rss, values


def _warm() -> None:
    """Import on a worker what a matrix runs (the one-process run imports before its timer)."""
    import identirep._matrix  # noqa: F401
    import identirep._model_cache  # noqa: F401
    import identirep.dask  # noqa: F401
    import identirep.io  # noqa: F401
    import identirep.measures  # noqa: F401


def on_dask(client, paths):
    """(seconds, worker peak RSS in MiB, idle worker RSS in MiB, values): restarted workers,
    warmed (identirep imported) before the timer starts."""
    client.restart()
    client.run(_warm)
    idle = max(client.run(_peak_rss_mib).values())
    t0 = time.perf_counter()
    res = idk.matrix(paths, client, **OPTS)
    seconds = time.perf_counter() - t0
    peaks = sorted(client.run(_peak_rss_mib).values())
    return seconds, peaks, idle, {k: v.tolist() for k, v in res.values.items()}


def _commit() -> str:
    """The checkout's commit (with "+changes" when its files differ), or "unknown"."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", nargs="+", type=int, default=[4, 8])
    p.add_argument("--n", nargs="+", type=int, default=[2048, 8192])
    p.add_argument("--v", type=int, default=4000)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import distributed

    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at the start; "
          f"code {_commit()}")
    print(f"# V={a.v} M={a.m} float32, compare options {OPTS}, {a.workers} workers x 1 "
          f"thread; medians of {a.repeats} interleaved rounds")
    print("\n| K | pairs | N | one process | dask | dask / one process | one process peak RSS "
          "| worker peak RSS (idle) |")
    print("|---|---|---|---|---|---|---|---|")
    with distributed.LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cl, \
            distributed.Client(cl) as client, tempfile.TemporaryDirectory() as tmp:
        for N in a.n:
            for K in a.k:
                paths = write_models(tmp, K, N, a.v, a.m)
                single, dask, ratios, rss, peaks, idle = [], [], [], [], [], 0.0
                for _ in range(a.repeats):
                    s, r1, want = one_process(paths)
                    d, pk, idle, got = on_dask(client, paths)
                    if any(not np.array_equal(got[k], want[k], equal_nan=True) for k in want):
                        raise SystemExit(f"K={K} N={N}: the results differ")
                    single.append(s)
                    dask.append(d)
                    ratios.append(d / s)
                    rss.append(r1)
                    peaks.append(pk)
                worst = max(peaks, key=max)
                print(f"| {K} | {K * (K - 1) // 2} | {N} | {statistics.median(single):.2f} s "
                      f"| {statistics.median(dask):.2f} s | {statistics.median(ratios):.2f}x "
                      f"| {max(rss):.0f} MiB | {', '.join(f'{x:.0f}' for x in worst)} MiB "
                      f"({idle:.0f}) |", flush=True)


if __name__ == "__main__":
    main()
