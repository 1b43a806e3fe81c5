"""The capacity tier over an object store (S3, GCS, HDFS, ...) through `pyarrow.fs`.

`ObjectStoreTier` serves a bucket (or a prefix in it) as a directory tree. It
is the `CapacityTier` facade: it builds one of each collaborator below, passes
each the others it needs, and forwards the contract's calls to them.

Modules (one concern each):

- `options`: `ObjectStoreOptions` (the tier's settings) and `Attributes` (the
  `Stat` an object or directory shows);
- `store`: `Store`, the only user of `pyarrow.fs`: key mapping and name rules,
  every request in a worker thread with retries and backoff, bounds
  (``read_timeout``, ``retry_budget``) and down mode (outages), error
  classification, request counters, ranged GETs tied to an ETag on S3
  (`SignedGets`); `resolve_source` builds ``s3://`` and ``gs://`` file systems;
- `metacache`: `MetaCache`, TTL caches of stats, negative lookups and
  listings, list-after, stale lookups for outages, listing snapshots (Parquet);
- `namespace`: `Namespace`, lookups and listings over cache + store,
  directory markers and their emulation, ``unlink``, ``rmdir``, ``rename``
  as copy + delete;
- `file`: `ObjectFile` (ranged reads, on S3 tied to the ETag seen at open, write
  spool, upload on flush/close) and
  `OpenFiles` (writable handles by path, spool directory, whole-object
  transfer);
- `writeback`: `WriteBack`, durable write-back through the cache directory
  (named spools, the journal, the destager, recovery, the drain at unmount),
  attached by `start_writeback`.

Each module's docstring describes its part of the behaviour. What the facade
adds: ``mknod`` of anything but a regular file is ``EPERM``; with
``stored_attributes`` (``s3://``) ``setattr`` of mode, owner and times is stored
in the object's metadata (`Namespace.set_attrs`); otherwise objects have no mode,
owner or times of their own, so ``setattr`` of those is accepted and ignored (what
``cp -p``, ``rsync -a`` and ``tar`` need), or ``EPERM`` with
``strict_setattr=True``; ``setattr(size=...)`` rewrites the object.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import trio

from ..capacity import (UTIME_NOW, CapacityFile, CapacityTier, SourceVersion, Stat, StatFs,
                        TierUnavailable)
from .file import ObjectFile, OpenFiles
from .metacache import MetaCache
from .namespace import Namespace
from .options import S3_OPTIONS, Attributes, ObjectStoreOptions
from .store import NAME_MAX, ApiFactory, ReadsFactory, Store, err, resolve_source, show, split
from .writeback import WriteBack

__all__ = ["ObjectFile", "ObjectStoreOptions", "ObjectStoreTier"]

log = logging.getLogger(__name__)

#: The extended attribute namespaces a Linux file system stores (``system.`` is the
#: kernel's: ACLs, which the mount does not enforce).
_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")


class ObjectStoreTier(CapacityTier):
    """A bucket or prefix of an object store, served through `pyarrow.fs`."""

    supports_links = False
    supports_snapshots = True
    remote = True  # every read is a ranged GET: a round trip costs more than 64 KiB
    supports_writeback = True

    def __init__(
        self,
        fs: pafs.FileSystem | Callable[[], pafs.FileSystem],
        root: str,
        *,
        description: str | None = None,
        endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        api: ApiFactory | None = None,
        reads: ReadsFactory | None = None,
        **options: Any,
    ) -> None:
        """Serve ``root`` (``bucket/prefix`` for S3/GCS, a path otherwise) of ``fs``.

        Args:
            fs: the file system, or a factory called in a thread by `start`
                (so slow set-up such as region look-up stays off the loop).
            root: the source root inside ``fs``, without trailing slash.
            description: how logs and errors name the source.
            endpoint: the address errors name when the store is unreachable.
            clock: the time source for cache TTLs.
            api: builds the botocore client that sends namespace requests (``s3://``
                sources from `from_uri`; see `store`).
            reads: builds the `SignedGets` that ties ranged reads to the ETag an open
                saw (``s3://`` sources from `from_uri`; see `file`).
            **options: see `ObjectStoreOptions`.
        """
        self.opts = ObjectStoreOptions.make(options)
        self._attrs = Attributes(self.opts, time.time_ns())
        self._attrs.stored = self.opts.stored_attributes and api is not None and reads is not None
        if self.opts.stored_attributes and not self._attrs.stored:
            log.warning("%s: stored_attributes applies to s3:// sources only: the configured "
                        "modes and owner are shown", description or root)
        self._store = Store(fs, root, description=description, endpoint=endpoint,
                            opts=self.opts, attrs=self._attrs, clock=clock, api=api, reads=reads)
        self._cache = MetaCache(self.opts, self._attrs, root=self._store.root, clock=clock,
                                requests=self._store.requests, limiter=self._store.limiter)
        self._files = OpenFiles(self._store, self._cache, self._attrs, self.opts)
        self._ns = Namespace(self._store, self._cache, self._files, self._attrs, self.opts)
        #: Requests sent to the store, by kind ("list", "stat", "get", "put", ...).
        self.requests = self._store.requests
        self.kind = self._store.type_name or "objectstore"

    # -- construction ------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> ObjectStoreTier:
        """Open a source URI that `pyarrow.fs.FileSystem.from_uri` understands.

        ``s3://[ACCESS:SECRET@]bucket/prefix?endpoint_override=HOST:PORT&scheme=http``
        is built here so that timeouts and retries are ours; the options
        ``access_key``, ``secret_key``, ``session_token``, ``region``,
        ``endpoint`` (``[http[s]://]host:port``), ``scheme``, ``anonymous``,
        ``connect_timeout`` (s, default 1), ``request_timeout`` (s without a
        byte from the server, default 10), ``sdk_max_attempts`` (the AWS SDK's
        own tries, default 1: the tier retries), ``force_virtual_addressing``,
        ``tls_ca_file_path`` and ``request_checksums`` override the URI.
        Without credentials, pyarrow reads the standard AWS environment and
        files. ``gs://bucket/prefix?endpoint_override=HOST:PORT&scheme=http&anonymous=true``
        is built here too (``retry_time_limit``, ``project_id``; options ``endpoint``,
        ``scheme``, ``anonymous``; see docs/objectstore.md). Other schemes
        (``hdfs://``, ``file://``) go to `pyarrow.fs.FileSystem.from_uri` as they are.

        With a custom endpoint and ``request_checksums="auto"`` (the default),
        ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` is set in the process
        environment unless it is already set: the AWS SDK otherwise sends
        uploads as ``aws-chunked`` with trailing checksums, which many
        S3-compatible servers (rclone, older MinIO and Ceph) refuse.

        Raises:
            ValueError: an unknown option or URI parameter.
        """
        s3opts = {k: options.pop(k) for k in list(options) if k in S3_OPTIONS}
        ObjectStoreOptions.make({k: v for k, v in options.items() if k != "clock"})  # fail early
        src = resolve_source(uri, s3opts)
        tier = cls(src.fs, src.root, description=src.description, endpoint=src.endpoint,
                   api=src.api, reads=src.reads, **options)
        if src.kind is not None:
            tier.kind = src.kind
        return tier

    @property
    def description(self) -> str:
        return self._store.description

    @property
    def list_requests(self) -> int:
        """Listing requests sent so far (each may be several pages)."""
        return self.requests["list"]

    def statistics(self) -> dict[str, int]:
        # "down": 1 while the store does not answer and the caches serve (stale-if-error);
        # "upload_memory_peak": the most file data uploads held at once (bytes).
        return {**self.requests, "down": int(self._store.down),
                "upload_memory_peak": self._store.upload_memory.peak}

    async def start(self) -> None:
        if await self._store.connect():
            self.kind = self._store.type_name or self.kind
        if self.opts.spool_dir:
            self._files.setup_spool()  # a bad spool directory should fail the mount, not a write
        await self._store.check_root()
        self._ns.root_stat = self._attrs.dir(time.time_ns())

    async def start_offline(self, why: OSError) -> None:
        """Serve from the caches: `start` found the store unreachable (see `store`, Down mode)."""
        if not isinstance(why, TierUnavailable) or self._store.type_name is None:
            raise why  # not built, or not an outage: nothing to serve from
        self._ns.root_stat = self._attrs.dir(time.time_ns())
        self._store.mark_down(getattr(why, "reason", None) or why.strerror or str(why))

    async def close(self) -> None:
        self._store.close()
        await self._files.close()

    @property
    def read_timeout(self) -> float | None:  # type: ignore[override]
        return self.opts.read_timeout

    @property
    def snapshot_generation(self) -> int:
        return self._cache.generation

    # -- write-back --------------------------------------------------------
    async def start_writeback(self, cache_dir: str, *, durability: str, stats: Any,
                              take_lock: bool, calm: Any = None,
                              defer_max: float = 10.0) -> None:
        wb = WriteBack(cache_dir, self._files, durability=durability, stats=stats, calm=calm,
                       defer_max=defer_max)
        await wb.open(take_lock=take_lock, source=self.description)
        self._files.writeback = wb

    @property
    def writeback(self) -> WriteBack | None:
        return self._files.writeback

    async def run_writeback(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        wb = self._files.writeback
        if wb is None:
            task_status.started()
            return
        await wb.run(task_status=task_status)

    async def stop_writeback(self) -> None:
        wb = self._files.writeback
        if wb is None:
            return
        try:
            await wb.drain()
        finally:
            self._files.writeback = None  # writers from now on: none (the mount is gone)
            await wb.close()

    def invalidate(self, path: bytes | None = None) -> None:
        """Drop cached metadata of ``path`` (and its listing), or all of it."""
        self._cache.invalidate(path)

    # -- metadata ----------------------------------------------------------
    async def stat(self, path: bytes) -> Stat:
        return await self._ns.stat(path)

    def trusted_for(self, path: bytes) -> float:
        if not path or self._files.writer_stat(path) is not None:
            return 0.0  # the root's and open writers' attributes are not from the cache
        return self._cache.fresh_for(path)

    def cached_listing(self, path: bytes) -> dict[bytes, Stat] | None:
        return self._cache.cached_listing(path)

    async def fetch_small(self, path: bytes, listed: Stat) -> tuple[SourceVersion, bytes]:
        """On S3 one GET, whose answer states the version (ETag, size, Last-Modified), in
        place of the HEAD an open costs and the GET after it. The stat cache keeps what it
        stated, so the reader's own open needs no HEAD either."""
        if not self._store.versioned or self._files.writer_stat(path) is not None:
            return await super().fetch_small(path, listed)
        head, data = await self._store.get_whole(self._store.key(path), listed.st_size,
                                                 f"read {show(path)}")
        self._cache.remember(path, head)
        return head.version(), data

    async def listdir(self, path: bytes) -> list[tuple[bytes, Stat]]:
        return await self._ns.listdir_attrs(path)

    async def readlink(self, path: bytes) -> bytes:
        return await self._ns.readlink(path)

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
        if isinstance(file, ObjectFile):
            try:
                if file.unlinked:
                    raise FileNotFoundError(path)
                cur = await self.stat(path)
            except FileNotFoundError:
                # Unlinked but open (ftruncate, fchmod, ... of its descriptor): only the
                # handle holds the file now, and a new file may have the name.
                now = time.time_ns()
                return await file.set_unlinked(
                    size=size, mode=mode, uid=uid, gid=gid,
                    atime_ns=now if atime_ns is UTIME_NOW else atime_ns,
                    mtime_ns=now if mtime_ns is UTIME_NOW else mtime_ns)
        else:
            cur = await self.stat(path)
        if self._attrs.stored:
            if size is not None:
                await self._truncate(path, cur, size, file)
            if mode is None and uid is None and gid is None and atime_ns is None \
                    and mtime_ns is None:
                return await self.stat(path)
            now = time.time_ns()
            return await self._ns.set_attrs(
                path, mode=mode, uid=uid, gid=gid,
                atime_ns=now if atime_ns is UTIME_NOW else atime_ns,
                mtime_ns=now if mtime_ns is UTIME_NOW else mtime_ns)
        if self.opts.strict_setattr:
            changes = (
                (mode is not None and stat_mod.S_IMODE(mode) != stat_mod.S_IMODE(cur.st_mode))
                or (uid is not None and uid != cur.st_uid)
                or (gid is not None and gid != cur.st_gid)
                or atime_ns is not None or mtime_ns is not None
            )
            if changes:
                raise err(errno.EPERM, f"{show(path)}: objects have no mode, owner or times to change")
        if size is not None:
            await self._truncate(path, cur, size, file)
        return await self.stat(path)

    async def _truncate(self, path: bytes, cur: Stat, size: int, file: CapacityFile | None) -> None:
        if cur.is_dir:
            raise err(errno.EISDIR, f"{show(path)}: is a directory")
        target = file if isinstance(file, ObjectFile) and file.writable else None
        if target is None:
            target = self._files.latest(path)
        if target is not None:
            await target.truncate(size)
        else:
            f = await self.open(path, os.O_WRONLY | (os.O_TRUNC if size == 0 else 0))
            try:
                await f.truncate(size)
                await f.flush()
            finally:
                await f.close()

    # -- extended attributes (stored_attributes) ----------------------------
    @property
    def has_xattrs(self) -> bool:  # type: ignore[override]
        return self._attrs.stored

    def _xattr_name(self, name: bytes) -> str:
        if not self._attrs.stored:
            raise err(errno.ENOTSUP, "extended attributes need stored_attributes = true "
                                     "(s3:// sources)")
        if name.startswith(b"system."):  # ACLs and the like: the kernel's, not data
            raise err(errno.ENOTSUP, f"{name!r}: system attributes are not stored")
        prefix = next((p for p in _XATTR_NAMESPACES if name.startswith(p)), None)
        if prefix is None:  # as Linux file systems answer a name of no namespace
            raise err(errno.ENOTSUP, f"{name!r}: not in a namespace (user., trusted., ...)")
        if name == prefix:  # the namespace alone names nothing
            raise err(errno.EINVAL, f"{name!r}: an attribute name after the namespace")
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise err(errno.EINVAL, f"attribute name is not valid UTF-8: {name!r}") from None

    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        key = self._xattr_name(name)
        value = (await self._ns.xattrs(path)).get(key)
        if value is None:
            raise err(errno.ENODATA, f"{show(path)}: no attribute {key}")
        return value

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        await self._ns.set_xattr(path, self._xattr_name(name), bytes(value), flags)

    async def listxattr(self, path: bytes) -> list[bytes]:
        if not self._attrs.stored:
            return []
        return [n.encode() for n in sorted(await self._ns.xattrs(path))]

    async def removexattr(self, path: bytes, name: bytes) -> None:
        await self._ns.set_xattr(path, self._xattr_name(name), None)

    async def statfs(self) -> StatFs:
        # A store has no capacity to report: large fixed numbers, as mountpoint-s3 does.
        blocks = 1 << 50
        files = 1 << 40
        return StatFs(4096, 4096, blocks, blocks, blocks, files, files, files, NAME_MAX)

    # -- namespace ---------------------------------------------------------
    async def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> Stat:
        return await self._ns.mkdir(path, stat_mod.S_IFDIR | stat_mod.S_IMODE(mode), uid, gid)

    async def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> Stat:
        if not stat_mod.S_ISREG(mode):
            raise err(errno.EPERM, "object stores hold only regular files and directories")
        f, _ = await self.create(path, os.O_WRONLY, mode, uid, gid)
        try:  # (mode and owner: stored where objects store attributes)
            await f.flush()
        finally:
            await f.close()
        return await self.stat(path)

    async def symlink(self, path: bytes, target: bytes, uid: int, gid: int) -> Stat:
        return await self._ns.symlink(path, target, uid, gid)

    async def link(self, path: bytes, new_path: bytes) -> Stat:
        self._store.key(new_path)
        raise err(errno.EPERM, "object stores have no hard links")

    async def unlink(self, path: bytes) -> None:
        await self._ns.unlink(path)

    async def rmdir(self, path: bytes) -> None:
        await self._ns.rmdir(path)

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        await self._ns.rename(old, new, flags)

    # -- data --------------------------------------------------------------
    async def open(self, path: bytes, flags: int) -> ObjectFile:
        self._store.key(path)
        st = await self._ns.stat(path, exact=True)  # the open's version must be real
        if st.is_dir:
            raise err(errno.EISDIR, f"{show(path)}: is a directory")
        return await self._files.open(path, flags, st)

    async def create(
        self, path: bytes, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[ObjectFile, Stat]:
        self._store.key(path)
        await self._ns.require_dir(split(path)[0])
        await self._ns.absent(path)
        if not self._store.down:
            try:
                await self._ns.absent_in_store(path)
            except TierUnavailable:
                pass  # stale-if-error: the caches' answer stands (checked below)
        if self._store.down and self._files.writeback is None:
            # The checks above may have been answered by stale listings; the object
            # would only be uploaded at close, and fail there, after the writes.
            # (Write-back keeps it in the cache directory until the store answers.)
            raise TierUnavailable(f"{self.description}: create {show(path)}: the store is "
                                  "down (new files wait until it answers)")
        mode, gid = await self._ns.inherit(split(path)[0], mode, gid)
        out = self._files.create(path, mode, uid, gid)
        self._ns.entries_changed(path)
        return out

    # -- whole-object transfer (the seam for the fast tier's destager) ----
    async def put_object(self, path: bytes, fd: int) -> Stat:
        """Upload the whole content of local descriptor ``fd`` as object ``path``."""
        return await self._files.put_object(path, fd)

    async def get_object_into(self, path: bytes, fd: int) -> int:
        """Download object ``path`` into local descriptor ``fd``; returns its size."""
        return await self._files.get_object_into(path, fd)

    # -- listing snapshots -------------------------------------------------
    async def save_snapshot(self, path: str | os.PathLike[str]) -> int:
        """Write the cached listings to a Parquet file (see `MetaCache.save_snapshot`)."""
        return await self._cache.save_snapshot(path)

    async def load_snapshot(self, path: str | os.PathLike[str], *, fresh: bool = True) -> int:
        """Serve listings saved by `save_snapshot` (see `MetaCache.load_snapshot`)."""
        return await self._cache.load_snapshot(path, fresh=fresh)
