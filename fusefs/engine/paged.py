"""Random (and not yet classified) reads: page-aligned, DRAM -> fast tier -> capacity tier.

A request is served from the DRAM tier (`fusefs.pagecache`, one C call for the whole
range) if it holds every page; else from the fast tier, the walk-ahead buffer, or one
aligned ranged read of the capacity tier. On a remote tier the miss (and a fast-tier hit)
is widened to the aligned ``remote_block`` around the request: a GET costs a round trip
whatever its size, and the neighbours become DRAM hits (and kernel pushes where allowed).
What was fetched is offered to DRAM (the DRAM policy decides, by `DramKey`) and to the fast
tier (the fast tier's policy decides; the copy runs in the background), and a remote miss
may start a whole-file fill. With live miss-ratio curves, every request is one use for the
DRAM tier's shadows and every DRAM miss one use for the fast tier's (`Engine`); each DRAM
miss is also reported to the fast tier's policy (`Policy.on_use`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..access import AccessInfo, DramKey
from ..pagecache import Hint, PageCache
from ..policies.base import Policy
from ..stats import Stats

if TYPE_CHECKING:
    from ..handles import FileHandle
    from . import Engine


class PagedReader:
    """The read path for random access.

    Args:
        engine: the facade (fast tier, walk buffer, consistency, admission, pushes).
        pagecache: the DRAM tier, or None.
        dram_policy: decides DRAM admission (keys: `DramKey`).
        stats: counters.
        remote_block: on a remote tier, the aligned block a miss fetches.
    """

    def __init__(self, engine: Engine, pagecache: PageCache | None, dram_policy: Policy | None,
                 stats: Stats, *, remote_block: int = 64 << 10) -> None:
        self.engine = engine
        self.pagecache = pagecache
        self.dram_policy = dram_policy
        self.stats = stats
        self.page_size = pagecache.page_size if pagecache is not None else 4096
        # A ranged GET costs a round trip whatever its size, so on a remote tier a miss
        # fetches a whole aligned block; locally a page is as cheap as the syscall.
        remote = engine.capacity.remote
        self.block = (remote_block if remote and pagecache is not None
                      and remote_block > self.page_size else self.page_size)
        # The unit of the DRAM policy's keys (and of its live curves' shadows).
        self.dram_unit = max(remote_block, self.page_size)

    async def read(self, h: FileHandle, offset: int, size: int, info: AccessInfo) -> bytes:
        engine = self.engine
        ps = self.page_size
        first = offset // ps
        last = (offset + size - 1) // ps
        start = first * ps
        pc = self.pagecache
        # The handle's own version's entry: never pages of a version opened after it.
        eid = h.dram if h.dram is not None else engine.dram.of(h.ino)
        if pc is not None and size > 0:
            if engine.mrc_dram is not None:
                engine.mrc_dram.record((eid, offset // self.dram_unit))
            hit = self.from_dram(h, eid, offset, size, info)
            if hit is not None:
                return hit
            self.stats.add("dram.miss")
        if size > 0 and engine.fast is not None:
            # The fast tier's request stream, hit or miss: its policy hears of hits only
            # otherwise (e.g. the default's miniature simulations learn from this).
            use = (eid, offset // engine.chunk_size)
            if engine.mrc_fast is not None:
                engine.mrc_fast.record(use)
            if engine.policy is not None:
                engine.policy.on_use(use, info)
        gen = engine.consistency.generation(h.ino)
        length = (last + 1) * ps - start
        req_start, req_end = start, start + length  # the pages the reader asked for
        rb = self.block
        # On a remote tier, a miss serves the aligned block(s) around the
        # request: the page cache gets them all, the reader its slice.
        bstart = start // rb * rb
        bend = -(-(offset + size) // rb) * rb
        data = None
        if rb > ps and bend - bstart > length:
            data = await engine.from_fast(h, bstart, bend - bstart)
            if data is not None:
                start = bstart
        if data is None:
            data = await engine.from_fast(h, start, length)
        if data is not None:
            engine.served(h, "fast", info.label, min(size, len(data) - (offset - start)))
        else:
            data = await engine.from_walk(h, start, length)
            if data is not None:
                engine.served(h, "ahead", info.label, min(size, len(data) - (offset - start)))
        if data is None:
            if rb > ps:
                start, length = bstart, bend - bstart
                self.stats.add("read.remote_blocks")
            with engine.sched.latency():
                data = await h.file.pread(start, length)
            self.stats.add("source.bytes.read", len(data))
            if start < req_start or start + len(data) > req_end:
                # Bytes around the request fetched on speculation (used: DRAM hits or
                # kernel pushes later, which are not told apart from others).
                asked = max(0, min(start + len(data), req_end) - max(start, req_start))
                self.stats.add("speculative.widen.fetched_bytes", len(data) - asked)
            engine.served(h, "capacity", info.label, min(size, len(data) - (offset - start)))
            engine.maybe_admit_fast(h, start, data, info, gen)
            engine.maybe_fill(h, info, gen)
        if pc is not None and data and engine.consistency.is_current(h.ino, gen) \
                and not h.dirty:
            self._admit_dram(eid, start // ps, data, info)
        if (start < req_start or start + len(data) > req_end) and not engine.direct_io(h):
            engine.kernel.push(h.ino, gen, start, data, req_start, req_end)
        return data[offset - start:offset - start + size]

    def from_dram(self, h: FileHandle, eid: int, offset: int, size: int,
                  info: AccessInfo) -> bytes | None:
        """The request from DRAM entry ``eid`` if DRAM holds all of it, else None."""
        pc = self.pagecache
        assert pc is not None
        ps = self.page_size
        first = offset // ps
        start = first * ps
        buf = bytearray(((offset + size - 1) // ps - first + 1) * ps)
        n = pc.get_range_into(eid, first, buf)
        # Complete if it covers the request, or stopped at a short (last) page.
        if n >= offset + size - start or (n % ps and n > offset - start):
            self.engine.served(h, "dram", info.label, min(size, n - (offset - start)))
            # Not past n: a short last page ends the file, the rest of buf is zeros.
            return bytes(memoryview(buf)[offset - start:min(n, offset - start + size)])
        return None

    def dram_holds_start(self, eid: int, offset: int) -> bool:
        """Whether DRAM holds the page at ``offset`` (no counters touched)."""
        pc = self.pagecache
        return pc is not None and (eid, offset // self.page_size) in pc

    def _admit_dram(self, eid: int, first: int, data: bytes, info: AccessInfo) -> None:
        pc = self.pagecache
        assert pc is not None
        ps = self.page_size
        admit = self.dram_policy is None or self.dram_policy.should_admit(
            DramKey(eid, first), len(data), info)
        ov = info.override
        hint = Hint.PIN if ov is not None and ov.pin else \
            Hint.NORMAL if admit else Hint.DONT_ADMIT
        self.stats.add(f"dram.{'admitted' if admit else 'rejected'}_bytes.{info.label}",
                       len(data))
        mv = memoryview(data)
        for i in range(0, len(data), ps):
            try:
                pc.put(eid, first + i // ps, mv[i:i + ps], hint=hint)
            except OSError:  # every page pinned: serve without caching
                self.stats.add("dram.put_failed")
                break
