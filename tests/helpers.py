"""Helpers shared by the tests: the tolerance table and its one comparison, random model pairs,
and the brute-force float64 oracle of the streaming pass; for the GPU tests, their problems and
checks, arrays the compiled CUDA entry points read without a GPU, and the guard of identirep's
own GEMM kernels. Tests import these from here, never from each other or from conftest.py
(which holds fixtures and decides every skip)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

import identirep as ir

#: relative tolerance against the float64 reference, by the dtype the fast path computed in.
#: float16 and bfloat16 have no fixed entry: their error must be at most twice that of a plain
#: computation in the same precision (``assert_close(..., plain=...)``).
TOLERANCES = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}
HALF_DTYPES = ("float16", "bfloat16")


def _dtype_name(dtype) -> str:
    return getattr(dtype, "__name__", None) or np.dtype(dtype).name


def assert_close(actual, expected, dtype=np.float64, *, rtol=None, atol=0.0, scale=0.0,
                 plain=None, what=""):
    """``actual`` is within the tolerance of ``dtype`` of the float64 ``expected``:
    ``|actual - expected| <= rtol * max(|expected|, scale) + atol`` elementwise, with rtol from
    TOLERANCES unless given (``scale`` is the size of the terms a result is a difference of).
    For float16/bfloat16, ``plain`` is the same quantity computed plainly in that precision, and
    the error may be at most twice the plain computation's (or ``atol``, a floor for when the
    plain computation happens to be exact). Equal infinities and NaN where ``expected`` is NaN
    count as equal."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    with np.errstate(invalid="ignore"):   # equal values, infinities and NaN where NaN is due
        same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
        err = np.where(same, 0.0, np.abs(actual - expected))
    name = _dtype_name(dtype)
    if name in HALF_DTYPES:
        if plain is None:
            raise TypeError(f"assert_close of {name} results needs `plain`, the same quantity "
                            "computed plainly in that precision")
        bound = np.maximum(2.0 * np.abs(np.asarray(plain, float) - expected), atol)
        rule = f"2 x the plain {name} error, at least {atol}"
    else:
        if rtol is None:
            rtol = TOLERANCES[np.dtype(dtype)]
        bound = rtol * np.maximum(np.abs(expected), scale) + atol
        rule = f"rtol {rtol}, atol {atol}, scale {scale}"
    if not np.all((err <= bound) | same):
        with np.errstate(divide="ignore", invalid="ignore"):
            worst = int(np.nanargmax(np.where(bound > 0, err / bound, np.inf).reshape(-1)))
        rel = err / np.maximum(np.abs(expected), 1e-300)
        raise AssertionError(
            f"{what}: max abs err {err.max():.3e}, max rel {rel.max():.3e} ({rule}); "
            f"worst at flat index {worst}: got {actual.reshape(-1)[worst]!r}, expected "
            f"{expected.reshape(-1)[worst]!r}")


def random_pair(N=301, V=53, M=5, M2=None, seed=0, bias=False, scale=2.0, noise=0.5):
    """Two related random models: b's embeddings are a's plus noise, g's are perturbed."""
    rng = np.random.default_rng(seed)
    M2 = M if M2 is None else M2
    f1 = rng.standard_normal((N, M))
    g1 = rng.standard_normal((V, M)) * scale / np.sqrt(M)
    P = rng.standard_normal((M, M2))
    f2 = f1 @ P + noise * rng.standard_normal((N, M2))
    g2 = rng.standard_normal((V, M2)) * noise * scale / np.sqrt(M2) + g1 @ np.linalg.pinv(P).T
    b1 = rng.standard_normal(V) if bias else None
    b2 = rng.standard_normal(V) if bias else None
    return ir.Model(f1, g1, bias=b1, name="a"), ir.Model(f2, g2, bias=b2, name="b")


# ------------------------------------------------------------------ the other tolerance tables
#: the streaming pass against its float64 oracle: a tighter float64 tolerance than the measures
PASS_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
#: two fast paths that compute the same thing the same way (the engine on device arrays against
#: the CPU engine), by compute dtype
AGREEMENT_RTOL = {np.float64: 1e-10, np.float32: 1e-5}
#: an emulated CUDA epilogue against the compiled CPU kernel on the same tiles: its LSE/KL sums
#: (in the tile dtype), its moments (float64 throughout), and the fused GEMM's float32 logits
#: from tensor-core sums against exact ones
KERNEL_SUMS_RTOL = {"f32": 1e-5, "f64": 1e-12}
KERNEL_MOMENTS_RTOL = 1e-12
KERNEL_GEMM_RTOL = 2e-5


# ------------------------------------------------------------------ the pass's oracle
PASS_QUANTITIES = ("L1", "L2", "kl12", "kl21", "H1", "H2")


def logits64(f, g) -> np.ndarray:
    return np.asarray(f, dtype=np.float64) @ np.asarray(g, dtype=np.float64).T


def pair_reference(l1: np.ndarray, l2: np.ndarray) -> dict:
    """Per-row L, KL both ways, entropies and top-1 agreement from full float64 logits."""
    L1 = logsumexp(l1, axis=1)
    L2 = logsumexp(l2, axis=1)
    lp1 = l1 - L1[:, None]
    lp2 = l2 - L2[:, None]
    p1 = np.exp(lp1)
    p2 = np.exp(lp2)
    return {
        "L1": L1,
        "L2": L2,
        "kl12": (p1 * (lp1 - lp2)).sum(axis=1),
        "kl21": (p2 * (lp2 - lp1)).sum(axis=1),
        "H1": -(p1 * lp1).sum(axis=1),
        "H2": -(p2 * lp2).sum(axis=1),
        "top1_agree": l1.argmax(axis=1) == l2.argmax(axis=1),
    }


def stream_reference(f1, g1, f2, g2) -> dict:
    return pair_reference(logits64(f1, g1), logits64(f2, g2))


def assert_pass_close(actual: dict, expected: dict, dtype, scale=1.0, check_top1=True) -> None:
    """Every quantity within PASS_RTOL[dtype] * max(|expected|, scale), row by row.

    ``scale`` (scalar or per row) is the size of the logits: KL and entropies are differences
    of terms of that size, so their absolute error grows with it.
    """
    for k in PASS_QUANTITIES:
        a, e = actual[k], expected[k]
        assert a.dtype == np.float64 and a.shape == e.shape, k
        assert_close(a, e, dtype, rtol=PASS_RTOL[np.dtype(dtype)], scale=scale, what=k)
    if check_top1:
        np.testing.assert_array_equal(actual["top1_agree"], expected["top1_agree"])


# ------------------------------------------------------------------ the package's imports
# Read from the sources with ast: what a module imports wherever in it, resolved to identirep
# modules (``from . import x`` is an import of the submodule x; ``from .m import name`` of m;
# the compiled core is identirep._core).
PACKAGE = Path(__file__).resolve().parents[1] / "python" / "identirep"
#: modules of the package that are not Python sources
COMPILED = {"identirep._core"}


def module_names():
    """{dotted name: source file} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("identirep",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name, path, modules):
    """The identirep modules that module ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    known = set(modules) | COMPILED

    def resolve(target):
        while target not in known and "." in target:   # an attribute of a module
            target = target.rsplit(".", 1)[0]
        return target

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "identirep"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "identirep":
                continue
            for a in node.names:   # a submodule imported by name, else a name of target
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else resolve(target))
    return out - {name}


def import_graph():
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle of the graph as a list of modules (its first one again at the end), or []."""
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state:
                cycle = visit(v)
                if cycle:
                    return cycle
        stack.pop()
        state[u] = "done"
        return []

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            if cycle:
                return cycle
    return []


def imported_by(graph: dict, module: str) -> set:
    """Every identirep module ``module`` imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


# ------------------------------------------------------------------ GPU arrays without a GPU
class FakeGpuArray:
    """An array the compiled CUDA entry points read through ``__cuda_array_interface__``, over
    a made-up device pointer: their checks that need no device (dtype, shape, strides,
    alignment, writable outputs) run on it; a launch would need real device memory."""

    def __init__(self, shape, dtype, ptr=1 << 20, strides=None, readonly=False):
        """``strides`` in elements (None: C-contiguous)."""
        dt = np.dtype(dtype)
        self.shape = tuple(shape)
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": dt.str, "data": (ptr, readonly), "version": 3,
            "strides": None if strides is None else tuple(s * dt.itemsize for s in strides)}

    @classmethod
    def like(cls, a, ptr=1 << 20, dtype=None):
        """The shape and strides of NumPy array ``a``, its dtype or ``dtype``."""
        return cls(a.shape, dtype or a.dtype, ptr, [s // a.itemsize for s in a.strides])


# ------------------------------------------------------------------ GPU passes
#: a pass that does not fit one tile of any kernel (vocabulary of GPT-2, odd sizes)
GPU_N, GPU_V, GPU_M1, GPU_M2 = 1001, 50257, 37, 31
ROW_FIELDS = ("L1", "L2", "kl12", "kl21", "H1", "H2", "row_mean1", "row_mean2")
ROW_SSQ = ("row_m2_11", "row_m2_22", "row_m2_dd")
COL_FIELDS = ("col_mean1", "col_mean2")
COL_SSQ = ("col_m2_11", "col_m2_22", "col_m2_12")
ALL_FIELDS = ROW_FIELDS + ROW_SSQ + COL_FIELDS + COL_SSQ


def make_pair(seed=0, n=GPU_N, v=GPU_V, m1=GPU_M1, m2=GPU_M2, g_scale=0.5):
    """Operands f1, g1, f2, g2 (float64) of a pass: model 2 close to model 1."""
    rng = np.random.default_rng(seed)
    f1 = rng.standard_normal((n, m1))
    g1 = rng.standard_normal((v, m1)) * g_scale
    f2 = f1[:, :m2] + 0.3 * rng.standard_normal((n, m2))
    g2 = g1[:, :m2] + 0.3 * g_scale * rng.standard_normal((v, m2))
    return f1, g1, f2, g2


def logit_scale(f1, g1, f2, g2, rows=256):
    """Per-row max |logit| of both models (the size of what L, KL and H are differences of)."""
    out = np.empty(f1.shape[0])
    for r0 in range(0, f1.shape[0], rows):
        sl = slice(r0, r0 + rows)
        out[sl] = np.maximum(np.abs(f1[sl] @ g1.T).max(1), np.abs(f2[sl] @ g2.T).max(1))
    return out


def field_scales(ref, scale):
    """The natural size of each field of a pass (``scale``: per-row max |logit|): row fields
    the row's scale, sums of squares over v labels v times its square, columns the largest."""
    s_row, s_col = scale, scale.max()
    n, v = len(ref.L1), len(ref.col_mean1)
    return {**{k: s_row for k in ROW_FIELDS}, **{k: v * s_row ** 2 for k in ROW_SSQ},
            **{k: s_col for k in COL_FIELDS}, **{k: n * s_col ** 2 for k in COL_SSQ}}


def field_errors(got, ref, scale):
    """Per field: max of |got - ref| / (|ref| + natural scale of the field)."""
    return {k: float(np.max(np.abs(getattr(got, k) - getattr(ref, k))
                            / (np.abs(getattr(ref, k)) + size)))
            for k, size in field_scales(ref, scale).items()}


def assert_stats_close(got, ref, rtol, scale, agree_slack=0):
    """Every field of pass ``got`` within ``rtol`` of ``ref`` relative to |ref| plus the
    field's natural scale (``assert_close`` with atol = rtol x that scale); top-1 agreement in
    all but ``agree_slack`` rows."""
    for k, size in field_scales(ref, scale).items():
        assert_close(getattr(got, k), getattr(ref, k), rtol=rtol, atol=rtol * size, what=k)
    assert np.count_nonzero(got.agree != ref.agree) <= agree_slack


def assert_rows_and_columns(got, f1, g1, f2, g2, rtol=1e-4):
    """A big pass checked on a few rows and columns, computed in float64 from the operands."""
    n, v = f1.shape[0], g1.shape[0]
    rows, cols = np.unique([0, 1, n // 2, n - 1]), np.unique([0, v // 2 + 7, v - 1])
    l1, l2 = f1[rows] @ g1.T, f2[rows] @ g2.T
    c1, c2 = f1 @ g1[cols].T, f2 @ g2[cols].T
    L1 = l1.max(1) + np.log(np.exp(l1 - l1.max(1, keepdims=True)).sum(1))
    L2 = l2.max(1) + np.log(np.exp(l2 - l2.max(1, keepdims=True)).sum(1))
    kl12 = (np.exp(l1 - L1[:, None]) * (l1 - l2)).sum(1) - L1 + L2
    cross = ((c1 - c1.mean(0)) * (c2 - c2.mean(0))).sum(0)
    s = max(np.abs(x).max() for x in (l1, l2, c1, c2))
    checks = {"L1": (got.L1[rows], L1, s), "L2": (got.L2[rows], L2, s),
              "kl12": (got.kl12[rows], kl12, s), "row_mean1": (got.row_mean1[rows], l1.mean(1), s),
              "row_m2_dd": (got.row_m2_dd[rows], (l1 - l2).var(1) * v, v * s ** 2),
              "col_mean2": (got.col_mean2[cols], c2.mean(0), s),
              "col_m2_12": (got.col_m2_12[cols], cross, n * s ** 2)}
    for k, (have, want, size) in checks.items():
        assert_close(have, want, rtol=rtol, atol=rtol * size, what=k)


def bf16_round(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    """float64 values of bfloat16 bit patterns."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def pivot_problem(xdtype, V, B=37, seed=31):
    """Inputs of the pivot kernel: cross products X1, X2 (B x V, xdtype), label vectors n1,
    n2, A1, A2, B12 and B pivots, with one degenerate pair (label 5, the first pivot)."""
    rng = np.random.default_rng(seed)
    n1, n2 = (rng.random(V) + 1.0 for _ in range(2))
    X1, X2 = ((0.3 * rng.standard_normal((B, V))).astype(xdtype) for _ in range(2))
    A1, A2 = rng.random(V), rng.random(V)
    B12 = 0.5 * np.sqrt(A1 * A2) * rng.standard_normal(V)
    piv = rng.choice(V, B, replace=False)
    X1[0, 5] = 0.5 * (n1[5] + n1[piv[0]])   # S1(5, piv[0]) ~ 0: a degenerate pair
    return X1, X2, n1, n2, A1, A2, B12, piv


def guard_own_gemm_kernels(node, monkeypatch):
    """Make the launchers of identirep's GEMM kernels (the pass driver with gemm, the timing
    probe) fail the test ``node`` unless it carries the markers of what it launches:
    benchmarks/device_check.sh runs those tests in processes of their own."""
    import pytest

    from identirep import _core
    if not hasattr(_core, "lse_kl_pass_cuda"):
        return
    marked = {m: node.get_closest_marker(m) is not None for m in ("fused_gemm", "wgmma")}

    def guard(fn):
        def call(*args, gemm=0, wgmma=False, **kwargs):
            for name, used in (("fused_gemm", gemm), ("wgmma", wgmma)):
                if used and not marked[name]:
                    pytest.fail(f"this test launches identirep's own GEMM kernel (gemm={gemm}, "
                                f"wgmma={wgmma}) without the marker {name!r}", pytrace=False)
            return fn(*args, gemm=gemm, wgmma=wgmma, **kwargs)
        return call
    monkeypatch.setattr(_core, "lse_kl_pass_cuda", guard(_core.lse_kl_pass_cuda))
    monkeypatch.setattr(_core, "lse_kl_gemm_mainloop_cuda", guard(_core.lse_kl_gemm_mainloop_cuda))


# ------------------------------------------------------------------ NVRTC without CuPy
class Nvrtc:
    """NVRTC through ctypes (the library NVIDIA's wheel nvidia-cuda-nvrtc, which nvidia-cublas
    brings, or the CUDA toolkit holds): the cupy backend's run-time compilation, checkable
    without CuPy or a GPU. ``Nvrtc()`` raises OSError when no libnvrtc loads."""

    def __init__(self):
        import ctypes
        import glob
        import importlib.util
        import os
        spec = importlib.util.find_spec("nvidia")
        dirs = [os.path.join(d, "*", "lib") for d in (spec.submodule_search_locations or [])
                ] if spec else []
        roots = [os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
        dirs += [os.path.join(r, sub) for r in roots if r for sub in ("lib64", "targets/*/lib")]
        tried = []
        for path in [p for d in dirs for p in sorted(glob.glob(os.path.join(d, "libnvrtc.so*")))
                     ] + ["libnvrtc.so"]:
            try:
                self.lib = ctypes.CDLL(path)
                break
            except OSError as e:
                tried.append(f"{path}: {e}")
        else:
            raise OSError("no libnvrtc loads: " + ("; ".join(tried) or "none found"))
        self.ct = ctypes

    def compile(self, source, name, expressions, options):
        """(the lowered names of ``expressions``, PTX) of ``source`` compiled with
        ``options``; AssertionError with NVRTC's log when it does not compile."""
        ct, lib = self.ct, self.lib
        prog = ct.c_void_p()
        assert lib.nvrtcCreateProgram(ct.byref(prog), source.encode(), name.encode(), 0, None,
                                      None) == 0
        try:
            for e in expressions:
                assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0, e
            opts = (ct.c_char_p * len(options))(*(o.encode() for o in options))
            if lib.nvrtcCompileProgram(prog, len(options), opts) != 0:
                size = ct.c_size_t()
                lib.nvrtcGetProgramLogSize(prog, ct.byref(size))
                log = ct.create_string_buffer(size.value)
                lib.nvrtcGetProgramLog(prog, log)
                raise AssertionError(f"{name} does not compile:\n{log.value.decode()[:4000]}")
            lowered = []
            for e in expressions:
                out = ct.c_char_p()
                assert lib.nvrtcGetLoweredName(prog, e.encode(), ct.byref(out)) == 0, e
                lowered.append(out.value.decode())
            size = ct.c_size_t()
            lib.nvrtcGetPTXSize(prog, ct.byref(size))
            ptx = ct.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, ptx)
            return lowered, ptx.value.decode()
        finally:
            lib.nvrtcDestroyProgram(ct.byref(prog))
