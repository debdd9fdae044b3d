"""The engine's CuPy branches without a GPU: models of "device" arrays from a strict NumPy-backed
stand-in for CuPy (fake_cupy.py), which fails where CuPy would (implicit device -> host
conversion, host arrays mixed into device work, device arrays handed to the compiled CPU core,
APIs CuPy lacks), must give the CPU engine's results through every measure. Only what needs a
GPU is replaced: the streaming pass (the compiled CPU pass of host copies of its device
operands) and the device pivot kernel (the compiled CPU kernel of host copies)."""
from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

import identirep as ir
from identirep import IdentirepError, _backends, _core, _input_side
from identirep import _label_side as E
from identirep import _bf16 as bf16
from identirep.gpu import cublas, cuda_backend, cupy_backend, nvrtc, pivots, streams
from identirep.gpu.arrays import DeviceArray
from identirep._cpu_pass import cpu_pass

import fake_cupy
from helpers import AGREEMENT_RTOL, assert_stats_close, logit_scale, make_pair, random_pair
from standins import (OPTS, HostEpilogue, assert_same_results, device_models,
                      emulated_gemm_ex, emulated_pass_driver, model_on, pass_operands)

pytestmark = pytest.mark.emulation

PIVOT_CRITERIA_DEVICE = pivots.pivot_criteria_device   # the dev fixture replaces it
PASSES = {"cupy": cupy_backend.cupy_pass, "cuda": cuda_backend.cuda_pass}  # and these


# ------------------------------------------------------------------ the stand-in itself
def test_fake_cupy_refuses_what_cupy_refuses(dev):
    cp = dev.cp
    d, h = cp.asarray(np.arange(6.0).reshape(2, 3)), np.ones(3)
    refused = {
        "np.asarray(device)": lambda: np.asarray(d),
        "device + host": lambda: d + h,
        "host + device": lambda: h + d,
        "host += device": lambda: h.__iadd__(d[0]),
        "host[device]": lambda: h[cp.asarray([0, 1])],
        "host[...] = device": lambda: h.__setitem__(Ellipsis, d[0]),
        "device[...] = host": lambda: d.__setitem__(0, h),
        "device + list": lambda: d + [1.0, 2.0, 3.0],
        "cupy function of a host array": lambda: cp.sqrt(h),
        "NumPy function mixing both": lambda: np.concatenate([d[0], h]),
        "NumPy function CuPy lacks": lambda: np.insert(d, 0, 1.0),
        "compiled CPU core": lambda: _core.pivot_criteria(d, d, *([d[0]] * 5), np.arange(2),
                                                          1e-5, "max"),
    }
    for what, fn in refused.items():
        try:
            fn()
        except TypeError:
            continue
        pytest.fail(f"{what} was accepted")
    # what CuPy accepts: device with device, scalars, 0-d host arrays, host index arrays,
    # explicit transfers; reductions stay on the device
    assert isinstance(d.sum(), cp.ndarray) and d.sum().shape == ()
    np.testing.assert_array_equal((d + d * 2.0 - np.float64(1) + np.array(1.0)).get(),
                                  3 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(d[np.array([1, 0])].get(), np.arange(6.0).reshape(2, 3)[::-1])
    np.testing.assert_array_equal(np.concatenate([d[0], d[1]]).get(), np.arange(6.0))
    assert float(np.float64(d.max())) == 5.0 and cp.asnumpy(d).sum() == 15.0


def test_fake_cupy_linalg_fails_loudly_only_under_errstate(dev):
    import cupyx
    bad = dev.cp.asarray(np.diag([1.0, -1.0, 1.0]))
    assert np.isfinite(dev.cp.linalg.cholesky(bad).get()).all()   # and wrong
    assert np.isnan(dev.cp.linalg.inv(bad * 0.0).get()).all()
    for fn, a in ((dev.cp.linalg.cholesky, bad), (dev.cp.linalg.inv, bad * 0.0)):
        with pytest.raises(np.linalg.LinAlgError), cupyx.errstate(linalg="raise"):
            fn(a)


@pytest.mark.requires("cupy", "cupyx")   # the real ones: importing them needs no GPU
def test_fake_cupy_offers_only_what_cupy_has():
    import cupy
    import cupyx
    F = fake_cupy
    for fake, real in ((F.cupy, cupy), (F.cupy.linalg, cupy.linalg), (F.cupy.cuda, cupy.cuda),
                       (F.cupy.cuda.runtime, cupy.cuda.runtime), (F.ndarray, cupy.ndarray),
                       (F.cupy.random, cupy.random), (F.RandomState, cupy.random.RandomState),
                       (F.MemoryPool, cupy.cuda.MemoryPool),
                       (F.Stream, cupy.cuda.Stream), (F.Event, cupy.cuda.Event),
                       (F.Device, cupy.cuda.Device),
                       (F.cupyx, cupyx)):
        missing = [n for n in vars(fake) if not n.startswith("_") and not hasattr(real, n)]
        assert not missing, f"{real.__name__} has no {missing}"


# ------------------------------------------------------------------ the Python tile loop
@pytest.mark.parametrize("kind, half_gemm", [("float64", "cublas"), ("float32", "cublas"),
                                             ("bfloat16", "cublas"), ("bfloat16", "convert"),
                                             ("float16", "cublas")])
@pytest.mark.parametrize("tiles", [{"tile_rows": 70, "tile_cols": 20}, {"tile_cols": 7},
                                   {}], ids=["row_and_label_tiles", "label_tiles", "one_tile"])
@pytest.mark.parametrize("overlap", [True, False])
def test_python_tile_loop_matches_the_cpu_pass(dev, monkeypatch, kind, half_gemm, tiles,
                                               overlap):
    # the cupy backend's tile loop itself: tiles, buffers, the second stream and its events,
    # widened or half GEMM tiles; the epilogue kernels replaced by the CPU kernel on host
    # copies, cublasGemmEx by its float32 emulation
    monkeypatch.setattr(cupy_backend, "NvrtcEpilogue", HostEpilogue)
    monkeypatch.setattr(cublas, "gemm_ex", emulated_gemm_ex)
    monkeypatch.setattr(HostEpilogue, "calls", [])
    host, ops = pass_operands(dev.cp, kind, 173, 61)
    if kind in ("float32", "float64"):  # a column-major label operand
        ops[1] = dev.cp.asfortranarray(ops[1])
    got = PASSES["cupy"](*ops, half_gemm=half_gemm, overlap=overlap, **tiles)
    assert got.backend == "cupy" and got.dtype == ("float64" if kind == "float64"
                                                   else "float32")
    n_tiles = (-(-173 // tiles.get("tile_rows", 173))) * (-(-61 // tiles.get("tile_cols", 61)))
    assert len(HostEpilogue.calls) == n_tiles
    exact = [x.astype(np.float64) for x in host]
    # float32 logits (exact products, float32 sums) against float64 ones
    assert_stats_close(got, cpu_pass(*exact), 1e-12 if kind == "float64" else 1e-5,
                       logit_scale(*exact))


@pytest.mark.usefixtures("needs_cuda_driver")
@pytest.mark.parametrize("kinds, half_gemm", [
    (("float64",) * 4, "cublas"), (("float32",) * 4, "cublas"), (("bfloat16",) * 4, "cublas"),
    (("float16",) * 4, "cublas"), (("bfloat16",) * 4, "convert"),
    (("float16", "float32", "float32", "float32"), "cublas"),   # a pair of two kinds
    (("float64", "float64", "float32", "float32"), "cublas")],  # a float64 pair, float32 pass
    ids=["float64", "float32", "bfloat16", "float16", "bfloat16 convert", "float16 with float32",
         "float64 with float32"])
@pytest.mark.parametrize("layout", ["C", "F", "gappy"])
def test_cuda_backend_converts_what_the_driver_does_not_take(monkeypatch, kinds, half_gemm,
                                                             layout):
    # the cuda backend's one launch path: whatever the operands, the compiled driver runs, on
    # operands it takes (its own checks pass: the stand-in calls them), converted on the device
    # where needed, never into an N x V array; the pass gives the CPU pass's statistics
    cp = fake_cupy.install(monkeypatch)
    calls = []
    driver = emulated_pass_driver(_core.lse_kl_pass_cuda)

    def recording(*args, **kw):
        calls.append(args[:4])
        return driver(*args, **kw)
    monkeypatch.setattr(_core, "lse_kl_pass_cuda", recording)
    monkeypatch.setattr(cublas, "load_cublas", lambda: "emulated")
    n, v = 173, 61
    f1, g1, f2, g2 = make_pair(11, n=n, v=v, m1=9, m2=6)
    host, ops = [], []
    for x, kind in zip((f1, g1, f2, g2), kinds):
        if kind == "bfloat16":
            bits = bf16.from_f32(x.astype(np.float32))
            host.append(bf16.to_f32(bits).astype(np.float64))
            dev = DeviceArray(cp.asarray(bits), kind)
        else:
            host.append(x.astype(kind).astype(np.float64))
            dev = cp.asarray(x.astype(kind))
        if layout != "C":   # the label operands column-major, or every other row and column
            data = dev.data if isinstance(dev, DeviceArray) else dev
            if layout == "F":
                data = cp.asfortranarray(data)
            else:
                big = cp.zeros((2 * data.shape[0], 2 * data.shape[1]), data.dtype)
                big[::2, ::2] = data
                data = big[::2, ::2]
            dev = DeviceArray(data, kind) if isinstance(dev, DeviceArray) else data
        ops.append(dev)
    got = cuda_backend.cuda_pass(*ops, half_gemm=half_gemm, tile_rows=70, tile_cols=20)
    f64 = all(k == "float64" for k in kinds)
    # pairs of one kind the driver takes stay as they are (bfloat16 as its bits); the others
    # are widened to float32: mixed pairs, a float64 pair in a float32 pass, "convert"
    taken = [k if kinds[2 * (i // 2)] == kinds[2 * (i // 2) + 1] and (k != "float64" or f64)
             and not (k in ("float16", "bfloat16") and half_gemm == "convert") else "float32"
             for i, k in enumerate(kinds)]
    want = [(s, "uint16" if k == "bfloat16" else k)
            for s, k in zip([(n, 9), (v, 9), (n, 6), (v, 6)], taken)]
    assert calls and all([(a.shape, a.dtype.name) for a in c] == want for c in calls)
    for i, op in enumerate(ops):   # what the driver takes, it takes as it is: no copy
        if layout != "gappy" and taken[i] == kinds[i]:
            assert calls[0][i] is (op.data if isinstance(op, DeviceArray) else op)
    assert (got.backend, got.dtype) == ("cuda", "float64" if f64 else "float32")
    assert_stats_close(got, cpu_pass(*host), 1e-12 if f64 else 1e-5, logit_scale(*host))


def test_a_cuda_build_without_the_pass_driver_has_no_cuda_backend(monkeypatch):
    # the cuda backend is the compiled driver only: without it (no cuBLAS headers at build
    # time) the backend is unavailable, saying why, and GPU arrays go to the cupy backend
    import identirep._build
    fake_cupy.install(monkeypatch)
    monkeypatch.delenv("IDENTIREP_BACKEND", raising=False)
    monkeypatch.setattr(identirep._build, "build_info", lambda: {"cuda_compiled": True,
                                                                 "cuda_pass_driver": False})
    monkeypatch.setattr(_core, "lse_kl_update_cuda", lambda *a, **k: None, raising=False)
    monkeypatch.delattr(_core, "lse_kl_pass_cuda", raising=False)
    assert "without the pass driver: the cuBLAS headers were missing" in _backends.cuda_problem()
    assert _backends.gpu_backend() == "cupy"
    a, b = random_pair(N=40, V=7, M=2)
    with pytest.raises(IdentirepError, match="backend='cuda' is not available: identirep was "
                                             "built with CUDA but without the pass driver"):
        ir.kl(*(model_on(fake_cupy.cupy, m) for m in (a, b)), backend="cuda")
    with pytest.raises(IdentirepError, match="the cuda backend is not available: identirep was "
                                             "built with CUDA but without the pass driver"):
        cuda_backend.cuda_pass(*[fake_cupy.cupy.zeros((4, 3))] * 4)


def test_engine_methods_run_on_the_stream_current_when_called(monkeypatch):
    # an engine's measures, called after engine() returned, run inside caller_stream of its
    # models (for torch CUDA tensors: torch's stream current at the call), as the public
    # functions do; here with the torch check and the stream switch recorded
    entered = []

    @contextlib.contextmanager
    def caller_stream(arrays):
        entered.append(len(arrays))
        yield
    monkeypatch.setattr(streams, "_torch_cuda_tensor", lambda arrays: arrays[0])
    monkeypatch.setattr(streams, "caller_stream", caller_stream)
    a, b = random_pair(N=120, V=40, M=4, bias=True, seed=3)
    e = ir.engine(a, b)
    assert entered == [6]   # f, g, bias of both models
    for call in (lambda: e.kl(), lambda: e.d_logit(), lambda: e.label_side(num_pivots=5),
                 lambda: e.input_side(num_samples=5), lambda: e.mcca_f(), lambda: e.mcca_g(),
                 lambda: e.d_rep(None, 2, 1), lambda: e.label_terms(0), lambda: e.swapped()):
        del entered[:]
        call()
        assert entered and entered[0] == 6


@pytest.mark.parametrize("kind", [
    "float64", pytest.param("ml_dtypes", marks=pytest.mark.requires("ml_dtypes")),
    pytest.param("torch", marks=pytest.mark.requires("ml_dtypes", "torch"))])
def test_host_models_with_a_gpu_backend_run_on_the_device(dev, monkeypatch, kind):
    # backend="cupy" (or "cuda") with host models (NumPy, bfloat16 NumPy with a float32 bias,
    # torch CPU bfloat16 tensors): each model goes to the device once and every product runs
    # there, with the CPU engine's results
    monkeypatch.setattr(cublas, "gemm_ex", emulated_gemm_ex)
    a, b = random_pair(N=301, V=53, M=5, M2=4, bias=True, seed=21)
    bf = None
    if kind != "float64":
        import ml_dtypes
        bf = np.dtype(ml_dtypes.bfloat16)
    if kind == "ml_dtypes":
        a, b = (ir.Model(m.f.astype(bf), m.g.astype(bf), m.bias.astype(np.float32), name=m.name)
                for m in (a, b))
    elif kind == "torch":
        import torch
        a, b = (ir.Model(*(torch.from_numpy(x).to(torch.bfloat16) for x in (m.f, m.g, m.bias)),
                         name=m.name) for m in (a, b))
    e = ir.engine(a, b, backend="cupy")
    for x in (e.a.f, e.a.g, e.a.bias, e.b.f, e.b.g, e.c1.F, e.c1.G, e.c2.F, e.c2.G):
        assert isinstance(x, fake_cupy.ndarray)
    if bf is not None:
        assert e.a.f.dtype == bf and e.c1.f_bits is not None
    tol = np.float64 if kind == "float64" else np.float32
    got = ir.compare(a, b, backend="cupy", **OPTS)
    want = ir.compare(a, b, backend="cpu", **OPTS)
    assert got.backend == "cupy"
    assert_same_results(got, want, tol)
    m = ir.matrix([a, b], backend="cupy", **OPTS)
    np.testing.assert_allclose(m.values["d_llv"][0, 1], want.d_llv.value, rtol=AGREEMENT_RTOL[tol])


# ------------------------------------------------------------------ the engine
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M2", [5, 4])
def test_compare_on_device_matches_cpu(dev, dtype, bias, M2):
    (ga, gb), (a, b) = device_models(dev.cp, dtype, N=301, V=53, M=5, M2=M2, bias=bias, seed=7)
    got = ir.compare(ga, gb, **OPTS)
    want = ir.compare(a, b, **OPTS)
    assert (got.backend, want.backend) == ("cupy", "cpu")
    assert dev.pivot_calls and set(dev.pivot_calls) == {"cupy"}
    assert_same_results(got, want, dtype)


def test_cuda_backend_takes_the_same_device_paths(dev, monkeypatch):
    dev.backend = "cuda"
    monkeypatch.setattr(_backends, "cuda_problem", lambda: None)   # no cuBLAS needed
    (ga, gb), (a, b) = device_models(dev.cp, N=301, V=53, M=5, bias=True, seed=8)
    got = ir.compare(ga, gb, **OPTS)
    assert got.backend == "cuda" and set(dev.pivot_calls) == {"cuda"}
    assert_same_results(got, ir.compare(a, b, **OPTS))


@pytest.mark.parametrize("kinds", [((np.float16,) * 2,) * 2,
                                   ((np.float64, np.float64), (np.float32, np.float32)),
                                   ((np.float32, np.float64),) * 2],
                         ids=["float16", "float64 with float32", "float32 with a float64 bias"])
def test_half_and_mixed_precision_on_device_match_cpu(dev, kinds):
    """``kinds``: per model, the dtype of f and g and that of the bias."""
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=12)
    got = ir.compare(*(model_on(dev.cp, m, *k) for m, k in zip((a, b), kinds)), **OPTS)
    want = ir.compare(*(model_on(np, m, *k) for m, k in zip((a, b), kinds)), **OPTS)
    assert_same_results(got, want, np.float32)


@pytest.mark.parametrize("kw", [{}, {"num_pivots": 20}], ids=["exact", "sampled"])
def test_bfloat16_models_on_device_use_bfloat16_products(dev, monkeypatch, kw, ml_dtypes):
    # bfloat16 f and g on the device enter their scatter matrices as they are (one bfloat16
    # GEMM per block pair) and the pivot cross products through three bfloat16 GEMMs of an
    # exact split (here cublasGemmEx emulated: float32 products of the exact values)
    calls = []

    def gemm_ex(cp, a, b, out, kind, beta=0.0):
        calls.append((kind, beta))
        assert a.dtype == b.dtype == np.uint16 and out.dtype == np.float32
        prod = bf16.to_f32(a) @ bf16.to_f32(b).T
        out[...] = prod if beta == 0.0 else prod + np.float32(beta) * out
    monkeypatch.setattr(cublas, "gemm_ex", gemm_ex)
    bf = np.dtype(ml_dtypes.bfloat16)
    a, b = random_pair(N=301, V=53, M=5, M2=4, bias=True, seed=13)
    got = ir.d_llv(*(model_on(dev.cp, m, bf, np.float32) for m in (a, b)), **kw)
    assert calls and {k for k, _ in calls} == {"bfloat16"}
    # per call: 0 a new product, 1 a part added to one; a split product is "011"
    betas = "".join("1" if beta else "0" for _, beta in calls)
    splits = betas.count("011")
    assert splits >= 2 and betas.count("1") == 2 * splits
    assert betas.count("0") - splits >= 5   # f1, f2, f1'f2, g1, g2 scatter blocks
    # float32 on the host (one float32 GEMM per product) and float64, of the same values
    plain = ir.d_llv(*(model_on(np, m, bf, np.float32) for m in (a, b)), **kw)
    exact = ir.d_llv(*(model_on(np, model_on(np, m, bf, np.float32), np.float64)
                       for m in (a, b)), **kw)
    assert (got.pivot, got.leave_out, got.input_set) == (exact.pivot, exact.leave_out,
                                                        exact.input_set)
    for k in ("value", "t1", "t2", "t3", "t4"):
        g, p, e = (getattr(r, k) for r in (got, plain, exact))
        assert abs(g - e) <= 2 * abs(p - e) + 1e-6 * abs(e), (k, g, p, e)


@pytest.mark.parametrize("term", ["max", "mean"])
@pytest.mark.parametrize("kw", [{}, {"num_pivots": 20}, {"pivot": 3, "leave_out": 7},
                                {"sets_per_pivot": 3, "combine": "sum"}],
                         ids=["exact", "sampled", "given", "sets per pivot"])
def test_d_llv_on_device_matches_cpu(dev, term, kw):
    (ga, gb), (a, b) = device_models(dev.cp, N=301, V=53, M=5, M2=4, bias=True, seed=9)
    got = ir.d_llv(ga, gb, term=term, num_samples=30, **kw)
    want = ir.d_llv(a, b, term=term, num_samples=30, **kw)
    assert_same_results(got, want)


@pytest.mark.usefixtures("bounded_small")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [{"term": "max"}, {"term": "max", "pivot_budget": 12},
                                {"term": "mean"}], ids=["bounded", "budget", "sampled"])
def test_pivot_search_beyond_the_exact_limit_on_device_matches_cpu(dev, dtype, kw):
    # M below HARD_BOUNDS_MIN_M: the host, like a device, takes the tree's bounds at once
    (ga, gb), (a, b) = device_models(dev.cp, dtype, N=400, V=700, M=6, seed=3, noise=0.1, bias=True)
    assert 6 < E.HARD_BOUNDS_MIN_M
    got = ir.d_llv(ga, gb, num_samples=20, **kw)
    want = ir.d_llv(a, b, num_samples=20, **kw)
    assert ("bounded search" in want.pivot_search or "not proven exact" in want.pivot_search
            if kw["term"] == "max" else "sampled" in want.pivot_search)
    assert_same_results(got, want, dtype)


def test_each_measure_on_device_matches_cpu(dev):
    (ga, gb), (a, b) = device_models(dev.cp, N=301, V=53, M=5, bias=True, seed=10)
    for fn in (ir.d_svd, ir.d_rep, ir.d_logit, ir.kl):
        assert_same_results(fn(ga, gb), fn(a, b))
    assert_same_results(ir.mcca(ga.f, gb.f), ir.mcca(a.f, b.f))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrix_of_device_models_matches_cpu(dev, dtype):
    from identirep import constructions as C
    base = C.random_model(N=150, V=21, M=3, seed=0, bias=True, name="base")
    models = [base, C.perturbed_copy(base, 0.3, seed=1), C.linear_transform(base, seed=2)]
    got = ir.matrix([model_on(dev.cp, m, dtype) for m in models], **OPTS)
    want = ir.matrix([model_on(np, m, dtype) for m in models], **OPTS)
    assert got.pairs == want.pairs
    for k in want.values:
        # d_SVD is 1 minus a mean of correlations: its rounding is relative to 1, and the host
        # takes small-M label sets in one batched call, the device one by one
        atol = AGREEMENT_RTOL[dtype] if k == "max_d_svd" else 1e-12
        np.testing.assert_allclose(got.values[k], want.values[k], rtol=AGREEMENT_RTOL[dtype],
                                   atol=atol, err_msg=k)


def test_rank_deficient_and_repeated_data_on_device_match_cpu(dev):
    # collinear f columns (whitening by eigenvectors), repeated inputs (the distinct-input
    # pool), repeated labels (degenerate pairs, singular d_rep sets)
    a, b = random_pair(N=301, V=53, M=5, bias=True, seed=13)
    for m in (a, b):
        m.f[[20, 40]] = m.f[10]
        m.g[6:12] = m.g[5]
    a.f[:, 4] = a.f[:, 0] - 2 * a.f[:, 1]
    got = ir.compare(*(model_on(dev.cp, m) for m in (a, b)), **OPTS)
    want = ir.compare(a, b, **OPTS)
    assert "from 299 distinct inputs" in want.d_llv.input_search
    assert want.d_rep.singular_sets > 0
    assert_same_results(got, want)


def test_rank_deficient_label_covariance_on_device_matches_cpu(dev):
    # collinear g columns: the input-side factor and the g whitening by eigenvectors
    (ga, gb), (a, b) = device_models(dev.cp, N=301, V=53, M=5, seed=14)
    for m in (a, ga):
        m.g[:, 3] = m.g[:, 0] + m.g[:, 1]
    e, want = ir.engine(ga, gb), ir.engine(a, b)
    assert_same_results(e.d_llv(num_samples=30), want.d_llv(num_samples=30))
    assert_same_results(e.mcca_g(), want.mcca_g())


def test_float32_mcca_of_wide_models_on_device_matches_cpu(dev):
    # M >= 64 in float32: singular values from the eigenvalues of T'T
    (ga, gb), (a, b) = device_models(dev.cp, np.float32, N=400, V=90, M=64, seed=15)
    e, want = ir.engine(ga, gb), ir.engine(a, b)
    assert_same_results(e.mcca_f(), want.mcca_f(), np.float32)
    assert_same_results(e.mcca_g(), want.mcca_g(), np.float32)


def test_engine_keeps_device_models_on_the_device(dev):
    (ga, gb), (a, b) = device_models(dev.cp, N=301, V=97, M=6, seed=11)
    e, want = ir.engine(ga, gb), ir.engine(a, b)
    assert e.c1.xp is dev.cp and isinstance(e.G1, dev.cp.ndarray)
    assert isinstance(e.c2.input_factor[0], dev.cp.ndarray)
    assert isinstance(e.c1.whitening("g", "g1"), dev.cp.ndarray)
    rng = np.random.default_rng(2)
    piv = np.sort(rng.choice(97, 30, replace=False))
    lab = np.union1d(rng.choice(97, 40, replace=False), piv[:5])
    np.testing.assert_allclose(e.labels.row_bounds(piv, lab), want.labels.row_bounds(piv, lab),
                               rtol=1e-10, atol=1e-12)
    for k, v in want.label_terms(4).items():
        np.testing.assert_allclose(e.label_terms(4)[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_distinct_inputs_on_device_match_host(dev, dtype):
    rng = np.random.default_rng(5)
    f1, f2 = rng.standard_normal((5000, 7)).astype(dtype), rng.standard_normal((5000, 3))
    f1[[10, 4500, 4999]] = f1[3]
    f2[[10, 4500]] = f2[3]   # inputs 10 and 4500 repeat input 3; 4999 differs in f2
    want = _input_side.distinct_inputs(f1, f2)
    assert len(want) == 4998
    got = _input_side.distinct_inputs(dev.cp.asarray(f1), dev.cp.asarray(f2))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("xdtypes", [(np.float64,) * 2, (np.float32,) * 2,
                                     (np.float32, np.float64)])
def test_device_pivot_criteria_launch(dev, monkeypatch, mode, xdtypes):
    """pivot_criteria_device's conversions and launch arguments; its NVRTC kernel stands in as
    the compiled CPU kernel of host copies of what the launch hands it."""
    cp, launched = dev.cp, []

    def kernel(grid, block, args):
        X1, ld1, X2, ld2, *vecs, piv, V, tol, imode, crit = args
        for x in (X1, X2, *vecs, piv, crit):
            assert isinstance(x, cp.ndarray) and x.flags.c_contiguous
        assert ld1 == ld2 == V == X1.shape[1] and grid == (len(piv),)
        crit[...] = cp.asarray(_core.pivot_criteria(
            X1.get(), X2.get(), *(v.get() for v in vecs), piv.get(), float(tol),
            ("max", "mean")[int(imode)]))

    def get_function(name):
        launched.append(name)
        return kernel
    monkeypatch.setattr(nvrtc, "pivot_module", lambda _: types.SimpleNamespace(
        get_function=get_function))
    rng = np.random.default_rng(31)
    B, V = 37, 503
    n1, n2 = (rng.random(V) + 1.0 for _ in range(2))
    X1, X2 = ((0.3 * rng.standard_normal((B, V))).astype(dt) for dt in xdtypes)
    A1, A2 = rng.random(V), rng.random(V)
    B12 = 0.5 * np.sqrt(A1 * A2) * rng.standard_normal(V)
    piv = rng.choice(V, B, replace=False)
    X1[0, 5] = 0.5 * (n1[5] + n1[piv[0]])   # a degenerate pair
    xdt = np.result_type(*xdtypes)
    want = _core.pivot_criteria(X1.astype(xdt), X2.astype(xdt), n1, n2, A1, A2, B12, piv, 1e-5,
                                mode)
    dX1 = cp.asfortranarray(cp.asarray(X1))   # converted to C order for the kernel
    got = PIVOT_CRITERIA_DEVICE(dX1, *(cp.asarray(x) for x in (X2, n1, n2, A1, A2, B12)), piv,
                                1e-5, mode, "cupy")
    assert launched == [nvrtc.PIVOT_KERNELS["float" if xdt == np.float32 else "double"]]
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_save_model_of_device_arrays(dev, tmp_path):
    a, _ = random_pair(N=31, V=7, M=3, bias=True, seed=16)
    back = ir.load_model(ir.save_model(model_on(dev.cp, a), tmp_path / "a.npz"))
    for x, y in zip((back.f, back.g, back.bias), (a.f, a.g, a.bias)):
        np.testing.assert_array_equal(x, y)
