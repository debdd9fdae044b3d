"""PEP 517 backend: scikit-build-core, plus cuBLAS headers for CUDA builds that lack them.

The CUDA pass driver (csrc/cuda_pass.cpp) compiles against the cuBLAS headers and loads
libcublas at run time. A CUDA toolkit without cuBLAS (nvcc and cudart only) gets the headers
from NVIDIA's PyPI wheel in the isolated build environment; nothing is linked against it.
IDENTIREP_CUDA=OFF or IDENTIREP_CUBLAS=OFF skip this.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path



def _skb():
    # imported when a hook runs, so that cublas_requirement is testable without it
    from scikit_build_core import build
    return build


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _skb().build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _skb().build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    return _skb().build_sdist(sdist_directory, config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _skb().prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _skb().prepare_metadata_for_build_editable(metadata_directory, config_settings)


def get_requires_for_build_sdist(config_settings=None):
    return _skb().get_requires_for_build_sdist(config_settings)


DEFAULT_CUDA_ROOT = "/usr/local/cuda"


def _nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                 *(os.path.join(os.environ[v], "bin", "nvcc")
                   for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)),
                 os.path.join(DEFAULT_CUDA_ROOT, "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return Path(cand).resolve()
    return None


def cublas_requirement():
    """[the nvidia-cublas wheel] when CUDA will be built and its toolkit has no cuBLAS headers."""
    if "OFF" in (os.environ.get("IDENTIREP_CUDA", "AUTO").upper(),
                 os.environ.get("IDENTIREP_CUBLAS", "AUTO").upper()):
        return []
    nvcc = _nvcc()
    if nvcc is None:
        return []
    roots = {nvcc.parents[1], Path(DEFAULT_CUDA_ROOT)}
    roots |= {Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)}
    for root in roots:
        if any(root.glob("include/cublas_api.h")) or any(root.glob("targets/*/include/cublas_api.h")):
            return []
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=False,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    m = re.search(r"release (\d+)\.", out)
    if not m:
        return []
    major = int(m.group(1))
    if major >= 13:
        return [f"nvidia-cublas>={major},<{major + 1}"]
    if major in (11, 12):
        return [f"nvidia-cublas-cu{major}"]
    return []


def get_requires_for_build_wheel(config_settings=None):
    return _skb().get_requires_for_build_wheel(config_settings) + cublas_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _skb().get_requires_for_build_editable(config_settings) + cublas_requirement()
