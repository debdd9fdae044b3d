"""The GPU benchmarks' table code runs after minutes of device time: it must not fail on any
mix of measured, missing and failed entries (checked here without a GPU)."""
import importlib
import sys
import types
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[1] / "benchmarks")


def _bench_gpu(monkeypatch):
    """benchmarks/bench_gpu.py; its table code needs no CuPy, so a stand-in does where CuPy is
    not installed."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.syspath_prepend(BENCH)
    monkeypatch.delitem(sys.modules, "bench_gpu", raising=False)
    return importlib.import_module("bench_gpu")


def test_tables_with_full_partial_and_failed_rows(monkeypatch, tmp_path):
    bench_gpu = _bench_gpu(monkeypatch)
    full = {"shape": "1 x 2 x 3", "flop": 1e12, "floor": 2.0, "floor_by": "cupy", "gemm": 2.1,
            "epilogue": 1.0, "epilogue_fused": 0.5, "cuda": 2.5, "serial": 3.0, "fused": 2.2,
            "gemm_fused": 2.05, "gemm_fused64": 2.4, "gemm_wg": 1.9, "mem_gemm": 2 ** 28,
            "cupy": 2.6, "torch": 5.0, "liger": 7.0, "mem": 2 ** 29, "mem_fused": 2 ** 29,
            "torch_mem": 2 ** 31, "liger_mem": 2 ** 33}
    full.update({("sweep", tc, v): 2.2 for tc in bench_gpu.SWEEP_COLS
                 for v in bench_gpu.SWEEP_VARIANTS})
    full.update({("mainloop", "gemm_fused"): 1.6, ("mainloop", "gemm_wg"): 1.2})
    partial = {"shape": "4 x 5 x 6", "flop": 1e12, "liger_why": "liger_kernel unavailable"}
    failed = {"shape": "7 x 8 x 9", "flop": 1e12, "floor": 1.0, "floor_by": "torch",
              "error": "stopped: OutOfMemoryError: out of memory"}
    text = bench_gpu.report("card", [full, partial, failed])
    assert "| 1 x 2 x 3 | 2.0 (500, cupy) | 2.1 (1.05x) | 1.0 (0.50x) (0.5 (0.25x))" in text
    # fused, gemm-fused (mma.sync 128 / 64; wgmma 128 / 64, the last not measured), cupy
    assert "| 2.2 (1.10x) | 2.0 (1.02x) / 2.4 (1.20x); 1.9 (0.95x) / - | 2.6 (1.30x) |" in text
    assert "| 0.50 / 0.50 / 0.25 / 2.00 / 8.00 |" in text
    assert "4 x 5 x 6: liger_kernel unavailable" in text and "7 x 8 x 9: stopped" in text
    assert text.count("| 4 x 5 x 6 |") == 3   # main table, fused GEMM table, sweep table
    assert ("| 1 x 2 x 3 | 2.0 (1.02x) / 1.6 (0.80x) | 2.4 (1.20x) / - | "
            "1.9 (0.95x) / 1.2 (0.60x) | - / - |") in text
    assert "| 1024 overlap | 1024 serial | 1024 fused |" in text
    out = tmp_path / "t.md"
    bench_gpu.emit(text, str(out), quiet=True)
    assert out.read_text() == text + "\n"
