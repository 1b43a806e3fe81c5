"""A small, obviously-correct Python model of the C page cache's S3-FIFO.

It owns nothing but the reference semantics that the tests hold the C code to:
which keys are cached, in which queue, with which frequency, and the counters.
It mirrors libcachesim's ``S3FIFO.c`` (the version that inserts into the main
queue while the small queue is full before the first eviction) and adds what a
page cache needs on top: hints, pins and invalidation. Data is kept per key so
that the property test can compare contents, not just hit counts. With
``policy="clock"`` it is libcachesim's ``Clock.c`` (1-bit counter): the main
FIFO alone.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from dataclasses import dataclass

HINT_NORMAL = 0
HINT_DONT_ADMIT = 1
HINT_PIN = 2

SMALL = 1
MAIN = 2
PINNED = 3

Key = tuple[int, int]


@dataclass
class Entry:
    """One cached page in the model."""

    data: bytes
    queue: int
    freq: int = 0
    pins: int = 0


class ModelError(OSError):
    """Raised where the C code returns a negative errno."""


class S3FIFOModel:
    """Reference S3-FIFO page cache; see the module docstring.

    Queues are OrderedDicts whose *first* item is the tail (next to leave) and
    whose last item is the head (newest), so a FIFO push is ``d[k] = v`` and a
    pop is ``d.popitem(last=False)``.
    """

    def __init__(
        self,
        n_pages: int,
        *,
        small_ratio: float = 0.1,
        ghost_ratio: float = 0.9,
        move_to_main_threshold: int = 2,
        policy: str = "s3fifo",
    ) -> None:
        self.n = n_pages
        self.policy = policy
        if policy == "clock":
            self.small_cap, self.main_cap, self.ghost_cap = 0, n_pages, 0
            self.max_freq = 1
        else:
            # Same double arithmetic as libcachesim and the C code (truncation).
            self.small_cap = max(1, int(n_pages * small_ratio))
            self.main_cap = n_pages - self.small_cap
            self.ghost_cap = int(n_pages * ghost_ratio)
            self.max_freq = 3
        self.threshold = move_to_main_threshold
        self.small: OrderedDict[Key, None] = OrderedDict()
        self.main: OrderedDict[Key, None] = OrderedDict()
        self.ghost: OrderedDict[Key, None] = OrderedDict()
        self.entries: dict[Key, Entry] = {}
        self.has_evicted = False
        self.stats = dict.fromkeys(
            [
                "hits",
                "misses",
                "insertions",
                "evictions",
                "ghost_hits",
                "not_admitted",
                "invalidations",
                "updates",
            ],
            0,
        )

    # -- reads -----------------------------------------------------------
    def get(self, key: Key) -> bytes | None:
        """Look a page up; a hit bumps its 2-bit frequency."""
        entry = self.entries.get(key)
        if entry is None:
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        entry.freq = min(entry.freq + 1, self.max_freq)
        return entry.data

    def get_range(self, file_id: int, first: int, room: int, page_size: int) -> bytes:
        """Consecutive pages from ``first`` while they hit and fit in ``room``."""
        out = b""
        page = first
        while len(out) < room:
            entry = self.entries.get((file_id, page))
            if entry is not None and len(entry.data) > room - len(out):
                break  # does not fit: not counted
            data = self.get((file_id, page))
            if data is None:
                break
            out += data
            if len(data) < page_size:
                break
            page += 1
        return out

    def peek(self, key: Key) -> bytes | None:
        """Return a page's data with no side effect."""
        entry = self.entries.get(key)
        return None if entry is None else entry.data

    # -- writes ----------------------------------------------------------
    def put(self, key: Key, data: bytes, hint: int = HINT_NORMAL) -> None:
        """Insert or overwrite a page; see the C header for the rules."""
        if hint == HINT_DONT_ADMIT:
            self.stats["not_admitted"] += 1
            return
        entry = self.entries.get(key)
        if entry is not None:
            entry.data = data
            self.stats["updates"] += 1
            if hint == HINT_PIN:
                self.pin(key)
            return
        ghost_hit = key in self.ghost
        if ghost_hit:
            del self.ghost[key]
            self.stats["ghost_hits"] += 1
        while self.used() + 1 > self.n:
            if not self.small and not self.main:
                raise ModelError(errno.EBUSY, "everything is pinned")
            self._evict_one()
        if ghost_hit or self.policy == "clock":
            queue = MAIN
        elif not self.has_evicted and len(self.small) >= self.small_cap:
            queue = MAIN
        else:
            queue = SMALL
        self.entries[key] = Entry(data=data, queue=queue)
        (self.small if queue == SMALL else self.main)[key] = None
        self.stats["insertions"] += 1
        if hint == HINT_PIN:
            self.pin(key)

    def pin(self, key: Key) -> None:
        """Take a page out of the eviction queues (counted)."""
        entry = self.entries.get(key)
        if entry is None:
            raise ModelError(errno.ENOENT, "not cached")
        if entry.pins == 0:
            self._unlink(key, entry)
            entry.queue = PINNED
        entry.pins += 1

    def unpin(self, key: Key) -> None:
        """Drop one pin; the last one puts the page at the main queue's head."""
        entry = self.entries.get(key)
        if entry is None:
            raise ModelError(errno.ENOENT, "not cached")
        if entry.pins == 0:
            raise ModelError(errno.EINVAL, "not pinned")
        entry.pins -= 1
        if entry.pins == 0:
            entry.queue = MAIN
            self.main[key] = None

    def invalidate(self, key: Key) -> bool:
        """Drop a page, pinned or not; ghost entries are left alone."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        if entry.queue != PINNED:
            self._unlink(key, entry)
        self.stats["invalidations"] += 1
        return True

    def invalidate_file(self, file_id: int) -> int:
        """Drop every page of one file."""
        keys = [k for k in self.entries if k[0] == file_id]
        for k in keys:
            self.invalidate(k)
        return len(keys)

    def invalidate_range(self, file_id: int, first: int, end: int) -> int:
        """Drop pages first <= page < end of one file."""
        keys = [k for k in self.entries if k[0] == file_id and first <= k[1] < end]
        for k in keys:
            self.invalidate(k)
        return len(keys)

    # -- bookkeeping -----------------------------------------------------
    def used(self) -> int:
        """Pages held: both queues plus pinned pages."""
        return len(self.entries)

    def pinned(self) -> int:
        """Number of pinned pages."""
        return sum(1 for e in self.entries.values() if e.pins)

    def _unlink(self, key: Key, entry: Entry) -> None:
        if entry.queue == SMALL:
            del self.small[key]
        elif entry.queue == MAIN:
            del self.main[key]

    def _evict_one(self) -> None:
        self.has_evicted = True
        if len(self.main) > self.main_cap or not self.small:
            self._evict_main()
        else:
            self._evict_small()

    def _evict_small(self) -> None:
        while self.small:
            key, _ = self.small.popitem(last=False)
            entry = self.entries[key]
            if entry.freq >= self.threshold:
                entry.queue = MAIN
                entry.freq = 0
                self.main[key] = None
                continue
            del self.entries[key]
            self.stats["evictions"] += 1
            self._ghost_insert(key)
            return

    def _evict_main(self) -> None:
        while self.main:
            key, _ = self.main.popitem(last=False)
            entry = self.entries[key]
            if entry.freq >= 1:
                entry.freq = min(entry.freq, 3) - 1
                self.main[key] = None
                continue
            del self.entries[key]
            self.stats["evictions"] += 1
            return

    def _ghost_insert(self, key: Key) -> None:
        if self.ghost_cap == 0 or key in self.ghost:
            return
        while len(self.ghost) >= self.ghost_cap:
            self.ghost.popitem(last=False)
        self.ghost[key] = None
