"""The CUDA kernels of csrc/kernels/lse_kl.cuh and pivot_terms.cuh without a GPU: compiled by g++
against a SIMT emulator (simt/simt.h: concurrent threads, barriers, warp shuffles, shared
memory undefined at block start), launched as identirep/gpu/cupy_backend.py launches their NVRTC
build (simt/run_kernels.cpp), and checked against the compiled CPU kernels.

IDENTIREP_SIMT_KERNELS=<dir> runs the same tests on the kernel headers of another folder (a
modified copy, to see that a broken kernel fails them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from identirep import _bf16 as bf16
from identirep import _core
from identirep.passes import finalize, init_state

from helpers import KERNEL_GEMM_RTOL, KERNEL_MOMENTS_RTOL, KERNEL_SUMS_RTOL

pytestmark = pytest.mark.emulation

SIMT = Path(__file__).resolve().parent / "simt"
DTYPES = {"f32": np.float32, "f64": np.float64}
# float32 tiles sum the LSE/KL terms in float32 (on the CPU too); everything else in float64
TIMEOUT = 120


def run(exe, *args, workers=None, env=None):
    env = {**os.environ, **(env or {})}
    if workers is not None:
        env["SIMT_WORKERS"] = str(workers)
    r = subprocess.run([str(exe), *map(str, args)], check=False, capture_output=True,
                       text=True, timeout=TIMEOUT, env=env)
    # a negative status is a signal: SIGSEGV when a kernel reads or writes past an array
    assert r.returncode == 0, f"run_kernels {args[0]}: status {r.returncode}; {r.stderr}"
    return r.stdout


# ------------------------------------------------------------------ the epilogue
def padded(l, pad):
    """l (n x v) inside an n x (v + pad) array whose padding is NaN (read by mistake: seen)."""
    out = np.full((l.shape[0], l.shape[1] + pad), np.nan, l.dtype)
    out[:, :l.shape[1]] = l
    return out


def emulated_pass(exe, tmp_path, inputs, n, v, *args, workers=None, env=None):
    """run_kernels with the input arrays (name: array) and a fresh pass state of n inputs and
    v labels in tmp_path; returns the state, args, row and column moments it wrote."""
    state, argmax = init_state(n)
    arrays = {"state": state, "args": argmax, "row_m": np.zeros((5, n)),
              "col_m": np.zeros((5, v))}
    for name, a in {**inputs, **arrays}.items():
        np.ascontiguousarray(a).tofile(tmp_path / name)
    run(exe, *args, tmp_path, workers=workers, env=env)
    return {k: np.fromfile(tmp_path / f"{k}.out", a.dtype).reshape(a.shape)
            for k, a in arrays.items()}


def device_pass(exe, tmp_path, l1, l2, v, tr, tc, fused, moments=True, repeat=1, workers=None):
    """The emulated pass of the cupy backend's tile loop (label tiles outer, row tiles inner)
    over the first v
    columns of l1, l2 (n x ld arrays): state, args, row and column moments."""
    n = l1.shape[0]
    row_work, col_work = (_core.lse_kl_cuda_fused_work_elems(tr, tc) if fused else
                          (0, _core.lse_kl_cuda_col_work_elems(tc)))
    return emulated_pass(exe, tmp_path, {"l1": l1, "l2": l2}, n, v, "epilogue",
                         "f32" if l1.dtype == np.float32 else "f64", int(fused), int(moments),
                         n, v, l1.shape[1], l2.shape[1], tr, tc, row_work, col_work, repeat,
                         workers=workers)


def cpu_pass(l1, l2, tr, tc, moments=True):
    """The same tiles through the compiled CPU kernel (one thread)."""
    n, v = l1.shape
    state, args = init_state(n)
    row_m, col_m = np.zeros((5, n)), np.zeros((5, v))
    for c0 in range(0, v, tc):
        for r0 in range(0, n, tr):
            r, c = slice(r0, r0 + tr), slice(c0, c0 + tc)
            _core.lse_kl_update(l1[r, c], l2[r, c], state[:, r], args[:, r], c0, threads=1,
                                row_moments=row_m[:, r] if moments else None,
                                col_moments=col_m if moments else None, row0=r0)
    return {"state": state, "args": args, "row_m": row_m, "col_m": col_m}


def rel_err(got, want, size):
    """|got - want| / (|want| + size); 0 where both are equal (infinities too) or both NaN."""
    with np.errstate(invalid="ignore"):
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        return np.where(same, 0.0, np.abs(got - want) / (np.abs(want) + size))


def assert_matches_cpu(got, want, l1, l2, dt, moments=True):
    """Exact running maxima and argmax; the sums within KERNEL_SUMS_RTOL[dt], the moments within KERNEL_MOMENTS_RTOL,
    of their natural scale (as helpers.field_errors): max |logit| of the row for the LSE
    state and row means, v or n times its square for sums of squares, the largest row's for
    the columns."""
    n, v = l1.shape
    finite = [np.where(np.isfinite(x), np.abs(x.astype(np.float64)), 0).max(1) for x in (l1, l2)]
    scale = np.maximum(*finite)
    np.testing.assert_array_equal(got["args"], want["args"], err_msg="argmax")
    gs, ws = got["state"], want["state"]
    np.testing.assert_array_equal(gs[[0, 4]], ws[[0, 4]], err_msg="running maxima")
    errs = {"s1": rel_err(gs[1], ws[1], 1.0), "s2": rel_err(gs[5], ws[5], 1.0)}
    for k, row in zip(("a12", "e1", "a21", "e2"), (2, 3, 6, 7)):
        s = ws[1 if row < 4 else 5]
        errs[k] = rel_err(gs[row], ws[row], (np.abs(s) + 1.0) * scale)
        errs[k][np.isnan(s)] = 0.0  # finalises to NaN whatever a and e hold
    bad = {k: float(np.max(e)) for k, e in errs.items() if not np.all(e <= KERNEL_SUMS_RTOL[dt])}
    if moments:
        bad.update(moment_errors(got, want, scale, KERNEL_MOMENTS_RTOL))
    assert not bad, f"relative errors above tolerance: {bad}"


def moment_errors(got, want, scale, rtol):
    """The row and column moments' relative errors above rtol, of their natural scale (row
    scale: max |logit| of each row)."""
    n, v = got["row_m"].shape[1], got["col_m"].shape[1]
    s_col = scale.max()
    sizes = {"row_m": [scale, scale, v * scale**2, v * scale**2, v * scale**2],
             "col_m": [s_col, s_col, n * s_col**2, n * s_col**2, n * s_col**2]}
    bad = {}
    for k, size in sizes.items():
        for f in range(5):
            e = rel_err(got[k][f], want[k][f], size[f])
            if not np.all(e <= rtol):
                bad[f"{k}[{f}]"] = float(np.max(e))
    return bad


def logit_pair(seed, n, v, dtype):
    rng = np.random.default_rng(seed)
    l1 = 3 * rng.standard_normal((n, v))
    return l1.astype(dtype), (l1 + rng.standard_normal((n, v))).astype(dtype)


def extreme_logits(dtype, n=37, v=700):
    """Rows of large, huge and tied logits, gaps, -inf entries, moving maxima."""
    l1, l2 = (x.astype(np.float64) for x in logit_pair(3, n, v, np.float64))
    rng = np.random.default_rng(4)
    l1[0], l2[0] = 1e4 * rng.standard_normal((2, v))
    l1[1], l2[1] = 1e30 * np.sign(rng.standard_normal((2, v)))
    l1[2] = 0.0
    l1[2, [5, 300, 301, 650]] = 7.0           # ties across label tiles: the first wins
    l2[2, [17, 18, 17 + 256]] = 50.0          # ties within a tile, a slab apart
    l2[3] = -1000.0 * (np.arange(v) % 3)      # gaps of 1000
    l1[4] = np.linspace(-50, 50, v)           # the max moves up tile after tile
    l2[5] = np.linspace(50, -50, v)
    l1[6, :300] = -np.inf                     # no finite logit in the first label tile
    l1[7, ::37] = -np.inf                     # scattered -inf: NaN sums (0 * -inf) on both sides
    l2[8, 100:200] = 1e4                      # a run of tied maxima
    return l1.astype(dtype), l2.astype(dtype)


def nan_logits(dtype, n=40, v=700):
    """test_gpu.py's NaN cases: one NaN label, a whole slab of them, and an all-NaN row."""
    l1, l2 = logit_pair(9, n, v, dtype)
    l1[:10, 500] = np.nan
    l1[10:20, 256:512] = np.nan
    l1[20] = np.nan
    return l1, l2


CASES = {
    # name: (logits, v, row padding of l1, l2, tile rows, tile cols)
    "one_logit": (lambda dt: logit_pair(0, 1, 1, dt), 1, (0, 0), 1, 1),
    "one_row_two_label_tiles": (lambda dt: logit_pair(1, 1, 301, dt), 301, (3, 0), 1, 200),
    "sanitize_case_tiles": (lambda dt: logit_pair(2, 37, 301, dt), 301, (5, 0), 20, 200),
    "slabs_and_row_chunks": (lambda dt: logit_pair(5, 300, 1100, dt), 1100, (0, 7), 271, 600),
    # several row chunks of the column kernel (a 130-row tile: 3) and a second row tile, for
    # the row and column kernels (the fused ones have slabs_and_row_chunks)
    "row_chunks": (lambda dt: logit_pair(6, 140, 300, dt), 300, (0, 5), 130, 300),
    "extreme_logits": (extreme_logits, 700, (3, 1), 20, 300),
    "nan_labels": (nan_logits, 700, (0, 0), 40, 700),
}


def _epilogue_params():
    """(case, dt, fused) of every case; the row and column kernels on the largest case are a
    long variant (marker slow): row_chunks runs them on several row chunks at a quarter of the
    cost."""
    out = []
    for case in CASES:
        for dt in ("f64", "f32"):
            for fused, kernels in ((False, "row_col_kernels"), (True, "fused")):
                if case == "row_chunks" and fused:
                    continue
                long = case == "slabs_and_row_chunks" and not fused
                out.append(pytest.param(case, dt, fused, id=f"{case}-{dt}-{kernels}",
                                        marks=[pytest.mark.slow] if long else []))
    return out


@pytest.mark.parametrize("case, dt, fused", _epilogue_params())
def test_epilogue_kernels_match_the_cpu_kernel(harness, tmp_path, case, dt, fused):
    make, v, (p1, p2), tr, tc = CASES[case]
    l1, l2 = make(DTYPES[dt])
    got = device_pass(harness, tmp_path, padded(l1, p1), padded(l2, p2), v, tr, tc, fused)
    assert_matches_cpu(got, cpu_pass(l1, l2, tr, tc), l1, l2, dt)


@pytest.mark.parametrize("fused", [False, True], ids=["row_kernel", "fused"])
def test_nan_labels_propagate_like_the_cpu_kernel(harness, tmp_path, fused):
    l1, l2 = nan_logits(np.float64)
    got = device_pass(harness, tmp_path, l1, l2, l1.shape[1], 40, 700, fused)
    s1 = got["state"][1]
    assert np.isnan(s1[:20]).all() and np.isfinite(s1[21:]).all()
    assert s1[20] == 0.0 and got["args"][0, 20] == -1  # an all-NaN row is left as it was


@pytest.mark.parametrize("fused", [False, True], ids=["row_kernel", "fused"])
def test_a_label_tile_of_minus_inf_gives_nan_like_the_cpu_kernel(harness, tmp_path, fused):
    l1, l2 = logit_pair(10, 4, 700, np.float64)
    l1[1, 300:] = -np.inf  # label tiles 2 and 3 of row 1: whole slabs of -inf
    got = device_pass(harness, tmp_path, l1, l2, 700, 4, 300, fused)
    assert_matches_cpu(got, cpu_pass(l1, l2, 4, 300), l1, l2, "f64")


@pytest.mark.parametrize("fused", [False, True], ids=["row_kernel", "fused"])
@pytest.mark.parametrize("dt", ["f64", "f32"])
def test_epilogue_without_moments_matches_the_cpu_kernel(harness, tmp_path, dt, fused):
    # null moment pointers, as the compiled launchers pass them
    l1, l2 = logit_pair(6, 37, 301, DTYPES[dt])
    got = device_pass(harness, tmp_path, l1, l2, 301, 20, 200, fused, moments=False)
    assert_matches_cpu(got, cpu_pass(l1, l2, 20, 200, moments=False), l1, l2, dt, moments=False)
    assert not got["row_m"].any() and not got["col_m"].any()


@pytest.mark.parametrize("fused", [False, True], ids=["row_col_kernels", "fused"])
def test_epilogue_is_deterministic_with_one_os_thread_per_cuda_thread(harness, tmp_path, fused):
    # every CUDA thread on its own OS thread; the pass run twice must agree bit for bit
    l1, l2 = logit_pair(7, 9, 300, np.float64)
    got = device_pass(harness, tmp_path, padded(l1, 2), l2, 300, 5, 200, fused, repeat=2,
                      workers=0)
    assert_matches_cpu(got, cpu_pass(l1, l2, 5, 200), l1, l2, "f64")


# ------------------------------------------------------------------ the pivot kernel
def pivot_inputs(seed, B, V, xdtype):
    """test_gpu.py's inputs, plus repeated labels (tied criteria) and a degenerate pair."""
    rng = np.random.default_rng(seed)
    n1, n2 = (rng.random(V) + 1.0 for _ in range(2))
    X1, X2 = (0.3 * rng.standard_normal((B, V)) for _ in range(2))
    A1, A2 = rng.random(V), rng.random(V)
    B12 = 0.5 * np.sqrt(A1 * A2) * rng.standard_normal(V)
    piv = rng.choice(V, B, replace=B > V)
    if V > 40:
        for a in (n1, n2, A1, A2, B12, X1.T, X2.T):
            a[30:33] = a[29]                      # labels 29..32 alike: tied values
        X1[0, 5] = 0.5 * (n1[5] + n1[piv[0]])     # S1(5, piv[0]) ~ 0: excluded
    return [X1.astype(xdtype), X2.astype(xdtype), n1, n2, A1, A2, B12], piv.astype(np.int64)


def device_pivots(exe, tmp_path, arrays, pivots, tol, mode):
    X1 = arrays[0]
    for name, a in zip(("X1", "X2", "n1", "n2", "A1", "A2", "B12"), arrays):
        np.ascontiguousarray(a).tofile(tmp_path / name)
    pivots.tofile(tmp_path / "pivots")
    run(exe, "pivot", "f32" if X1.dtype == np.float32 else "f64", mode, *X1.shape, tol, tmp_path)
    return np.fromfile(tmp_path / "crit.out")


@pytest.mark.parametrize("xdtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pivot_kernel_matches_the_cpu_kernel(harness, tmp_path, mode, xdtype):
    B, V = 37, 1000
    arrays, piv = pivot_inputs(31, B, V, xdtype)
    piv[[3, 4]] = 29, 31                           # pivots among the tied labels
    want = _core.pivot_criteria(*arrays, piv, 1e-5, mode)
    piv[[7, 9]] = V, -1                            # out of range: NaN, not a crash
    got = device_pivots(harness, tmp_path, arrays, piv, 1e-5, mode)
    assert np.isnan(got[[7, 9]]).all()
    ok = np.ones(B, bool)
    ok[[7, 9]] = False
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("V", [1, 2, 37])
def test_pivot_kernel_with_few_labels_matches_the_cpu_kernel(harness, tmp_path, mode, V):
    # V = 1: no valid label (+inf); V = 2: one; V < 32: most lanes hold nothing
    arrays, piv = pivot_inputs(32, 5, V, np.float64)
    want = _core.pivot_criteria(*arrays, piv, 1e-5, mode)
    got = device_pivots(harness, tmp_path, arrays, piv, 1e-5, mode)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


# ------------------------------------------------------------------ the cupy backend's launches
@pytest.mark.parametrize("what, opts", [
    ("pass", {"v": 70, "tile_rows": 16, "tile_cols": 40}),
    ("pass", {"kind": "float64", "fused": True, "v": 70, "tile_cols": 40}),
    ("pass", {"kind": "bfloat16", "tile_cols": 10, "overlap": False}),
    ("pass", {"kind": "bfloat16", "half_gemm": "convert", "fused": True, "tile_rows": 16}),
    ("pass", {"n": 130, "v": 300}),   # several blocks and chunks per launch
    pytest.param("pass", {"n": 600, "v": 300}, marks=pytest.mark.slow),   # more of them
    ("pass", {"n": 600, "v": 300, "fused": True}),
    ("pivots", {"xdtype": "float32", "mode": "max"}),
    ("pivots", {"xdtype": "float64", "mode": "mean"}),
    ("pivots", {"xdtype": "float32", "mode": "max", "strided": True}),
    # end to end; the float64 kernels of the float64 compare are launched by the cases above
    pytest.param("compare", {"dtype": "float64"}, marks=pytest.mark.slow),
    ("compare", {"dtype": "float32", "bias": False, "M2": 5})], ids=lambda x: str(x))
def test_cupy_backend_launch_code_runs_the_kernels_on_the_cpu(launch_library, what, opts):
    # the cupy backend's own Python launches (NvrtcEpilogue, pivot_criteria_device: grids,
    # argument order and types, scratch) through a RawModule whose kernels the emulator runs,
    # every argument checked against the kernel's parameter types, against the CPU kernels;
    # and compare() end to end on that backend against the CPU engine
    import json
    r = subprocess.run([sys.executable, str(SIMT / "cupy_backend_case.py"), str(launch_library),
                        what, json.dumps(opts)], check=False, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"status {r.returncode}: {r.stdout}{r.stderr[-3000:]}"


# ------------------------------------------------------------------ the emulator itself
@pytest.mark.parametrize("threads", [256, 32], ids=["block", "one_warp"])
def test_emulator_exposes_a_missing_syncthreads(harness, threads):
    # thread 0 sums what the others wrote to shared memory; without a barrier it reads values
    # not yet written (shared memory starts undefined): within one warp too, whose lanes do
    # not run in lockstep
    assert int(run(harness, "race", 0, 64, threads)) > 0
    assert int(run(harness, "race", 1, 64, threads)) == 0


def test_emulator_starts_every_block_with_undefined_shared_memory(harness):
    # each block writes zeros over its shared memory; the next must find 0xff bytes again
    assert int(run(harness, "fresh-shared")) == 8


@pytest.mark.parametrize("toy, error", [
    ("shfl-exit", "a lane of the shuffle mask did not take part"),
    ("sync-exit", "__syncthreads not reached by a thread that returned")])
def test_emulator_rejects_synchronisation_after_a_thread_returned(harness, toy, error):
    r = subprocess.run([str(harness), toy], check=False, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 3 and error in r.stderr


def test_emulator_wgmma_toy_needs_the_proxy_fence_and_uniform_descriptors(harness):
    assert int(run(harness, "wgmma-toy", 1, 0)) == 0
    for args, error in [((0, 0), "not followed by fence.proxy.async"),
                        ((1, 1), "operands differ across the warpgroup")]:
        r = subprocess.run([str(harness), "wgmma-toy", *map(str, args)], check=False,
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 3 and error in r.stderr, r.stderr


# ------------------------------------------------------------------ the fused GEMM kernel
def half_bits(x, kind):
    """(16-bit patterns, float64 values) of x rounded to bfloat16 (to nearest even) or float16."""
    if kind == "f16":
        h = x.astype(np.float16)
        return h.view(np.uint16), h.astype(np.float64)
    bits = bf16.from_f32(x.astype(np.float32))
    return bits, bf16.to_f32(bits).astype(np.float64)


def strided(bits, ld):
    """bits (r x k) inside an r x ld array whose padding is NaN (read by mistake: seen)."""
    out = np.full((bits.shape[0], ld), 0x7FC0, np.uint16)  # NaN as bfloat16 and as float16
    out[:, :bits.shape[1]] = bits
    return out


def gemm_operands(seed, n, v, k1, k2, kind, scale=1.0):
    """Half-precision f_k, g_k (bits and exact float64 values) of a model pair whose logits
    differ by a perturbation, and the exact float64 logits."""
    rng = np.random.default_rng(seed)
    f1, g1 = rng.standard_normal((n, k1)), rng.standard_normal((v, k1)) * scale / np.sqrt(k1)
    f2 = np.concatenate([f1, rng.standard_normal((n, k2 - k1))], 1) if k2 > k1 else f1[:, :k2]
    g2 = np.concatenate([g1, 0.3 * rng.standard_normal((v, k2 - k1)) * scale / np.sqrt(k2)],
                        1) if k2 > k1 else g1[:, :k2] * 1.1
    ops = [half_bits(x, kind) for x in (f1, g1, f2, g2)]
    return [b for b, _ in ops], ops[0][1] @ ops[1][1].T, ops[2][1] @ ops[3][1].T


def gemm_pass(exe, tmp_path, bits, n, v, ks, lds, kind, tr, tc, moments=True, repeat=1,
              workers=None, bm=128, env=None):
    """The emulated driver pass with the fused GEMM kernel (blocks of bm rows: 128 or 64 with
    mma.sync, "wg128" or "wg64" with wgmma)."""
    inputs = {name: strided(b, ld) for name, b, ld in zip(("f1", "g1", "f2", "g2"), bits, lds)}
    return emulated_pass(exe, tmp_path, inputs, n, v, "gemm", kind, bm, int(moments), n, v, *ks,
                         *lds, tr, tc, repeat, workers=workers, env=env)




def assert_matches_gemm(got, want, l1, l2):
    """The fused GEMM pass against the exact (float64 logits) CPU pass: the finalised per-input
    results and the moments within KERNEL_GEMM_RTOL of their natural scale (as assert_matches_cpu);
    the argmax equal wherever the top two logits are further apart than that."""
    n, v = l1.shape
    scale = np.maximum(np.abs(l1).max(1), np.abs(l2).max(1))
    g, w = finalize(got["state"], got["args"]), finalize(want["state"], want["args"])
    bad = {}
    for k in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        e = np.abs(g[k] - w[k]) / (scale + 1.0)
        if not np.all(e <= KERNEL_GEMM_RTOL):
            bad[k] = float(np.nanmax(e))
    for a, l in enumerate((l1, l2)):
        top2 = np.sort(l, 1)[:, -2:] if v > 1 else np.zeros((n, 2))
        clear = (top2[:, 1] - top2[:, 0]) > KERNEL_GEMM_RTOL * scale
        if not np.array_equal(got["args"][a][clear], want["args"][a][clear]):
            bad[f"args[{a}]"] = int(np.sum(got["args"][a] != want["args"][a]))
    bad.update(moment_errors(got, want, scale, KERNEL_GEMM_RTOL))
    assert not bad, f"relative errors above tolerance: {bad}"


GEMM_CASES = {
    # name: (n, v, k1, k2, row strides (f1, g1, f2, g2), tile rows, tile cols)
    "one_tile": (1, 1, 1, 1, (8, 8, 8, 8), 1, 1),
    "odd_sizes_k_tails": (131, 300, 45, 70, (48, 48, 72, 80), 131, 300),
    "row_and_label_tiles": (300, 270, 64, 40, (64, 64, 40, 48), 170, 140),
    "chunks_of_rows": (1100, 130, 96, 33, (96, 96, 40, 40), 1100, 130),
    "long_k": (70, 140, 300, 250, (304, 304, 256, 264), 70, 140),  # wgmma's stages wrap around
}


GEMM_KERNELS = [("bf16", 128), ("f16", 128), ("bf16", 64), ("bf16", "wg128"), ("f16", "wg128"),
                ("bf16", "wg64")]
#: the multi-tile cases with every kernel are slow under emulation (about 10 s): the default
#: run takes them with one mma and one wgmma kernel, and every kernel on the other cases
#: (tails, one tile, wgmma's wrapped stages); .ci/run's second step takes them all
GEMM_SLOW = {(c, k) for c in ("row_and_label_tiles", "chunks_of_rows") for k in GEMM_KERNELS
             if k not in (("bf16", 128), ("bf16", "wg128"))}


@pytest.mark.parametrize("case, kind, bm", [
    pytest.param(c, *k, marks=[pytest.mark.slow] if (c, k) in GEMM_SLOW else [])
    for k in GEMM_KERNELS for c in GEMM_CASES])
def test_fused_gemm_kernel_matches_the_cpu_kernel(harness, tmp_path, case, kind, bm):
    n, v, k1, k2, lds, tr, tc = GEMM_CASES[case]
    bits, l1, l2 = gemm_operands(11, n, v, k1, k2, kind, scale=4.0)
    got = gemm_pass(harness, tmp_path, bits, n, v, (k1, k2), lds, kind, tr, tc, bm=bm)
    want = cpu_pass(l1, l2, tr, tc)
    assert_matches_gemm(got, want, l1, l2)


@pytest.mark.parametrize("kind, bm", [("bf16", 128), ("f16", 64), ("bf16", "wg64"),
                                      ("f16", "wg128")])
def test_fused_gemm_kernel_with_large_logits_and_tied_labels(harness, tmp_path, kind, bm):
    # logits in the hundreds (most weights underflow) and three identical labels that hold
    # every row's maximum: the first of them wins, as on the CPU
    n, v, k = 150, 260, 24
    bits, l1, l2 = gemm_operands(12, n, v, k, k, kind, scale=60.0)
    rng = np.random.default_rng(13)
    f, g = (half_bits(x, kind) for x in (np.abs(rng.standard_normal((n, k))) + 1.0,
                                        rng.standard_normal((v, k))))
    gb, gv = g[0].copy(), g[1].copy()
    gb[[7, 130, 131]], gv[[7, 130, 131]] = half_bits(np.full((1, k), 8.0), kind)
    bits[0], bits[1] = f[0], gb
    l1 = f[1] @ gv.T
    got = gemm_pass(harness, tmp_path, bits, n, v, (k, k), (24, 24, 24, 24), kind, n, v, bm=bm)
    assert (got["args"][0] == 7).all()
    assert_matches_gemm(got, cpu_pass(l1, l2, n, v), l1, l2)


#: the 64-row tiles of a check that every tile shape passes elsewhere: the slow step only
SLOW_64 = [128, pytest.param(64, marks=pytest.mark.slow), "wg128",
           pytest.param("wg64", marks=pytest.mark.slow)]


@pytest.mark.parametrize("bm", SLOW_64)
def test_fused_gemm_kernel_without_moments_and_deterministic(harness, tmp_path, bm):
    # null moment pointers (no shift kernel, no column sums); every CUDA thread on its own OS
    # thread, the pass run twice bit for bit
    n, v, k1, k2 = 140, 150, 40, 16
    bits, l1, l2 = gemm_operands(14, n, v, k1, k2, "bf16")
    got = gemm_pass(harness, tmp_path, bits, n, v, (k1, k2), (40, 40, 16, 16), "bf16", 100, 150,
                    moments=False, repeat=2, workers=0, bm=bm)
    assert not got["row_m"].any() and not got["col_m"].any()
    want = cpu_pass(l1, l2, 100, 150, moments=False)
    g, w = finalize(got["state"], got["args"]), finalize(want["state"], want["args"])
    for key in ("L1", "L2", "kl12", "kl21", "H1", "H2"):
        np.testing.assert_allclose(g[key], w[key], rtol=0, atol=KERNEL_GEMM_RTOL * 10, err_msg=key)


@pytest.mark.parametrize("bm", ["wg128", "wg64"])
@pytest.mark.parametrize("wgmma, copies", [("lazy", "eager"), ("eager", "lazy")])
def test_wgmma_gemm_under_both_extreme_schedules(harness, tmp_path, bm, wgmma, copies):
    # every block with wgmma results as late as PTX allows and copies as early (a stage
    # overwritten while a wgmma may still read it shows), or the other way round (a wgmma
    # reading a stage before its copies are waited for shows); many k-tiles, so the stages wrap
    n, v, k1, k2, lds, tr, tc = GEMM_CASES["long_k"]
    bits, l1, l2 = gemm_operands(16, n, v, k1, k2, "bf16", scale=3.0)
    got = gemm_pass(harness, tmp_path, bits, n, v, (k1, k2), lds, "bf16", tr, tc, bm=bm,
                    env={"SIMT_WGMMA": wgmma, "SIMT_CP_ASYNC": copies})
    assert_matches_gemm(got, cpu_pass(l1, l2, tr, tc), l1, l2)


@pytest.mark.parametrize("bm", SLOW_64)
def test_gemm_mainloop_probe_writes_nothing(harness, tmp_path, bm):
    # the timing probe (mainloop_only, null shift and scratch) runs before each tile's kernel:
    # a write through a null pointer would fault, a write elsewhere would change the results
    n, v, k1, k2, lds, tr, tc = GEMM_CASES["long_k"]
    bits, l1, l2 = gemm_operands(17, n, v, k1, k2, "bf16")
    got = gemm_pass(harness, tmp_path, bits, n, v, (k1, k2), lds, "bf16", tr, tc, bm=bm,
                    env={"RUN_KERNELS_MAINLOOP_FIRST": "1"})
    assert_matches_gemm(got, cpu_pass(l1, l2, tr, tc), l1, l2)
    # ... and issues the kernel's tensor-core instructions, every one of them
    probe, kernel = np.fromfile(tmp_path / "mma_issued.out", np.float64)
    assert probe == kernel > 0


def test_wgmma_descriptor_bits_follow_the_ptx_table(harness):
    # start address >> 4 in bits 0-13, leading byte offset 16 (unused with a swizzle) >> 4 in
    # 16-29, stride byte offset 1024 >> 4 in 32-45, base offset 0, 128-byte swizzle (1) in 62-63
    assert run(harness, "matrix-desc", "0x400").strip() == "4000004000010040"
    assert run(harness, "matrix-desc", "0x37c20").strip() == "40000040000137c2"


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_shift_kernel_is_the_first_rows_logits(harness, tmp_path, kind):
    # the column shift of the fused GEMM: f_k[0] . g_k[j] in float32, from 16-bit patterns
    # (float16 subnormals, large values and signed zeros included)
    rng = np.random.default_rng(15)
    V, K1, K2 = 77, 45, 33
    raw = [rng.standard_normal(s) * 10.0 ** rng.integers(-6, 3, s) for s in
           ((1, K1), (V, K1), (1, K2), (V, K2))]
    raw[1][3, :4] = [6e-8, -3e-6, -0.0, 6e4]  # float16 subnormals, a signed zero, a large one
    ops = [half_bits(x, kind) for x in raw]
    for name, (bits, _) in zip(("f1", "g1", "f2", "g2"), ops):
        bits.tofile(tmp_path / name)
    run(harness, "shift", kind, V, K1, K2, tmp_path)
    got = np.fromfile(tmp_path / "shift.out", np.float32).reshape(2, V)
    for k, (f, g) in enumerate(((ops[0][1], ops[1][1]), (ops[2][1], ops[3][1]))):
        want = (g @ f[0]).astype(np.float32)
        np.testing.assert_allclose(got[k], want, rtol=1e-5,
                                   atol=1e-6 * np.abs(g).max() * np.abs(f).max())
