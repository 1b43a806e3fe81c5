"""Whole files into the fast tier: background fills after random misses, and warming.

A random read that missed every cache of a remote capacity tier asks the policy
(`Policy.fill_whole`) whether to fetch the whole file version into the fast tier in the
background: a file read at random is likely read at random again, and one pass of large
ranged GETs costs far less than a round trip per miss. `tierfs warm` and pins use the same
copy loop (`Filler.copy`). Both are throughput-class work: fills under the scheduler's fill
limiter, yielding while latency reads crowd the tier; warming under the read-ahead limiter.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from typing import Callable

import trio

from ..access import AccessInfo
from ..policies.base import Policy
from ..stats import Stats
from ..tiers.capacity import CapacityTier, SourceVersion, Stat
from ..tiers.fast import FastTier
from .sched import Scheduler

log = logging.getLogger(__name__)


class Filler:
    """Copies whole file versions into the fast tier.

    Args:
        capacity: the source.
        fast: the fast tier.
        policy: the fast tier's policy (asked `fill_whole`).
        sched: limiters and latency pressure.
        stats: counters.
        chunk_size: the extent size stored.
        parallel: ranged reads in flight per background fill.
    """

    def __init__(self, capacity: CapacityTier, fast: FastTier, policy: Policy, sched: Scheduler,
                 stats: Stats, *, chunk_size: int = 1 << 20, parallel: int = 3) -> None:
        self.capacity = capacity
        self.fast = fast
        self.policy = policy
        self.sched = sched
        self.stats = stats
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.nursery: trio.Nursery | None = None
        # Versions filled or being filled: one fill per version of a file per mount,
        # so a tier too small to keep a file cannot loop refetching it.
        self._started: set[tuple[bytes, SourceVersion]] = set()
        #: Filled versions whose bytes the fast tier has not served yet: how many
        #: (`served`; bounded, oldest first out).
        self.unserved: OrderedDict[tuple[bytes, SourceVersion], int] = OrderedDict()

    def maybe_fill(self, path: bytes, version: SourceVersion, info: AccessInfo,
                   still_wanted: Callable[[], bool]) -> None:
        """After a remote random miss: start a background fill if the policy wants one."""
        if self.nursery is None or not self.capacity.remote:
            return
        key = (path, version)
        if key in self._started or not self.policy.fill_whole(info):
            return
        if len(self._started) > 100_000:
            self._started.clear()  # bounded memory; at worst a version is filled twice
        self._started.add(key)
        self.stats.add("fill.started")
        self.nursery.start_soon(self._fill, path, version, info, still_wanted)

    def served(self, path: bytes, version: SourceVersion | None, n: int) -> None:
        """The fast tier served ``n`` bytes of ``path`` at ``version``: if a fill copied
        that version, count them as its use (up to what it copied)."""
        key = (path, version)
        left = self.unserved.get(key)  # type: ignore[arg-type]
        if left is None:
            return
        used = min(n, left)
        self.stats.add("fill.used_bytes", used)
        if used < left:
            self.unserved[key] = left - used  # type: ignore[index]
        else:
            del self.unserved[key]  # type: ignore[arg-type]

    async def _fill(self, path: bytes, version: SourceVersion, info: AccessInfo,
                    still_wanted: Callable[[], bool]) -> None:
        try:
            n = await self.copy(path, version, info=info, parallel=self.parallel,
                                background=True, still_wanted=still_wanted)
            self.stats.add("fill.bytes", n)
            self.stats.add("fill.done")
            if n:
                self.unserved[(path, version)] = n
                if len(self.unserved) > 10_000:
                    self.unserved.popitem(last=False)
        except OSError as exc:
            self.stats.add("fill.failed")
            log.info("fill of %r stopped: %s", path, exc)
        except Exception:
            self.stats.add("fill.failed")
            log.exception("fill of %r failed", path)

    async def copy_small(self, path: bytes, listed: Stat, *, pinned: bool = False,
                         limiter: trio.CapacityLimiter | None = None) -> int:
        """Copy a file a listing showed at most one chunk long, fetched in one go
        (`CapacityTier.fetch_small`: one GET on S3, one worker-thread call on a local
        directory, where `copy` costs an open, a read and a close, each a round trip).

        A warm of many small files is bound by those round trips, not by bandwidth. A
        file already cached, or found longer than listed, goes through `copy`, which
        checks the cached version and reads at any size. Returns the bytes copied.
        """
        fast = self.fast
        if fast.cached_bytes_of(path) or listed.st_size > self.chunk_size:
            return await self.copy(path, pinned=pinned, limiter=limiter)
        async with (limiter or self.sched.throughput):
            version, data = await self.capacity.fetch_small(path, listed)
        if len(data) != version.size or version.size > self.chunk_size:
            return await self.copy(path, pinned=pinned, limiter=limiter)
        self.stats.add("source.bytes.warm", len(data))
        cf = await fast.file_create(path, version)
        if not data:
            return 0
        ext = fast.covering(cf, 0, len(data))
        if ext is not None:  # a reader's admission got there first
            if pinned and not ext.pinned:
                fast.set_pinned(cf, ext, True)
            return 0
        if not await fast.admit(cf, 0, data, pinned=pinned):
            self.stats.add("warm.skipped_chunks")
            return 0
        return len(data)

    async def copy(self, path: bytes, version: SourceVersion | None = None, *,
                   pinned: bool = False, info: AccessInfo | None = None,
                   parallel: int = 1, background: bool = False,
                   still_wanted: Callable[[], bool] | None = None,
                   batch: int = 4, limiter: trio.CapacityLimiter | None = None) -> int:
        """Copy ``path`` (of ``version``) into the fast tier; with
        ``version`` None, of the version the source has now (warming).

        Reads cover up to ``batch`` chunks (fewer, larger requests), stored as chunk-sized
        extents. Chunks already present are skipped (so an interrupted copy resumes), and
        pinned if ``pinned``. Reads run under ``limiter`` (default: the scheduler's fill
        limiter for a background fill, its throughput limiter otherwise; a warm of many
        files passes its own, as wide as the files it copies at once). Stops early when ``still_wanted()`` turns false (the file
        changed) or, for a background fill, when the fast tier refuses the data (full, or no
        room beside pinned data). Returns the bytes copied; raises OSError if the source
        fails or is not at ``version`` any more.
        """
        fast = self.fast
        # Offloaded: a warm opens and reads many files at once, and nobody waits on it.
        f = await (self.capacity.open(path, os.O_RDONLY) if background else
                   self.capacity.open_offloaded(path, os.O_RDONLY))
        try:
            # The source must be the version the entry names: a copy of other
            # bytes under this version's name would be served as it.
            now = (await f.fstat()).version()
            if version is None:
                version = now
            elif now != version:
                raise OSError(errno.ESTALE, f"{path!r} changed before it was copied")
            cf = await fast.file_create(path, version)
        except BaseException:
            await f.close()
            raise
        size = version.size
        cs = self.chunk_size
        step = cs * max(1, batch)
        offsets = iter(range(0, size, step))
        if limiter is None:
            limiter = self.sched.fills if background else self.sched.throughput
        copied = 0
        failed: list[OSError] = []

        def missing(lo: int, hi: int) -> list[int]:
            out = []
            for off in range(lo, hi, cs):
                ext = fast.covering(cf, off, min(hi, off + cs))
                if ext is None:
                    out.append(off)
                elif pinned and not ext.pinned:
                    fast.set_pinned(cf, ext, True)
            return out

        def wanted() -> bool:
            return not cf.dropped and (still_wanted is None or still_wanted())

        async def worker() -> None:
            try:
                await copy_steps()
            except OSError as exc:  # raised alone below, not inside a nursery's group
                failed.append(exc)

        async def copy_steps() -> None:
            nonlocal copied
            for lo in offsets:  # shared: each step goes to one worker
                if failed or not wanted():
                    return
                hi = min(size, lo + step)
                todo = missing(lo, hi)
                if not todo:
                    continue
                if background:
                    await self.sched.wait_calm(
                        on_wait=lambda: self.stats.add("fill.yielded"))
                rlo, rhi = todo[0], min(hi, todo[-1] + cs)
                try:
                    async with limiter:
                        data = await (f.pread(rlo, rhi - rlo) if background else
                                      f.pread_offloaded(rlo, rhi - rlo))
                    self.stats.add("source.bytes.fill" if background else "source.bytes.warm",
                                   len(data))
                    if len(data) != rhi - rlo:
                        raise OSError(errno.EIO, f"{path!r} changed while being copied")
                except OSError as exc:
                    failed.append(exc)
                    return
                if not wanted():
                    return
                for off in todo:
                    piece = data[off - rlo:min(hi, off + cs) - rlo]
                    if fast.covering(cf, off, off + len(piece)) is not None:
                        continue  # a reader's admission got there first
                    if not await fast.admit(cf, off, piece, pinned=pinned, info=info):
                        self.stats.add("warm.skipped_chunks")
                        if background or cf.dropped:
                            return  # full, no room beside pinned data, or gone: stop
                        continue
                    copied += len(piece)

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, parallel)):
                    nursery.start_soon(worker)
        finally:
            await f.close()
        if failed:
            raise failed[0]
        return copied
