"""The fast tier: sparse cache files on local NVMe, extent maps, a durable catalog.

Each cached source file *version* (path, size, mtime, etag) has one sparse
cache file under ``<cache dir>/data/``, named by its catalog id. What is
present is an extent map per file (`sortedcontainers.SortedDict`: start ->
`Extent`), kept in memory and mirrored in the sqlite catalog
(`fusefs.catalog`), so a remount serves yesterday's warm data at once.

Writes into the tier (admissions) go to the cache file immediately and are
readable at once; a background committer makes them durable (fdatasync of the
touched files, in a worker thread) and only then records them in the catalog.
Each extent carries a CRC32; an extent is verified on its first read after it
was loaded from the catalog, so a cache file damaged while unmounted (or torn
by a crash) is detected, dropped and refetched instead of served.

Space: the policy instance (tier ``fast``) holds one object per extent and
chooses victims; above 95% of the size limit a batch is evicted down to 90%
(high and low watermarks); eviction deletes the catalog row first, then
punches the hole. A full disk (ENOSPC) triggers an eviction and a retry; if that fails
too, the admission is skipped and the read still succeeds from the capacity
tier.

Lock order: none inside the trio thread (one task runs at a time); the catalog
has its own lock, taken only inside its methods.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sqlite3
import zlib
from dataclasses import dataclass, field
from typing import Any

import trio
from sortedcontainers import SortedDict

from ..catalog import Catalog, ExtentRow
from ..policies.base import AccessInfo, Policy, PolicyError
from ..stats import Stats
from .capacity import SourceVersion

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# Writes at least this large go to a worker thread.
_THREAD_IO = 256 * 1024


def _punch_hole(fd: int, offset: int, length: int) -> None:
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                         ctypes.c_long(offset), ctypes.c_long(length))
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))


@dataclass(slots=True, eq=False)
class Extent:
    start: int
    length: int
    crc: int
    pinned: bool = False
    committed: bool = False
    verified: bool = True


@dataclass(slots=True, eq=False)
class CachedFile:
    """One source file version in the fast tier."""

    id: int
    path: bytes
    version: SourceVersion
    extents: SortedDict = field(default_factory=SortedDict)
    fd: int = -1

    @property
    def cached_bytes(self) -> int:
        return sum(e.length for e in self.extents.values())


class FastTier:
    """The NVMe tier of one mount.

    Args:
        root: the cache directory (already created 0700 by the mount).
        policy: residency policy for this tier (its capacity is the size limit).
        stats: counters go here.
        commit_interval: seconds between durability batches.
    """

    def __init__(self, root: str, *, policy: Policy, stats: Stats,
                 commit_interval: float = 1.0, high_watermark: float = 0.95,
                 low_watermark: float = 0.9) -> None:
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.policy = policy
        self.stats = stats
        self.commit_interval = commit_interval
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.catalog: Catalog | None = None
        self._files: dict[int, CachedFile] = {}
        self._by_path: dict[bytes, CachedFile] = {}
        self._pending: list[tuple[CachedFile, Extent]] = []
        self._removed: list[tuple[int, int]] = []
        self._wake = trio.Event()
        self._io = trio.CapacityLimiter(2)
        self.pinned_paths: set[bytes] = set()
        stats.sources["fast"] = self.statistics

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        """Load the catalog and rebuild the extent maps (mount time)."""
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.catalog = await trio.to_thread.run_sync(
            Catalog, os.path.join(self.root, "catalog.db"))
        files = await trio.to_thread.run_sync(self.catalog.files)
        extents = await trio.to_thread.run_sync(self.catalog.extents)
        self.pinned_paths = set(await trio.to_thread.run_sync(self.catalog.pins))
        for row in files:
            cf = CachedFile(row.id, row.path,
                            SourceVersion(row.size, row.mtime_ns, row.etag or None))
            self._files[cf.id] = cf
            self._by_path[cf.path] = cf
        missing = []
        for e in extents:
            cf = self._files.get(e.file_id)
            if cf is None:
                continue
            ext = Extent(e.start, e.length, e.crc, e.pinned, committed=True, verified=False)
            cf.extents[e.start] = ext
            self._account(cf, ext)
        for cf in self._files.values():
            if cf.extents and not os.path.exists(self._data_path(cf)):
                missing.append(cf)
        for cf in missing:
            log.warning("cache file of %r vanished; dropping its %d extents",
                        cf.path, len(cf.extents))
            await self.drop_file(cf)
        # Files no catalog row points to are leftovers of a crash: remove them.
        known = {str(i) for i in self._files}
        for name in os.listdir(self.data_dir):
            if name not in known:
                os.unlink(os.path.join(self.data_dir, name))

    def _account(self, cf: CachedFile, ext: Extent, info: AccessInfo | None = None) -> bool:
        """Tell the policy about a new extent; False if it had to be dropped."""
        try:
            evicted = self.policy.insert((cf.id, ext.start), ext.length, info)
        except PolicyError:  # no room beside pinned data: keep the bytes out
            self._remove_extent(cf, ext, notify_policy=False)
            self.stats.add("fast.no_room")
            return False
        for victim in evicted:
            self._evict_key(victim)
        if ext.pinned:
            self.policy.pin((cf.id, ext.start))
        # Above the high watermark, free a batch down to the low one, so the
        # tier does not evict one extent per admission at the edge.
        cap = self.policy.capacity
        if self.policy.used > self.high_watermark * cap:
            self.stats.add("fast.watermark_runs")
            self._evict_bytes(self.policy.used - int(self.low_watermark * cap))
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The committer: batches durability and catalog updates until cancelled."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.commit_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.commit()
        finally:
            with trio.CancelScope(shield=True):
                await self.commit()

    async def close(self) -> None:
        await self.commit()
        for cf in self._files.values():
            if cf.fd >= 0:
                os.close(cf.fd)
                cf.fd = -1
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None

    async def commit(self) -> None:
        """Make pending extents durable, then record them (and removals) in the catalog."""
        if (not self._pending and not self._removed) or self.catalog is None:
            return
        pending, self._pending = self._pending, []
        removed, self._removed = self._removed, []
        fds = {cf.fd for cf, _ in pending if cf.fd >= 0}
        try:
            await trio.to_thread.run_sync(lambda: [os.fdatasync(fd) for fd in fds])
        except OSError as exc:
            log.warning("fast tier: fdatasync failed (%s); these extents stay uncommitted",
                        exc)
            return
        live = [(cf, e) for cf, e in pending if cf.extents.get(e.start) is e]
        rows = [ExtentRow(cf.id, e.start, e.length, e.crc, e.pinned) for cf, e in live]
        try:
            await trio.to_thread.run_sync(self.catalog.apply, rows, removed)
        except (sqlite3.Error, OSError) as exc:
            # A full or failing cache disk: these extents stay served from this
            # mount's memory map but are forgotten at the next mount.
            self.stats.add("fast.catalog_errors")
            log.warning("fast tier: catalog update failed (%s); %d extents not recorded",
                        exc, len(rows))
            return
        for _, e in live:
            e.committed = True
        self.stats.add("fast.commits")

    # -- lookups ---------------------------------------------------------------
    def file_for(self, path: bytes, version: SourceVersion) -> CachedFile | None:
        """The cached copy of ``path`` at ``version``; an older version is dropped."""
        cf = self._by_path.get(path)
        if cf is None:
            return None
        if cf.version != version:
            self.stats.add("fast.stale_versions")
            self._drop_now(cf)
            return None
        return cf

    async def file_create(self, path: bytes, version: SourceVersion) -> CachedFile:
        cf = self.file_for(path, version)
        if cf is not None:
            return cf
        assert self.catalog is not None
        try:
            fid = await trio.to_thread.run_sync(self.catalog.add_file, path, version.size,
                                                version.mtime_ns, version.etag)
        except sqlite3.Error as exc:
            self.stats.add("fast.catalog_errors")
            raise OSError(errno.EIO, f"catalog: {exc}") from None
        cf = CachedFile(fid, path, version)
        self._files[fid] = cf
        self._by_path[path] = cf
        return cf

    def _data_path(self, cf: CachedFile) -> str:
        return os.path.join(self.data_dir, str(cf.id))

    def _fd(self, cf: CachedFile) -> int:
        if cf.fd < 0:
            cf.fd = os.open(self._data_path(cf), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return cf.fd

    def covering(self, cf: CachedFile, start: int, end: int) -> Extent | None:
        """The extent holding all of [start, end), if one does."""
        idx = cf.extents.bisect_right(start) - 1
        if idx < 0:
            return None
        ext: Extent = cf.extents.peekitem(idx)[1]
        return ext if ext.start + ext.length >= end else None

    async def read(self, cf: CachedFile, start: int, length: int) -> bytes | None:
        """Bytes [start, start+length) if present and intact, else None.

        A range across adjacent extents (a read over a chunk boundary of a file
        copied whole) is assembled from them.
        """
        end = start + length
        ext = self.covering(cf, start, end)
        if ext is not None:
            return await self._read_extent(cf, ext, start, length)
        parts: list[bytes] = []
        pos = start
        while pos < end:
            ext = self.covering(cf, pos, pos + 1)
            if ext is None:
                return None
            stop = min(end, ext.start + ext.length)
            piece = await self._read_extent(cf, ext, pos, stop - pos)
            if piece is None or len(piece) != stop - pos:
                return None
            parts.append(piece)
            pos = stop
        return b"".join(parts)

    async def _read_extent(self, cf: CachedFile, ext: Extent, start: int,
                           length: int) -> bytes | None:
        fd = self._fd(cf)
        if not ext.verified:
            whole = await self._pread(fd, ext.length, ext.start)
            if len(whole) != ext.length or zlib.crc32(whole) != ext.crc:
                log.warning("fast tier: checksum mismatch in %r at %d+%d; refetching",
                            cf.path, ext.start, ext.length)
                self.stats.add("fast.corrupt_extents")
                self._remove_extent(cf, ext)
                return None
            ext.verified = True
            data = whole[start - ext.start:start - ext.start + length]
        else:
            data = await self._pread(fd, length, start)
        self.policy.record_hit((cf.id, ext.start))
        return data

    async def _pread(self, fd: int, length: int, offset: int) -> bytes:
        if length >= _THREAD_IO:
            async with self._io:
                return await trio.to_thread.run_sync(os.pread, fd, length, offset)
        return os.pread(fd, length, offset)

    # -- admission ---------------------------------------------------------------
    async def admit(self, cf: CachedFile, start: int, data: bytes, *,
                    pinned: bool = False, info: AccessInfo | None = None) -> bool:
        """Store ``data`` at ``start`` of ``cf``; False if it was skipped."""
        end = start + len(data)
        # Fit between existing extents: drop those the new one covers, trim at the edges.
        s, e = start, end
        covered = []
        idx = max(0, cf.extents.bisect_right(start) - 1)
        for old in list(cf.extents.values()[idx:]):
            if old.start >= end:
                break
            oend = old.start + old.length
            if oend <= start:
                continue
            if old.start >= start and oend <= end:
                covered.append(old)
            elif old.start < s < oend:
                s = oend
            elif old.start < e:
                e = old.start
        if s >= e:
            return False
        if s != start or e != end:
            data = data[s - start:e - start]
            covered = [o for o in covered if o.start >= s and o.start + o.length <= e]
        # Drop what the new extent covers first: punching those holes after the
        # write would punch the new bytes too.
        for old in covered:
            self._remove_extent(cf, old)
        fd = self._fd(cf)
        for attempt in (1, 2):
            try:
                if len(data) >= _THREAD_IO:
                    async with self._io:
                        n = await trio.to_thread.run_sync(os.pwrite, fd, data, s)
                else:
                    n = os.pwrite(fd, data, s)
                if n != len(data):  # a short write is how a full disk often shows
                    raise OSError(errno.ENOSPC, "short write to the cache file")
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt == 2:
                    self.stats.add("fast.write_failed")
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        log.warning("fast tier: write failed: %s", exc)
                    return False
                self.stats.add("fast.enospc")
                self._evict_bytes(max(len(data), self.policy.capacity // 10))
        ext = Extent(s, len(data), zlib.crc32(data), pinned=pinned)
        cf.extents[s] = ext
        if not self._account(cf, ext, info):
            return False
        self._pending.append((cf, ext))
        if len(self._pending) >= 256:
            self._wake.set()
        self.stats.add("fast.admitted_bytes", len(data))
        return True

    # -- eviction ----------------------------------------------------------------
    def _evict_key(self, key: tuple[int, int]) -> None:
        cf = self._files.get(key[0])
        ext = cf.extents.get(key[1]) if cf is not None else None
        if cf is not None and ext is not None:
            self.stats.add("fast.evictions")
            self._remove_extent(cf, ext, notify_policy=False)

    def _evict_bytes(self, nbytes: int) -> None:
        for key in self.policy.victims(nbytes):
            self.policy.remove(key)
            self._evict_key(key)

    def _remove_extent(self, cf: CachedFile, ext: Extent, *, notify_policy: bool = True) -> None:
        if cf.extents.get(ext.start) is not ext:
            return
        del cf.extents[ext.start]
        if notify_policy:
            self.policy.remove((cf.id, ext.start))
        if ext.committed:
            self._removed.append((cf.id, ext.start))
        # The row goes first (next commit); punching now is safe because a crash
        # before that commit leaves a row whose CRC no longer matches: detected.
        try:
            _punch_hole(self._fd(cf), ext.start, ext.length)
        except OSError as exc:
            log.warning("fast tier: cannot punch hole in %r: %s", cf.path, exc)

    def _drop_now(self, cf: CachedFile) -> None:
        for ext in list(cf.extents.values()):
            self._remove_extent(cf, ext)
        self._files.pop(cf.id, None)
        if self._by_path.get(cf.path) is cf:
            del self._by_path[cf.path]
        if cf.fd >= 0:
            os.close(cf.fd)
            cf.fd = -1
        try:
            os.unlink(self._data_path(cf))
        except FileNotFoundError:
            pass
        if self.catalog is not None:
            try:
                self.catalog.remove_files([cf.id])
            except sqlite3.Error as exc:  # the next mount finds no data file and drops it
                self.stats.add("fast.catalog_errors")
                log.warning("fast tier: catalog update failed: %s", exc)

    async def drop_file(self, cf: CachedFile) -> None:
        self._drop_now(cf)

    def drop_path(self, path: bytes) -> int:
        """Forget every cached byte of ``path``; returns the bytes dropped."""
        cf = self._by_path.get(path)
        if cf is None:
            return 0
        n = cf.cached_bytes
        self._drop_now(cf)
        return n

    def rename_path(self, old: bytes, new: bytes) -> None:
        """Follow a rename through the mount (the version is unchanged)."""
        cf = self._by_path.pop(old, None)
        self.drop_path(new)
        if cf is not None:
            # The catalog keeps the old path; the next remount re-validates by
            # version and drops it. Simpler than a path update mid-flight.
            cf.path = new
            self._by_path[new] = cf

    def paths_under(self, path: bytes) -> list[bytes]:
        """Cached paths equal to ``path`` or below it (``b""``: all)."""
        prefix = path + b"/"
        return [p for p in self._by_path if not path or p == path or p.startswith(prefix)]

    def set_pinned(self, cf: CachedFile, ext: Extent, pinned: bool) -> None:
        """Pin or unpin one extent; the catalog learns it at the next commit."""
        if ext.pinned == pinned:
            return
        ext.pinned = pinned
        key = (cf.id, ext.start)
        if pinned:
            self.policy.pin(key)
        else:
            self.policy.unpin(key)
        if ext.committed:
            ext.committed = False
            self._pending.append((cf, ext))

    def unpin_path(self, path: bytes) -> int:
        cf = self._by_path.get(path)
        if cf is None:
            return 0
        exts = [e for e in cf.extents.values() if e.pinned]
        for ext in exts:
            self.set_pinned(cf, ext, False)
        return len(exts)

    # -- reporting -----------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        return {
            "files": len(self._files),
            "extents": sum(len(cf.extents) for cf in self._files.values()),
            "bytes_used": self.policy.used,
            "capacity": self.policy.capacity,
            "pinned_bytes": self.policy.pinned_bytes,
            "pending_commits": len(self._pending),
        }
