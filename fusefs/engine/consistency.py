"""Whether a cached copy is current: the one place that decides it.

Every cache of file data asks here before it serves or stores bytes:

* **Versions.** The source version (`SourceVersion`) the kernel's page cache of an inode
  came from. On open (close-to-open), a version other than the one the kernel cached means
  the source changed: every cached byte of the inode is invalidated and the kernel must drop
  its pages; the same version lets the kernel keep them (``keep_cache``), as does an
  ``immutable`` mount always. The fast tier ties its entries to versions itself. A version
  this mount wrote (no ETag: a spool has none) matches an open's of the same size and mtime
  whatever its ETag (`same_version`).
* **Generations.** Each inode has a generation, bumped by every invalidation (a write, a
  truncate, a source change). A fetch that began under an older generation never enters a
  cache, so a reader cannot see bytes older than a write that completed before its read.
* **Written files.** A file written through the mount since its handles were last all
  closed: its source version may not change between two writes in one clock tick, so the
  caches keyed by version (fast tier, walk-ahead, kernel pushes) stay out until the last
  close.
* **EOF.** The last size seen per inode: the DRAM tier keeps a file's last page short, and a
  short page reads as end of file, so when the file grows that page must go.
* **Writers.** Handles open for writing per inode: pushes into the kernel's cache must not
  race with them.
* **DRAM entries** (`DramEntries`). What the DRAM tier's pages are keyed by: one entry per
  (path, source version), bound to the inodes opened on it. Pages outlive the kernel
  forgetting an inode and are found again by the next open of the same version; a changed
  version never reaches them.

trio thread only; no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from ..tiers.capacity import SourceVersion, same_version

# A version no source reports: "the kernel's pages are of something we cannot name".
_UNKNOWN = SourceVersion(-1, -1, None, None)


class Consistency:
    """Generations, kernel-cached versions, written files, EOFs and writers per inode.

    Args:
        immutable: the dataset never changes behind the mount: the kernel keeps its pages
            across opens without a version check.
    """

    def __init__(self, *, immutable: bool = False) -> None:
        self.immutable = immutable
        self._gen: dict[int, int] = {}
        self._kernel: dict[int, SourceVersion] = {}
        self._written: set[int] = set()
        self._eof: dict[int, int] = {}
        self._writers: dict[int, int] = {}

    # -- generations -------------------------------------------------------------
    def generation(self, ino: int) -> int:
        return self._gen.get(ino, 0)

    def bump(self, ino: int) -> None:
        """Cached bytes of ``ino`` are void: fetches in flight must not enter a cache."""
        self._gen[ino] = self._gen.get(ino, 0) + 1

    def is_current(self, ino: int, gen: int) -> bool:
        """Bytes fetched under ``gen`` may still enter caches keyed by the inode."""
        return gen == self._gen.get(ino, 0) and ino not in self._written

    # -- versions (close-to-open) ---------------------------------------------------
    def opened(self, ino: int, version: SourceVersion) -> tuple[bool, bool]:
        """A handle of ``ino`` opened on ``version``.

        Returns:
            (changed, keep_cache): whether the source changed since the kernel cached the
            inode's pages (invalidate everything of it), and whether the kernel may keep
            its pages for this open.
        """
        known = self._kernel.get(ino)
        self._kernel[ino] = version
        # A version this mount wrote names no ETag (the writer's spool has none): the
        # open's, with one, is that version if the rest agrees.
        same = known is not None and known != _UNKNOWN and same_version(known, version)
        changed = known is not None and not same
        keep = self.immutable or same
        return changed, keep

    def written_version(self, ino: int, version: SourceVersion | None) -> None:
        """The last writer closed: the kernel's pages are our writes, of ``version``."""
        self._kernel[ino] = version if version is not None else _UNKNOWN

    # -- files written through the mount ------------------------------------------------
    def mark_written(self, ino: int) -> bool:
        """``ino`` is being written; True the first time since its last close."""
        if ino in self._written:
            return False
        self._written.add(ino)
        return True

    def written(self, ino: int) -> bool:
        return ino in self._written

    def closed_last(self, ino: int) -> None:
        """No handle of ``ino`` is open any more: version-keyed caches may serve it again."""
        self._written.discard(ino)

    # -- end of file -----------------------------------------------------------------
    def eof(self, ino: int) -> int | None:
        return self._eof.get(ino)

    def set_eof(self, ino: int, size: int) -> None:
        self._eof[ino] = size

    # -- writers -----------------------------------------------------------------------
    def writer_opened(self, ino: int) -> None:
        self._writers[ino] = self._writers.get(ino, 0) + 1

    def writer_closed(self, ino: int) -> None:
        n = self._writers.get(ino, 0) - 1
        if n > 0:
            self._writers[ino] = n
        else:
            self._writers.pop(ino, None)

    def has_writer(self, ino: int) -> bool:
        return ino in self._writers

    # -- the end of an inode ---------------------------------------------------------------
    def forget(self, ino: int) -> None:
        """The kernel forgot ``ino`` (never reused): drop all its state."""
        self._gen.pop(ino, None)
        self._kernel.pop(ino, None)
        self._written.discard(ino)
        self._eof.pop(ino, None)
        self._writers.pop(ino, None)

    def statistics(self) -> dict[str, int]:
        return {"inodes_tracked": len(self._gen) + len(self._kernel),
                "written_open": len(self._written), "writers": len(self._writers)}


class DramEntries:
    """Names the DRAM tier's entries: one id per (path, source version), never reused.

    The kernel forgets inodes whenever it likes (memory pressure, a walk over many files), so
    DRAM pages keyed by inode would go with them, and a file whose only cached copy was in
    DRAM would read EIO through a later capacity-tier outage. Pages are keyed by entry id
    instead. An open binds its inode to the entry of the path and version it opened; the same
    version opened again under a new inode finds the same pages. The handle keeps the entry
    of its own open (`hold`): after another open saw a new version, an older handle still
    reads only its version's pages, never the new ones. A different version, a write,
    truncate, rename or unlink through the mount, or an evict *unnames* the path: its pages
    are dropped at once. An entry no path names any more lives as long as the inodes and
    handles bound to it, then its pages are dropped.

    Args:
        drop: drops every DRAM page of an entry id (`PageCache.invalidate`; cheap: per-entry
            index in C).
        limit: paths remembered; the least recently opened beyond it loses its name (its
            pages stay while an inode is bound to it). A DRAM holding N pages holds pages of
            at most N entries, so its page count is the natural limit.
    """

    def __init__(self, drop: Callable[[int], object], *, limit: int = 1 << 16) -> None:
        self._drop = drop
        self._limit = max(1, limit)
        self._paths: OrderedDict[bytes, tuple[SourceVersion, int]] = OrderedDict()
        self._named: dict[int, bytes] = {}  # entry -> the path naming it
        self._ino: dict[int, int] = {}  # inode -> entry
        self._held: dict[int, dict[int, int]] = {}  # inode -> {entry: handles holding it}
        self._bound: dict[int, int] = {}  # entry -> inodes and handles bound to it
        self._next = 1

    def bind(self, ino: int, path: bytes, version: SourceVersion) -> int:
        """``ino`` was opened as ``path`` on ``version``: its DRAM entry from now on."""
        known = self._paths.get(path)
        if known is not None and known[0] == version:
            eid = known[1]
            self._paths.move_to_end(path)
        else:
            if known is not None:
                self._unname(path)
            eid = self._new()
            self._paths[path] = (version, eid)
            self._named[eid] = path
            self._trim()
        self._attach(ino, eid)
        return eid

    def of(self, ino: int) -> int:
        """The entry of ``ino`` (a private one if it was never opened)."""
        eid = self._ino.get(ino)
        if eid is None:
            eid = self._new()
            self._attach(ino, eid)
        return eid

    def current(self, ino: int) -> int | None:
        return self._ino.get(ino)

    def hold(self, ino: int, eid: int) -> None:
        """A handle of ``ino`` opened on entry ``eid`` reads it until `let_go`."""
        held = self._held.setdefault(ino, {})
        held[eid] = held.get(eid, 0) + 1
        self._bound[eid] = self._bound.get(eid, 0) + 1

    def let_go(self, ino: int, eid: int) -> None:
        held = self._held.get(ino, {})
        n = held.get(eid, 0) - 1
        if n > 0:
            held[eid] = n
        else:
            held.pop(eid, None)
            if not held:
                self._held.pop(ino, None)
        self._release(eid)

    def entries_of(self, ino: int) -> set[int]:
        """Every entry whose pages are of ``ino``: its current one and those its open
        handles hold (writes and truncates invalidate them all)."""
        out = set(self._held.get(ino, ()))
        eid = self._ino.get(ino)
        if eid is not None:
            out.add(eid)
        return out

    def unname(self, path: bytes, *, tree: bool = False,
               keep: Callable[[bytes], bool] | None = None) -> int:
        """``path`` changed (or, with ``tree``, anything under it but what ``keep``
        spares): drop its pages.

        Inodes bound to the entry keep it (their reads admit again, of their own bytes),
        but no later open finds it. Returns the entries unnamed.
        """
        if not tree:
            if path not in self._paths:
                return 0
            self._unname(path)
            return 1
        prefix = path.rstrip(b"/") + b"/"
        hits = [p for p in self._paths if (p == path or p.startswith(prefix) or not path)
                and (keep is None or not keep(p))]
        for p in hits:
            self._unname(p)
        return len(hits)

    def forget(self, ino: int) -> None:
        """The kernel forgot ``ino``: unbind it (its entry's pages stay if a path names it)."""
        eid = self._ino.pop(ino, None)
        if eid is not None:
            self._release(eid)

    def bound_inodes(self) -> list[int]:
        return sorted(set(self._ino) | set(self._held))

    def check(self) -> list[str]:
        """Problems in the bookkeeping (tests): every count and name agrees."""
        problems = []
        counts: dict[int, int] = {}
        for eid in self._ino.values():
            counts[eid] = counts.get(eid, 0) + 1
        for held in self._held.values():
            for eid, n in held.items():
                counts[eid] = counts.get(eid, 0) + n
        if counts != self._bound:
            problems.append(f"bound counts {self._bound} != inodes per entry {counts}")
        if {eid: p for p, (_, eid) in self._paths.items()} != self._named:
            problems.append("paths and names disagree")
        if len(self._paths) > self._limit:
            problems.append(f"{len(self._paths)} paths named, limit {self._limit}")
        return problems

    def statistics(self) -> dict[str, int]:
        return {"dram_entries_named": len(self._paths), "dram_entries_bound": len(self._bound)}

    def _new(self) -> int:
        eid = self._next
        self._next += 1
        return eid

    def _unname(self, path: bytes) -> None:
        _, eid = self._paths.pop(path)
        del self._named[eid]
        self._drop(eid)

    def _attach(self, ino: int, eid: int) -> None:
        old = self._ino.get(ino)
        if old == eid:
            return
        self._ino[ino] = eid
        self._bound[eid] = self._bound.get(eid, 0) + 1
        if old is not None:
            self._release(old)

    def _release(self, eid: int) -> None:
        n = self._bound.get(eid, 0) - 1
        if n > 0:
            self._bound[eid] = n
            return
        self._bound.pop(eid, None)
        if eid not in self._named:
            self._drop(eid)

    def _trim(self) -> None:
        while len(self._paths) > self._limit:
            path, (_, eid) = self._paths.popitem(last=False)
            del self._named[eid]
            if eid not in self._bound:
                self._drop(eid)
