"""The GPU benchmarks' table code runs after minutes of device time: it must not fail on any
mix of measured, missing and failed entries, and one failing measurement or kernel must not
cost the others (checked here without a GPU)."""
import importlib
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

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
            "gemm_fused": 2.05, "gemm_fused64": 2.4, "gemm_wg": 1.9,
            ("mem_gemm", "gemm_fused"): 2 ** 27, ("mem_gemm", "gemm_wg"): 2 ** 28,
            "cupy": 2.6, "torch": 5.0, "liger": 7.0, "mem": 2 ** 29, "mem_fused": 2 ** 29,
            "torch_mem": 2 ** 31, "liger_mem": 2 ** 33}
    full.update({("sweep", tc, v): 2.2 for tc in bench_gpu.SWEEP_COLS
                 for v in bench_gpu.SWEEP_VARIANTS})
    full.update({("mainloop", "gemm_fused"): 1.6, ("mainloop", "gemm_wg"): 1.2})
    partial = {"shape": "4 x 5 x 6", "flop": 1e12, "liger_why": "liger_kernel unavailable"}
    failed = {"shape": "7 x 8 x 9", "flop": 1e12, "floor": 1.0, "floor_by": "torch",
              "error": "stopped: OutOfMemoryError: out of memory",
              "errors": ["cupy: CompileException: nvrtc failed"]}
    text = bench_gpu.report("card", [full, partial, failed])
    assert "| 1 x 2 x 3 | 2.0 (500, cupy) | 2.1 (1.05x) | 1.0 (0.50x) (0.5 (0.25x))" in text
    # fused, gemm-fused (mma.sync 128 / 64; wgmma 128 / 64, the last not measured), cupy
    assert "| 2.2 (1.10x) | 2.0 (1.02x) / 2.4 (1.20x); 1.9 (0.95x) / - | 2.6 (1.30x) |" in text
    assert "| 0.50 / 0.50 / 0.25 / 2.00 / 8.00 |" in text
    assert "4 x 5 x 6: liger_kernel unavailable" in text and "7 x 8 x 9: stopped" in text
    assert "7 x 8 x 9: cupy: CompileException: nvrtc failed" in text
    # targets, main table, fused GEMM table, sweep table
    assert text.count("| 4 x 5 x 6 |") == 4
    # the fastest choice is the wgmma kernel (1.9 ms): 0.95x of the floor, target 1.5x at
    # M = 3; its memory 0.25 GiB; cupy 2.6 / cuda 2.5
    assert ("| 1 x 2 x 3 | fused_gemm=True (wgmma 128) | 0.95x | 1.5x | yes | 0.25 (ok) | "
            "1.04 | yes |") in text
    assert "| 4 x 5 x 6 | - | - | - | - | - | - | - |" in text
    assert ("| 1 x 2 x 3 | 2.0 (1.02x) / 1.6 (0.80x) | 2.4 (1.20x) / - | "
            "1.9 (0.95x) / 1.2 (0.60x) | - / - |") in text
    assert "| 1024 overlap | 1024 serial | 1024 fused |" in text
    out = tmp_path / "t.md"
    bench_gpu.emit(text, str(out), quiet=True)
    assert out.read_text() == text + "\n"


def test_a_failing_measurement_is_noted_and_the_others_kept(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch)
    row = {}

    def fails():
        raise MemoryError("out of memory allocating 17179869184 bytes\nmore")
    bench_gpu.measure(row, "cuda", lambda: 2.5)
    bench_gpu.measure(row, ("sweep", 1024, "serial"), fails)
    bench_gpu.measure(row, ["torch", "torch_mem"], lambda: (5.0, 2 ** 30))
    bench_gpu.measure(row, "loop", lambda: 1 / 0)
    assert row == {"cuda": 2.5, "torch": 5.0, "torch_mem": 2 ** 30,
                   "errors": ["sweep/1024/serial: MemoryError: out of memory allocating "
                              "17179869184 bytes", "loop: ZeroDivisionError: division by zero"]}


def test_gemm_kernel_checks_keep_what_passes_and_say_why_not(monkeypatch, tmp_path):
    # each kernel checked in its own process: one that passes is timed; one that aborts (a
    # fault), hangs or disagrees is not, with the reason in the table
    bench_gpu = _bench_gpu(monkeypatch)
    monkeypatch.setattr(bench_gpu.identirep, "build_info", lambda: {"cuda_pass_driver": True})
    # no CUDA in this process before the checks: they may need the GPU to themselves
    monkeypatch.setattr(bench_gpu, "_core", None)
    monkeypatch.setattr(bench_gpu, "cp", None)
    scripts = {(128, False): "print('ok')", (64, False): "import os; os.abort()",
               (128, True): "import time; time.sleep(60)",
               (64, True): "print('L1 differs by 0.5'); raise SystemExit(1)"}
    monkeypatch.setattr(bench_gpu, "gemm_check_command",
                        lambda rows, wgmma: [sys.executable, "-c", scripts[rows, wgmma]])
    ok, notes = bench_gpu.check_gemm_kernels(timeout=2)
    assert ok == ["gemm_fused"]
    assert notes[0].startswith("gemm_fused64: not timed: its check failed (exit -6)")
    assert notes[1:] == ["gemm_wg: not timed: its check did not finish within 2 s",
                         "gemm_wg64: not timed: its check failed (exit 1): L1 differs by 0.5"]
    # the timeout is for all checks together: four that hang cost it once, not four times
    monkeypatch.setattr(bench_gpu, "gemm_check_command",
                        lambda rows, wgmma: [sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    ok, notes = bench_gpu.check_gemm_kernels(timeout=2)
    assert time.monotonic() - t0 < 4 and ok == []
    assert [n.split(":")[0] for n in notes] == list(bench_gpu.GEMM_KINDS)
    monkeypatch.setattr(bench_gpu, "gemm_check_command",
                        lambda rows, wgmma: [sys.executable, "-c", scripts[rows, wgmma]])
    # on a GPU that takes one process at a time, the checks that found it busy run again,
    # one after another
    busy = ("import os, sys, time\nfrom pathlib import Path\nlock = Path(sys.argv[1])\n"
            "try:\n    fd = os.open(lock, os.O_CREAT | os.O_EXCL)\nexcept FileExistsError:\n"
            "    print('cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or "
            f"unavailable'); raise SystemExit({bench_gpu.BUSY})\n"
            "time.sleep(0.5); os.unlink(lock); print('ok')")
    lock = tmp_path / "gpu.lock"
    monkeypatch.setattr(bench_gpu, "gemm_check_command",
                        lambda rows, wgmma: [sys.executable, "-c", busy, str(lock)])
    ok, notes = bench_gpu.check_gemm_kernels(timeout=20)
    assert ok == list(bench_gpu.GEMM_KINDS) and notes == []
    # ... within the same timeout: a busy GPU whose holder never lets go costs it once
    lock.touch()
    t0 = time.monotonic()
    ok, notes = bench_gpu.check_gemm_kernels(timeout=2)
    assert time.monotonic() - t0 < 4 and ok == []
    assert all("busy or unavailable" in n for n in notes), notes
    lock.unlink()
    monkeypatch.setattr(bench_gpu, "gemm_check_command",
                        lambda rows, wgmma: [sys.executable, "-c", scripts[rows, wgmma]])
    # where wgmma cannot run, its checks say so (exit NOT_RUN) and the reason is given
    scripts[64, False] = "print('ok')"
    for rows in (128, 64):
        scripts[rows, True] = ("print('not run: compute capability 8.0, wgmma needs 9.0'); "
                               f"raise SystemExit({bench_gpu.NOT_RUN})")
    ok, notes = bench_gpu.check_gemm_kernels(timeout=5)
    assert ok == ["gemm_fused", "gemm_fused64"]
    assert notes == [f"{k}: not run (compute capability 8.0, wgmma needs 9.0)"
                     for k in ("gemm_wg", "gemm_wg64")]
    monkeypatch.setattr(bench_gpu.identirep, "build_info", lambda: {"cuda_pass_driver": False})
    assert bench_gpu.check_gemm_kernels() == (
        [], ["fused GEMM kernels: built without the CUDA pass driver"])


@pytest.mark.requires("cupy")
def test_the_gemm_check_command_reaches_the_check():
    # its own command line runs the check (argparse, the import of the benchmark); without a
    # GPU the check itself fails, with a CUDA error rather than a usage error or a traceback
    sys.path.insert(0, BENCH)
    try:
        import bench_gpu
    finally:
        sys.path.remove(BENCH)
    p = subprocess.run(bench_gpu.gemm_check_command(64, False), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "usage:" not in p.stderr, p.stderr[-2000:]
    # gemm_check's first CUDA call (its context), refused here, reported on its last line
    assert p.stdout.strip().splitlines()[-1].startswith("CUDARuntimeError: "), p.stdout


def test_targets_table_reads_each_target(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch)
    GiB = 2 ** 30
    rows = [
        # M >= 1536: 1.25x; the fastest is a sweep choice, whose memory is not measured
        {"shape": "16384 x 151936 x 1536", "floor": 10.0, "cuda": 13.0, "mem": 0.5 * GiB,
         ("sweep", 2048, "serial"): 12.4, "cupy": 27.0},
        # M = 768: 1.5x; the fused epilogue is fastest but over 1 GiB; cupy within 2x
        {"shape": "16384 x 50304 x 768", "floor": 4.0, "cuda": 6.4, "fused": 6.1,
         "mem_fused": 1.5 * GiB, "cupy": 12.0},
    ]
    text = bench_gpu.targets_table(rows)
    assert ("| 16384 x 151936 x 1536 | tile_cols=2048, overlap=False | 1.24x | 1.25x | yes | - "
            "| 2.08 | no |") in text
    assert ("| 16384 x 50304 x 768 | fused_epilogue=True | 1.52x | 1.5x | no | 1.50 (over) | "
            "1.88 | yes |") in text
