"""benchmarks/device_check.sh runs once on a GPU machine's scarce time: its steps, their order,
the GPU test processes and the summary are checked here without a GPU, with every command it
runs replaced by a stub that records its arguments."""
import ast
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
GPU_TEST_FILES = ["tests/test_gpu.py", "tests/test_lse_kl_cuda.py", "tests/test_cuda_driver.py"]

# python, compute-sanitizer and nvidia-smi: each call appends its arguments (one per line, then
# a line "--") to $STUB_LOG, and fails when one of its arguments is $STUB_FAIL
STUB = """#!/usr/bin/env bash
{ printf '%s\\n' "$(basename "$0")" "$@"; echo --; } >> "$STUB_LOG"
for a in "$@"; do [[ -n "${STUB_FAIL:-}" && "$a" == "$STUB_FAIL" ]] && exit 1; done
exit 0
"""

pytestmark = pytest.mark.requires_programs("bash", "timeout")


def run_check(tmp_path, **env):
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("python", "compute-sanitizer", "nvidia-smi"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log, out = tmp_path / "calls.log", tmp_path / "out"
    log.write_text("")
    full_env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OUT": str(out),
                "PYTHON": str(stubs / "python"), "SANITIZER": str(stubs / "compute-sanitizer"),
                "STUB_LOG": str(log), **env}
    p = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True,
                       timeout=120)
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("--\n") if c.strip()]
    summary = (out / "device_check.md").read_text() if (out / "device_check.md").exists() else ""
    return p, calls, summary


def pytest_calls(calls):
    """{marker expression: the pytest arguments} of the GPU test steps."""
    out = {}
    for c in calls:
        if c[:3] == ["python", "-m", "pytest"]:
            out[c[c.index("-m", 3) + 1]] = c[3:]
    return out


def test_every_step_runs_in_order_and_the_summary_has_them(tmp_path):
    p, calls, summary = run_check(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line.split("|")[1].strip() for line in summary.splitlines()
            if line.startswith("| ") and "| ok |" in line]
    assert rows == ["build-tools", "build", "liger", "nvidia-smi", "build-info", "gpu-tests",
                    "gpu-tests-gemm", "gpu-tests-wgmma", "memcheck", "racecheck", "bench",
                    "bench-compare"]
    assert ["python", "-m", "pip", "install", "--no-build-isolation", "--no-deps", "."] in calls
    assert ["python", "-m", "identirep.cli", "info"] in calls
    tests = pytest_calls(calls)
    assert list(tests) == ["not fused_gemm", "fused_gemm and not wgmma", "wgmma"]
    # per-test timeouts within each step's limit (150, 60, 60 s): a hang is named by
    # pytest-timeout before the step's limit ends the process
    for (expr, args), per_test in zip(tests.items(), (120, 45, 45)):
        assert args[-3:] == GPU_TEST_FILES and f"--timeout={per_test}" in args, args
    sanitized = [c for c in calls if c[0] == "compute-sanitizer"]
    assert [c[2] for c in sanitized] == ["memcheck", "racecheck"]
    assert all(c[-1] == "benchmarks/sanitize_case.py" for c in sanitized)
    assert ["python", "benchmarks/bench_gpu.py", "--sweep", "--out",
            f"{tmp_path}/out/bench_gpu.md"] in calls


def test_a_failing_gpu_test_process_leaves_the_others_and_fails_the_check(tmp_path):
    p, calls, summary = run_check(tmp_path, STUB_FAIL="not fused_gemm")
    assert p.returncode == 1
    assert "| gpu-tests | FAILED (exit 1) |" in summary
    assert "| gpu-tests-gemm | ok |" in summary and "| gpu-tests-wgmma | ok |" in summary
    assert "| bench-compare | ok |" in summary
    assert "memcheck: no summary" in summary   # the stub prints none
    assert list(pytest_calls(calls)) == ["not fused_gemm", "fused_gemm and not wgmma", "wgmma"]


def test_a_failing_build_stops_before_the_gpu_steps(tmp_path):
    p, calls, summary = run_check(tmp_path, STUB_FAIL="--no-build-isolation")
    assert p.returncode == 1 and "| build | FAILED (exit 1) |" in summary
    assert not pytest_calls(calls) and "gpu-tests" not in summary and "memcheck" not in summary


def test_steps_reruns_the_named_steps_only(tmp_path):
    p, calls, summary = run_check(tmp_path, STEPS="gpu-tests-wgmma,memcheck")
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(pytest_calls(calls)) == ["wgmma"]
    assert [c[2] for c in calls if c[0] == "compute-sanitizer"] == ["memcheck"]
    assert "| build | ok |" in summary   # the build steps always run
    for name in ("gpu-tests", "gpu-tests-gemm", "racecheck", "bench", "bench-compare"):
        assert f"| {name} | not run (STEPS=gpu-tests-wgmma,memcheck) | 0 |" in summary
    p, calls, _ = run_check(tmp_path, STEPS="gpu-test")
    assert p.returncode == 2 and "no step 'gpu-test'" in p.stderr and not calls


def test_the_gpu_test_processes_split_the_gpu_tests(tmp_path):
    # every GPU test in exactly one of the three processes, and the fused GEMM tests (those of
    # the wgmma kernel among them) in processes of their own: one collection of every GPU test
    # with its markers, each process's marker expression evaluated on them (and, or, not and
    # names: Python's own grammar)
    _, calls, _ = run_check(tmp_path)
    (tmp_path / "print_markers.py").write_text(
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        marks = sorted({m.name for m in item.iter_markers()})\n"
        "        print('ITEM', repr((item.nodeid, marks)))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    c = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-s", "-p",
                        "no:cacheprovider", "-p", "print_markers", "-m", "slow or not slow",
                        *GPU_TEST_FILES], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert c.returncode == 0, c.stdout[-2000:] + c.stderr[-2000:]
    items = dict(ast.literal_eval(line[5:]) for line in c.stdout.splitlines()
                 if line.startswith("ITEM "))
    assert len(items) > 100 and any("slow" in m for m in items.values())

    def selected(expr):
        return {t for t, marks in items.items()
                if eval(expr, {"__builtins__": {}}, collections.defaultdict(
                    bool, {m: True for m in marks}))}
    collected = {expr: selected(expr) for expr in pytest_calls(calls)}
    parts = list(collected.values())
    assert len(parts) == 3 and all(parts) and set().union(*parts) == set(items)
    assert sum(map(len, parts)) == len(items)
    assert all("fused_gemm" in items[t] for t in collected["fused_gemm and not wgmma"])
    assert all("wg" in t for t in collected["wgmma"])
    assert not any("wg" in t.split("[")[-1] for t in collected["not fused_gemm"]
                   if "fused_gemm" in t)


def test_required_gpu_tests_say_why_they_cannot_run(without_gpu):
    # device_check sets IDENTIREP_REQUIRE_GPU_TESTS=1: without a GPU the run stops at once,
    # saying why (no CUDA build, no CuPy, CuPy failing to import or seeing no device)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider",
                        "tests/test_lse_kl_cuda.py"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "IDENTIREP_REQUIRE_GPU_TESTS": "1"}, timeout=300)
    # the reason as a fresh process finds it (an import that warns here may not warn twice)
    assert p.returncode != 0
    assert re.search("GPU tests required, but (CUDA is not built|CuPy is not installed|"
                     "importing CuPy failed|CuPy sees)", p.stdout + p.stderr), p.stderr


def test_steps_before_the_benchmarks_leave_them_time(tmp_path):
    # 250 s in all, 180 kept for the benchmarks: the GPU tests may take 70 s (their per-test
    # timeout 55 s), not their own 150 s; without the benchmarks, the whole 150 s
    # (the deadline is kept in whole seconds: each second boundary the stubbed steps before it
    # cross takes a second off, and they take about a second)
    p, calls, _ = run_check(tmp_path, CHECK_SECONDS="250", BENCH_RESERVE="180")
    limit = re.search(r"== gpu-tests \(limit (\d+)s\)", p.stdout)
    assert p.returncode == 0 and limit and 68 <= int(limit[1]) <= 70, p.stdout
    assert f"--timeout={int(limit[1]) - 15}" in pytest_calls(calls)["not fused_gemm"]
    p, calls, _ = run_check(tmp_path, CHECK_SECONDS="250", BENCH_RESERVE="180",
                            STEPS="gpu-tests")
    assert "== gpu-tests (limit 150s)" in p.stdout, p.stdout
    assert "--timeout=120" in pytest_calls(calls)["not fused_gemm"]
