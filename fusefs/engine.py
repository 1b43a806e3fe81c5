"""The data path of a mount: reads and writes across the tiers.

`operations.py` hands every read, write, truncate and sync here. Today the
engine serves from the capacity tier and keeps the statistics; the DRAM page
cache, the fast tier, the classifier and the policy plug in behind the same
methods, so the FUSE layer never changes when a tier is added.
"""

from __future__ import annotations

import logging
import time

from .handles import FileHandle
from .stats import Stats
from .tiers.capacity import CapacityTier

log = logging.getLogger(__name__)


class Engine:
    """Serves file data for one mount.

    Args:
        capacity: the source of truth.
        stats: where counters and latencies go.
    """

    def __init__(self, capacity: CapacityTier, *, stats: Stats) -> None:
        self.capacity = capacity
        self.stats = stats

    async def start(self) -> None:
        """Start background work (none yet)."""

    async def close(self) -> None:
        """Stop background work and release every cache."""

    async def read(self, h: FileHandle, offset: int, size: int) -> bytes:
        t0 = time.perf_counter()
        data = await h.file.pread(offset, size)
        self.stats.add("read.requests")
        self.stats.add("read.bytes.capacity", len(data))
        self.stats.latency("read", time.perf_counter() - t0)
        return data

    async def write(self, h: FileHandle, offset: int, data: bytes) -> int:
        t0 = time.perf_counter()
        n = await h.file.pwrite(offset, data)
        h.dirty = True
        self.stats.add("write.requests")
        self.stats.add("write.bytes", n)
        self.stats.latency("write", time.perf_counter() - t0)
        return n

    def invalidate(self, file_id: int) -> None:
        """Forget every cached byte of ``file_id`` (it changed)."""

    async def flush(self, h: FileHandle) -> None:
        await h.file.flush()

    async def fsync(self, h: FileHandle, datasync: bool) -> None:
        await h.file.fsync(datasync)

    async def release(self, h: FileHandle) -> None:
        await h.file.close()
