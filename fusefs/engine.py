"""The data path of a mount: reads and writes across the tiers.

`operations.py` hands every read, write, truncate and sync here. For each read
the classifier labels the request (`sequential`, `random`, `unknown`); then:

* sequential streams are served through a per-handle read-ahead buffer that
  fetches whole chunks from the capacity tier in the background (window
  doubling up to the policy's maximum) and are not admitted to DRAM: a stream
  must not flush the hot random set;
* everything else is served page-aligned: the DRAM page cache (C, `csrc/`)
  first, then one aligned, coalesced ranged read from the capacity tier for
  the whole request, whose pages the policy may admit to DRAM. On a remote
  tier (an object store) that read is widened to the aligned ``remote_block``
  (64 KiB) around the request: one GET costs a round trip either way, and the
  neighbours of a random read are then DRAM hits.

Consistency: every file id has a generation, bumped by writes, truncates and
source changes. A fetch that started under an older generation never enters a
cache, so a reader cannot see bytes older than a write that completed before
its read began.

Small-file walks: on a remote tier, a process that opens the small files of a
directory in name order (a loader or indexer walking a tree) gets the next
files fetched ahead, several at a time, into a bounded buffer; each costs a
round trip or two that the walk no longer waits for.

Whole-file fill: on a remote tier, a random read that misses every cache asks
the policy (`Policy.fill_whole`) whether to fetch the file whole into the fast
tier in the background; later misses are then local reads, not round trips.

Scheduling: random reads (latency class) go straight to the capacity tier;
stream read-ahead, fills and warming (throughput class) run under a small
limiter, so they cannot occupy every worker thread and push random reads' tail
latency up, and optional work waits while latency reads crowd the tier.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from .classifier import Classifier, Label
from .handles import FileHandle
from .memory import MemoryDomain
from .pagecache import Hint, PageCache
from .policies.base import AccessInfo, Override, Policy, Tier
from .stats import Stats
from .tiers.capacity import CapacityTier, SourceVersion, Stat
from .tiers.fast import FastTier
from .trace import TraceRecorder

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Chunk:
    """One read-ahead chunk of a stream: in flight until ``done`` is set."""

    start: int
    gen: int
    started: bool = False
    #: The tier the bytes came from ("fast" or "capacity"), for the stats.
    tier: str = "capacity"
    done: trio.Event = field(default_factory=trio.Event)
    #: Read-ahead no reader waits for yet: it yields to latency reads.
    optional: bool = False
    data: bytes = b""
    error: OSError | None = None


@dataclass(slots=True, eq=False)
class StreamState:
    """Read-ahead state of one handle; lives in `FileHandle.stream`."""

    chunks: dict[int, _Chunk] = field(default_factory=dict)
    #: Byte offset up to which chunks have been requested.
    horizon: int = 0
    #: Bytes served to the stream so far.
    served: int = 0


class Engine:
    """Serves file data for one mount.

    Args:
        capacity: the source of truth.
        stats: where counters and latencies go.
        classifier: labels requests; a default one is made if omitted.
        policy: decides admission and read-ahead.
        pagecache: the DRAM tier, or ``None`` to run without it.
        chunk_size: read-ahead fetch unit.
        remote_block: on a remote capacity tier, the aligned block a DRAM miss
            fetches (and offers to DRAM) around the requested pages.
        stream_budget: bytes all read-ahead buffers together may hold.
        throughput_slots: concurrent read-ahead fetches (throughput class).
        latency_pressure: latency-class reads in flight at which optional
            throughput work (read-ahead nobody waits for yet, fills) waits.
        fill_parallel: ranged reads in flight per whole-file fill.
        walk_ahead: on a remote tier, small files fetched ahead of a walk.
        small_file: the largest file a walk fetches ahead.
        walk_budget: bytes the files fetched ahead may hold.
        kernel_push: stores bytes in the kernel's page cache for an inode
            (``pyfuse3.notify_store``); given only where the kernel may keep a
            file's pages across opens (``consistency = "immutable"``). The
            pages of a fetched block that a random reader did not ask for are
            pushed, so its next reads there never reach the daemon.
    """

    def __init__(
        self,
        capacity: CapacityTier,
        *,
        stats: Stats,
        classifier: Classifier | None = None,
        policy: Policy | None = None,
        pagecache: PageCache | None = None,
        fast: FastTier | None = None,
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
    ) -> None:
        self.capacity = capacity
        self.stats = stats
        self.classifier = classifier if classifier is not None else Classifier()
        self.policy = policy
        self.pagecache = pagecache
        self.fast = fast
        self._admissions = 0  # fast-tier admissions in flight (bounded)
        self.page_size = pagecache.page_size if pagecache is not None else 4096
        self.chunk_size = chunk_size
        # A ranged GET costs a round trip whatever its size, so on a remote tier a miss
        # fetches a whole aligned block; locally a page is as cheap as the syscall.
        self.remote_block = remote_block if capacity.remote and pagecache is not None and \
            remote_block > self.page_size else self.page_size
        self.stream_budget = stream_budget
        self._stream_bytes = 0
        self._gen: dict[int, int] = {}
        # Files written through the mount since their handles were last all
        # closed: their fast-tier copy is of an older version, and a version
        # (size, mtime) may not change between two writes in one clock tick,
        # so the fast tier stays out of their reads until the last close.
        self._written: set[int] = set()
        # The last size seen per file: the page cache keeps a file's last page
        # short, and a short page reads as end of file, so when the file grows
        # that page must go even though the write did not touch it.
        self._eof: dict[int, int] = {}
        self.throughput = trio.CapacityLimiter(throughput_slots)
        # Latency-class capacity reads in flight; at ``latency_pressure`` or
        # more, optional read-ahead waits (throughput work yields).
        self.latency_pressure = latency_pressure
        self._latency_inflight = 0
        self._calm: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.fill_parallel = fill_parallel
        # Versions filled or being filled: one fill per version of a file per
        # mount, so a tier too small to keep a file cannot loop refetching it.
        self._fills: set[tuple[bytes, SourceVersion]] = set()
        self.kernel_invalidate = kernel_invalidate
        self.kernel_push = kernel_push
        self.walk_ahead = walk_ahead if capacity.remote else 0
        self.small_file = small_file
        self.walk_budget = walk_budget
        # Files fetched ahead of a walk: path -> (version, bytes), oldest first;
        # paths being fetched -> done. One use each: the DRAM tier keeps them after.
        self._ahead: OrderedDict[bytes, tuple[SourceVersion, bytes]] = OrderedDict()
        self._ahead_bytes = 0
        self._ahead_flight: dict[bytes, trio.Event] = {}
        self._walks: dict[bytes, bytes] = {}  # directory -> last name opened in it
        # Versions fetched ahead before (bounded): a second walk finds them in
        # the caches (DRAM, the kernel's), so they are not fetched again.
        self._walked: OrderedDict[bytes, SourceVersion] = OrderedDict()
        self._walk_slots = trio.CapacityLimiter(8)
        # Pushes race with writes: a write fills the kernel's pages, then a push
        # still in flight would overwrite them with older bytes. So a file with
        # a writer open gets no pushes, and opening one waits for those in flight.
        self._writers: dict[int, int] = {}
        self._pushes: dict[int, int] = {}
        self._pushes_done: dict[int, trio.Event] = {}
        self._push_bytes = 0
        self._push_threads = trio.CapacityLimiter(2)
        self.memory = memory if memory is not None else MemoryDomain()
        self.stream_keep_fraction = stream_keep_fraction
        self.trace = trace
        stats.sources["classifier"] = self.classifier.stats
        if pagecache is not None:
            stats.sources["dram"] = pagecache.stats
        if policy is not None:
            stats.sources["policy"] = policy.statistics
        stats.sources["queues"] = self.queues

    # -- lifecycle -----------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background tasks (read-ahead) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def close(self) -> None:
        """Release every cache (background tasks are gone with their nursery)."""
        self._nursery = None
        if self.trace is not None:
            await self.trace.close()
        if self.pagecache is not None:
            self.pagecache.close()

    # -- consistency ---------------------------------------------------------
    def generation(self, file_id: int) -> int:
        return self._gen.get(file_id, 0)

    def invalidate(self, file_id: int, start: int = 0, end: int | None = None) -> None:
        """Forget cached bytes of ``file_id`` in [start, end) (all of it by default)."""
        self._gen[file_id] = self._gen.get(file_id, 0) + 1
        if self.pagecache is not None:
            if start == 0 and end is None:
                self.pagecache.invalidate(file_id)
            else:
                ps = self.page_size
                stop = (1 << 62) if end is None else (max(start, end - 1) // ps) + 1
                self.pagecache.invalidate(file_id, start // ps, end=stop)
        if self.policy is not None and start == 0 and end is None:
            self.policy.invalidate_file(file_id)
        if start == 0 and end is None:
            self.classifier.forget_file(file_id)

    def forget(self, file_id: int) -> None:
        """The kernel forgot the inode: its number is never reused, so drop its state."""
        self._gen.pop(file_id, None)
        self._eof.pop(file_id, None)
        self._written.discard(file_id)
        if self.pagecache is not None:
            self.pagecache.invalidate(file_id)
        if self.policy is not None:
            self.policy.invalidate_file(file_id)
        self.classifier.forget_file(file_id)

    # -- handles ---------------------------------------------------------------
    def opened(self, h: FileHandle, st: Stat) -> None:
        """A handle was opened on a file whose source attributes are ``st``."""
        h.version = st.version()
        self._eof[h.file_id] = st.st_size
        if self.fast is not None:
            h.fast = self.fast.file_for(h.path, h.version)
        if self.policy is not None:
            self.policy.on_open(h.file_id, file_size=st.st_size, pid=h.pid)
        if self.walk_ahead and st.st_size <= self.small_file:
            self._note_walk(h.path)

    def direct_io(self, h: FileHandle) -> bool:
        """Whether the kernel must not cache this handle's pages.

        Only a rule's ``class = "stream"`` asks for it: direct I/O keeps a
        stream out of the kernel's page cache entirely, but it also refuses
        shared mmaps, so the classifier's guesses never turn it on (streams it
        detects are dropped from the kernel's cache when they end instead).
        """
        ov = h.override
        return ov is not None and ov.access_class == "stream"

    def path_removed(self, path: bytes) -> None:
        self._drop_ahead(path)
        if self.fast is not None:
            self.fast.drop_path(path)

    def path_renamed(self, old: bytes, new: bytes) -> None:
        self._drop_ahead(old)
        self._drop_ahead(new)
        if self.fast is not None:
            self.fast.rename_path(old, new)

    @staticmethod
    def _ghost_id(path: bytes) -> int:
        """A policy key space for files not (yet) in the fast tier: negative ids."""
        return -(hash(path) & ((1 << 62) - 1)) - 1

    # -- reads ---------------------------------------------------------------
    def _info(self, h: FileHandle, offset: int, size: int) -> tuple[AccessInfo, Label]:
        access = self.classifier.classify(h.file_id, h.pid, offset, size)
        label = access.label
        override: Override | None = h.override
        if override is not None and override.access_class is not None:
            label = Label.SEQUENTIAL if override.access_class == "stream" else Label.RANDOM
        info = AccessInfo(label=label, file_id=h.file_id, offset=offset, size=size,
                          pid=h.pid, stream_id=access.stream_id,
                          run_length=access.run_length, file_size=h.size, override=override)
        if self.policy is not None:
            self.policy.on_read(info)
        return info, label

    async def read(self, h: FileHandle, offset: int, size: int) -> bytes:
        t0 = time.perf_counter()
        info, label = self._info(h, offset, size)
        if label is Label.SEQUENTIAL:
            data = await self._read_stream(h, offset, size, info)
        else:
            data = await self._read_paged(h, offset, size, info)
        self.stats.add("read.requests")
        self.stats.add(f"read.class.{label.value}")
        if self.trace is not None:
            self._record(h, "read", offset, size, label.value)
        self.stats.latency(f"read.{label.value}", time.perf_counter() - t0)
        return data

    def _served(self, h: FileHandle, tier: str, label: str, n: int) -> None:
        """Count bytes handed to a reader by tier and access class (and by rule)."""
        if n <= 0:
            return
        self.stats.add(f"read.bytes.{tier}.{label}", n)
        if h.rule is not None:
            self.stats.add(f"rule.{h.rule}.bytes.{tier}", n)

    def queues(self) -> dict[str, int]:
        """Gauges of the background work in flight."""
        return {
            "stream_buffer_bytes": self._stream_bytes,
            "readahead_in_flight": self.throughput.borrowed_tokens,
            "readahead_waiting": self.throughput.statistics().tasks_waiting,
            "admissions_in_flight": self._admissions,
        }

    async def _read_paged(self, h: FileHandle, offset: int, size: int,
                          info: AccessInfo) -> bytes:
        ps = self.page_size
        first = offset // ps
        last = (offset + size - 1) // ps
        start = first * ps
        pc = self.pagecache
        if pc is not None and size > 0:
            buf = bytearray((last - first + 1) * ps)
            n = pc.get_range_into(h.file_id, first, buf)
            # Complete if it covers the request, or stopped at a short (last) page.
            if n >= offset + size - start or (n % ps and n > offset - start):
                self._served(h, "dram", info.label, min(size, n - (offset - start)))
                # Not past n: a short last page ends the file, the rest of buf is zeros.
                return bytes(memoryview(buf)[offset - start:min(n, offset - start + size)])
            self.stats.add("dram.miss")
        gen = self.generation(h.file_id)
        length = (last + 1) * ps - start
        req_start, req_end = start, start + length  # the pages the reader asked for
        rb = self.remote_block
        # On a remote tier, a miss serves the aligned block(s) around the
        # request: the page cache gets them all, the reader its slice.
        bstart = start // rb * rb
        bend = -(-(offset + size) // rb) * rb
        data = None
        if h.fast is None and self.fast is not None and h.version is not None \
                and h.file_id not in self._written:
            # A fill or another handle may have cached this version since the open.
            h.fast = self.fast.file_for(h.path, h.version)
        if h.fast is not None and h.file_id not in self._written and start < h.size:
            fast = self.fast
            assert fast is not None
            if rb > ps and bend - bstart > length:
                data = await fast.read(h.fast, bstart, min(bend, h.size) - bstart)
                if data is not None:
                    first, start = bstart // ps, bstart
            if data is None:
                data = await fast.read(h.fast, start, min(length, h.size - start))
            if data is not None:
                self._served(h, "fast", info.label, min(size, len(data) - (offset - start)))
        if data is None and (self._ahead or self._ahead_flight):
            data = await self._take_ahead(h, start, length)
            if data is not None:
                self._served(h, "ahead", info.label, min(size, len(data) - (offset - start)))
        if data is None:
            if rb > ps:
                first, start, length = bstart // ps, bstart, bend - bstart
                self.stats.add("read.remote_blocks")
            self._latency_inflight += 1
            try:
                data = await h.file.pread(start, length)
            finally:
                self._latency_inflight -= 1
                if self._calm is not None and self._latency_inflight < self.latency_pressure:
                    self._calm.set()
                    self._calm = None
            self._served(h, "capacity", info.label, min(size, len(data) - (offset - start)))
            self._maybe_admit_fast(h, start, data, info, gen)
            self._maybe_fill(h, info, gen)
        if pc is not None and data and gen == self.generation(h.file_id) and not h.dirty:
            admit = self.policy is None or self.policy.should_admit(
                (h.file_id, first), len(data), info, Tier.DRAM)
            hint = Hint.PIN if info.override is not None and info.override.pin else \
                Hint.NORMAL if admit else Hint.DONT_ADMIT
            self.stats.add(f"dram.{'admitted' if admit else 'rejected'}_bytes.{info.label}",
                           len(data))
            mv = memoryview(data)
            for i in range(0, len(data), ps):
                try:
                    pc.put(h.file_id, first + i // ps, mv[i:i + ps], hint=hint)
                except OSError:  # every page pinned: serve without caching
                    self.stats.add("dram.put_failed")
                    break
        if start < req_start or start + len(data) > req_end:
            self._maybe_push(h, start, data, req_start, req_end, gen)
        return data[offset - start:offset - start + size]

    async def _read_stream(self, h: FileHandle, offset: int, size: int,
                           info: AccessInfo) -> bytes:
        st: StreamState | None = h.stream
        cs = self.chunk_size
        if st is None:
            # Chunks sit at multiples of the chunk size: a reader's position
            # maps to exactly one chunk, so no byte is fetched twice.
            st = h.stream = StreamState(horizon=offset // cs * cs)
        gen = self.generation(h.file_id)
        end = offset + size
        # Drop chunks behind the reader and chunks from an older generation.
        for cstart in [c for c, ch in st.chunks.items()
                       if c + cs <= offset or ch.gen != gen]:
            self._drop_chunk(st, cstart)
        window = self.policy.readahead(info) if self.policy is not None else 8 * cs
        want_end = end + max(window, 0)
        first_chunk = offset // cs * cs
        if st.horizon < first_chunk or st.horizon > want_end + cs:
            st.horizon = first_chunk  # the stream jumped
        while st.horizon < want_end:
            c = st.horizon
            st.horizon += cs
            if c in st.chunks:
                continue
            needed = c < end
            if not needed and (self._stream_bytes + cs > self.stream_budget
                               or self._nursery is None):
                break  # read-ahead is optional; the budget bounds memory
            self._start_chunk(h, st, c, gen, info, optional=not needed)
        out = []
        pos = offset
        while pos < end:
            c = pos // cs * cs
            ch = st.chunks.get(c)
            if ch is None:
                ch = self._start_chunk(h, st, c, gen, info)
            if ch.optional:
                ch.optional = False  # a reader waits for it now: no more yielding
                self._wake_deferred()
            if not ch.started:
                await self._fetch_chunk(h, ch, info)  # no background nursery: fetch inline
            await ch.done.wait()
            if ch.error is not None:
                self._drop_chunk(st, c)
                raise ch.error
            piece = ch.data[pos - c:min(end, c + cs) - c]
            self._served(h, ch.tier, info.label, len(piece))
            out.append(piece)
            pos += len(piece)
            if len(ch.data) < cs:
                break  # end of file
        data = b"".join(out)
        st.served += len(data)
        return data

    def _wake_deferred(self) -> None:
        if self._calm is not None:
            self._calm.set()  # the deferred chunks look again; the urgent one goes
            self._calm = None

    async def _yield_to_latency(self, ch: _Chunk | None = None, counter: str = "readahead.yielded") -> None:
        """Hold optional work (read-ahead ``ch``, or a fill) while latency reads crowd the tier."""
        counted = False
        while (ch is None or ch.optional) and self._latency_inflight >= self.latency_pressure:
            if not counted:
                self.stats.add(counter)
                counted = True
            if self._calm is None:
                self._calm = trio.Event()
            await self._calm.wait()

    def _start_chunk(self, h: FileHandle, st: StreamState, start: int, gen: int,
                     info: AccessInfo, *, optional: bool = False) -> _Chunk:
        ch = _Chunk(start, gen, optional=optional)
        st.chunks[start] = ch
        self._stream_bytes += self.chunk_size
        if self._nursery is not None:
            self._nursery.start_soon(self._fetch_chunk, h, ch, info)
            ch.started = True
        return ch

    async def _fetch_chunk(self, h: FileHandle, ch: _Chunk, info: AccessInfo) -> None:
        ch.started = True
        try:
            data = None
            cf = h.fast
            if cf is not None and h.file_id not in self._written and ch.start < h.size:
                data = await self.fast.read(  # type: ignore[union-attr]
                    cf, ch.start, min(self.chunk_size, h.size - ch.start))
                if data is not None:
                    ch.tier = "fast"
                    self.stats.add("readahead.bytes.fast", len(data))
            if data is None and (self._ahead or self._ahead_flight):
                data = await self._take_ahead(h, ch.start, self.chunk_size)
            if data is None:
                await self._yield_to_latency(ch)
                async with self.throughput:
                    data = await h.file.pread(ch.start, self.chunk_size)
                self.stats.add("readahead.bytes.capacity", len(data))
                self._maybe_admit_fast(h, ch.start, data, info, ch.gen)
            ch.data = data
        except OSError as exc:
            ch.error = exc
        except Exception as exc:  # a bug here must reach the reader, not the nursery
            log.exception("read-ahead failed")
            ch.error = OSError(5, f"read-ahead failed: {exc}")
        finally:
            ch.done.set()

    def _maybe_admit_fast(self, h: FileHandle, start: int, data: bytes, info: AccessInfo,
                          gen: int) -> None:
        """Ask the policy; if it admits, copy into the fast tier in the background."""
        if (self.fast is None or self.policy is None or not data
                or h.file_id in self._written
                or gen != self.generation(h.file_id) or self._nursery is None
                or self._admissions >= 64):
            return
        if not self.policy.should_admit((self._ghost_id(h.path), start), len(data), info,
                                        Tier.FAST):
            return
        self._admissions += 1
        self._nursery.start_soon(self._admit_fast, h, start, data, info, gen)

    async def _admit_fast(self, h: FileHandle, start: int, data: bytes, info: AccessInfo,
                          gen: int) -> None:
        fast = self.fast
        assert fast is not None
        try:
            cf = h.fast
            if cf is None:
                cf = h.fast = await fast.file_create(h.path, h.version)
            if gen == self.generation(h.file_id) and h.file_id not in self._written:
                pinned = info.override is not None and info.override.pin
                await fast.admit(cf, start, data, pinned=pinned, info=info)
        except OSError as exc:
            self.stats.add("fast.admit_failed")
            log.debug("fast-tier admission failed: %s", exc)
        except Exception:
            log.exception("fast-tier admission failed")
        finally:
            self._admissions -= 1

    # -- small files ahead of a walk ------------------------------------------------
    def _note_walk(self, path: bytes) -> None:
        """A small file was opened: if its directory is being walked in order, fetch ahead."""
        parent, _, name = path.rpartition(b"/")
        last = self._walks.get(parent)
        if len(self._walks) >= 4096 and last is None:
            self._walks.clear()  # bounded
        self._walks[parent] = name
        if last is None or name <= last or self._nursery is None:
            return  # a first open, or out of order: not a walk (yet)
        entries = self.capacity.cached_listing(parent)
        if not entries:
            return
        names = sorted(n for n, st in entries.items()
                       if n > name and st.is_reg and st.st_size <= self.small_file)
        for n in names[:self.walk_ahead]:
            child = parent + b"/" + n if parent else n
            if (child in self._ahead or child in self._ahead_flight
                    or self._walked.get(child) == entries[n].version()):
                continue
            if self._ahead_bytes + entries[n].st_size > self.walk_budget:
                break
            self._ahead_flight[child] = trio.Event()
            self._nursery.start_soon(self._fetch_ahead, child, entries[n])

    async def _fetch_ahead(self, path: bytes, st: Stat) -> None:
        mine = self._ahead_flight[path]
        try:
            async with self._walk_slots:
                f = await self.capacity.open(path, os.O_RDONLY)
                try:
                    version = (await f.fstat()).version()
                    data = await f.pread(0, st.st_size + 1)
                finally:
                    await f.close()
            if (version == st.version() and len(data) == st.st_size
                    and self._ahead_flight.get(path) is mine):  # not dropped meanwhile
                while self._ahead and self._ahead_bytes + len(data) > self.walk_budget:
                    _, (_, old) = self._ahead.popitem(last=False)
                    self._ahead_bytes -= len(old)
                self._ahead[path] = (version, data)
                self._ahead_bytes += len(data)
                self._walked[path] = version
                if len(self._walked) > 100_000:
                    self._walked.popitem(last=False)
                self.stats.add("walk.fetched_files")
        except OSError as exc:
            self.stats.add("walk.failed")
            log.debug("fetch ahead of %r failed: %s", path, exc)
        except Exception:
            log.exception("fetch ahead of %r failed", path)
        finally:
            if self._ahead_flight.get(path) is mine:
                del self._ahead_flight[path]
            mine.set()

    async def _take_ahead(self, h: FileHandle, start: int, length: int) -> bytes | None:
        """Bytes of ``h`` fetched ahead of a walk (once: later reads use the caches)."""
        ev = self._ahead_flight.get(h.path)
        if ev is not None:
            await ev.wait()
        ent = self._ahead.pop(h.path, None)
        if ent is None:
            return None
        version, data = ent
        self._ahead_bytes -= len(data)
        if version != h.version or h.dirty or h.file_id in self._written:
            return None
        self.stats.add("walk.hits")
        if start or length < len(data):
            # Only part asked for: keep the rest for the next read of the file.
            self._ahead[h.path] = ent
            self._ahead_bytes += len(data)
        return data[start:start + length]

    def _drop_ahead(self, path: bytes) -> None:
        ent = self._ahead.pop(path, None)
        if ent is not None:
            self._ahead_bytes -= len(ent[1])
        ev = self._ahead_flight.pop(path, None)  # the fetch finds itself unwanted
        if ev is not None:
            ev.set()

    # -- pages into the kernel's cache ------------------------------------------------
    def writer_opened(self, file_id: int) -> None:
        """A handle that may write ``file_id`` opened (or a truncate began): no more pushes."""
        self._writers[file_id] = self._writers.get(file_id, 0) + 1

    def writer_closed(self, file_id: int) -> None:
        n = self._writers.get(file_id, 0) - 1
        if n > 0:
            self._writers[file_id] = n
        else:
            self._writers.pop(file_id, None)

    async def pushes_drained(self, file_id: int) -> None:
        """Wait until no push to ``file_id`` is in flight (call after `writer_opened`).

        Only from an open or a truncate: the kernel holds no page of the file
        locked then. A write request must never wait here: the kernel holds
        the pages it writes locked, and a push in flight waits for those locks.
        """
        while self._pushes.get(file_id):
            ev = self._pushes_done.setdefault(file_id, trio.Event())
            await ev.wait()

    def _maybe_push(self, h: FileHandle, start: int, data: bytes, req_start: int,
                    req_end: int, gen: int) -> None:
        """Hand the kernel the pages of a fetched block around what the reader asked for."""
        fid = h.file_id
        if (self.kernel_push is None or self._nursery is None or h.dirty
                or fid in self._written or self._writers.get(fid) or self.direct_io(h)
                or self._push_bytes + len(data) > self.stream_budget):
            return
        pieces = []
        if start < req_start:
            pieces.append((start, data[:req_start - start]))
        if start + len(data) > req_end:
            pieces.append((req_end, data[req_end - start:]))
        if not pieces:
            return
        self._pushes[fid] = self._pushes.get(fid, 0) + 1
        self._push_bytes += len(data)
        self._nursery.start_soon(self._push, h.ino, fid, gen, pieces, len(data))

    async def _push(self, ino: int, fid: int, gen: int, pieces: list[tuple[int, bytes]],
                    nbytes: int) -> None:
        push = self.kernel_push
        assert push is not None
        try:
            for off, piece in pieces:
                if gen != self.generation(fid) or self._writers.get(fid):
                    break
                # In a thread: the kernel locks each page it stores, and a read
                # of that page in flight holds its lock until we answer it.
                await trio.to_thread.run_sync(push, ino, off, piece,
                                              limiter=self._push_threads)
                self.stats.add("kernel.pushed_bytes", len(piece))
        except OSError as exc:  # the kernel forgot the inode, or no support
            self.stats.add("kernel.push_failed")
            log.debug("kernel push to inode %d failed: %s", ino, exc)
        finally:
            self._push_bytes -= nbytes
            n = self._pushes[fid] - 1
            if n:
                self._pushes[fid] = n
            else:
                del self._pushes[fid]
                ev = self._pushes_done.pop(fid, None)
                if ev is not None:
                    ev.set()

    # -- whole files into the fast tier ----------------------------------------------
    def _maybe_fill(self, h: FileHandle, info: AccessInfo, gen: int) -> None:
        """After a remote random miss: start a background fill if the policy wants one."""
        if (self.fast is None or self.policy is None or self._nursery is None
                or not self.capacity.remote or h.dirty or h.file_id in self._written
                or h.version is None):
            return
        key = (h.path, h.version)
        if key in self._fills or not self.policy.fill_whole(info):
            return
        if len(self._fills) > 100_000:
            self._fills.clear()  # bounded memory; at worst a version is filled twice
        self._fills.add(key)
        self.stats.add("fill.started")
        self._nursery.start_soon(self._fill, h, info, gen)

    async def _fill(self, h: FileHandle, info: AccessInfo, gen: int) -> None:
        fid = h.file_id

        def current() -> bool:
            return self.generation(fid) == gen and fid not in self._written

        try:
            n = await self.copy_to_fast(h.path, h.version, h.size,  # type: ignore[arg-type]
                                        info=info, parallel=self.fill_parallel,
                                        background=True, still_wanted=current)
            self.stats.add("fill.bytes", n)
            self.stats.add("fill.done")
        except OSError as exc:
            self.stats.add("fill.failed")
            log.info("fill of %r stopped: %s", h.path, exc)
        except Exception:
            self.stats.add("fill.failed")
            log.exception("fill of %r failed", h.path)

    async def copy_to_fast(self, path: bytes, version: SourceVersion, size: int, *,
                           pinned: bool = False, info: AccessInfo | None = None,
                           parallel: int = 1, background: bool = False,
                           still_wanted: Callable[[], bool] | None = None,
                           batch: int = 4) -> int:
        """Copy ``path`` (of ``version``, ``size`` bytes) into the fast tier.

        Reads cover up to ``batch`` chunks (fewer, larger requests), stored as
        chunk-sized extents. Chunks already present are skipped (so an
        interrupted copy resumes), and pinned if ``pinned``. Throughput-class
        work, ``parallel`` reads at a time: a fill (``background``) under its own
        limiter, so that a stream's read-ahead cannot starve the fill a random
        reader waits on (nor the fill the stream), and waiting while latency
        reads crowd the tier; warming under the read-ahead limiter. Stops early
        when ``still_wanted()`` turns false (the file changed) or the fast tier
        refuses the data (full, or no room beside pinned data). Returns the
        bytes copied; raises OSError if the source fails or changes size.
        """
        fast = self.fast
        if fast is None:
            raise OSError(errno.ENOTSUP, "no fast tier")
        cf = await fast.file_create(path, version)
        cs = self.chunk_size
        step = cs * max(1, batch)
        offsets = iter(range(0, size, step))
        limiter = trio.CapacityLimiter(max(1, parallel)) if background else self.throughput
        copied = 0
        failed: list[OSError] = []
        f = await self.capacity.open(path, os.O_RDONLY)

        def missing(lo: int, hi: int) -> list[int]:
            out = []
            for off in range(lo, hi, cs):
                ext = fast.covering(cf, off, min(hi, off + cs))
                if ext is None:
                    out.append(off)
                elif pinned and not ext.pinned:
                    fast.set_pinned(cf, ext, True)
            return out

        async def worker() -> None:
            nonlocal copied
            for lo in offsets:  # shared: each step goes to one worker
                if failed or (still_wanted is not None and not still_wanted()):
                    return
                hi = min(size, lo + step)
                todo = missing(lo, hi)
                if not todo:
                    continue
                if background:
                    await self._yield_to_latency(counter="fill.yielded")
                rlo, rhi = todo[0], min(hi, todo[-1] + cs)
                try:
                    async with limiter:
                        data = await f.pread(rlo, rhi - rlo)
                    if len(data) != rhi - rlo:
                        raise OSError(errno.EIO, f"{path!r} changed while being copied")
                except OSError as exc:
                    failed.append(exc)
                    return
                if still_wanted is not None and not still_wanted():
                    return
                for off in todo:
                    piece = data[off - rlo:min(hi, off + cs) - rlo]
                    if fast.covering(cf, off, off + len(piece)) is not None:
                        continue  # a reader's admission got there first
                    if not await fast.admit(cf, off, piece, pinned=pinned, info=info):
                        self.stats.add("warm.skipped_chunks")
                        if background:
                            return  # full, or no room beside pinned data: stop filling
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

    def _drop_chunk(self, st: StreamState, start: int) -> None:
        if st.chunks.pop(start, None) is not None:
            self._stream_bytes -= self.chunk_size

    def _record(self, h: FileHandle, op: str, offset: int, size: int, label: str) -> None:
        assert self.trace is not None
        row = (time.time(), h.pid, h.path.decode("utf-8", "surrogateescape"), h.file_id,
               offset, size, op, label)
        if self.trace.record(row) and self._nursery is not None:
            self._nursery.start_soon(self.trace.flush_batch)

    # -- writes and the rest of a handle's life --------------------------------
    async def write(self, h: FileHandle, offset: int, data: bytes) -> int:
        t0 = time.perf_counter()
        self.invalidate(h.file_id, offset, offset + len(data))
        h.dirty = True
        if h.file_id not in self._written:
            self._written.add(h.file_id)
            self.path_removed(h.path)  # the fast tier's copy is of the old version
        h.fast = None
        eof = self._eof.get(h.file_id)
        if eof is not None and offset + len(data) > eof:
            self.invalidate(h.file_id, eof, eof + 1)
        n = await h.file.pwrite(offset, data)
        # Again once the bytes are in: a read that fetched the old bytes while
        # the write was in flight took the first bump's generation.
        self.invalidate(h.file_id, offset, offset + len(data))
        if offset + n > h.size:
            h.size = offset + n
        if offset + n > self._eof.get(h.file_id, 0):
            self._eof[h.file_id] = offset + n
        if self.trace is not None:
            self._record(h, "write", offset, n, "unknown")
        self.stats.add("write.requests")
        self.stats.add("write.bytes", n)
        self.stats.latency("write", time.perf_counter() - t0)
        return n

    def truncated(self, file_id: int, path: bytes, size: int) -> None:
        """The file's size changed to ``size`` by setattr."""
        self.invalidate(file_id, min(size, self._eof.get(file_id, size)))
        self._eof[file_id] = size
        self.path_removed(path)

    async def flush(self, h: FileHandle) -> None:
        await h.file.flush()

    async def fsync(self, h: FileHandle, datasync: bool) -> None:
        await h.file.fsync(datasync)

    async def release(self, h: FileHandle, *, last: bool = True) -> None:
        """The handle is closed; ``last`` if no other handle of its inode is open."""
        if last:
            self._written.discard(h.file_id)
        st: StreamState | None = h.stream
        if st is not None:
            for c in list(st.chunks):
                self._drop_chunk(st, c)
            if (last and self.kernel_invalidate is not None and self._nursery is not None
                    and st.served >= self.classifier.sequential_cutoff
                    and h.size > self.stream_keep_fraction * self.memory.bytes()):
                # A big stream's pages would push the hot random set out of the
                # kernel's page cache: drop them now that the stream is done.
                self.stats.add("kernel.stream_pages_dropped")
                self._nursery.start_soon(self._kernel_drop, h.ino)
        await h.file.close()

    async def _kernel_drop(self, ino: int) -> None:
        assert self.kernel_invalidate is not None
        try:
            # In a thread: the kernel may wait for page locks held by reads
            # that this event loop has to answer.
            await trio.to_thread.run_sync(self.kernel_invalidate, ino)
        except OSError as exc:
            log.debug("kernel invalidation of inode %d failed: %s", ino, exc)
