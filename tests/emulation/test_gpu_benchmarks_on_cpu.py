"""The GPU benchmarks end to end on the CPU, through the CuPy stand-in (the dev fixture: the GPU
passes, kernels and cublasGemmEx replaced by CPU versions, standins.py): the benchmarks' own
code (steps, measurement guards, phases, dense-algebra timer, pivot floors and tables) must run
before it meets a GPU."""
import importlib
import sys
from pathlib import Path

import pytest

from identirep.gpu import cublas, cuda_backend, cupy_backend
from standins import emulated_gemm_ex, host_lse_kl_update_cuda, host_pass as host_gpu_pass

pytestmark = pytest.mark.emulation

BENCH = str(Path(__file__).resolve().parents[2] / "benchmarks")


@pytest.mark.requires("ml_dtypes")   # bfloat16 models without torch: CuPy's ml_dtypes bfloat16
def test_every_step_runs_on_a_tiny_shape(dev, monkeypatch, tmp_path):
    monkeypatch.setattr(cublas, "gemm_ex", emulated_gemm_ex)
    monkeypatch.syspath_prepend(BENCH)
    for name in ("bench_gpu", "bench_gpu_compare"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    bgc = importlib.import_module("bench_gpu_compare")
    out = tmp_path / "compare.md"
    monkeypatch.setattr(sys, "argv", ["bench_gpu_compare.py", "--shape", "300,700,16",
                                      "--repeats", "1", "--exact", "--out", str(out)])
    monkeypatch.setattr(bgc, "import_torch", lambda: None)
    monkeypatch.setattr(bgc, "TARGET_SHAPE", (300, 700, 16))  # rows read against the targets
    bgc.main()
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| c")]
    assert not [r for r in rows if "stopped" in r[2]], rows
    for be in ("cuda", "cupy"):
        assert [r[2] for r in rows if r[0] == f"| {be}"] == [
            "compare, 256 sampled pivots", "phases of one sampled compare",
            "of which dense algebra (cupy.linalg)", "compare, default (bounded exact pivot "
            "search)", "compare, exact pivots (700)"] + (
            ["bounded exact pivot search (default)", "plain exact pivot search (700 pivots)"]
            if be == "cuda" else [])
    dense = next(r for r in rows if r[2].startswith("of which"))
    # 4 whitenings (whose g Cholesky factors the input side shares), their inverses, and the
    # 2 d_rep sets' inverses in one batched call
    assert ("4 x cholesky 16x16" in dense[5] and "4 x inv 16x16" in dense[5]
            and "1 x inv 2x16x16" in dense[5]), dense[5]
    targets = {r[2]: r[4] for r in rows if r[0] == "| cuda"}
    assert targets["compare, 256 sampled pivots"] in ("< 1 s: yes", "< 1 s: no")
    assert targets["plain exact pivot search (700 pivots)"].startswith(
        "<= 1.5x the bf16 GEMM floor: ")


def _pass_benchmark(monkeypatch, calls):
    """bench_gpu.py with every GPU pass, epilogue and kernel replaced by a host stand-in that
    accepts their arguments (``calls`` records them); the fused GEMM kinds gemm_fused and
    gemm_wg64 pass their checks (its tests carry the marker requires("ml_dtypes"))."""
    from identirep import _core

    def host_pass(backend):
        def run(f1, g1, f2, g2, **kw):
            calls.append((backend, kw.get("fused_gemm", False) and (
                kw["gemm_block_rows"], kw.get("gemm_wgmma", False))))
            return host_gpu_pass(backend, f1, g1, f2, g2)
        return run
    monkeypatch.setattr(cuda_backend, "cuda_pass", host_pass("cuda"))
    monkeypatch.setattr(cupy_backend, "cupy_pass", host_pass("cupy"))
    monkeypatch.setattr(_core, "lse_kl_update_cuda", host_lse_kl_update_cuda, raising=False)
    monkeypatch.setattr(cublas, "gemm_ex", emulated_gemm_ex)
    monkeypatch.setattr(_core, "lse_kl_gemm_mainloop_cuda",
                        lambda *ops, gemm, wgmma, stream: calls.append(("mainloop", (gemm, wgmma))),
                        raising=False)
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.delitem(sys.modules, "bench_gpu", raising=False)
    bg = importlib.import_module("bench_gpu")
    monkeypatch.setattr(bg, "import_torch", lambda: None)
    monkeypatch.setattr(bg.identirep, "build_info", lambda: {
        "cuda_compiled": True, "cuda_pass_driver": True, "version": "test"})
    monkeypatch.setattr(bg, "check_gemm_kernels", lambda: (
        ["gemm_fused", "gemm_wg64"], ["gemm_fused64: not timed: its check failed (exit 1)"]))
    return bg


@pytest.mark.requires("ml_dtypes")
def test_the_pass_benchmark_runs_on_a_tiny_shape(dev, monkeypatch, tmp_path):
    # its columns, measurement guards and tables
    calls = []
    bg = _pass_benchmark(monkeypatch, calls)
    out = tmp_path / "pass.md"
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--shape", "64,300,8", "--repeats", "1",
                                      "--warmup", "0", "--sweep", "--out", str(out)])
    bg.main()
    text = out.read_text()
    assert "64 x 300 x 8:" not in text, text   # no failure notes
    assert "fused GEMM kernel checks: gemm_fused64: not timed" in text
    lines = text.splitlines()
    main = next(i for i, line in enumerate(lines) if line.startswith("| N x V x M | floor ms"))
    row = lines[main + 2]
    cells = [c.strip() for c in row.split("|")[2:-1]]
    # floor, gemm tiles, epilogue (fused), cuda, serial, fused, gemm-fused, cupy: measured;
    # torch and liger: not run
    assert all(c != "-" and not c.startswith("- ") for c in cells[:6] + [cells[7]]), cells
    mma, wg = (half.split(" / ") for half in cells[6].split("; "))   # the checked kinds only
    assert mma[0] != "-" and mma[1] == "-" and wg[0] == "-" and wg[1] != "-", cells[6]
    assert cells[8:10] == ["-", "-"]
    # cuda passes: the default's (memory peak, then timed), serial, the fused epilogue's (2),
    # the sweep's (12) and 2 per fused GEMM kind that passed its check
    assert sum(1 for k, _ in calls if k == "cuda") == 2 + 1 + 2 + 12 + 2 * 2
    # the kinds that passed their checks, with their block rows and kernel, after the rest
    gemm = [c for c in calls if c[1] or c[0] == "mainloop"]
    assert gemm == [("cuda", (128, False))] * 2 + [("mainloop", (128, False))] + [
        ("cuda", (64, True))] * 2 + [("mainloop", (64, True))]
    assert calls[-6:] == gemm


@pytest.mark.requires("ml_dtypes")
def test_after_a_kernel_fault_later_kernels_are_not_timed(dev, monkeypatch, tmp_path):
    # a fault of the first fused GEMM kind leaves the context unusable: the second kind is not
    # timed (its columns would only repeat the fault), and the table says whose fault it was
    calls = []
    bg = _pass_benchmark(monkeypatch, calls)
    faults = iter(["CUDARuntimeError: cudaErrorIllegalAddress: an illegal memory access"])
    monkeypatch.setattr(bg, "context_problem", lambda: next(faults, ""))
    out = tmp_path / "pass.md"
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--shape", "64,300,8", "--repeats", "1",
                                      "--warmup", "0", "--out", str(out)])
    bg.main()
    text = out.read_text()
    assert ("the CUDA context was unusable after timing gemm_fused (CUDARuntimeError: "
            "cudaErrorIllegalAddress: an illegal memory access); not timed after it: "
            "gemm_wg64") in text
    assert [c for c in calls if c[1]] == [("cuda", (128, False))] * 2 + [("mainloop", (128, False))]
