"""The measures' allocation setting (``_heap.retained_heap``): freed large blocks are reused
inside it, and the memory goes back to the system when it ends."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest

from identirep import _heap

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _heap.glibc() is None or _heap.user_settings(),
    reason="glibc's allocator, with no allocator settings of the process's own")


def _faults_of_fresh_block(nbytes: int) -> int:
    """Minor page faults of allocating and writing a block of ``nbytes``, after one of the
    same size was allocated, written and freed."""
    np.ones(nbytes // 8)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(nbytes // 8)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del a
    return f1 - f0


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


@glibc_only
def test_freed_large_blocks_are_reused_inside_and_returned_after():
    n = 64 << 20      # above glibc's largest mmap threshold: mapped afresh outside the block
    outside = _faults_of_fresh_block(n)
    with _heap.retained_heap():
        if not _heap._state["raised"]:
            pytest.skip("this glibc refuses an mmap threshold above 32 MiB")
        inside = _faults_of_fresh_block(n)
        big = np.ones((256 << 20) // 8)
        del big
        held = _rss()
    after = _rss()
    # outside: at least one fault per 2 MiB (huge) page of the fresh mapping; inside: none
    assert inside <= 2 and outside >= 32, (inside, outside)
    # the 256 MiB block freed inside stays with the process until the block ends
    assert held - after > (128 << 20), (held, after)


@glibc_only
def test_nested_and_concurrent_blocks_share_one_setting():
    errors = []

    def work():
        try:
            with _heap.retained_heap():
                with _heap.retained_heap():
                    np.ones((48 << 20) // 8).sum()
        except Exception as e:     # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _heap._state["depth"] == 0
    # left: a freed large block goes back to the system at once again
    big = np.ones((256 << 20) // 8)
    held = _rss()
    del big
    assert held - _rss() > (128 << 20)


def test_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(_heap, "glibc", lambda: None)
    with _heap.retained_heap():
        x = np.ones(1000)
    assert x.sum() == 1000 and _heap._state["depth"] == 0


class _FakeLibc:
    """mallopt and malloc_trim recorded; mallopt of the mmap threshold answers ``accept``."""

    def __init__(self, accept: bool):
        self.accept, self.calls = accept, []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return int(self.accept or param != _heap._M_MMAP_THRESHOLD)

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_thresholds_set_back_and_heap_trimmed_after_an_exception(monkeypatch):
    libc = _FakeLibc(accept=True)
    monkeypatch.setattr(_heap, "glibc", lambda: libc)
    with pytest.raises(KeyboardInterrupt):
        with _heap.retained_heap():
            with _heap.retained_heap():
                raise KeyboardInterrupt
    M, T = _heap._M_MMAP_THRESHOLD, _heap._M_TRIM_THRESHOLD
    assert libc.calls == [("mallopt", M, _heap.RETAINED_BLOCK),
                          ("mallopt", T, _heap.RETAINED_TRIM),
                          ("mallopt", M, _heap.MMAP_CEILING), ("mallopt", T, _heap.TRIM_CEILING),
                          ("malloc_trim", 0)]
    # every value fits mallopt's int
    assert all(-2 ** 31 <= c[2] < 2 ** 31 for c in libc.calls if c[0] == "mallopt")
    assert _heap._state["depth"] == 0 and not _heap._state["raised"]


def test_a_refused_threshold_changes_nothing(monkeypatch):
    libc = _FakeLibc(accept=False)
    monkeypatch.setattr(_heap, "glibc", lambda: libc)
    with _heap.retained_heap():
        pass
    assert libc.calls == [("mallopt", _heap._M_MMAP_THRESHOLD, _heap.RETAINED_BLOCK)]
    assert _heap._state["depth"] == 0 and not _heap._state["raised"]


@pytest.mark.parametrize("var, value", [("MALLOC_TOP_PAD_", "1048576"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")])
def test_a_process_with_its_own_allocator_settings_is_left_alone(monkeypatch, var, value):
    libc = _FakeLibc(accept=True)
    monkeypatch.setattr(_heap, "glibc", lambda: libc)
    monkeypatch.setattr(_heap, "startup_environ", lambda: {var: value})
    with _heap.retained_heap():
        pass
    assert libc.calls == [] and _heap._state["depth"] == 0
    monkeypatch.setattr(_heap, "startup_environ",
                        lambda: {"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"})
    with _heap.retained_heap():
        pass
    assert libc.calls[0] == ("mallopt", _heap._M_MMAP_THRESHOLD, _heap.RETAINED_BLOCK)


def test_settings_are_those_the_process_started_with(monkeypatch):
    """glibc reads its settings when the process starts: a variable put into os.environ later
    (a Dask LocalCluster sets MALLOC_TRIM_THRESHOLD_ for its workers) does not count, and one
    the process started with does (a subprocess started with it)."""
    libc = _FakeLibc(accept=True)
    monkeypatch.setattr(_heap, "glibc", lambda: libc)
    for k in _heap.USER_SETTINGS:
        monkeypatch.delenv(k, raising=False)
    started_with = _heap.user_settings()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert _heap.user_settings() == started_with
    code = "from identirep import _heap; print(_heap.user_settings())"
    env = {**os.environ, "MALLOC_TOP_PAD_": "1048576"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"
