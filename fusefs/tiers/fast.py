"""The fast tier: sparse cache files on local NVMe, extent maps, a durable catalog.

Each cached source file *version* has one cache entry (`CacheEntry`): an id (never reused:
allocated above every id the catalog or the data directory has seen), a sparse data file
``<cache dir>/data/<id>``, and an extent map (`sortedcontainers.SortedDict`: start ->
`Extent`), kept in memory and mirrored in the sqlite catalog (`fusefs.catalog`), so a
remount serves yesterday's warm data at once. The tier's policy keys are `FastKey(entry,
start)`: the entry id, never an inode.

Writes into the tier (admissions) go to the data file immediately and are readable at
once; the committer makes them durable (fdatasync, spread over worker threads) and only then records
them in the catalog, together with new entry rows and the removal of dropped entries, in one
transaction, also in a worker thread: no sqlite call runs on the event loop. Each extent
carries the CRC-32C of every 16 KiB piece (`fusefs.checksums`), and every read checks the
pieces it reads, so a data file damaged while mounted or unmounted (or torn by a crash) is
detected, the extent dropped and the bytes refetched; a read never returns unchecked bytes.

Space: the policy holds one object per extent and chooses victims; above 95% of the size
limit a batch is evicted down to 90% (high and low watermarks). A full disk (ENOSPC)
triggers an eviction and a retry; if that fails too, the admission is skipped and the read
still succeeds from the capacity tier.

Where awaits interleave (one trio thread; a task runs until it awaits):

* a pread or pwrite in a worker thread may overlap an eviction or a drop of the same entry.
  A read re-checks after the await that its extent is still the same object (a removal
  punches the hole at once, so bytes read across it may be zeros) and otherwise reports a
  miss; an admission re-checks that its entry was not dropped.
* admissions of one entry are serialised by the entry's lock: trimming against existing
  extents, the write and the insert happen as one step, so extents never overlap.
* a data file descriptor is closed only when no call is using it (``io`` count); a dropped
  entry's file is unlinked by the committer after its row is gone.

Lock order: an entry's admission lock, then the tier's I/O limiter; the catalog has its own
lock, taken only inside its methods in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import trio
from sortedcontainers import SortedDict

from .. import checksums
from ..access import AccessInfo, FastKey
from ..catalog import Catalog, ExtentRow, FileRow
from ..policies.base import Policy, PolicyError
from ..stats import Stats
from .capacity import SourceVersion

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# Reads and writes at least this large go to a worker thread.
_THREAD_IO = 256 * 1024
#: Threads a commit's fdatasync calls are spread over. On ext4 (and XFS) syncs that
#: run at once share journal commits: 1,000 cache files of 4 KiB took 0.15 ms each
#: synced 16 at a time against 2.9 ms each one after another (this machine's ext4,
#: load 6), and a warm of small files was bound by that.
_SYNC_THREADS = 16


def _punch_hole(fd: int, offset: int, length: int) -> None:
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                         ctypes.c_long(offset), ctypes.c_long(length))
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))


class CacheBusy(OSError):
    """Another process (a mount, or `tierfs fsck --repair`) holds the cache directory."""


def lock_cache_dir(root: str) -> int:
    """Take the cache directory's lock (``<root>/lock``, flock); returns its descriptor.

    Held for as long as the descriptor is open; the kernel releases it if the holder dies.
    """
    fd = os.open(os.path.join(root, "lock"),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CacheBusy(errno.EBUSY, f"cache directory {root} is in use by another tierfs "
                                     f"process (a mount, or fsck)") from None
    return fd


@dataclass(slots=True, eq=False)
class Extent:
    start: int
    length: int
    #: `checksums.block_crcs` of its bytes: pieces counted from ``start``.
    crcs: bytes
    pinned: bool = False
    #: Its row is in the catalog as it is now (pin state included).
    committed: bool = False


@dataclass(slots=True, eq=False)
class CacheEntry:
    """One source file version in the fast tier."""

    id: int
    path: bytes
    version: SourceVersion
    extents: SortedDict = field(default_factory=SortedDict)
    fd: int = -1
    #: Calls using ``fd`` right now; the descriptor is closed only at zero.
    io: int = 0
    #: Gone from the tier: no new bytes, no reads; the committer removes row and file.
    dropped: bool = False
    #: Its catalog row exists (committed).
    recorded: bool = False
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def cached_bytes(self) -> int:
        return sum(e.length for e in self.extents.values())


#: The name older code and tests know.
CachedFile = CacheEntry


class FastTier:
    """The NVMe tier of one mount.

    Args:
        root: the cache directory (already created 0700 by the mount).
        policy: residency policy for this tier (its capacity is the size limit); built
            with ``key_type=FastKey`` by the mount.
        stats: counters go here.
        commit_interval: seconds between durability batches.
    """

    def __init__(self, root: str, *, policy: Policy, stats: Stats,
                 commit_interval: float = 1.0, high_watermark: float = 0.95,
                 low_watermark: float = 0.9, verify: bool = True) -> None:
        self.root = root
        #: Check every read against the extent's checksums (`[cache] verify`). Admission
        #: computes them either way, so the catalog stays whole when this is turned on.
        self.verify = verify
        self.data_dir = os.path.join(root, "data")
        self.policy = policy
        self.stats = stats
        self.commit_interval = commit_interval
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.catalog: Catalog | None = None
        self._files: dict[int, CacheEntry] = {}
        self._by_path: dict[bytes, CacheEntry] = {}
        self._next_id = 1
        # Work for the committer: extents to record, extent rows to delete, entries
        # to record, entries to remove (row, then data file).
        self._pending: list[tuple[CacheEntry, Extent]] = []
        self._removed: list[tuple[int, int]] = []
        self._new: list[CacheEntry] = []
        self._dropped: list[CacheEntry] = []
        self._commit_lock = trio.Lock()
        self._catalog_failing = False
        self._wake = trio.Event()
        self._io = trio.CapacityLimiter(2)
        # Data files being created at once (a warm of many small files creates many).
        self._creates = trio.CapacityLimiter(8)
        self.pinned_paths: set[bytes] = set()
        self._lock_fd = -1
        stats.sources["fast"] = self.statistics

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        """Lock the cache directory, load the catalog, rebuild the extent maps (mount time).

        Raises:
            CacheBusy: another process holds the cache directory.
        """
        self._lock_fd = lock_cache_dir(self.root)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        had_catalog = os.path.exists(os.path.join(self.root, "catalog.db"))
        self.catalog = await trio.to_thread.run_sync(
            Catalog, os.path.join(self.root, "catalog.db"))
        if self.catalog.migrated_from == 2:
            log.warning("fast tier: catalog of an older tierfs (schema 2) migrated: its cached "
                        "data had whole-extent checksums and is refetched as it is read")
        files = await trio.to_thread.run_sync(self.catalog.files)
        extents = await trio.to_thread.run_sync(self.catalog.extents)
        self.pinned_paths = set(await trio.to_thread.run_sync(self.catalog.pins))
        names = await trio.to_thread.run_sync(os.listdir, self.data_dir)
        ours = {int(n) for n in names if n.isdigit()}
        self._next_id = max([0, *ours, *(r.id for r in files)]) + 1
        for row in files:
            cf = CacheEntry(row.id, row.path,
                            SourceVersion(row.size, row.mtime_ns, row.etag or None,
                                          row.ident or None), recorded=True)
            old = self._by_path.get(cf.path)
            self._files[cf.id] = cf
            if old is None or old.id < cf.id:
                self._by_path[cf.path] = cf
        for e in extents:
            cf = self._files.get(e.file_id)
            if cf is None:
                continue
            cf.extents[e.start] = Extent(e.start, e.length, e.crcs, e.pinned, committed=True)
        for cf in list(self._files.values()):
            if self._by_path.get(cf.path) is not cf:
                self._drop_now(cf)  # an older entry of a path (renamed over): not served
            elif cf.extents and cf.id not in ours:
                log.warning("fast tier: data file of %r vanished; dropping its %d extents",
                            cf.path, len(cf.extents))
                self._drop_now(cf)
            else:
                for ext in list(cf.extents.values()):
                    self._account(cf, ext)
        # Data files no row names are leftovers of a crash before their first commit.
        orphans = ours - set(self._files)
        if orphans and not had_catalog:
            log.warning("fast tier: %s/catalog.db is missing; the %d cached files it "
                        "described are removed and refetched on use", self.root, len(orphans))
        for i in orphans:
            await trio.to_thread.run_sync(self._unlink, i)
        await self.commit()

    def _account(self, cf: CacheEntry, ext: Extent, info: AccessInfo | None = None) -> bool:
        """Tell the policy about a new extent; False if it had to be dropped."""
        try:
            evicted = self.policy.insert(FastKey(cf.id, ext.start), ext.length, info)
        except PolicyError:  # no room beside pinned data: keep the bytes out
            self._remove_extent(cf, ext, notify_policy=False)
            self.stats.add("fast.no_room")
            return False
        for victim in evicted:
            self._evict_key(victim)
        if ext.pinned:
            self.policy.pin(FastKey(cf.id, ext.start))
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
            self._close_fd(cf)
        for cf in self._dropped:
            self._close_fd(cf)
        if self.catalog is not None:
            await trio.to_thread.run_sync(self.catalog.close)
            self.catalog = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1

    async def commit(self) -> None:
        """Make pending extents durable, then record them, new entries and removals in the
        catalog (one transaction), then unlink the data files of removed entries."""
        # Shielded: a batch is taken off the queues before its awaits, and a
        # cancellation in the middle (an unmount) would lose it.
        with trio.CancelScope(shield=True):
            async with self._commit_lock:
                await self._commit()

    async def _commit(self) -> None:
        if self.catalog is None or not (self._pending or self._removed or self._new
                                        or self._dropped):
            return
        pending, self._pending = self._pending, []
        removed, self._removed = self._removed, []
        new, self._new = self._new, []
        dropped, self._dropped = self._dropped, []
        syncing = {cf for cf, _ in pending if not cf.dropped and cf.fd >= 0}
        for cf in syncing:
            cf.io += 1
        try:
            await _fdatasync_all([cf.fd for cf in syncing])
        except OSError as exc:
            self._requeue(pending, removed, new, dropped)
            self._commit_failed(f"fdatasync failed ({exc})")
            return
        finally:
            for cf in syncing:
                self._io_done(cf)
        # What is still true after the await: an extent evicted or an entry dropped
        # meanwhile is not recorded (its removal is queued for the next commit).
        live = [(cf, e) for cf, e in pending
                if not cf.dropped and cf.extents.get(e.start) is e]
        new_rows = [cf for cf in new if not cf.dropped]
        gone = [cf for cf in dropped if cf.recorded]
        # The rows are taken here, on the event loop: an extent pinned or unpinned while
        # the worker thread writes them must not reach the catalog half-seen.
        files = [FileRow(cf.id, cf.path, cf.version.size, cf.version.mtime_ns,
                         cf.version.etag or "", cf.version.ident or "") for cf in new_rows]
        gone_ids = {cf.id for cf in gone}
        remove = [r for r in removed if r[0] not in gone_ids]
        rows = [ExtentRow(cf.id, e.start, e.length, e.crcs, e.pinned) for cf, e in live]
        try:
            await trio.to_thread.run_sync(lambda: self.catalog.apply(  # type: ignore[union-attr]
                drop_files=sorted(gone_ids), new_files=files, remove=remove, add=rows))
        except (sqlite3.Error, OSError) as exc:
            self._requeue(pending, removed, new, dropped)
            self._commit_failed(f"catalog update failed ({exc})")
            return
        if self._catalog_failing:
            log.warning("fast tier: catalog updates work again")
            self._catalog_failing = False
        for cf in new_rows:
            cf.recorded = True
        for (cf, e), row in zip(live, rows):
            if (e.length, e.crcs, e.pinned) == (row.length, row.crcs, row.pinned):
                e.committed = True
            elif not cf.dropped and cf.extents.get(e.start) is e:
                # Changed while its row was written (`set_pinned` saw it uncommitted
                # and queued nothing): its row is written again at the next commit.
                self._pending.append((cf, e))
        for cf in dropped:
            cf.recorded = False
        await trio.to_thread.run_sync(lambda: [self._unlink(cf.id) for cf in dropped])
        self.stats.add("fast.commits")

    def _requeue(self, pending: list[tuple[CacheEntry, Extent]], removed: list[tuple[int, int]],
                 new: list[CacheEntry], dropped: list[CacheEntry]) -> None:
        self._pending[:0] = pending
        self._removed[:0] = removed
        self._new[:0] = new
        self._dropped[:0] = dropped

    def _commit_failed(self, why: str) -> None:
        # A full or failing cache disk: the work stays queued and is retried; the
        # extents stay served from this mount's memory map meanwhile.
        self.stats.add("fast.catalog_errors")
        if not self._catalog_failing:
            log.warning("fast tier: %s; will retry", why)
            self._catalog_failing = True

    def _unlink(self, entry_id: int) -> None:
        try:
            os.unlink(os.path.join(self.data_dir, str(entry_id)))
        except FileNotFoundError:
            pass

    # -- lookups ---------------------------------------------------------------
    def file_for(self, path: bytes, version: SourceVersion) -> CacheEntry | None:
        """The cached copy of ``path`` at ``version``; an older version is dropped."""
        cf = self._by_path.get(path)
        if cf is None:
            return None
        if cf.version != version:
            self.stats.add("fast.stale_versions")
            self._drop_now(cf)
            return None
        return cf

    async def file_create(self, path: bytes, version: SourceVersion) -> CacheEntry:
        """The entry of ``path`` at ``version``, made if there is none (recorded at the
        next commit, before its extents)."""
        cf = self.file_for(path, version)
        if cf is not None:
            return cf
        if self.catalog is None:
            raise OSError(errno.EIO, "the fast tier is closed")
        cf = CacheEntry(self._next_id, path, version)
        self._next_id += 1
        self._files[cf.id] = cf
        self._by_path[path] = cf
        self._new.append(cf)
        return cf

    def _data_path(self, cf: CacheEntry) -> str:
        return os.path.join(self.data_dir, str(cf.id))

    def _fd(self, cf: CacheEntry) -> int:
        if cf.dropped:
            raise OSError(errno.ESTALE, "cache entry dropped")
        if cf.fd < 0:
            cf.fd = os.open(self._data_path(cf),
                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        return cf.fd

    def _io_done(self, cf: CacheEntry) -> None:
        cf.io -= 1
        if cf.dropped and cf.io == 0:
            self._close_fd(cf)

    @staticmethod
    def _close_fd(cf: CacheEntry) -> None:
        if cf.fd >= 0 and cf.io == 0:
            os.close(cf.fd)
            cf.fd = -1

    def covering(self, cf: CacheEntry, start: int, end: int) -> Extent | None:
        """The extent holding all of [start, end), if one does."""
        idx = cf.extents.bisect_right(start) - 1
        if idx < 0:
            return None
        ext: Extent = cf.extents.peekitem(idx)[1]
        return ext if ext.start + ext.length >= end else None

    async def read(self, cf: CacheEntry, start: int, length: int) -> bytes | None:
        """Bytes [start, start+length) if present and intact, else None.

        A range across adjacent extents (a read over a chunk boundary of a file
        copied whole) is assembled from them.
        """
        if cf.dropped:
            return None
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

    async def _read_extent(self, cf: CacheEntry, ext: Extent, start: int,
                           length: int) -> bytes | None:
        # Read the whole checksum pieces around the range and check each of them.
        B = checksums.BLOCK
        first = (start - ext.start) // B
        off = ext.start + first * B
        n = min(ext.start + ext.length, start + length + (-(start + length - ext.start) % B)) - off
        if not self.verify:
            off, n = start, min(length, ext.start + ext.length - start)
        try:
            fd = self._fd(cf)
        except OSError:
            return None
        crcs, verify = ext.crcs, self.verify

        def read_and_check() -> tuple[bytes, int | None]:
            data = os.pread(fd, n, off)
            if len(data) != n:
                return data, first
            return data, (checksums.first_bad(data, crcs, first) if verify else None)

        cf.io += 1
        try:
            if n >= _THREAD_IO:
                # Large reads check their pieces in the worker too (the C checksum runs
                # without the GIL): the event loop does not wait for either.
                async with self._io:
                    data, bad = await trio.to_thread.run_sync(read_and_check)
            else:
                data, bad = read_and_check()
        except OSError as exc:
            self.stats.add("fast.read_errors")
            log.warning("fast tier: read of %r failed (%s); served from below", cf.path, exc)
            return None
        finally:
            self._io_done(cf)
        if cf.dropped or cf.extents.get(ext.start) is not ext:
            return None  # evicted or dropped while we read: its bytes may be a hole now
        if bad is not None:
            log.warning("fast tier: checksum mismatch in %r at %d (extent %d+%d); "
                        "dropped, refetching", cf.path, ext.start + bad * B,
                        ext.start, ext.length)
            self.stats.add("fast.corrupt_extents")
            self._remove_extent(cf, ext)
            return None
        self.policy.record_hit(FastKey(cf.id, ext.start))
        if off == start and n == length:
            return data
        return data[start - off:start - off + length]

    # -- admission ---------------------------------------------------------------
    async def admit(self, cf: CacheEntry, start: int, data: bytes, *,
                    pinned: bool = False, info: AccessInfo | None = None) -> bool:
        """Store ``data`` at ``start`` of ``cf``; False if it was skipped."""
        async with cf.lock:
            return await self._admit(cf, start, data, pinned=pinned, info=info)

    async def _admit(self, cf: CacheEntry, start: int, data: bytes, *,
                     pinned: bool, info: AccessInfo | None) -> bool:
        if cf.dropped or not data:
            return False
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
        for attempt in (1, 2):
            try:
                n = await self._pwrite(cf, data, s)
                if n != len(data):  # a short write is how a full disk often shows
                    raise OSError(errno.ENOSPC, "short write to the cache file")
                break
            except OSError as exc:
                if cf.dropped:
                    return False
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt == 2:
                    self.stats.add("fast.write_failed")
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        log.warning("fast tier: write failed: %s", exc)
                    return False
                self.stats.add("fast.enospc")
                self._evict_bytes(max(len(data), self.policy.capacity // 10))
        if cf.dropped:
            return False  # dropped while we wrote: its file goes away with it
        ext = Extent(s, len(data), checksums.block_crcs(data), pinned=pinned)
        cf.extents[s] = ext
        if not self._account(cf, ext, info):
            return False
        self._pending.append((cf, ext))
        if len(self._pending) >= 256:
            self._wake.set()
        self.stats.add("fast.admitted_bytes", len(data))
        return True

    async def _pwrite(self, cf: CacheEntry, data: bytes, offset: int) -> int:
        if cf.fd < 0 and not cf.dropped:
            # Creating the data file is a metadata operation that can take
            # milliseconds on a busy disk: not on the event loop (nor is the first
            # write, the only one of a small file).
            path = self._data_path(cf)

            def create_and_write() -> tuple[int, int]:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600)
                try:
                    return fd, os.pwrite(fd, data, offset)
                except BaseException:
                    os.close(fd)
                    raise

            cf.io += 1
            try:
                async with self._creates:
                    fd, n = await trio.to_thread.run_sync(create_and_write)
                if cf.dropped:
                    # Dropped while the thread ran: its commit may have removed the
                    # data file already, which this open then made again.
                    os.close(fd)
                    self._unlink(cf.id)
                elif cf.fd < 0:
                    cf.fd = fd
                else:  # opened meanwhile by another write (positional: same bytes)
                    os.close(fd)
                return n
            finally:
                self._io_done(cf)
        fd = self._fd(cf)
        cf.io += 1
        try:
            if len(data) >= _THREAD_IO:
                async with self._io:
                    return await trio.to_thread.run_sync(os.pwrite, fd, data, offset)
            return os.pwrite(fd, data, offset)
        finally:
            self._io_done(cf)

    # -- eviction ----------------------------------------------------------------
    def _evict_key(self, key: FastKey) -> None:
        cf = self._files.get(key.entry)
        ext = cf.extents.get(key.start) if cf is not None else None
        if cf is not None and ext is not None:
            self.stats.add("fast.evictions")
            self._remove_extent(cf, ext, notify_policy=False)

    def _evict_bytes(self, nbytes: int) -> None:
        for key in self.policy.victims(nbytes):
            self._evict_key(key)

    def _remove_extent(self, cf: CacheEntry, ext: Extent, *, notify_policy: bool = True) -> None:
        if cf.extents.get(ext.start) is not ext:
            return
        del cf.extents[ext.start]
        if notify_policy:
            self.policy.remove(FastKey(cf.id, ext.start))
        if cf.dropped:
            return  # the whole entry goes: its row and file at the next commit
        # Queued even if not recorded yet: a commit in flight may be recording it.
        self._removed.append((cf.id, ext.start))
        # The row goes at the next commit; punching now is safe because a crash
        # before that commit leaves a row whose CRC no longer matches: detected.
        try:
            _punch_hole(self._fd(cf), ext.start, ext.length)
        except OSError as exc:
            log.warning("fast tier: cannot punch hole in %r: %s", cf.path, exc)

    def _drop_now(self, cf: CacheEntry) -> None:
        """Take ``cf`` out of the tier now; its row and data file go at the next commit."""
        if cf.dropped:
            return
        cf.dropped = True
        for ext in list(cf.extents.values()):
            self._remove_extent(cf, ext)
        self._files.pop(cf.id, None)
        if self._by_path.get(cf.path) is cf:
            del self._by_path[cf.path]
        self._close_fd(cf)
        self._dropped.append(cf)
        self._wake.set()

    async def drop_file(self, cf: CacheEntry) -> None:
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
        self.drop_path(new)
        cf = self._by_path.pop(old, None)
        if cf is not None:
            # The row keeps the old path; at the next mount an entry whose path
            # has a newer entry is dropped, and one whose source version changed
            # is dropped at its first open.
            cf.path = new
            self._by_path[new] = cf

    def paths_under(self, path: bytes) -> list[bytes]:
        """Cached paths equal to ``path`` or below it (``b""``: all)."""
        prefix = path + b"/"
        return [p for p in self._by_path if not path or p == path or p.startswith(prefix)]

    def cached_bytes_under(self, path: bytes) -> int:
        """Bytes the tier holds now of files at or below ``path`` (``b""``: all)."""
        return sum(self._by_path[p].cached_bytes for p in self.paths_under(path))

    def cached_bytes_of(self, path: bytes) -> int:
        """Bytes the tier holds now of the file ``path`` (0: none)."""
        cf = self._by_path.get(path)
        return cf.cached_bytes if cf is not None else 0

    def has_pinned(self, path: bytes) -> bool:
        """Whether the file ``path`` holds pinned extents."""
        cf = self._by_path.get(path)
        return cf is not None and any(e.pinned for e in cf.extents.values())

    def set_pinned(self, cf: CacheEntry, ext: Extent, pinned: bool) -> None:
        """Pin or unpin one extent; the catalog learns it at the next commit."""
        if ext.pinned == pinned:
            return
        ext.pinned = pinned
        key = FastKey(cf.id, ext.start)
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

    # -- checking ------------------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        """The live entries (for fsck and tests)."""
        return list(self._files.values())

    def check(self) -> list[str]:
        """In-memory invariants (no I/O): extents do not overlap, every extent is known
        to the policy with its size and nothing else is, paths map to live entries."""
        problems: list[str] = []
        expected: dict[FastKey, int] = {}
        for cf in self._files.values():
            if cf.dropped:
                problems.append(f"entry {cf.id} ({cf.path!r}) dropped but listed")
            if self._by_path.get(cf.path) is not cf:
                problems.append(f"entry {cf.id}: path {cf.path!r} names another entry")
            end = -1
            for start, ext in cf.extents.items():
                if start != ext.start or ext.length <= 0:
                    problems.append(f"entry {cf.id}: bad extent at {start}")
                if len(ext.crcs) != 4 * -(-ext.length // checksums.BLOCK):
                    problems.append(f"entry {cf.id}: extent {start} has {len(ext.crcs) // 4} "
                                    f"checksums for {ext.length} bytes")
                if start < end:
                    problems.append(f"entry {cf.id}: extents overlap at {start}")
                end = start + ext.length
                expected[FastKey(cf.id, ext.start)] = ext.length
                if ext.pinned != self.policy.is_pinned(FastKey(cf.id, ext.start)):
                    problems.append(f"entry {cf.id}: pin of extent {start} differs "
                                    f"from the policy's")
        for path, cf in self._by_path.items():
            if self._files.get(cf.id) is not cf:
                problems.append(f"path {path!r} names entry {cf.id}, not live")
        problems += [f"policy: {p}" for p in self.policy.check(expected)]
        return problems

    async def check_catalog(self) -> list[str]:
        """The catalog against memory, read-only: every committed extent has its row, and
        every row is of a live extent or of one whose removal is queued."""
        if self.catalog is None:
            return []
        async with self._commit_lock:  # not mid-commit: rows and flags agree
            rows = await trio.to_thread.run_sync(self.catalog.extents)
            files = {r.id for r in await trio.to_thread.run_sync(self.catalog.files)}
        problems: list[str] = []
        queued = set(self._removed)
        dropped = {cf.id for cf in self._dropped}
        seen: set[tuple[int, int]] = set()
        for r in rows:
            seen.add((r.file_id, r.start))
            if r.file_id in dropped or (r.file_id, r.start) in queued:
                continue
            cf = self._files.get(r.file_id)
            ext = cf.extents.get(r.start) if cf is not None else None
            if ext is None:
                problems.append(f"catalog row {r.file_id}+{r.start}: no such extent")
            elif ext.committed and (ext.length, ext.crcs, ext.pinned) != \
                    (r.length, r.crcs, r.pinned):
                problems.append(f"catalog row {r.file_id}+{r.start} differs from memory")
        for cf in self._files.values():
            if cf.recorded and cf.id not in files:
                problems.append(f"entry {cf.id} marked recorded, no catalog row")
            for ext in cf.extents.values():
                if ext.committed and (cf.id, ext.start) not in seen:
                    problems.append(f"extent {cf.id}+{ext.start} committed, no catalog row")
        return problems

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


async def _fdatasync_all(fds: list[int]) -> None:
    """fdatasync every descriptor of ``fds``, spread over up to `_SYNC_THREADS` worker
    threads (each syncs its share in turn); raises the first OSError once all are done."""
    if len(fds) <= 1:
        if fds:
            await trio.to_thread.run_sync(os.fdatasync, fds[0])
        return
    failed: list[OSError] = []

    def sync(share: list[int]) -> None:
        for fd in share:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failed.append(exc)

    k = min(_SYNC_THREADS, len(fds))
    async with trio.open_nursery() as nursery:
        for i in range(k):
            nursery.start_soon(trio.to_thread.run_sync, sync, fds[i::k])
    if failed:
        raise failed[0]
