"""Small files fetched ahead of a walk (remote capacity tiers only), and how useful that was.

When a process opens the small files of one directory in name order (a loader or indexer
walking a tree) and the directory's listing is cached, the next ``ahead`` such files are
fetched, several at a time, into a bounded buffer; the first read of each takes its bytes
(once: the DRAM tier keeps them after). Versions fetched ahead are remembered (bounded), so a
second walk does not fetch them again. The buffer is keyed by path and each entry carries
the version it was fetched at: a reader of another version gets nothing from it.

What counts as a walk: positions are taken in the sorted list of the directory's small
files; an open at most `NEAR` positions after the previous one is a step, and the fetch
starts after `START_STEPS` steps in a row. Opens by random id jump far in the listing (a
retriever opening 10 of 20,000 documents), so they do not start it.

Each fetch ahead is judged once: *used* when a read takes it, *wasted* when it leaves the
buffer untaken (evicted, dropped, another version) or the walk passed it by more than
`SLACK` positions. Per directory (a bounded table), every `WINDOW` judged files the useful
share is looked at: under a half halves the directory's ``ahead`` (down to 0: off), three
quarters or more doubles it back (up to the mount's). An off directory probes again (ahead
2) after `ADJACENT_PROBE` opens of adjacent files in a row, or after a number of steps that
doubles at each back-off (`PROBE_STEPS`, up to `PROBE_MAX`), so a real walk later still
gets its files fetched ahead.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from ..stats import Stats
from ..tiers.capacity import CapacityTier, SourceVersion, Stat, same_version

log = logging.getLogger(__name__)

#: An open at most this many small files after the previous one (in name order) is a step.
NEAR = 4
#: Steps in a row before the first fetch ahead (opens by random id seldom make even one).
START_STEPS = 2
#: A file fetched ahead that the walk passed by more than this many positions is wasted.
SLACK = 16
#: Judged files per look at a directory's useful share.
WINDOW = 8
#: The share under which ``ahead`` halves, and the one from which it doubles back.
LOW, HIGH = 0.5, 0.75
#: ``ahead`` of a directory probing again after a back-off to 0.
PROBE_AHEAD = 2
#: Steps before an off directory probes again: doubles with each back-off, up to the max.
PROBE_STEPS, PROBE_MAX = 16, 1024
#: Adjacent opens in a row after which an off directory probes at once (a dense walk).
ADJACENT_PROBE = 8
#: Directories whose walk state is kept (least recently opened go first).
DIRS = 4096


@dataclass(slots=True, eq=False)
class _Dir:
    """Walk state of one directory."""

    ahead: int
    last: bytes = b""
    steps: int = 0  # steps in a row (see `NEAR`)
    adjacent: int = 0  # adjacent opens in a row
    front: int = -1  # the furthest position the walk opened
    used: int = 0  # judged in the current window
    wasted: int = 0
    backoffs: int = 0  # back-offs to 0 since the last useful window
    off_steps: int = 0  # steps since the directory went off
    names: list[bytes] | None = None  # sorted small files of `listing`
    listing: dict[bytes, Stat] | None = None
    pending: dict[bytes, int] = field(default_factory=dict)  # not judged yet: path -> position


class WalkAhead:
    """The walk-ahead buffer of one mount.

    Args:
        capacity: the (remote) source.
        stats: counters.
        ahead: files fetched ahead of a walk (0: off); a directory's own share backs off
            from it when what was fetched goes unused.
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
        # path -> [version, data, bytes of it served]
        self._buf: OrderedDict[bytes, list] = OrderedDict()
        self._bytes = 0
        self._flight: dict[bytes, trio.Event] = {}
        self._dirs: OrderedDict[bytes, _Dir] = OrderedDict()
        self._pending: dict[bytes, _Dir] = {}  # fetched ahead, neither used nor wasted yet
        self._walked: OrderedDict[bytes, SourceVersion] = OrderedDict()
        self._slots = trio.CapacityLimiter(8)
        self._tasks = 0  # fetch tasks running (a dropped one may still be reading)

    @property
    def busy(self) -> bool:
        """Anything buffered or in flight (a cheap test before `take`)."""
        return bool(self._buf or self._flight)

    # -- the walk signal -------------------------------------------------------
    def _dir(self, parent: bytes) -> _Dir:
        d = self._dirs.get(parent)
        if d is None:
            if len(self._dirs) >= DIRS:
                self._dirs.popitem(last=False)  # bounded; its pending files judge nothing
            d = self._dirs[parent] = _Dir(self.ahead)
        else:
            self._dirs.move_to_end(parent)
        return d

    def _names(self, d: _Dir, entries: dict[bytes, Stat]) -> list[bytes]:
        """The directory's small files in name order (sorted once per listing)."""
        if d.names is None or d.listing is not entries or len(d.names) > len(entries):
            d.listing = entries
            d.names = sorted(n for n, st in entries.items()
                             if st.is_reg and st.st_size <= self.small_file)
        return d.names

    def opened(self, path: bytes, size: int) -> None:
        """A file was opened: if its directory is being walked in order, fetch ahead."""
        if not self.ahead or size > self.small_file:
            return
        parent, _, name = path.rpartition(b"/")
        d = self._dir(parent)
        last, d.last = d.last, name
        entries = self.capacity.cached_listing(parent)
        if not last or not entries:
            d.steps = d.adjacent = 0
            return  # a first open, or no listing to place it in
        names = self._names(d, entries)
        pos = bisect.bisect_left(names, name)
        prev = bisect.bisect_left(names, last)
        step = pos - prev
        if 0 < step <= NEAR and pos < len(names) and names[pos] == name:
            d.steps += 1
            d.adjacent = d.adjacent + 1 if step == 1 else 0
        elif -NEAR <= step <= 0:
            pass  # a step back or the same file: readers of one walk overlap
        else:
            d.steps = d.adjacent = 0
        d.front = max(d.front, pos) if d.steps else pos
        self._judge_passed(d)
        if d.steps < START_STEPS:
            return
        if not d.ahead:
            d.off_steps += 1
            probe_after = min(PROBE_MAX, PROBE_STEPS << max(0, d.backoffs - 1))
            if d.adjacent < ADJACENT_PROBE and d.off_steps < probe_after:
                return
            d.ahead = min(PROBE_AHEAD, self.ahead)
            d.off_steps = 0
            self.stats.add("walk.probes")
        if self.nursery is None:
            return
        self._fetch_ahead(parent, d, names, entries)

    def _fetch_ahead(self, parent: bytes, d: _Dir, names: list[bytes],
                     entries: dict[bytes, Stat]) -> None:
        start = d.front + 1
        for i in range(start, min(len(names), start + d.ahead)):
            n = names[i]
            st = entries.get(n)
            if st is None or not st.is_reg or st.st_size > self.small_file:
                continue  # gone or changed since the names were sorted
            child = parent + b"/" + n if parent else n
            if (child in self._buf or child in self._flight
                    or (child in self._walked
                        and same_version(st.version(), self._walked[child]))):
                continue
            if self._bytes + st.st_size > self.budget:
                break
            mine = self._flight[child] = trio.Event()
            self._pending[child] = d
            d.pending[child] = i
            self.stats.add("walk.started_files")
            assert self.nursery is not None
            self._tasks += 1
            self.nursery.start_soon(self._fetch, child, st, mine)

    def _judge_passed(self, d: _Dir) -> None:
        """Files of ``d`` fetched ahead that the walk left behind are wasted."""
        if not d.pending:
            return
        gone = [p for p, i in d.pending.items() if i < d.front - SLACK]
        for p in gone:
            self._forget(p)

    # -- usefulness ----------------------------------------------------------
    def _judge(self, path: bytes, used: bool) -> None:
        d = self._pending.pop(path, None)
        if d is None:
            return
        d.pending.pop(path, None)
        if used:
            d.used += 1
            self.stats.add("walk.used_files")
        else:
            d.wasted += 1
            self.stats.add("walk.wasted_files")
        if d.used + d.wasted < WINDOW:
            return
        share = d.used / (d.used + d.wasted)
        d.used = d.wasted = 0
        if share < LOW and d.ahead:
            d.ahead //= 2
            self.stats.add("walk.backoffs")
            if not d.ahead:
                d.backoffs += 1
                d.off_steps = 0
        elif share >= HIGH:
            d.backoffs = 0
            if d.ahead < self.ahead:
                d.ahead = min(self.ahead, max(1, d.ahead) * 2)

    def _unbuffer(self, path: bytes) -> None:
        """Take ``path`` out of the buffer; its bytes never served are wasted."""
        ent = self._buf.pop(path, None)
        if ent is not None:
            self._bytes -= len(ent[1])
            self.stats.add("walk.wasted_bytes", len(ent[1]) - ent[2])

    def _forget(self, path: bytes) -> None:
        """Fetched ahead and not wanted: out of the buffer (or its fetch finds itself
        unwanted), judged wasted."""
        self._unbuffer(path)
        ev = self._flight.pop(path, None)
        if ev is not None:
            ev.set()
        self._judge(path, False)

    async def _fetch(self, path: bytes, st: Stat, mine: trio.Event) -> None:
        # ``mine`` is the path's entry in ``_flight`` while nobody dropped it (it may be
        # dropped before this task even starts).
        try:
            async with self._slots:
                if self._flight.get(path) is not mine:
                    return  # dropped or passed before its turn: nothing fetched
                version, data = await self.capacity.fetch_small(path, st)
            self.stats.add("walk.fetched_bytes", len(data))
            self.stats.add("source.bytes.walk", len(data))
            # The object as listed (a listing that gave no mtime names no version:
            # then the one the open found, of the listed size).
            listed = same_version(st.version(), version) or (not st.mtime_known
                                                 and version.size == st.st_size)
            if (listed and len(data) == st.st_size
                    and self._flight.get(path) is mine):  # not dropped meanwhile
                while self._buf and self._bytes + len(data) > self.budget:
                    old = next(iter(self._buf))
                    self._unbuffer(old)
                    self._judge(old, False)
                self._buf[path] = [version, data, 0]
                self._bytes += len(data)
                self._walked[path] = version
                if len(self._walked) > 100_000:
                    self._walked.popitem(last=False)
                self.stats.add("walk.fetched_files")
            else:
                self.stats.add("walk.wasted_bytes", len(data))
                self._judge(path, False)
        except OSError as exc:
            self.stats.add("walk.failed")
            self._judge(path, False)
            log.debug("fetch ahead of %r failed: %s", path, exc)
        except Exception:
            self.stats.add("walk.failed")
            self._judge(path, False)
            log.exception("fetch ahead of %r failed", path)
        finally:
            self._tasks -= 1
            if self._flight.get(path) is mine:
                del self._flight[path]
            mine.set()

    async def take(self, path: bytes, version: SourceVersion | None, start: int,
                   length: int) -> bytes | None:
        """Bytes [start, start+length) of ``path`` at ``version`` if fetched ahead."""
        ev = self._flight.get(path)
        if ev is not None:
            await ev.wait()
        ent = self._buf.get(path)
        if ent is None:
            return None
        got, data, served = ent
        if got != version:
            self._forget(path)
            return None
        self._judge(path, True)
        piece = data[start:start + length]
        n = min(len(piece), len(data) - served)
        ent[2] = served + n
        self.stats.add("walk.hits")
        self.stats.add("walk.used_bytes", n)
        if not start and length >= len(data) or ent[2] >= len(data):
            # All of it served (or asked for): nothing left to keep.
            del self._buf[path]
            self._bytes -= len(data)
            self.stats.add("walk.wasted_bytes", len(data) - ent[2])
        # Else only part asked for: keep the rest for the next read of the file.
        return piece

    def drop(self, path: bytes) -> None:
        """``path`` changed through the mount: forget what was fetched of it."""
        self._forget(path)

    def statistics(self) -> dict[str, int]:
        return {"walk_buffer_bytes": self._bytes, "walk_in_flight": self._tasks,
                "walk_pending_files": len(self._pending)}
