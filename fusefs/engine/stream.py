"""Sequential streams: per-handle read-ahead in aligned chunks.

A handle labelled sequential (or under a ``class = "stream"`` rule) is served from
read-ahead chunks (``chunk_size``, at multiples of it, so a stream that starts mid-chunk never
fetches a byte twice), fetched in the background under the scheduler's throughput limiter,
up to the policy's read-ahead window and a global byte budget. A chunk comes from the fast
tier if it holds it, else from the capacity tier; the policy may admit it to the fast tier (a
second epoch of a file that fits). Streams never enter DRAM: they would flush the hot random
set. Read-ahead nobody waits for yet is optional and yields to latency reads.
"""

from __future__ import annotations

import errno
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..access import AccessInfo
from ..policies.base import Policy
from ..stats import Stats
from ..tiers.capacity import TierUnavailable
from .sched import Scheduler

if TYPE_CHECKING:
    from ..handles import FileHandle
    from . import Engine

log = logging.getLogger(__name__)

_WARN_INTERVAL = 30.0  # seconds between two warnings of read-ahead that timed out


@dataclass(slots=True, eq=False)
class Chunk:
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
    #: Bytes of ``data`` handed to the reader (the rest is wasted when the chunk goes).
    served: int = 0
    #: Dropped from its stream (behind the reader, closed, older generation).
    dropped: bool = False
    #: Cancelled when the reader gave up waiting (see `StreamReader.read`).
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(slots=True, eq=False)
class StreamState:
    """Read-ahead state of one handle; lives in `FileHandle.stream`."""

    chunks: dict[int, Chunk] = field(default_factory=dict)
    #: Byte offset up to which chunks have been requested.
    horizon: int = 0
    #: Bytes served to the stream so far.
    served: int = 0


class StreamReader:
    """Read-ahead for sequential handles.

    Args:
        engine: the facade (source of bytes below the stream: fast tier, walk buffer,
            capacity tier, and fast-tier admission).
        policy: sizes the read-ahead window.
        sched: throughput limiter and latency pressure.
        stats: counters.
        chunk_size: fetch unit.
        budget: bytes all read-ahead buffers together may hold.
    """

    def __init__(self, engine: Engine, policy: Policy | None, sched: Scheduler, stats: Stats,
                 *, chunk_size: int = 1 << 20, budget: int = 256 << 20) -> None:
        self.engine = engine
        self.policy = policy
        self.sched = sched
        self.stats = stats
        self.chunk_size = chunk_size
        self.budget = budget
        self.nursery: trio.Nursery | None = None
        self._bytes = 0
        self._warned_at = -math.inf

    @property
    def buffered(self) -> int:
        return self._bytes

    async def read(self, h: FileHandle, offset: int, size: int, info: AccessInfo) -> bytes:
        st = h.stream
        cs = self.chunk_size
        if st is None:
            # Chunks sit at multiples of the chunk size: a reader's position
            # maps to exactly one chunk, so no byte is fetched twice.
            st = h.stream = StreamState(horizon=offset // cs * cs)
        gen = self.engine.consistency.generation(h.ino)
        end = offset + size
        # Drop chunks behind the reader and chunks from an older generation.
        for cstart in [c for c, ch in st.chunks.items() if c + cs <= offset or ch.gen != gen]:
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
            if not needed and (self._bytes + cs > self.budget or self.nursery is None):
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
                self.sched.wake()
            with trio.move_on_after(self._bound) as waited:
                if not ch.started:
                    await self._fetch_chunk(h, ch, info)  # no background nursery: fetch inline
                await ch.done.wait()
            if waited.cancelled_caught:
                self._drop_chunk(st, c)
                ch.scope.cancel()  # nobody wants it any more
                raise self._timed_out(h)
            if ch.error is not None:
                self._drop_chunk(st, c)
                raise ch.error
            piece = ch.data[pos - c:min(end, c + cs) - c]
            self.engine.served(h, ch.tier, info.label, len(piece))
            used = min(len(piece), len(ch.data) - ch.served)
            ch.served += used
            self.stats.add("readahead.used_bytes", used)
            out.append(piece)
            pos += len(piece)
            if len(ch.data) < cs:
                break  # end of file
        data = b"".join(out)
        st.served += len(data)
        return data

    @property
    def _bound(self) -> float:
        # A stream waits for a chunk as long as one read of the tier may take, not
        # longer: its chunk may queue behind others stuck on a store that froze.
        t = self.engine.capacity.read_timeout
        return math.inf if t is None else t

    def _timed_out(self, h: FileHandle) -> OSError:
        self.stats.add("readahead.timeouts")
        now = trio.current_time()
        if now - self._warned_at >= _WARN_INTERVAL:
            self._warned_at = now
            log.warning("read-ahead of %r: no data within %g s (read_timeout); answering EIO",
                        h.path, self._bound)
        return TierUnavailable(f"read-ahead: no data within {self._bound:g} s")

    def release(self, h: FileHandle) -> None:
        """The handle closed: its chunks go."""
        st = h.stream
        if st is not None:
            for c in list(st.chunks):
                self._drop_chunk(st, c)

    def _drop_chunk(self, st: StreamState, start: int) -> None:
        ch = st.chunks.pop(start, None)
        if ch is not None:
            self._bytes -= self.chunk_size
            ch.dropped = True
            if ch.done.is_set():
                self._wasted(ch)

    def _wasted(self, ch: Chunk) -> None:
        """Count what of a chunk that is gone was never served."""
        if ch.data and ch.served < len(ch.data):
            self.stats.add("readahead.wasted_bytes", len(ch.data) - ch.served)

    def _start_chunk(self, h: FileHandle, st: StreamState, start: int, gen: int,
                     info: AccessInfo, *, optional: bool = False) -> Chunk:
        ch = Chunk(start, gen, optional=optional)
        st.chunks[start] = ch
        self._bytes += self.chunk_size
        if self.nursery is not None:
            self.nursery.start_soon(self._fetch_chunk, h, ch, info)
            ch.started = True
        return ch

    async def _fetch_chunk(self, h: FileHandle, ch: Chunk, info: AccessInfo) -> None:
        with ch.scope:
            await self._fetch_chunk_in_scope(h, ch, info)

    async def _fetch_chunk_in_scope(self, h: FileHandle, ch: Chunk, info: AccessInfo) -> None:
        ch.started = True
        engine = self.engine
        try:
            data = await engine.from_fast(h, ch.start, self.chunk_size)
            if data is not None:
                ch.tier = "fast"
                self.stats.add("readahead.bytes.fast", len(data))
            else:
                data = await engine.from_walk(h, ch.start, self.chunk_size)
            if data is None:
                await self.sched.wait_calm(
                    lambda: ch.optional, on_wait=lambda: self.stats.add("readahead.yielded"))
                async with self.sched.throughput:
                    data = await h.file.pread(ch.start, self.chunk_size)
                self.stats.add("readahead.bytes.capacity", len(data))
                self.stats.add("source.bytes.readahead", len(data))
                engine.maybe_admit_fast(h, ch.start, data, info, ch.gen)
            ch.data = data
        except OSError as exc:
            ch.error = exc
        except Exception as exc:  # a bug here must reach the reader, not the nursery
            log.exception("read-ahead failed")
            ch.error = OSError(errno.EIO, f"read-ahead failed: {exc}")
        finally:
            ch.done.set()
            if ch.dropped:  # gone while it was fetched: nobody will read it
                self._wasted(ch)
