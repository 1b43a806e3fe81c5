"""How much memory this process's memory domain has (the machine or its cgroup), and how
the daemon's allocator returns what it frees.

The engine asks this when a stream ends, to decide whether the kernel may keep
the stream's pages: when a file is small beside the memory it competes for,
its pages make the next epoch fast; when it is large (a memory-limited cgroup,
shards bigger than RAM), they would push the random readers' hot set out.
The answer is the smaller of the machine's MemTotal and the limit of the
memory cgroup the daemon runs in (v2 ``memory.max``, v1
``memory.limit_in_bytes``), cached for a few seconds so a burst of closes
costs one read of each file. Usage is deliberately not subtracted: under a
limit the page cache always fills it, so "free" says nothing.

`limit_malloc_arenas`: glibc gives each thread that allocates its own arena (up to 8 per
core) and its mmap threshold grows with the largest block freed, so the daemon's 64 KiB to
1 MiB read buffers, made and freed by many worker threads, stay in arenas nobody returns.
Measured with ``benchmarks/memory.py --dram 64MiB --writers 0`` (8 streams and 8 random
readers on an S3 mount, 60 s): a peak RSS of 527 MiB against 505 MiB of configured bounds
plus the idle daemon, and 468 MiB with two arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from typing import Callable

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(n: int = 2) -> bool:
    """Have glibc's malloc use at most ``n`` arenas from now on (as ``MALLOC_ARENA_MAX``
    does). Call it before the worker threads start. False where the C library is not
    glibc or refuses; an environment's own ``MALLOC_ARENA_MAX`` wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_ARENA_MAX, n))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", n)
    return ok

_UNLIMITED = 1 << 62


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_limit(proc_cgroup: str = "/proc/self/cgroup") -> int:
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return _UNLIMITED
    best = _UNLIMITED
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":  # cgroup v2
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            limit = _read_int(base + "/memory.max")
        elif "memory" in controllers.split(","):  # cgroup v1
            base = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            limit = _read_int(base + "/memory.limit_in_bytes")
        else:
            continue
        if limit is not None and limit < _UNLIMITED // 2:
            best = min(best, limit)
    return best


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _UNLIMITED


class MemoryDomain:
    """Cached size of the memory this process competes for."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 max_age: float = 5.0) -> None:
        self._clock = clock
        self._max_age = max_age
        self._at = -1e18
        self._value = _UNLIMITED

    def bytes(self) -> int:
        now = self._clock()
        if now - self._at > self._max_age:
            self._value = min(_mem_total(), _cgroup_limit())
            self._at = now
        return self._value
