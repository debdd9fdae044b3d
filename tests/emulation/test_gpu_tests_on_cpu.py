"""The GPU tests of test_gpu.py, run on the CPU through the CuPy stand-in (gpu_standin.py, in a
process of its own): each must pass, or skip only for what the stand-in cannot provide. A slow
re-run of other tests (marker standin): not in the default run; .ci/run runs it in a step of
its own (pytest -m "standin or slow")."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.emulation, pytest.mark.standin]

EMULATION = Path(__file__).resolve().parent
TESTS = EMULATION.parent
#: the one skip allowed on the stand-in (gpu_standin.py makes torch report no CUDA)
STANDIN_SKIPS = (r"torch has no CUDA",)


def test_gpu_tests_pass_on_the_cupy_standin(tmp_path, needs_cuda_build):
    report = tmp_path / "gpu_tests.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(EMULATION), str(TESTS)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    for name in ("IDENTIREP_REQUIRE_GPU_TESTS", "IDENTIREP_BACKEND"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_gpu.py"), "-p", "gpu_standin",
         "-p", "no:cacheprovider", "-m", "gpu and not slow", "-q", f"--junitxml={report}"],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=1800)
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    functions, passed, problems = set(), set(), []
    for case in ET.parse(report).iter("testcase"):
        name = case.get("name")
        functions.add(name.split("[")[0])
        outcome = next((c for c in case if c.tag in ("skipped", "failure", "error")), None)
        if outcome is None:
            passed.add(name.split("[")[0])
        elif outcome.tag == "skipped":
            reason = outcome.get("message", "")
            if not any(re.search(p, reason) for p in STANDIN_SKIPS):
                problems.append(f"{name}: skipped ({reason})")
        else:
            problems.append(f"{name}: {outcome.tag} ({outcome.get('message', '')[:300]})")
    assert not problems, "\n".join(problems) + "\n" + proc.stdout[-4000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert len(functions) >= 20, f"too few GPU tests collected: {sorted(functions)}"
    # every GPU test function passed at least once, but those whose every case needs torch
    # CUDA tensors
    assert functions - passed <= {"test_torch_inputs_run_on_torchs_current_stream",
                                  "test_engine_used_later_runs_on_torchs_stream_of_the_call"}, \
        f"never passed here: {sorted(functions - passed)}"
