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

trio thread only; no I/O.
"""

from __future__ import annotations

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
