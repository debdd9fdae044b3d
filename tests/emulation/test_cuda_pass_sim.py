"""The compiled CUDA pass driver (csrc/cuda_pass.cpp) without a GPU: compiled with stand-ins for
CUDA, cuBLAS and the epilogue (cuda_pass_sim.cpp), which check its streams, events, GEMM
arguments and tile coverage."""
from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.emulation


def test_driver_schedule_in_simulation(tmp_path, driver_simulation_build):
    # csrc/cuda_pass.cpp compiled with stand-ins for CUDA, cuBLAS and the epilogue
    # (cuda_pass_sim.cpp): stream/event ordering, GEMM arguments and tile coverage of ~4000
    # passes, no GPU needed.
    exe = tmp_path / "sim"
    r = subprocess.run(driver_simulation_build + ["-o", str(exe)], capture_output=True,
                       text=True, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, check=False, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith(", 0 failed"), r.stdout[-3000:]
