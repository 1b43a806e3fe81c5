"""The data path of a mount: reads and writes across the tiers.

`operations.py` hands every open, read, write, truncate, sync and release here. `Engine`
is a facade over collaborators with one concern each:

==================  ==========================================================================
`consistency`       whether a cached copy is current (versions, generations, written files,
                    EOF, writers): every cache asks it
`sched`             latency / throughput classes (knows no chunks or files)
`paged`             random reads: DRAM -> fast tier -> capacity, block widening, DRAM admission
`stream`            sequential reads: aligned read-ahead chunks, window, budget
`fill`              whole files into the fast tier (background fills; `tierfs warm`)
`walk`              small files fetched ahead of a walk (remote tiers)
`kernel`            pages pushed into (or dropped from) the kernel's page cache
==================  ==========================================================================

For each read the classifier labels the request; a rule's ``class`` (resolved once at open,
carried by the handle as an `Override`) replaces the label. Sequential requests go to the
stream reader, everything else to the paged reader.

Identities: everything per handle (classifier, generations, kernel pages) is keyed by the
mount's inode (``FileHandle.ino``); the DRAM tier by its entries (`DramEntries`: one per path
and source version, so pages outlive the kernel forgetting an inode); the fast tier by its own
cache entries (one per source version), which the engine reaches only through `FastTier` calls
and never by an inode. Each tier has its own policy instance: ``dram_policy`` (DRAM admission,
`DramKey`) and ``policy`` (the fast tier's, `FastKey`, also asked for read-ahead windows and
whole-file fills).

Live miss-ratio curves (``[policy] mrc``): ``mrc_dram`` and ``mrc_fast`` are
`~fusefs.policies.mrc.ShadowMRC` instances fed by the paged reader with every random (or
unclassified) request that reaches the tier, hit or miss: each request for DRAM (keyed by
DRAM entry and DRAM admission block), each DRAM miss for the fast tier (by DRAM entry, i.e.
path and version, and chunk). Their counters join the ``policy_dram`` and ``policy``
sections of the stats.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import time
from typing import Any, Callable

import trio

from ..access import AccessInfo, FastCandidate, Label
from ..classifier import Classifier
from ..handles import FileHandle
from ..memory import MemoryDomain
from ..pagecache import PageCache
from ..pathstats import PathStats
from ..policies.base import Policy
from ..policies.mrc import ShadowMRC
from ..stats import Stats
from ..tiers.capacity import CapacityTier, SourceVersion, Stat
from ..tiers.fast import FastTier
from ..trace import TraceRecorder
from .consistency import Consistency, DramEntries
from .fill import Filler
from .kernel import KernelPages
from .paged import PagedReader
from .sched import Scheduler
from .stream import Chunk, StreamReader, StreamState
from .walk import WalkAhead

# While a traced read runs, the tiers that served its bytes (for the trace's `tier` column).
# A context variable: each FUSE request is its own trio task, so reads never share one.
_SERVED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("tierfs_served", default=None)

__all__ = ["Chunk", "Consistency", "Engine", "StreamState"]

# Seconds between trace rows that carry the tiers' occupancy (piggybacked on requests).
OCCUPANCY_INTERVAL = 1.0

log = logging.getLogger(__name__)


def _with_curves(policy: Policy, mrc: ShadowMRC | None) -> Callable[[], dict[str, int]]:
    """A stats source: the policy's counters, then the tier's curves if it keeps them."""
    if mrc is None:
        return policy.statistics
    return lambda: {**policy.statistics(), **mrc.statistics()}


class Engine:
    """Serves file data for one mount.

    Args:
        capacity: the source of truth.
        stats: where counters and latencies go.
        classifier: labels requests; a default one is made if omitted.
        policy: the fast tier's policy (admission there, read-ahead windows, fills).
        dram_policy: decides DRAM admission; None admits everything but streams' pages
            are still not offered (streams never enter DRAM).
        pagecache: the DRAM tier, or ``None`` to run without it.
        fast: the fast tier, or ``None``.
        immutable: the kernel keeps pages across opens without version checks.
        chunk_size: read-ahead fetch unit.
        remote_block: on a remote capacity tier, the aligned block a DRAM miss fetches.
        stream_budget: bytes all read-ahead buffers (and kernel pushes) may hold.
        throughput_slots: concurrent read-ahead fetches (throughput class).
        latency_pressure: latency-class reads in flight at which optional throughput
            work (read-ahead nobody waits for yet, fills) waits.
        fill_parallel: ranged reads in flight per whole-file fill.
        walk_ahead: on a remote tier, small files fetched ahead of a walk.
        small_file: the largest file a walk fetches ahead.
        walk_budget: bytes the files fetched ahead may hold.
        kernel_invalidate: drops an inode's pages from the kernel's cache.
        kernel_push: stores bytes in the kernel's page cache for an inode
            (``pyfuse3.notify_store``). The kernel keeps them across opens while the
            version does not change; an open that finds another version waits for the
            pushes in flight before it answers (`pushes_drained`), so none lands after
            the kernel dropped the inode's pages at that open.
        memory: the memory domain (a big stream's pages are dropped when it ends).
        stream_keep_fraction: streams over files larger than this share of memory have
            their kernel pages dropped at close.
        trace: records every request, if given.
        mrc_dram: live miss-ratio curves of the DRAM tier, fed one use per random request.
        mrc_fast: live miss-ratio curves of the fast tier, fed one use per DRAM miss.
        paths: per-path and per-rule read figures (`tierfs stats --by-path`); a bounded
            table of 4096 paths if omitted.
    """

    def __init__(
        self,
        capacity: CapacityTier,
        *,
        stats: Stats,
        classifier: Classifier | None = None,
        policy: Policy | None = None,
        dram_policy: Policy | None = None,
        pagecache: PageCache | None = None,
        fast: FastTier | None = None,
        immutable: bool = False,
        chunk_size: int = 1 << 20,
        remote_block: int = 64 << 10,
        stream_budget: int = 256 << 20,
        throughput_slots: int = 4,
        latency_pressure: int = 8,
        fill_parallel: int = 3,
        walk_ahead: int = 16,
        small_file: int = 1 << 20,
        walk_budget: int = 64 << 20,
        kernel_invalidate: Callable[[int], None] | None = None,
        kernel_push: Callable[[int, int, bytes], None] | None = None,
        memory: MemoryDomain | None = None,
        stream_keep_fraction: float = 0.1,
        trace: TraceRecorder | None = None,
        mrc_dram: ShadowMRC | None = None,
        mrc_fast: ShadowMRC | None = None,
        paths: PathStats | None = None,
    ) -> None:
        self.capacity = capacity
        self.stats = stats
        self.classifier = classifier if classifier is not None else Classifier()
        self.policy = policy if policy is not None else (fast.policy if fast else None)
        self.dram_policy = dram_policy
        self.pagecache = pagecache
        self.fast = fast
        self.chunk_size = chunk_size
        self.mrc_dram = mrc_dram if pagecache is not None else None
        self.mrc_fast = mrc_fast if fast is not None else None
        self.consistency = Consistency(immutable=immutable)
        self.dram = DramEntries(
            pagecache.invalidate if pagecache is not None else (lambda eid: None),
            limit=pagecache.capacity_pages if pagecache is not None else 1)
        self.sched = Scheduler(throughput_slots=throughput_slots,
                               latency_pressure=latency_pressure,
                               fill_slots=2 * fill_parallel)
        self.kernel = KernelPages(self.consistency, stats, push=kernel_push,
                                  drop=kernel_invalidate, budget=stream_budget)
        #: The inodes the kernel knows at or below a path (`InodeTable.files_at`), given
        #: by the FUSE layer, which owns the inode table.
        self.kernel_files: Callable[[bytes], list[int]] = lambda path: []
        self.walk = WalkAhead(capacity, stats, ahead=walk_ahead if capacity.remote else 0,
                              small_file=small_file, budget=walk_budget)
        self.paged = PagedReader(self, pagecache, dram_policy, stats, remote_block=remote_block)
        self.stream = StreamReader(self, self.policy, self.sched, stats,
                                   chunk_size=chunk_size, budget=stream_budget)
        self.filler = (Filler(capacity, fast, self.policy, self.sched, stats,
                              chunk_size=chunk_size, parallel=fill_parallel)
                       if fast is not None and self.policy is not None else None)
        self._admissions = 0  # fast-tier admissions in flight (bounded)
        self._nursery: trio.Nursery | None = None
        self.memory = memory if memory is not None else MemoryDomain()
        self.stream_keep_fraction = stream_keep_fraction
        self.trace = trace
        self.paths = paths if paths is not None else PathStats()
        # When the trace last got a row with the tiers' occupancy (`_record`).
        self._occupancy_at = 0.0
        stats.sources["classifier"] = self.classifier.stats
        if pagecache is not None:
            stats.sources["dram"] = pagecache.stats
            stats.sources["dram_entries"] = self.dram.statistics
        if self.policy is not None:
            stats.sources["policy"] = _with_curves(self.policy, self.mrc_fast)
        if dram_policy is not None:
            stats.sources["policy_dram"] = _with_curves(dram_policy, self.mrc_dram)
        stats.sources["queues"] = self.queues
        stats.sources["amplification"] = self.amplification

    @property
    def page_size(self) -> int:
        return self.paged.page_size

    @property
    def remote_block(self) -> int:
        return self.paged.block

    # -- lifecycle -----------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background tasks (read-ahead, admissions, fills, walks, pushes)."""
        async with trio.open_nursery() as nursery:
            self._set_nursery(nursery)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._set_nursery(None)

    def _set_nursery(self, nursery: trio.Nursery | None) -> None:
        self._nursery = nursery
        self.kernel.nursery = self.walk.nursery = self.stream.nursery = nursery
        if self.filler is not None:
            self.filler.nursery = nursery

    async def close(self) -> None:
        """Release every cache (background tasks are gone with their nursery)."""
        self._set_nursery(None)
        if self.trace is not None:
            await self.trace.close()
        if self.pagecache is not None:
            self.pagecache.close()

    # -- consistency ---------------------------------------------------------
    def generation(self, ino: int) -> int:
        return self.consistency.generation(ino)

    def invalidate(self, ino: int, start: int = 0, end: int | None = None) -> None:
        """Forget bytes of inode ``ino`` in [start, end) (all of it by default) in every
        cache keyed by the inode and in its DRAM entry; fetches in flight will not enter
        them."""
        self.consistency.bump(ino)
        whole = start == 0 and end is None
        if self.pagecache is not None:
            ps = self.page_size
            stop = (1 << 62) if end is None else (max(start, end - 1) // ps) + 1
            for eid in self.dram.entries_of(ino):
                if whole:
                    self.pagecache.invalidate(eid)
                else:
                    self.pagecache.invalidate(eid, start // ps, end=stop)
        if whole:
            for p in (self.policy, self.dram_policy):
                if p is not None:
                    p.forget_history(ino)
            self.classifier.forget_file(ino)

    async def drop_kernel_pages(self, path: bytes) -> int:
        """Make the kernel forget its pages of the files at or below ``path`` and return
        once it has (``tierfs evict``): the next read of them reaches the mount. Files with
        a writer open keep theirs (the kernel may hold writes not yet sent to us)."""
        inos = [i for i in self.kernel_files(path) if not self.consistency.has_writer(i)]
        return await self.kernel.drop_now(inos)

    def forget(self, ino: int) -> None:
        """The kernel forgot the inode: its number is never reused, so drop its state.

        Its DRAM pages stay if their entry is still named by a path (a later open of the
        same version finds them)."""
        self.dram.forget(ino)
        for p in (self.policy, self.dram_policy):
            if p is not None:
                p.forget_history(ino)
        self.classifier.forget_file(ino)
        self.consistency.forget(ino)

    # -- handles ---------------------------------------------------------------
    def opened(self, h: FileHandle, st: Stat) -> bool:
        """A handle was opened on a file whose source attributes are ``st``.

        Returns whether the kernel may keep its cached pages of the file.
        """
        h.version = st.version()
        changed, keep = self.consistency.opened(h.ino, h.version)
        if changed:
            self.invalidate(h.ino)
        if self.consistency.written(h.ino):
            h.dram = self.dram.of(h.ino)  # the inode's bytes are ours, not any version's
        else:
            h.dram = self.dram.bind(h.ino, h.path, h.version)
        self.dram.hold(h.ino, h.dram)
        self.consistency.set_eof(h.ino, st.st_size)
        if self.fast is not None and not self.consistency.written(h.ino):
            h.fast = self.fast.file_for(h.path, h.version)
        for p in (self.policy, self.dram_policy):
            if p is not None:
                p.on_open(h.ino, file_size=st.st_size, pid=h.pid)
        self.walk.opened(h.path, st.st_size)
        kept = keep and not self.direct_io(h)
        if kept:
            self.stats.add("open.kernel_cache_kept")
        f = h.figures = self.paths.enter(h.path, h.rule)
        if f is not None:
            f.opened(kept)
        return kept

    def created(self, ino: int, path: bytes) -> None:
        """A file was created (or opened through a stale negative entry): nothing cached
        under its inode or its path may be served."""
        self.invalidate(ino)
        self.dram.unname(path)

    def direct_io(self, h: FileHandle) -> bool:
        """Whether the kernel must not cache this handle's pages.

        Only a rule's ``class = "stream"`` asks for it: direct I/O keeps a stream out of
        the kernel's page cache entirely, but it also refuses shared mmaps, so the
        classifier's guesses never turn it on (streams it detects are dropped from the
        kernel's cache when they end instead).
        """
        return h.override is not None and h.override.stream

    def path_removed(self, path: bytes) -> None:
        """``path`` is gone or changed through the mount: no cache may serve it by name."""
        self.dram.unname(path)
        self.walk.drop(path)
        if self.fast is not None:
            self.fast.drop_path(path)

    def path_renamed(self, old: bytes, new: bytes) -> None:
        # A rename changes a local source's ctime (so its version): DRAM starts again.
        self.dram.unname(old, tree=True)
        self.dram.unname(new, tree=True)
        self.walk.drop(old)
        self.walk.drop(new)
        if self.fast is not None:
            self.fast.rename_path(old, new)
        self.paths.renamed(old, new)

    def writer_opened(self, ino: int) -> None:
        """A handle that may write ``ino`` opened (or a truncate began): no more pushes."""
        self.consistency.writer_opened(ino)

    def writer_closed(self, ino: int) -> None:
        self.consistency.writer_closed(ino)

    async def pushes_drained(self, ino: int) -> None:
        """Wait until no kernel push to ``ino`` is in flight (after `writer_opened`)."""
        await self.kernel.wait_drained(ino)

    # -- reads ---------------------------------------------------------------
    def _info(self, h: FileHandle, offset: int, size: int) -> AccessInfo:
        access = self.classifier.classify(h.ino, h.pid, offset, size)
        ov = h.override
        label = ov.label(access.label) if ov is not None else access.label
        info = AccessInfo(label=label, file_id=h.ino, offset=offset, size=size,
                          pid=h.pid, stream_id=access.stream_id,
                          run_length=access.run_length, file_size=h.size, override=ov)
        for p in (self.policy, self.dram_policy):
            if p is not None:
                p.on_read(info)
        return info

    async def read(self, h: FileHandle, offset: int, size: int) -> bytes:
        t0 = time.perf_counter()
        token = _SERVED.set(set()) if self.trace is not None else None
        f = h.figures
        if f is not None and not f.live:  # the bounded table let the path go: back in
            f = h.figures = self.paths.enter(h.path, h.rule)
        try:
            data = await self._read(h, offset, size, t0)
            if f is not None:
                f.request()
            return data
        except Exception as exc:
            if f is not None:
                f.request(failed=True)
            if isinstance(exc, OSError) and exc.errno == errno.ESTALE and not h.stale:
                # The source changed under this open: what the kernel holds of the
                # inode is of the old version, and other open handles must not be
                # served it from the kernel's cache either. The new generation stops
                # the pushes of old bytes still in flight.
                h.stale = True
                self.consistency.bump(h.ino)
                self.kernel.drop(h.ino)
            raise
        finally:
            if token is not None:
                _SERVED.reset(token)

    async def _read(self, h: FileHandle, offset: int, size: int, t0: float) -> bytes:
        info = self._info(h, offset, size)
        label = info.label
        if label == Label.SEQUENTIAL:
            # Streams never enter DRAM, but what random readers put there serves them
            # too (also while the capacity tier is down, when nothing else could).
            eid = h.dram
            hit = None
            if eid is not None and size > 0 and self.paged.dram_holds_start(eid, offset):
                hit = self.paged.from_dram(h, eid, offset, size, info)
            data = hit if hit is not None else await self.stream.read(h, offset, size, info)
        else:
            data = await self.paged.read(h, offset, size, info)
        self.stats.add("read.requests")
        self.stats.add(f"read.class.{label}")
        elapsed = time.perf_counter() - t0
        if self.trace is not None:
            tiers = _SERVED.get()
            self._record(h, "read", offset, size, str(label), "+".join(sorted(tiers or ())), elapsed)
        self.stats.latency(f"read.{label}", elapsed)
        return data

    def served(self, h: FileHandle, tier: str, label: str, n: int) -> None:
        """Count bytes handed to a reader by tier and access class (and by rule)."""
        if n <= 0:
            return
        tiers = _SERVED.get()
        if tiers is not None:
            tiers.add(tier)
        self.stats.add(f"read.bytes.{tier}.{label}", n)
        if tier == "fast" and self.filler is not None and self.filler.unserved:
            self.filler.served(h.path, h.version, n)
        f = h.figures
        if f is not None:
            f.add(tier, label, n)
        if h.rule is not None:
            self.stats.add(f"rule.{h.rule}.bytes.{tier}", n)

    def occupancy(self) -> tuple[int | None, int | None, int | None]:
        """Bytes the DRAM tier and the fast tier hold, and the fast tier's pinned bytes
        (None for a tier the mount does not have): the trace's occupancy columns."""
        dram = self.pagecache.stats()["bytes_used"] if self.pagecache is not None else None
        if self.fast is None:
            return dram, None, None
        return dram, self.fast.policy.used, self.fast.policy.pinned_bytes

    def queues(self) -> dict[str, int]:
        """Gauges of the background work in flight."""
        return {
            "stream_buffer_bytes": self.stream.buffered,
            "admissions_in_flight": self._admissions,
            **self.sched.statistics(),
            **self.walk.statistics(),
            **self.kernel.statistics(),
        }

    def amplification(self) -> dict[str, Any]:
        """Bytes fetched from the capacity tier against bytes served to readers.

        Source bytes are every read of the capacity tier the engine made (demand reads
        with their widening, stream read-ahead, walk-ahead, whole-file fills), not
        `tierfs warm`'s copies, which nobody reads through the mount at that time.
        """
        c = self.stats.counters
        source = sum(v for k, v in c.items()
                     if k.startswith("source.bytes.") and k != "source.bytes.warm")
        served = sum(v for k, v in c.items() if k.startswith("read.bytes."))
        return {"source_bytes": source, "served_bytes": served,
                "read_amplification": round(source / served, 3) if served else None}

    def _fast_ok(self, h: FileHandle) -> bool:
        """The fast tier may serve or take bytes of this handle's version."""
        return (self.fast is not None and h.version is not None and not h.dirty
                and not self.consistency.written(h.ino))

    async def from_fast(self, h: FileHandle, start: int, length: int) -> bytes | None:
        """Bytes of the handle's version from the fast tier, clipped at its size, or None."""
        if not self._fast_ok(h) or start >= h.size:
            return None
        fast = self.fast
        assert fast is not None
        if h.fast is None or h.fast.dropped:
            # A fill or another handle may have cached this version since the open.
            h.fast = fast.file_for(h.path, h.version)  # type: ignore[arg-type]
            if h.fast is None:
                return None
        gen = self.consistency.generation(h.ino)
        data = await fast.read(h.fast, start, min(length, h.size - start))
        if data is not None and not self.consistency.is_current(h.ino, gen):
            return None  # written or invalidated while we read
        return data

    async def from_walk(self, h: FileHandle, start: int, length: int) -> bytes | None:
        """Bytes fetched ahead of a walk for the handle's version, or None."""
        if not self.walk.busy or h.dirty or self.consistency.written(h.ino):
            return None
        return await self.walk.take(h.path, h.version, start, length)

    def maybe_admit_fast(self, h: FileHandle, start: int, data: bytes, info: AccessInfo,
                         gen: int) -> None:
        """Ask the fast tier's policy; if it admits, copy in the background."""
        if (not data or self.policy is None or self._nursery is None
                or not self._fast_ok(h) or self._admissions >= 64
                or not self.consistency.is_current(h.ino, gen)):
            return
        if not self.policy.should_admit(FastCandidate(h.path, start), len(data), info):
            return
        self._admissions += 1
        self._nursery.start_soon(self._admit_fast, h, start, data, info, gen)

    async def _admit_fast(self, h: FileHandle, start: int, data: bytes, info: AccessInfo,
                          gen: int) -> None:
        fast = self.fast
        assert fast is not None and h.version is not None
        try:
            cf = h.fast
            if cf is None or cf.dropped:
                cf = h.fast = await fast.file_create(h.path, h.version)
            if self.consistency.is_current(h.ino, gen):
                pinned = info.override is not None and info.override.pin
                await fast.admit(cf, start, data, pinned=pinned, info=info)
        except OSError as exc:
            self.stats.add("fast.admit_failed")
            log.debug("fast-tier admission failed: %s", exc)
        except Exception:
            self.stats.add("fast.admit_failed")
            log.exception("fast-tier admission failed")
        finally:
            self._admissions -= 1

    def maybe_fill(self, h: FileHandle, info: AccessInfo, gen: int) -> None:
        """After a remote random miss: a background whole-file fill, if the policy says so."""
        if self.filler is None or not self._fast_ok(h):
            return
        ino = h.ino
        self.filler.maybe_fill(h.path, h.version, info,  # type: ignore[arg-type]
                               lambda: self.consistency.is_current(ino, gen))

    async def copy_to_fast(self, path: bytes, version: SourceVersion | None = None, *,
                           pinned: bool = False, info: AccessInfo | None = None,
                           limiter: trio.CapacityLimiter | None = None,
                           listed: Stat | None = None) -> int:
        """Copy a whole file into the fast tier (`tierfs warm`, pins): of ``version``,
        or (None) of the version the source has when the copy opens it; its reads under
        ``limiter`` (default: the throughput limiter). ``listed``: what a listing said of
        it; a file listed at most one chunk long is fetched in one go (`Filler.copy_small`)."""
        if self.filler is None:
            raise OSError(errno.ENOTSUP, "no fast tier")
        if listed is not None and version is None and info is None:
            return await self.filler.copy_small(path, listed, pinned=pinned, limiter=limiter)
        return await self.filler.copy(path, version, pinned=pinned, info=info,
                                      limiter=limiter)

    def _record(self, h: FileHandle, op: str, offset: int, size: int, label: str,
                tier: str = "", latency: float | None = None) -> None:
        assert self.trace is not None
        now = time.time()
        row: tuple[Any, ...] = (now, h.pid, h.path.decode("utf-8", "surrogateescape"),
                                h.ino, offset, size, op, label, tier, latency)
        if now - self._occupancy_at >= OCCUPANCY_INTERVAL:
            self._occupancy_at = now
            row += self.occupancy()
        if self.trace.record(row) and self._nursery is not None:
            self._nursery.start_soon(self.trace.flush_batch)

    # -- writes and the rest of a handle's life --------------------------------
    async def write(self, h: FileHandle, offset: int, data: bytes) -> int:
        t0 = time.perf_counter()
        ino = h.ino
        self.invalidate(ino, offset, offset + len(data))
        h.dirty = True
        if self.consistency.mark_written(ino):
            self.path_removed(h.path)  # the fast tier's copy is of the old version
        h.fast = None
        eof = self.consistency.eof(ino)
        if eof is not None and offset + len(data) > eof:
            self.invalidate(ino, eof, eof + 1)
        n = await h.file.pwrite(offset, data)
        # Again once the bytes are in: a read that fetched the old bytes while
        # the write was in flight took the first bump's generation.
        self.invalidate(ino, offset, offset + len(data))
        if offset + n > h.size:
            h.size = offset + n
        if offset + n > (self.consistency.eof(ino) or 0):
            self.consistency.set_eof(ino, offset + n)
        elapsed = time.perf_counter() - t0
        if self.trace is not None:
            self._record(h, "write", offset, n, "unknown", "", elapsed)
        self.stats.add("write.requests")
        self.stats.add("write.bytes", n)
        self.stats.latency("write", elapsed)
        return n

    def truncated(self, ino: int, path: bytes, size: int) -> None:
        """The file's size changed to ``size`` by setattr."""
        eof = self.consistency.eof(ino)
        self.invalidate(ino, min(size, eof if eof is not None else size))
        self.consistency.set_eof(ino, size)
        self.path_removed(path)

    async def flush(self, h: FileHandle) -> None:
        await h.file.flush()

    async def fsync(self, h: FileHandle, datasync: bool) -> None:
        await h.file.fsync(datasync)

    async def release(self, h: FileHandle, *, last: bool = True) -> None:
        """The handle is closed; ``last`` if no other handle of its inode is open."""
        if h.dram is not None:
            self.dram.let_go(h.ino, h.dram)
            h.dram = None
        if last:
            self.consistency.closed_last(h.ino)
        for p in (self.policy, self.dram_policy):
            if p is not None:
                p.on_close(h.ino)
        st = h.stream
        if st is not None:
            self.stream.release(h)
            if (last and self.kernel.drop_fn is not None and self._nursery is not None
                    and st.served >= self.classifier.sequential_cutoff
                    and h.size > self.stream_keep_fraction * self.memory.bytes()):
                # A big stream's pages would push the hot random set out of the
                # kernel's page cache: drop them now that the stream is done.
                self.stats.add("kernel.stream_pages_dropped")
                self.kernel.drop(h.ino)
        await h.file.close()
