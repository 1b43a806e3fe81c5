"""The capacity-tier contract: the source of truth a mount serves.

A capacity tier is the dataset as it already exists: a local directory
(`fusefs.tiers.posix`) or an object store reached through `pyarrow.fs`
(`fusefs.tiers.objectstore`). This module owns the interface both implement,
the attribute record they return (`Stat`) and the version a cached copy is tied
to (`SourceVersion`); it imports neither implementation (`fusefs.tiers.open_capacity`
picks one for a source string).

Paths are relative to the source root, as ``bytes`` with ``/`` separators and
no leading slash (``b""`` is the root); the upper layers build them from the
inode tree and never pass ``.`` or ``..`` components. Failures are raised as
`OSError` with the errno the caller should see (`FileNotFoundError`,
`PermissionError`, ...); a store that is unreachable raises `TierUnavailable`
(an `OSError` with ``EIO``). Nothing here raises `pyfuse3.FUSEError`: that is
`operations.py`'s job.

Every method that may wait (network, fsync, large copies) is ``async`` and must
not block the trio event loop for longer than a local syscall: implementations
push such work to `trio.to_thread.run_sync` under their own limiter.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class TierUnavailable(OSError):
    """The capacity tier did not answer (after retries); maps to ``EIO``."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@dataclass(slots=True)
class Stat:
    """Attributes of one source object, shaped like `os.stat_result`."""

    st_mode: int
    st_size: int = 0
    st_ino: int = 0
    st_dev: int = 0
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0
    st_atime_ns: int = 0
    st_mtime_ns: int = 0
    st_ctime_ns: int = 0
    etag: str | None = field(default=None)
    #: False where the source did not say when the object last changed (some S3
    #: servers' listings give no mtime): the mtime shown is a stand-in, and a
    #: version needs a request that states it (`open` asks one).
    mtime_known: bool = True
    #: False where the source stores attributes per object (mode, owner, times:
    #: object-store metadata) that this Stat does not carry yet (a listing gives
    #: none): the mode and owner shown are the configured stand-ins.
    attrs_known: bool = True
    #: Object stores with stored attributes: the extended attributes the object
    #: stores, as its ``x-amz-meta-xattr`` value (s3fs's encoding), or None.
    xattr: str | None = None
    #: Object stores: when the store says the object's bytes last changed (its
    #: Last-Modified, whole seconds), which names the version with the ETag and size.
    #: The mtime shown may be another (stored attributes keep the user's in the
    #: object's metadata, and `utimes` changes it, not the bytes). None: `st_mtime_ns`.
    modified_ns: int | None = None

    @classmethod
    def from_os(cls, st: os.stat_result) -> Stat:
        return cls(
            st_mode=st.st_mode,
            st_size=st.st_size,
            st_ino=st.st_ino,
            st_dev=st.st_dev,
            st_nlink=st.st_nlink,
            st_uid=st.st_uid,
            st_gid=st.st_gid,
            st_rdev=st.st_rdev,
            st_blksize=st.st_blksize,
            st_blocks=st.st_blocks,
            st_atime_ns=st.st_atime_ns,
            st_mtime_ns=st.st_mtime_ns,
            st_ctime_ns=st.st_ctime_ns,
        )

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.st_mode)

    @property
    def is_reg(self) -> bool:
        return stat_mod.S_ISREG(self.st_mode)

    def version(self) -> SourceVersion:
        # On a local source, what a user cannot set (device, inode number, ctime)
        # joins size and mtime: `cp -p`, `rsync -a` and `touch -r` restore an old
        # mtime on new bytes, but a replacement gets a new inode or a new ctime.
        ident = f"{self.st_dev}:{self.st_ino}:{self.st_ctime_ns}" if self.st_ino else None
        # An object store that was asked and gives no ETag says "" (see `objectstore`):
        # as a version that is "no ETag", as the catalog stores it. Its time is the
        # store's own (`modified_ns`), so a listing, a HEAD and a GET of one object state
        # one version whatever mtime its metadata stores.
        mtime = self.st_mtime_ns if self.modified_ns is None else self.modified_ns
        return SourceVersion(self.st_size, mtime, self.etag or None, ident)


class SourceVersion(NamedTuple):
    """What a cached copy of a file is tied to; any change invalidates it.

    ``mtime_ns`` is the file's mtime on a local source, on an object store the time the
    store says the object last changed (Last-Modified, `Stat.modified_ns`); ``etag`` is
    the object store's entity tag (or version id) where it gives one; ``ident`` is
    ``"dev:ino:ctime_ns"`` on a local source.
    """

    size: int
    mtime_ns: int
    etag: str | None
    ident: str | None = None


def same_version(listed: SourceVersion, opened: SourceVersion) -> bool:
    """Whether ``listed`` (from a listing, which may lack the ETag an open states)
    and ``opened`` name one version: every field equal, the ETag where both have one."""
    return (listed.size == opened.size and listed.mtime_ns == opened.mtime_ns
            and listed.ident == opened.ident
            and (listed.etag is None or opened.etag is None or listed.etag == opened.etag))


class StatFs(NamedTuple):
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


# Sentinel for setattr times: "now" as the source's clock sees it.
UTIME_NOW = object()


class CapacityFile(ABC):
    """An open source object. Positional I/O only: handles may be shared."""

    @abstractmethod
    async def pread(self, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; short only at end of file."""

    async def pread_offloaded(self, offset: int, size: int) -> bytes:
        """`pread` for work nobody waits on (warming): never blocks the event loop,
        even for a small read a local source would otherwise answer inline."""
        return await self.pread(offset, size)

    @abstractmethod
    async def pwrite(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; returns the bytes written."""

    @abstractmethod
    async def truncate(self, size: int) -> None: ...

    @abstractmethod
    async def fstat(self) -> Stat: ...

    @abstractmethod
    async def flush(self) -> None:
        """Called on every close(2) of a descriptor; object stores upload here."""

    @abstractmethod
    async def fsync(self, datasync: bool) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Release the handle; must be safe to call more than once."""

    def fileno(self) -> int | None:
        """The local descriptor, if the tier has one (lets the engine use os.pread)."""
        return None


class CapacityTier(ABC):
    """A dataset source. See the module docstring for path and error rules."""

    #: Short name shown in stats and errors ("posix", "s3", ...).
    kind: str = "?"
    #: Whether the tier can keep hard links, device nodes, ownership, xattrs.
    supports_links: bool = False
    #: Whether the tier keeps extended attributes (``[mount] xattrs = "auto"`` asks).
    has_xattrs: bool = False
    #: Whether a read is a network request (object stores), so that fetching a
    #: larger aligned block per miss costs little more than the bytes asked for.
    remote: bool = False
    #: Whether `CapacityFile.flush` does work (object stores upload on close). If
    #: not, the mount answers FLUSH with ENOSYS once and the kernel stops sending
    #: it: close(2) then costs no round trip to the daemon.
    needs_flush: bool = True

    @property
    @abstractmethod
    def description(self) -> str:
        """Human-readable source, for logs and `tierfs stats`."""

    async def start(self) -> None:
        """Check that the source is reachable; raise OSError with a clear message if not."""

    async def close(self) -> None:
        """Release every resource the tier holds."""

    def statistics(self) -> dict[str, int]:
        """Counters of the tier (requests sent, by kind), for `tierfs stats`."""
        return {}

    #: Whether `start_writeback` can make writes durable in a cache directory and upload
    #: them in the background (object stores).
    supports_writeback: bool = False

    async def start_writeback(self, cache_dir: str, *, durability: str, stats: Any,
                              take_lock: bool, calm: Any = None,
                              defer_max: float = 10.0) -> None:
        """Write back through ``cache_dir`` from now on; recover what a crash left there
        (called after `start`, before the mount serves). ``defer_max``: the longest an
        upload waits for the mount's writers to pause."""
        raise OSError(errno.ENOTSUP, f"{self.kind} sources write in place")

    async def run_writeback(self, *, task_status: Any = None) -> None:
        """The background uploads of `start_writeback` (until cancelled)."""
        if task_status is not None:
            task_status.started()

    async def stop_writeback(self) -> None:
        """Unmount: upload what is pending (as far as the store lets), then let go."""

    #: Whether `save_snapshot` / `load_snapshot` do anything (tiers with a listing cache).
    supports_snapshots: bool = False

    #: Wall-clock bound of one read of the tier, retries included, or None
    #: (local tiers). Read-ahead waits no longer than this for a chunk.
    read_timeout: float | None = None

    async def save_snapshot(self, path: str) -> int:
        """Write the cached directory listings to ``path``; returns the entries written."""
        raise OSError(errno.ENOTSUP, f"{self.kind} sources keep no listing cache to snapshot")

    async def load_snapshot(self, path: str, *, fresh: bool = True) -> int:
        """Serve listings saved by `save_snapshot`; returns the entries loaded.

        ``fresh=False``: keep them only for when the source does not answer
        (stale-if-error); the source is asked as if nothing were cached.
        """
        raise OSError(errno.ENOTSUP, f"{self.kind} sources keep no listing cache to snapshot")

    @property
    def snapshot_generation(self) -> int:
        """Changes to the listing cache so far (a snapshot is worth saving when it moved)."""
        return 0

    async def start_offline(self, why: OSError) -> None:
        """Serve from caches alone: `start` found the source unreachable (``why``).

        Tiers that cannot (no listing cache) re-raise ``why``.
        """
        raise why

    def cached_listing(self, path: bytes) -> dict[bytes, Stat] | None:
        """The directory's children if a fresh listing of it is cached, without a request."""
        return None

    async def fetch_small(self, path: bytes, listed: Stat) -> tuple[SourceVersion, bytes]:
        """A small file whole, and the version it was read at (walk-ahead's fetch).

        ``listed`` is what a listing said of it; the bytes may be of another version
        (the caller compares). Reads one byte past the listed size, so growth shows.
        Tiers override it where fewer requests do (an object store: one GET).
        """
        f = await self.open(path, os.O_RDONLY)
        try:
            version = (await f.fstat()).version()
            data = await f.pread(0, listed.st_size + 1)
        finally:
            await f.close()
        return version, data

    # -- metadata --------------------------------------------------------
    @abstractmethod
    async def stat(self, path: bytes) -> Stat:
        """Attributes of ``path`` without following a final symlink."""

    @abstractmethod
    async def listdir(self, path: bytes) -> list[tuple[bytes, Stat]]:
        """Entries of a directory with their attributes, without ``.``/``..``."""

    @abstractmethod
    async def readlink(self, path: bytes) -> bytes: ...

    @abstractmethod
    async def setattr(
        self,
        path: bytes,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: Any = None,
        mtime_ns: Any = None,
        file: CapacityFile | None = None,
    ) -> Stat:
        """Change attributes; ``atime_ns``/``mtime_ns`` may be `UTIME_NOW`."""

    @abstractmethod
    async def statfs(self) -> StatFs: ...

    # -- namespace -------------------------------------------------------
    @abstractmethod
    async def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> Stat: ...

    @abstractmethod
    async def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> Stat: ...

    @abstractmethod
    async def symlink(self, path: bytes, target: bytes, uid: int, gid: int) -> Stat: ...

    @abstractmethod
    async def link(self, path: bytes, new_path: bytes) -> Stat: ...

    @abstractmethod
    async def unlink(self, path: bytes) -> None: ...

    @abstractmethod
    async def rmdir(self, path: bytes) -> None: ...

    @abstractmethod
    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        """Rename; ``flags`` carries RENAME_NOREPLACE / RENAME_EXCHANGE."""

    # -- data ------------------------------------------------------------
    @abstractmethod
    async def open(self, path: bytes, flags: int) -> CapacityFile:
        """Open an existing object (no O_CREAT); flags are os.O_* access flags."""

    async def open_offloaded(self, path: bytes, flags: int) -> CapacityFile:
        """`open` for work nobody waits on (warming many files): never blocks the
        event loop, so many such opens proceed in parallel beside the readers."""
        return await self.open(path, flags)

    @abstractmethod
    async def create(
        self, path: bytes, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[CapacityFile, Stat]:
        """Create (O_CREAT|O_EXCL semantics) and open a regular file."""

    async def fsync_dir(self, path: bytes) -> None:
        """Make a directory's entries durable (no-op where the store has none)."""

    def trusted_for(self, path: bytes) -> float:
        """Seconds for which `stat` of ``path`` will answer what it answered last without
        asking the source (a metadata cache's remaining life); 0 where it always asks.
        The kernel may keep the answer as long (`Operations` adds it to its timeouts):
        no staler than the mount's own caches."""
        return 0.0

    # -- extended attributes (optional) ----------------------------------
    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        raise OSError(errno.ENOTSUP, "extended attributes are not supported by this tier")

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        raise OSError(errno.ENOTSUP, "extended attributes are not supported by this tier")

    async def listxattr(self, path: bytes) -> list[bytes]:
        return []

    async def removexattr(self, path: bytes, name: bytes) -> None:
        raise OSError(errno.ENOTSUP, "extended attributes are not supported by this tier")


def join(parent: bytes, name: bytes) -> bytes:
    """Join a relative directory path and one name."""
    return name if not parent else parent + b"/" + name

