"""Large temporaries reused instead of mapped afresh, while the measures run (glibc).

After the pass, the measures of one pair allocate and free hundreds of M x M float64 arrays
(32 MiB at M = 2048) and LAPACK work copies. glibc serves blocks above its mmap threshold
(at most 32 MiB, even with its dynamic threshold) with a fresh mapping each time, which the
kernel zeroes and faults in page by page: at N=4096, V=32000, M=2048 that was about 190,000
page faults and 0.4-0.7 s of a 16-s ``compare`` on a 2-core VM. Inside ``retained_heap`` such
blocks come from the heap and freed ones are reused; on leaving, the thresholds are set to
the highest values glibc's own dynamic thresholds can reach (32 MiB and 64 MiB, after a
freed mapped block of 32 MiB) and the freed memory is returned to the system
(``malloc_trim``). They stay fixed there for the rest of the process: setting a threshold
turns glibc's dynamic adjustment off, and a threshold set before (``mallopt``,
``mallopt``) is not restored. A process started with its own allocator settings
(``MALLOC_*_`` variables, ``glibc.malloc.*`` in ``GLIBC_TUNABLES``: ``USER_SETTINGS``) is
left as it is (its environment as the process started, which is what glibc read: a variable set
later in ``os.environ``, as a Dask LocalCluster sets MALLOC_TRIM_THRESHOLD_ for its workers,
does not count), as is a glibc that refuses an mmap threshold above 32 MiB (older releases)
and every other C library (macOS, musl, Windows).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's ceilings for its dynamic thresholds on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX
#: and twice it), set on leaving ``retained_heap``
MMAP_CEILING, TRIM_CEILING = 32 << 20, 64 << 20
#: inside ``retained_heap``, blocks up to this size come from the heap and stay there when
#: freed (up to RETAINED_TRIM at the heap's top)
RETAINED_BLOCK = 1 << 30
#: the trim threshold inside ``retained_heap``: about twice RETAINED_BLOCK, the largest value
#: mallopt's int takes
RETAINED_TRIM = (1 << 31) - 1

_lock = threading.Lock()
#: raised: whether the block in progress raised the thresholds (glibc accepted them)
_state = {"depth": 0, "libc": None, "probed": False, "raised": False}


#: environment variables through which a user sets glibc's allocator: where any is set,
#: ``retained_heap`` leaves the allocator alone
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_MAX_")


def _read_startup_environ() -> dict:
    """The environment this process started with (/proc/self/environ on Linux: what glibc
    read at start-up), else ``os.environ`` as this module found it."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


_STARTUP_ENVIRON = _read_startup_environ()


def startup_environ() -> dict:
    """The environment glibc's allocator was configured from (read once, at import)."""
    return _STARTUP_ENVIRON


def user_settings() -> bool:
    """Whether this process was started with its own glibc allocator settings."""
    env = startup_environ()
    return (any(k in env for k in USER_SETTINGS)
            or "glibc.malloc." in env.get("GLIBC_TUNABLES", ""))


def glibc():
    """The C library through ctypes when it is glibc (mallopt, malloc_trim), else None."""
    with _lock:
        if not _state["probed"]:
            _state["probed"] = True
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.gnu_get_libc_version.restype = ctypes.c_char_p
                libc.gnu_get_libc_version()
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                _state["libc"] = libc
            except (OSError, AttributeError, TypeError):
                _state["libc"] = None
        return _state["libc"]


@contextmanager
def retained_heap():
    """Inside the block, freed large blocks stay in the heap for the next allocation (see the
    module's docstring). Nested and concurrent blocks share one setting: the first to enter
    sets it, the last to leave sets glibc's ceilings and trims the heap."""
    libc = glibc()
    if libc is None or user_settings():
        yield
        return
    entered = False
    try:
        with _lock:
            if _state["depth"] == 0:   # a refused threshold (older glibc) changes nothing
                _state["raised"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK))
                if _state["raised"]:
                    libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_TRIM)
            _state["depth"] += 1
            entered = True
        yield
    finally:
        if entered:
            _leave(libc)


def _leave(libc) -> None:
    with _lock:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["raised"]:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_CEILING)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_CEILING)
            libc.malloc_trim(0)
            _state["raised"] = False
