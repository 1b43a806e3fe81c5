"""Open file and directory handles of one mount.

A `FileHandle` is what the kernel's ``fh`` names: the inode, the open source
object, the open flags, and the per-handle state the engine needs (who opened
it, what the classifier has learnt about the stream). A `DirHandle` holds the
snapshot of a directory listing taken when a listing starts (readdir at
offset 0), so readdir offsets stay stable while the directory changes
underneath.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .access import Override
from .tiers.capacity import CapacityFile, SourceVersion, Stat

if TYPE_CHECKING:
    from .engine.stream import StreamState
    from .pathstats import Figures
    from .tiers.fast import CacheEntry


@dataclass(slots=True, eq=False)
class FileHandle:
    fh: int
    ino: int
    path: bytes
    file: CapacityFile
    flags: int
    pid: int
    #: File size as of open, grown by this handle's writes (a policy hint).
    size: int = 0
    #: The per-path rule's override, resolved once at open, if a rule matched.
    override: Override | None = None
    #: Index of the [[rule]] that matched the path, if any (for per-rule stats).
    rule: int | None = None
    #: Source version as of open; ties fast-tier data to it.
    version: SourceVersion | None = None
    #: The fast tier's entry for this version, once it has one.
    fast: CacheEntry | None = None
    #: The DRAM entry of this version (`DramEntries`): the handle's reads use only it.
    dram: int | None = None
    #: True once this handle wrote: caches of the inode must not be trusted.
    dirty: bool = False
    #: Read-ahead state, once the handle is read as a stream.
    stream: StreamState | None = None
    #: True once a read found the source changed under this open (ESTALE).
    stale: bool = False
    #: The path's figures for `tierfs stats --by-path` (`fusefs.pathstats`), if tracked.
    figures: Figures | None = None


@dataclass(slots=True, eq=False)
class DirHandle:
    fh: int
    ino: int
    entries: list[tuple[bytes, Stat]] = field(default_factory=list)
    #: `Operations.mutations` when ``entries`` was listed.
    mutations: int = 0


class HandleTable:
    """Allocates handle numbers; trio-only."""

    def __init__(self) -> None:
        self._next = 1
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}

    def _alloc(self) -> int:
        fh = self._next
        self._next += 1
        return fh

    def add_file(self, **kw: Any) -> FileHandle:
        h = FileHandle(fh=self._alloc(), **kw)
        self._files[h.fh] = h
        return h

    def add_dir(self, ino: int, entries: list[tuple[bytes, Stat]]) -> DirHandle:
        h = DirHandle(self._alloc(), ino, entries)
        self._dirs[h.fh] = h
        return h

    def file(self, fh: int) -> FileHandle:
        try:
            return self._files[fh]
        except KeyError:
            raise OSError(errno.EBADF, f"unknown file handle {fh}") from None

    def dir(self, fh: int) -> DirHandle:
        try:
            return self._dirs[fh]
        except KeyError:
            raise OSError(errno.EBADF, f"unknown directory handle {fh}") from None

    def pop_file(self, fh: int) -> FileHandle:
        h = self.file(fh)
        del self._files[fh]
        return h

    def pop_dir(self, fh: int) -> DirHandle:
        h = self.dir(fh)
        del self._dirs[fh]
        return h

    def files(self) -> list[FileHandle]:
        return list(self._files.values())

    def files_of(self, ino: int) -> list[FileHandle]:
        return [h for h in self._files.values() if h.ino == ino]

    def __len__(self) -> int:
        return len(self._files) + len(self._dirs)
