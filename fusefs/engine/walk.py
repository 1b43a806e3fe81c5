"""Small files fetched ahead of a walk (remote capacity tiers only).

When a process opens the small files of one directory in name order (a loader or indexer
walking a tree) and the directory's listing is cached, the next ``ahead`` such files are
fetched, several at a time, into a bounded buffer; the first read of each takes its bytes
(once: the DRAM tier keeps them after). Versions fetched ahead are remembered (bounded), so a
second walk does not fetch them again. The buffer is keyed by path and each entry carries
the version it was fetched at: a reader of another version gets nothing from it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from ..stats import Stats
from ..tiers.capacity import CapacityTier, SourceVersion, Stat, same_version

log = logging.getLogger(__name__)


class WalkAhead:
    """The walk-ahead buffer of one mount.

    Args:
        capacity: the (remote) source.
        stats: counters.
        ahead: files fetched ahead of a walk (0: off).
        small_file: the largest file fetched ahead.
        budget: bytes the buffer may hold.
    """

    def __init__(self, capacity: CapacityTier, stats: Stats, *, ahead: int = 16,
                 small_file: int = 1 << 20, budget: int = 64 << 20) -> None:
        self.capacity = capacity
        self.stats = stats
        self.ahead = ahead
        self.small_file = small_file
        self.budget = budget
        self.nursery: trio.Nursery | None = None
        self._buf: OrderedDict[bytes, tuple[SourceVersion, bytes]] = OrderedDict()
        self._bytes = 0
        self._flight: dict[bytes, trio.Event] = {}
        self._walks: dict[bytes, bytes] = {}  # directory -> last name opened in it
        self._walked: OrderedDict[bytes, SourceVersion] = OrderedDict()
        self._slots = trio.CapacityLimiter(8)

    @property
    def busy(self) -> bool:
        """Anything buffered or in flight (a cheap test before `take`)."""
        return bool(self._buf or self._flight)

    def opened(self, path: bytes, size: int) -> None:
        """A file was opened: if its directory is being walked in order, fetch ahead."""
        if not self.ahead or size > self.small_file:
            return
        parent, _, name = path.rpartition(b"/")
        last = self._walks.get(parent)
        if len(self._walks) >= 4096 and last is None:
            self._walks.clear()  # bounded
        self._walks[parent] = name
        if last is None or name <= last or self.nursery is None:
            return  # a first open, or out of order: not a walk (yet)
        entries = self.capacity.cached_listing(parent)
        if not entries:
            return
        names = sorted(n for n, st in entries.items()
                       if n > name and st.is_reg and st.st_size <= self.small_file)
        for n in names[:self.ahead]:
            child = parent + b"/" + n if parent else n
            if (child in self._buf or child in self._flight
                    or (child in self._walked
                        and same_version(entries[n].version(), self._walked[child]))):
                continue
            if self._bytes + entries[n].st_size > self.budget:
                break
            self._flight[child] = trio.Event()
            self.nursery.start_soon(self._fetch, child, entries[n])

    async def _fetch(self, path: bytes, st: Stat) -> None:
        mine = self._flight[path]
        try:
            async with self._slots:
                version, data = await self.capacity.fetch_small(path, st)
            # The object as listed (a listing that gave no mtime names no version:
            # then the one the open found, of the listed size).
            listed = same_version(st.version(), version) or (not st.mtime_known
                                                 and version.size == st.st_size)
            if (listed and len(data) == st.st_size
                    and self._flight.get(path) is mine):  # not dropped meanwhile
                while self._buf and self._bytes + len(data) > self.budget:
                    _, (_, old) = self._buf.popitem(last=False)
                    self._bytes -= len(old)
                self._buf[path] = (version, data)
                self._bytes += len(data)
                self._walked[path] = version
                if len(self._walked) > 100_000:
                    self._walked.popitem(last=False)
                self.stats.add("walk.fetched_files")
        except OSError as exc:
            self.stats.add("walk.failed")
            log.debug("fetch ahead of %r failed: %s", path, exc)
        except Exception:
            self.stats.add("walk.failed")
            log.exception("fetch ahead of %r failed", path)
        finally:
            if self._flight.get(path) is mine:
                del self._flight[path]
            mine.set()

    async def take(self, path: bytes, version: SourceVersion | None, start: int,
                   length: int) -> bytes | None:
        """Bytes [start, start+length) of ``path`` at ``version`` if fetched ahead."""
        ev = self._flight.get(path)
        if ev is not None:
            await ev.wait()
        ent = self._buf.pop(path, None)
        if ent is None:
            return None
        got, data = ent
        self._bytes -= len(data)
        if got != version:
            return None
        self.stats.add("walk.hits")
        if start or length < len(data):
            # Only part asked for: keep the rest for the next read of the file.
            self._buf[path] = ent
            self._bytes += len(data)
        return data[start:start + length]

    def drop(self, path: bytes) -> None:
        """``path`` changed through the mount: forget what was fetched of it."""
        ent = self._buf.pop(path, None)
        if ent is not None:
            self._bytes -= len(ent[1])
        ev = self._flight.pop(path, None)  # the fetch finds itself unwanted
        if ev is not None:
            ev.set()

    def statistics(self) -> dict[str, int]:
        return {"walk_buffer_bytes": self._bytes, "walk_in_flight": len(self._flight)}
