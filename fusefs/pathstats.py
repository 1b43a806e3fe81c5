"""Per-path and per-rule read figures of a mount, in bounded memory (`tierfs stats --by-path`).

This module owns the bookkeeping behind the by-path view: for each file, the bytes read
by serving tier (``dram``, ``fast``, ``ahead``, ``capacity``) and by access class (the
classifier's label, or the rule's class), read requests, failed reads, opens, and the
opens at which the kernel kept its cached pages (``keep_cache``: later reads of those
pages may never reach the daemon); and the same totals per ``[[rule]]``.

The bound: at most ``limit`` paths (``[stats] path_limit``, default 4096) are tracked, with
the space-saving algorithm (Metwally, Agrawal, El Abbadi, 2005). When a new path arrives
and the table is full, the tracked path with the smallest count gives up its slot, and the
newcomer starts from that count (its ``floor``: at most that many bytes of it were read
before it was tracked and are not in its figures). So memory stays O(limit) however many
files a walk opens (about 1 KiB per path: 4 MiB at the default), every path that had more
than 1/limit of all bytes read is in the table, and a tracked path's bytes are exact
except for what its floor says. Rules are the config's, few: all are kept, exact.

A path is the file's name in the mount when it was opened (a renamed file's figures stay
under the old name; its next open starts a new row). Reads the kernel's page cache answers
never reach the daemon and are in no figure; ``kept`` counts the opens that allowed them.

The read path pays one attribute check per request and a few dict increments per piece
served (`Engine.served`); the heap is touched only when a path enters the table.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Sequence

__all__ = ["CLASSES", "Figures", "PathStats", "SORT_KEYS", "TIERS"]

TIERS = ("dram", "fast", "ahead", "capacity")
CLASSES = ("sequential", "random", "unknown")
#: Orders `PathStats.top` accepts (``tierfs stats --sort``).
SORT_KEYS = ("bytes", "misses", "requests", "errors", "opens")
NO_RULE = -1  # the group of paths no [[rule]] matched


class Figures:
    """Read figures of one path (or one rule's paths)."""

    __slots__ = ("name", "tiers", "classes", "bytes", "requests", "errors", "opens",
                 "kept", "floor", "live", "group")

    def __init__(self, name: Any, floor: int = 0, group: Figures | None = None) -> None:
        self.name = name
        self.tiers = dict.fromkeys(TIERS, 0)
        self.classes = dict.fromkeys(CLASSES, 0)
        self.bytes = 0
        self.requests = 0
        self.errors = 0
        self.opens = 0
        self.kept = 0
        self.floor = floor
        #: False once the bounded table let the path go (a handle then re-enters it).
        self.live = True
        #: The rule's figures this path also counts into (None for a rule's own).
        self.group = group

    def add(self, tier: str, label: str, n: int) -> None:
        """``n`` bytes of a read served by ``tier`` for a request of class ``label``."""
        self.bytes += n
        self.tiers[tier] += n
        self.classes[label] += n
        g = self.group
        if g is not None:
            g.bytes += n
            g.tiers[tier] += n
            g.classes[label] += n

    def request(self, failed: bool = False) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
        g = self.group
        if g is not None:
            g.requests += 1
            if failed:
                g.errors += 1

    def opened(self, kept: bool) -> None:
        self.opens += 1
        self.kept += kept
        g = self.group
        if g is not None:
            g.opens += 1
            g.kept += kept

    def sort_value(self, key: str) -> int:
        if key == "misses":
            return self.tiers["capacity"]
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        name = self.name
        hits = self.bytes - self.tiers["capacity"]
        out = {
            "bytes": self.bytes,
            "tiers": dict(self.tiers),
            "classes": dict(self.classes),
            # Bytes not fetched from the capacity tier while the reader waited (DRAM, fast
            # tier, or fetched ahead of a walk) over all bytes served.
            "hit_ratio": hits / self.bytes if self.bytes else None,
            "class": max(CLASSES, key=self.classes.__getitem__) if self.bytes else None,
            "tier": max(TIERS, key=self.tiers.__getitem__) if self.bytes else None,
            "requests": self.requests,
            "errors": self.errors,
            "opens": self.opens,
            "kernel_kept_opens": self.kept,
        }
        if isinstance(name, bytes):
            out = {"path": name.decode("utf-8", "surrogateescape"), **out,
                   "uncounted_max": self.floor}
        return out


class PathStats:
    """Bounded per-path figures (space-saving) and exact per-rule totals; trio-only.

    Args:
        limit: paths tracked at most; 0 tracks none (`enter` returns None).
        rules: the ``path`` glob of each ``[[rule]]``, in config order (for names).
    """

    def __init__(self, limit: int = 4096, rules: Sequence[str] = ()) -> None:
        self.limit = limit
        self.rule_names = list(rules)
        self._paths: dict[bytes, Figures] = {}
        # (count when pushed, tie-breaker, figures): one item per tracked path. A count
        # only grows, so a stale item is found (and re-pushed) when it reaches the top.
        self._heap: list[tuple[int, int, Figures]] = []
        self._seq = itertools.count()
        self._rules: dict[int, Figures] = {}
        self.entered = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._paths)

    def enter(self, path: bytes, rule: int | None) -> Figures | None:
        """The figures of ``path`` (matched by ``rule``), tracked from now if they were not."""
        if self.limit <= 0:
            return None
        f = self._paths.get(path)
        if f is not None:
            return f
        key = NO_RULE if rule is None else rule
        group = self._rules.get(key)
        if group is None:
            group = self._rules[key] = Figures(key)
        floor = self._evict() if len(self._paths) >= self.limit else 0
        f = self._paths[path] = Figures(path, floor, group)
        heapq.heappush(self._heap, (floor, next(self._seq), f))
        self.entered += 1
        return f

    def renamed(self, old: bytes, new: bytes) -> None:
        """``old`` (a file, or a directory and everything below it) is now ``new``: its
        figures go with it. A tracked file the rename replaced stops being tracked (its
        bytes are gone). Scans the tracked paths (at most ``limit``) for a directory's."""
        if self.limit <= 0 or old == new:
            return
        moved = [p for p in self._paths if p == old or p.startswith(old + b"/")]
        for p in moved:
            f = self._paths.pop(p)
            to = new + p[len(old):]
            gone = self._paths.get(to)
            if gone is not None:
                gone.live = False  # its heap item is skipped when it surfaces
                del self._paths[to]
            f.name = to
            self._paths[to] = f

    def _evict(self) -> int:
        """Let the path with the smallest count go; return that count."""
        heap = self._heap
        while True:
            count, _, f = heap[0]
            if not f.live:  # replaced by a rename: no longer in the table
                heapq.heappop(heap)
                continue
            now = f.bytes + f.floor
            if now != count:
                heapq.heapreplace(heap, (now, next(self._seq), f))
                continue
            heapq.heappop(heap)
            f.live = False
            del self._paths[f.name]
            self.evicted += 1
            return count

    def top(self, n: int, sort: str = "bytes") -> list[dict[str, Any]]:
        """The ``n`` tracked paths with the largest ``sort`` figure (`SORT_KEYS`)."""
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}; known: {', '.join(SORT_KEYS)}")
        best = heapq.nlargest(n, self._paths.values(),
                              key=lambda f: (f.sort_value(sort), f.bytes))
        return [f.to_dict() for f in best]

    def rules(self) -> list[dict[str, Any]]:
        """Totals per rule that matched an opened path (``(no rule)`` for the others)."""
        out = []
        for key, f in sorted(self._rules.items()):
            name = (f"rule {key} '{self.rule_names[key]}'"
                    if 0 <= key < len(self.rule_names) else "(no rule)")
            out.append({"rule": name, **f.to_dict()})
        return out

    def snapshot(self, n: int, sort: str = "bytes") -> dict[str, Any]:
        """What the ``by_path`` control request answers."""
        return {
            "limit": self.limit,
            "tracked": len(self._paths),
            "entered": self.entered,
            "evicted": self.evicted,
            "sort": sort,
            "paths": self.top(n, sort),
            "rules": self.rules(),
        }
