"""benchmarks/bench_gpu_compare.py end to end on the CPU, through the CuPy stand-in of
test_device_paths_on_cpu (the GPU pass, the pivot kernel and cublasGemmEx replaced by their
CPU versions): the benchmark's own code (its steps, phases, dense-algebra timer, pivot floors
and table) must run before it meets a GPU."""
import importlib
import sys
from pathlib import Path

import pytest

from identirep import _cupy_pass as gp
from test_device_paths_on_cpu import dev, emulated_gemm_ex  # noqa: F401 (dev: a fixture)

BENCH = str(Path(__file__).resolve().parents[1] / "benchmarks")


def test_every_step_runs_on_a_tiny_shape(dev, monkeypatch, tmp_path):  # noqa: F811
    pytest.importorskip("ml_dtypes")  # bfloat16 models without torch: CuPy's ml_dtypes bfloat16
    monkeypatch.setattr(gp, "gemm_ex", emulated_gemm_ex)
    monkeypatch.syspath_prepend(BENCH)
    for name in ("bench_gpu", "bench_gpu_compare"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    bgc = importlib.import_module("bench_gpu_compare")
    out = tmp_path / "compare.md"
    monkeypatch.setattr(sys, "argv", ["bench_gpu_compare.py", "--shape", "300,700,16",
                                      "--repeats", "1", "--exact", "--out", str(out)])
    monkeypatch.setattr(bgc, "import_torch", lambda: None)
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
    assert "6 x cholesky 16x16" in dense[4] and "6 x inv 16x16" in dense[4]
