"""Open objects of the object-store tier: ranged reads, write spools, upload on flush.

`ObjectFile` is one open handle. `OpenFiles` owns the handles open for
writing (by path: the namespace asks it what is being written, and moves or
detaches them on rename and unlink), the spool directory, and whole-object
transfer (`put_object` / `get_object_into`, the seam the fast tier's destager
will use).

Reads
    `ObjectFile.pread` is one ranged GET; concurrent preads of one handle are
    concurrent GETs (the engine's read-ahead and fills send them so).

    On ``s3://`` sources (`Store.versioned`) a read-only open knows its object's
    ETag (the open's exact stat: a HEAD, or the stat cache) and every ranged GET
    of the handle is tied to it (`Store.read_version`: ``If-Match``, and a check of
    the ETag and size the answer states). An object changed since the open makes
    the read fail with ``ESTALE``, never return bytes of another version: one
    WARNING line per handle, the tier's ``changed`` counter, and the cached ETag
    of the path is forgotten so that the next open asks the store. The handle
    stays stale (``ESTALE`` without a request) until it is closed.

    On ``gs://`` sources (`Store.pins_generation`) a read-only open opens its pyarrow
    input file at once (one metadata GET, which a first read would have sent): its
    ranged reads name the generation it found, and that generation is the handle's
    version (``Stat.etag`` ``g<generation>``). An object replaced since answers
    not-found to them: ``ESTALE``, one WARNING, as on S3. If the store does not
    answer at open, the input is opened at the first read as before (cached data
    stays readable during an outage) and the version is size + mtime.

    Other stores (``hdfs://``, ...): ``RandomAccessFile.read_at`` on one pyarrow
    input file per handle, opened lazily (a HEAD, then GETs); nothing ties the GETs
    to one version (see docs/objectstore.md).

Writes
    A handle opened for writing keeps the whole object in a spool file: empty
    after ``O_TRUNC`` or create, otherwise a copy of the newest spool of the path
    (a pending one's) or of the object, downloaded. Writable opens of a path that
    one already writes share its spool (`Spool.handles`), as descriptors of one
    file share its bytes: ``O_APPEND`` writers through two opens interleave, never
    lose each other's writes; the last of them to close hands it on. A read-only
    handle reads the newest spool of its path in this mount once one exists (a
    writer's, then the pending copy), so it sees what the writers wrote, as a
    reader of a local file does. Across mounts (other clients) the last upload wins.

    Write-back (a `WriteBack` is attached: object-store mounts with a cache
    directory, ``[write] mode = "writeback"``): spools are named files in
    ``<cache dir>/writeback/`` with journal rows; ``flush`` (each close(2)) and
    ``fsync`` make them durable there and, with ``durability = "capacity"``, also
    upload; ``close`` (RELEASE) hands the spool to the destager. Until its upload is
    done a path shows (stat, listings, new opens) what its newest spool holds. See
    `writeback` for the whole life of a spool.

    Write-through (no `WriteBack`): spools are unnamed files in ``spool_dir``
    (created 0700); ``flush``/``fsync`` upload when dirty, except the flush of an
    ``O_TRUNC`` open of an existing object in which nothing was written yet (a
    ``dd of=`` or a shell ``>`` closes a dup first): an object is never replaced by
    an empty one on the way; ``close`` uploads what is still dirty.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import stat as stat_mod
import tempfile
import time
from typing import Any

import trio

from ..capacity import CapacityFile, Stat, TierUnavailable
from .metacache import MetaCache
from .options import Attributes, ObjectStoreOptions
from .store import CHUNK, Store, err, show, under
from .writeback import Spool, WriteBack

log = logging.getLogger(__name__)

_THREAD_IO = 256 * 1024  # spool I/O at least this large goes to a thread
#: The largest object whose open read-only descriptors an unlink (or a rename over it)
#: keeps readable by downloading it first (`OpenFiles._keep_for_readers`). A larger
#: one's descriptors read ESTALE for the bytes no cache holds: an `rm` must not wait
#: for gigabytes, nor fill the cache directory's disk.
KEEP_FOR_READERS_MAX = 64 << 20


class ObjectFile(CapacityFile):
    """An open object: ranged GETs for reading, a local spool for writing.

    A read-only handle holds one pyarrow input file, opened on first use, or, for a
    path with a newer spool than the store (write-back), its own descriptor of that
    spool. A writable handle holds the whole object in its `Spool`; reads on it come
    from the spool. ``_lock`` serialises spool changes with flushes and uploads.
    """

    def __init__(self, files: OpenFiles, path: bytes, *, writable: bool, st: Stat) -> None:
        self._files = files
        self._store = files.store
        self._attrs = files.attrs
        self.path = path
        self.writable = writable
        self._stat = st
        self._input: Any = None  # pyarrow RandomAccessFile
        self._input_size = 0
        self._input_lock = trio.Lock()
        self._lock = trio.Lock()
        self._fd = -1  # the spool's descriptor (writers), or of a spool read (readers)
        self.spool: Spool | None = None
        self._dirty = False  # write-through: changed since the last upload
        #: Write-through: an O_TRUNC open of an existing object, nothing written yet.
        self._trunc_only = False
        self._unlinked = False
        self._closed = False
        self._reads = 0  # ranged GETs in flight: the input file outlives close() until they end
        self._mtime_ns = st.st_mtime_ns
        #: A read-only handle: the spool of the path whose bytes ``_fd`` reads.
        self._view: Spool | None = None
        #: Why reads of this handle fail with ESTALE (its object changed), once known.
        self._stale: str | None = None

    # -- reading -----------------------------------------------------------
    async def _open_input(self) -> Any:
        async with self._input_lock:
            if self._closed:
                raise err(errno.EBADF, "file is closed")
            if self._input is None:
                key = self._store.key(self.path)
                self._input, self._input_size = await self._store.open_input(
                    key, f"open {show(self.path)}")
            return self._input

    async def pin_generation(self) -> None:
        """Open the input file now and make the generation it found this handle's
        version (see Reads); a store that does not answer leaves it to the first read."""
        try:
            f = await self._open_input()
        except TierUnavailable:
            return
        generation, updated_ns = self._store.input_version(f)
        if not generation:
            return
        st = self._stat
        if self._input_size != st.st_size or (updated_ns and updated_ns != st.st_mtime_ns):
            # Replaced between the stat and this open: the version is what the input
            # file reads, not what the stat said.
            st = self._attrs.file(self._input_size, updated_ns or st.st_mtime_ns)
        else:
            st = dataclasses.replace(st)
        st.etag = f"g{generation}"
        self._stat = st

    async def _read_version(self, offset: int, size: int) -> bytes:
        """A ranged GET tied to the ETag this handle was opened with (see Reads)."""
        if self._stale is not None:
            raise err(errno.ESTALE, self._stale)
        total = self._stat.st_size
        if offset >= total:
            return b""
        size = min(size, total - offset)
        try:
            return await self._store.read_version(
                self._store.key(self.path), self._stat.etag, total, size, offset,
                f"read {show(self.path)}")
        except FileNotFoundError:
            raise err(errno.ESTALE, f"{show(self.path)}: the object was deleted after "
                                    f"it was opened") from None
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            if self._stale is None:
                self._stale = (f"{show(self.path)}: the object changed after it was opened "
                               f"(ETag {self._stat.etag or 'none'}, {total} bytes)")
                log.warning("%s: this open reads ESTALE from now on, a new open reads the "
                            "new version (%s)", self._stale, exc.strerror or exc)
                self._files.changed(self.path)
            raise err(errno.ESTALE, self._stale) from None

    async def _read_remote(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset < 0:
            if offset < 0:
                raise err(errno.EINVAL, "negative read offset")
            return b""
        if self._store.versioned:
            if self._closed:
                raise err(errno.EBADF, "file is closed")
            return await self._read_version(offset, size)
        if self._stale is not None:
            raise err(errno.ESTALE, self._stale)
        self._reads += 1
        try:
            f = await self._open_input()
            if offset >= self._input_size:
                return b""
            size = min(size, self._input_size - offset)
            return await self._store.read_at(f, size, offset, f"read {show(self.path)}")
        except FileNotFoundError:
            # Deleted by another client since the open (or, where reads name the
            # generation, replaced): the handle is stale, as on NFS (a name that is
            # gone is ENOENT at lookup, not on an open file's read).
            if self._stat.etag and self._stale is None:
                self._stale = (f"{show(self.path)}: the object changed or was deleted "
                               f"after it was opened (generation {self._stat.etag[1:]})")
                log.warning("%s: this open reads ESTALE from now on, a new open reads the "
                            "new version", self._stale)
                self._files.changed(self.path)
            raise err(errno.ESTALE, self._stale or f"{show(self.path)}: the object was "
                                    f"deleted after it was opened") from None
        except TierUnavailable:
            # A read abandoned at its bound may still run in its thread: closing the
            # input under it is unsafe. Drop it instead (it closes when that read
            # ends and lets go of it); the next read opens a new one.
            if self._input is not None:
                self._input = None
            raise
        finally:
            self._reads -= 1
            if self._closed and not self._reads:
                self._close_input()

    def _close_input(self) -> None:
        # Background read-ahead may still be reading when the handle is released:
        # closing the input under a read in a worker thread would pull it away
        # mid-request, so the last read closes it instead.
        if self._input is not None and not self._reads:
            self._input.close()
            self._input = None

    def _follow_view(self) -> None:
        """A read-only handle: read the newest spool of the path (a writer of this
        mount changed it since the open), once one exists. Its descriptor stays usable
        after the spool is uploaded and removed: it holds the bytes the store then has."""
        view = self._files.view(self.path)
        if view is None or view is self._view:
            return
        try:
            if view.file:
                fd = os.open(view.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            elif view.fd >= 0:
                fd = os.dup(view.fd)  # write-through: an unnamed spool
            else:
                return
        except FileNotFoundError:
            return  # uploaded and removed meanwhile: the store has it
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._view = fd, view

    async def pread(self, offset: int, size: int) -> bytes:
        if self._closed:
            raise err(errno.EBADF, "file is closed")
        if not self.writable and not self._unlinked:
            self._follow_view()
        if self._fd >= 0:
            if size >= _THREAD_IO:
                return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)
            return os.pread(self._fd, size, offset)
        return await self._read_remote(offset, size)

    # -- writing -----------------------------------------------------------
    def _check_writable(self) -> Spool:
        if self._closed:
            raise err(errno.EBADF, "file is closed")
        if self.spool is None or self._fd < 0:
            raise err(errno.EBADF, "file is not open for writing")
        return self.spool

    def _changed(self, sp: Spool) -> None:
        sp.gen += 1
        sp.mtime_ns = sp.ctime_ns = self._mtime_ns = time.time_ns()
        self._dirty = True
        self._trunc_only = False
        if sp.handles > 1:
            for w in self._files.sharing(sp):
                w._mtime_ns = sp.mtime_ns

    async def pwrite(self, offset: int, data: bytes) -> int:
        sp = self._check_writable()
        wb = self._files.writeback
        if wb is not None and sp.id:
            wb.wrote()  # uploads wait for writers to pause (see writeback)
        async with self._lock:
            if len(data) >= _THREAD_IO:
                n = await trio.to_thread.run_sync(os.pwrite, self._fd, data, offset)
            else:
                n = os.pwrite(self._fd, data, offset)
            self._changed(sp)
            return n

    async def truncate(self, size: int) -> None:
        sp = self._check_writable()
        async with self._lock:
            wb = self._files.writeback
            if wb is not None and sp.id:
                await wb.shrink(sp, size)
            os.ftruncate(self._fd, size)
            self._changed(sp)

    def spool_stat(self) -> Stat:
        """Attributes of what this writable handle holds now."""
        return self._files.dress(self._attrs.file(os.fstat(self._fd).st_size, self._mtime_ns),
                                 self.spool, self._mtime_ns)

    async def fstat(self) -> Stat:
        if self._fd >= 0 and (self.writable or self._view is not None):
            return self.spool_stat()
        if self._input is not None and self._input_size != self._stat.st_size:
            return self._attrs.file(self._input_size, self._stat.version().mtime_ns)
        return self._stat

    @property
    def unlinked(self) -> bool:
        """Its name was removed while it was open (writers: `OpenFiles.unlinked`)."""
        return self._unlinked

    async def set_unlinked(self, *, size: int | None = None, mode: int | None = None,
                           uid: int | None = None, gid: int | None = None,
                           atime_ns: int | None = None, mtime_ns: int | None = None) -> Stat:
        """ftruncate, fchmod, fchown, futimens of a file whose name is gone: they change
        what this handle shows (nothing will be uploaded), as on a disk."""
        if size is not None:
            await self.truncate(size)  # EBADF unless open for writing
        st = await self.fstat()
        if not self._attrs.stored:
            return st  # as for a file with a name: nothing to keep them in
        new_mode = st.st_mode if mode is None \
            else stat_mod.S_IFMT(st.st_mode) | stat_mod.S_IMODE(mode)
        owner = (new_mode, st.st_uid if uid is None else uid, st.st_gid if gid is None else gid)
        sp = self.spool
        if sp is not None and self._fd >= 0:
            sp.owner, sp.ctime_ns = owner, time.time_ns()
            if mtime_ns is not None:
                sp.mtime_ns = self._mtime_ns = mtime_ns
            if atime_ns is not None:
                sp.atime_ns = atime_ns
            return self.spool_stat()
        st = self._attrs.with_owner(dataclasses.replace(st), *owner)
        if mtime_ns is not None:
            st.st_mtime_ns = mtime_ns
        if atime_ns is not None:
            st.st_atime_ns = atime_ns
        self._stat = st
        return st

    async def flush(self) -> None:
        """A close(2) of one descriptor (maybe a dup: more may follow)."""
        await self._sync(final=False)

    async def fsync(self, datasync: bool) -> None:
        await self._sync(final=False, explicit=True)

    async def _sync(self, *, final: bool, explicit: bool = False) -> None:
        sp = self.spool
        if sp is None or self._fd < 0 or self._unlinked:
            return
        wb = self._files.writeback
        if wb is not None and sp.id:
            async with self._lock:
                if sp.gone:
                    return
                # Not for a close of an O_TRUNC open before its first write (a dup, as
                # dd and a shell's > do): a crash before the last close must leave the
                # object as it was, not empty.
                if sp.changed and sp.synced_gen != sp.gen and (explicit or not self._trunc_only):
                    await wb.record(sp, "open")
                # "capacity": the store holds it before close or fsync returns; not
                # for a close of an O_TRUNC open in which nothing was written yet.
                if wb.durability == "capacity" and sp.changed \
                        and sp.uploaded_gen != sp.gen and (explicit or not self._trunc_only):
                    await wb.wait_uploads(self.path)  # an older spool's upload first
                    gen = sp.gen
                    self._stat = await self._files.put_object(self.path, self._fd, spool=sp)
                    sp.uploaded_gen = gen
            return
        if not self._dirty or (self._trunc_only and not final and not explicit):
            return
        async with self._lock:
            if not self._dirty or self._unlinked:
                return  # re-check: another flush uploaded while we waited
            self._dirty = False
            try:
                self._stat = await self._files.put_object(self.path, self._fd, spool=sp)
            except BaseException:
                self._dirty = True
                raise
            self._trunc_only = False
            self._mtime_ns = self._stat.st_mtime_ns

    async def upload_now(self) -> None:
        """Write-back: make the store hold this handle's bytes before returning (a
        directory rename copies keys in the store)."""
        sp = self.spool
        wb = self._files.writeback
        if sp is None or wb is None or self._fd < 0 or self._unlinked or not sp.changed:
            return
        async with self._lock:
            if sp.uploaded_gen == sp.gen or sp.gone:
                return
            if sp.synced_gen != sp.gen:
                await wb.record(sp, "open")
            await wb.wait_uploads(self.path)
            gen = sp.gen
            self._stat = await self._files.put_object(self.path, self._fd, spool=sp)
            sp.uploaded_gen = gen

    async def close(self) -> None:
        """RELEASE: the last descriptor of this open is gone."""
        if self._closed:
            return
        sp = self.spool
        wb = self._files.writeback
        if sp is not None and sp.handles > 1:
            await self._detach(sp)
            return
        try:
            if sp is not None and wb is not None and sp.id:
                self._closed = True
                async with self._lock:
                    # Under the lock, with no await before the spool is pending: the
                    # path never shows an older version in between.
                    self._files.forget(self)
                    if self._unlinked:
                        await wb.drop(sp)
                    else:
                        self._fd = -1  # the spool's descriptor is the write-back's now
                        await wb.release(sp)
                return
            if self._dirty and not self._unlinked:
                try:
                    await self._sync(final=True)
                except OSError as exc:
                    log.error("%s: data written but never uploaded is lost: %s",
                              show(self.path), exc)
        finally:
            self._closed = True
            self._files.forget(self)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if sp is not None:
                sp.fd = -1
            self._close_input()

    async def _detach(self, sp: Spool) -> None:
        """Close this handle of a spool other open handles share: they keep it (and
        its descriptor); the last of them hands it on."""
        try:
            if self._dirty and not self._unlinked and not sp.id:
                try:
                    await self._sync(final=True)  # write-through: upload at close
                except OSError as exc:
                    log.error("%s: data written but never uploaded is lost: %s",
                              show(self.path), exc)
        finally:
            async with self._lock:
                sp.handles -= 1
                self._closed = True
                self._files.forget(self)
                self._fd = -1
                self.spool = None

    def fileno(self) -> int | None:
        return None  # the spool is not the object: the engine must go through pread


_SPOOL_PREFIX = "tierfs-spool-"
_SPOOL_NAME = re.compile(re.escape(_SPOOL_PREFIX) + r"(\d+)-")


def remove_stale_spools(tmpdir: str) -> int:
    """Remove the empty spool directories of dead processes of this user in ``tmpdir``.

    Spool files are unnamed, so a killed daemon leaves only its (empty) directory.
    Returns how many were removed.
    """
    removed = 0
    try:
        names = os.listdir(tmpdir)
    except OSError:
        return 0
    for name in names:
        m = _SPOOL_NAME.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(tmpdir, name)
        try:
            if os.lstat(path).st_uid != os.geteuid():
                continue
            os.rmdir(path)  # only if empty: never a file of anyone
            removed += 1
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OpenFiles:
    """The tier's writable handles by path, their spools, and whole-object transfer.

    With a `WriteBack` attached (``writeback``), the newest spool of a path, open or
    pending, is what the path shows (`view`).
    """

    def __init__(self, store: Store, cache: MetaCache, attrs: Attributes, opts: ObjectStoreOptions) -> None:
        self.store = store
        self.attrs = attrs
        self._cache = cache
        self._opts = opts
        self._writers: dict[bytes, list[ObjectFile]] = {}
        #: Read-only handles by path (an unlink keeps their bytes: `unlinked`).
        self._readers: dict[bytes, list[ObjectFile]] = {}
        #: Paths a writable open is being prepared for (see `open`).
        self._opening: dict[bytes, trio.Lock] = {}
        self._spool_dir: str | None = None
        self._own_spool = False
        #: Durable write-back through the cache directory, if the mount enables it.
        self.writeback: WriteBack | None = None

    # -- spool directory ---------------------------------------------------
    def setup_spool(self) -> None:
        """Create (0700) or choose the spool directory, once.

        Without a configured one (the mount configures ``<cache>/spool``), a directory of this process in the temporary
        directory, named after its pid so the next mount can remove those a killed
        daemon left (`remove_stale_spools`).
        """
        if self._spool_dir is not None:
            return
        if self._opts.spool_dir:
            os.makedirs(self._opts.spool_dir, mode=0o700, exist_ok=True)
            os.chmod(self._opts.spool_dir, 0o700)
            self._spool_dir = self._opts.spool_dir
            # Removed at close when empty (the mount's is <cache>/spool, its own while
            # it holds the cache lock), also when a killed daemon left it.
            self._own_spool = True
        else:
            remove_stale_spools(tempfile.gettempdir())
            self._spool_dir = tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-")  # 0700
            self._own_spool = True

    def _new_spool(self, path: bytes) -> Spool:
        if self.writeback is not None:
            return self.writeback.new_spool(path)
        self.setup_spool()
        fd, name = tempfile.mkstemp(prefix="spool-", dir=self._spool_dir)
        os.unlink(name)  # unnamed: nothing is left behind if the daemon dies
        now = time.time_ns()
        return Spool(path=path, fd=fd, created_ns=now, mtime_ns=now)

    async def close_writers(self) -> None:
        """Close every writable handle (unmount): each uploads or becomes pending."""
        for writers in list(self._writers.values()):
            for w in list(writers):
                await w.close()

    async def close(self) -> None:
        """Close every writable handle; remove a spool directory of our own."""
        await self.close_writers()
        if self._own_spool and self._spool_dir:
            try:
                os.rmdir(self._spool_dir)
            except OSError:
                pass
            self._spool_dir = None

    # -- opening -----------------------------------------------------------
    def view(self, path: bytes) -> Spool | None:
        """The newest spool of ``path``: its last writer's, else its newest pending one."""
        writers = self._writers.get(path)
        if writers:
            return writers[-1].spool
        if self.writeback is not None:
            pending = self.writeback.pending.get(path)
            if pending:
                return pending[-1]
        return None

    def _view_stat(self, sp: Spool) -> Stat:
        return self.dress(self.attrs.file(sp.current_size(), sp.mtime_ns), sp, sp.mtime_ns)

    def dress(self, st: Stat, sp: Spool | None, mtime_ns: int) -> Stat:
        """``st`` of a spool with the attributes its upload will store (where objects
        store them): its owner and mode, its exact mtime."""
        if not self.attrs.stored:
            return st
        if sp is not None and sp.owner is not None:
            st = self.attrs.with_owner(st, *sp.owner)
            st.xattr = sp.xattr
        st.st_mtime_ns = mtime_ns
        st.st_ctime_ns = sp.ctime_ns if sp is not None and sp.ctime_ns else mtime_ns
        st.st_atime_ns = sp.atime_ns if sp is not None and sp.atime_ns else mtime_ns
        return st

    def set_owner(self, path: bytes, st: Stat) -> bool:
        """chmod/chown/utimes of ``path`` while spools of it are open or pending: their
        uploads store ``st``'s mode, owner and mtime. Returns whether an upload of it is
        due (then the store need not be asked now)."""
        owner = (st.st_mode, st.st_uid, st.st_gid)
        due = False
        for w in self._writers.get(path, []):
            w._mtime_ns = st.st_mtime_ns
            sp = w.spool
            if sp is None:
                continue
            sp.owner, sp.xattr, sp.mtime_ns = owner, st.xattr, st.st_mtime_ns
            sp.atime_ns, sp.ctime_ns = st.st_atime_ns, st.st_ctime_ns
            if sp.id:  # write-back: due until the store holds its last change
                due = due or (sp.changed and sp.uploaded_gen != sp.gen and not sp.gone)
            else:
                due = due or w._dirty
        for sp in self.writeback.pending.get(path, []) if self.writeback is not None else []:
            sp.owner, sp.xattr, sp.mtime_ns = owner, st.xattr, st.st_mtime_ns
            sp.atime_ns, sp.ctime_ns = st.st_atime_ns, st.st_ctime_ns
            due = due or not sp.gone
        return due

    async def open(self, path: bytes, flags: int, st: Stat) -> ObjectFile:
        """Open the existing object ``path`` (``st``), as `CapacityTier.open`."""
        acc = flags & os.O_ACCMODE
        if acc == os.O_RDONLY and not flags & os.O_TRUNC:
            f = ObjectFile(self, path, writable=False, st=st)
            view = self.view(path) if self.writeback is not None else None
            if view is not None and view.file:
                try:
                    f._fd = os.open(view.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    f._mtime_ns, f._view = view.mtime_ns, view
                except FileNotFoundError:
                    pass  # uploaded and removed meanwhile: the store has it
            if f._fd < 0 and self.store.pins_generation:
                await f.pin_generation()
            self._readers.setdefault(path, []).append(f)
            return f
        # One writable open of a path at a time: a second one waits for the first's
        # spool (downloaded first) and shares it instead of downloading its own.
        lock = self._opening.setdefault(path, trio.Lock())
        try:
            async with lock:
                return await self._open_writer(path, flags, st)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._opening.pop(path, None)

    async def _open_writer(self, path: bytes, flags: int, st: Stat) -> ObjectFile:
        f = ObjectFile(self, path, writable=True, st=st)
        shared = self._live_writer(path)
        if shared is not None:
            # Another open writes this file: one file, one set of bytes.
            sp = f.spool = shared.spool
            assert sp is not None
            f._fd, f._lock, f._mtime_ns = sp.fd, shared._lock, shared._mtime_ns
            sp.handles += 1
            self._writers[path].append(f)
            if flags & os.O_TRUNC:
                try:
                    await f.truncate(0)
                except BaseException:
                    await f.close()
                    raise
            return f
        sp = f.spool = self._new_spool(path)
        f._fd = sp.fd
        if self.attrs.stored and st.attrs_known:
            sp.owner = (st.st_mode, st.st_uid, st.st_gid)  # an overwrite keeps them
            sp.xattr = st.xattr
        try:
            view = self.view(path)
            if view is not None and view.owner is not None:
                sp.owner, sp.xattr = view.owner, view.xattr
            if flags & os.O_TRUNC:
                f._dirty = True
                f._trunc_only = True
                sp.gen = 1  # an empty file is a change, even if nothing is written
                sp.mtime_ns = f._mtime_ns = time.time_ns()
            elif view is not None:
                # A spool holds newer data than the store: start from it.
                src = view.file if view.fd < 0 else None
                if src is not None:
                    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        await trio.to_thread.run_sync(_copy_fd, sfd, sp.fd)
                    finally:
                        os.close(sfd)
                else:
                    await trio.to_thread.run_sync(_copy_fd, view.fd, sp.fd)
                sp.mtime_ns = f._mtime_ns = view.mtime_ns
                if view.changed:
                    sp.gen = 1  # the store does not hold these bytes
            else:
                await self.get_object_into(path, sp.fd)
        except BaseException:
            await self._discard(sp)
            f._fd = -1
            raise
        self._writers.setdefault(path, []).append(f)
        return f

    async def _discard(self, sp: Spool) -> None:
        if self.writeback is not None and sp.id:
            sp.released = True
            await self.writeback.drop(sp)
        elif sp.fd >= 0:
            os.close(sp.fd)
            sp.fd = -1

    def create(self, path: bytes, mode: int = 0o644, uid: int = 0,
               gid: int = 0) -> tuple[ObjectFile, Stat]:
        """A new empty object ``path``, uploaded even if nothing is written (with
        ``mode`` and owner ``uid``:``gid`` where objects store attributes)."""
        now = time.time_ns()
        f = ObjectFile(self, path, writable=True, st=self.attrs.file(0, now))
        sp = f.spool = self._new_spool(path)
        f._fd = sp.fd
        if self.attrs.stored:
            sp.owner = (stat_mod.S_IFREG | stat_mod.S_IMODE(mode), uid, gid)
        f._dirty = True  # an empty object is uploaded on flush even if nothing is written
        sp.gen = 1
        self._cache.drop_negative(path)
        self._writers.setdefault(path, []).append(f)
        return f, f.spool_stat()

    # -- writers by path ---------------------------------------------------
    def _live_writer(self, path: bytes) -> ObjectFile | None:
        """An open writable handle of ``path`` whose spool new writable opens share."""
        for w in reversed(self._writers.get(path, [])):
            sp = w.spool
            if sp is not None and not sp.gone and sp.fd >= 0 and not w._unlinked \
                    and not w._closed:
                return w
        return None

    def sharing(self, sp: Spool) -> list[ObjectFile]:
        """The open writable handles of spool ``sp``."""
        return [w for w in self._writers.get(sp.path, []) if w.spool is sp]

    def latest(self, path: bytes) -> ObjectFile | None:
        """The most recently opened writable handle of ``path``."""
        writers = self._writers.get(path)
        return writers[-1] if writers else None

    def writer_stat(self, path: bytes) -> Stat | None:
        """What ``path`` looks like to this mount while a handle writes it (or a write
        of it waits for its upload)."""
        writers = self._writers.get(path)
        if writers:
            return writers[-1].spool_stat()
        view = self.view(path)
        return self._view_stat(view) if view is not None else None

    def _paths(self) -> list[bytes]:
        paths = list(self._writers)
        if self.writeback is not None:
            paths += [p for p in self.writeback.pending if p not in self._writers]
        return paths

    def child_stats(self, parent: bytes) -> dict[bytes, Stat]:
        """Name -> Stat of the files being written (or pending) in ``parent``, and of
        the directories that only such files below them make."""
        out: dict[bytes, Stat] = {}
        for p in self._paths():
            if not under(p, parent):
                continue
            rest = p[len(parent) + 1:] if parent else p
            name, sep, _ = rest.partition(b"/")
            if sep:
                out.setdefault(name, self.attrs.dir(self.attrs.started_ns))
            else:
                st = self.writer_stat(p)
                if st is not None:
                    out[name] = st
        return out

    def any_under(self, top: bytes) -> bool:
        return any(under(p, top) for p in self._paths())

    def changed(self, path: bytes) -> None:
        """A read found the object ``path`` changed since its open: the next open asks
        the store for its version."""
        self._cache.forget_version(path)

    def forget(self, f: ObjectFile) -> None:
        for table in (self._writers, self._readers):
            handles = table.get(f.path)
            if handles and f in handles:
                handles.remove(f)
                if not handles:
                    del table[f.path]

    def has_changes(self, path: bytes) -> bool:
        """Whether a spool of ``path`` holds bytes the store may lack (write-back)."""
        if self.writeback is None:
            return False
        if self.writeback.pending.get(path):
            return True
        return any(w.spool is not None and w.spool.changed for w in self._writers.get(path, []))

    async def unlinked(self, path: bytes) -> bool:
        """``path`` was removed: its handles' data dies with the name, as on a disk.

        Returns whether anything of it lived here only (writers or pending writes).
        """
        await self._keep_for_readers(path)
        writers = self._writers.pop(path, [])
        for w in writers:
            w._unlinked = True
            if self.writeback is not None and w.spool is not None and w.spool.id:
                await self.writeback.drop(w.spool)
        had = bool(writers)
        if self.writeback is not None:
            had = await self.writeback.unlinked(path) or had
        return had

    async def _keep_for_readers(self, path: bytes) -> None:
        """``path`` is about to go from the store (unlink, or a rename over it): its
        read-only handles that read the store get its bytes first, in one unnamed file
        of the spool directory (freed at their last close), so they read on, as on a
        disk. Handles reading a spool already hold their bytes."""
        readers = self._readers.pop(path, [])
        for r in readers:
            r._unlinked = True
        remote = [r for r in readers if r._fd < 0 and not r._closed]
        if not remote or max(r._stat.st_size for r in remote) > KEEP_FOR_READERS_MAX:
            return
        self.setup_spool()
        fd, name = tempfile.mkstemp(prefix="unlinked-", dir=self._spool_dir)
        os.unlink(name)
        try:
            await self.get_object_into(path, fd)
        except FileNotFoundError:
            # Not in the store (another client deleted it): they read ESTALE, as before.
            os.close(fd)
            return
        except TierUnavailable:
            os.close(fd)
            raise  # the delete that follows needs the store too
        except OSError as exc:
            # The cache directory's disk is full, say: the unlink goes on, and the
            # descriptors read ESTALE for what no cache holds, as for a large object.
            os.close(fd)
            log.warning("%s: open readers of %s keep no copy (%s)", self.store.description,
                        show(path), exc)
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            for r in remote:
                if not r._closed:
                    r._fd = os.dup(fd)
        finally:
            os.close(fd)

    async def flush(self, path: bytes) -> None:
        """Make the store hold what the handles of ``path`` hold (before it is copied)."""
        for w in list(self._writers.get(path, [])):
            await w.upload_now() if self.writeback is not None else await w.flush()
        if self.writeback is not None:
            await self.writeback.upload_now(path)

    async def flush_under(self, top: bytes) -> None:
        for p in [p for p in self._paths() if under(p, top)]:
            await self.flush(p)

    async def move(self, old: bytes, new: bytes) -> None:
        """The file ``old`` is now ``new``: an open descriptor follows its file, and so
        do pending writes (their journal rows too)."""
        writers = self._writers.pop(old, [])
        for w in writers:
            w.path = new
        if writers:
            self._writers.setdefault(new, []).extend(writers)
        # Read-only ones too: they read the new key (a copy: the same bytes, and on S3
        # the same ETag unless the object was a multipart upload, then they read ESTALE).
        readers = self._readers.pop(old, [])
        for r in readers:
            r.path = new
        if readers:
            self._readers.setdefault(new, []).extend(readers)
        if self.writeback is not None:
            spools = [w.spool for w in writers if w.spool is not None and w.spool.id]
            spools += self.writeback.move_pending(old, new)
            await self.writeback.moved(spools, new)

    async def move_under(self, old: bytes, new: bytes) -> None:
        """The directory ``old`` is now ``new``: move the handles of the files below it."""
        paths = list(dict.fromkeys([*self._paths(), *self._readers]))
        for p in [p for p in paths if under(p, old)]:
            await self.move(p, new + p[len(old):])

    # -- whole-object transfer (the seam for the fast tier's destager) ----
    async def put_object(self, path: bytes, fd: int, *, spool: Spool | None = None) -> Stat:
        """Upload the whole content of local descriptor ``fd`` as object ``path``
        (the bytes of ``spool``, whose owner and mtime it stores where objects store
        attributes; without one, what the cache knows of the path, else the
        configured ones, and now)."""
        key = self.store.key(path)
        meta = None
        if self.attrs.stored:
            meta = self.attrs.to_meta(self._owner_of(path, spool))
            sent = _attrs_of(spool)
        await self.store.upload(key, fd, f"upload {show(path)}", meta)
        self.store.forget_same_bytes(key)  # new bytes: no open of old ones follows them
        # With its ETag where reads are tied to one: the next open needs no HEAD, and
        # the version this mount wrote is the one that open sees.
        head = self.store.head_version if self.store.versioned else self.store.head
        if self.attrs.stored:
            head = self.store.head_meta
        st = (await head(key, f"stat {show(path)}")
              or self.attrs.file(os.fstat(fd).st_size, time.time_ns()))
        while meta is not None and spool is not None and sent != _attrs_of(spool):
            # A chmod/chown/utimes/setxattr came while it was on its way (`set_owner`
            # left it to this upload): store it now. No await after the last check, so
            # none is lost before the spool stops being what the path shows.
            sent = _attrs_of(spool)
            meta = self.attrs.to_meta(self._owner_of(path, spool))
            try:
                etag = await self.store.set_meta(key, meta, f"setattr {show(path)}")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # Beyond the store's own limit of metadata (below the one checked at
                # setxattr): the object keeps what its upload stored.
                log.warning("%s: the store refuses its new attributes: %s", show(path), exc)
                break
            self.store.note_same_bytes(key, st.etag, etag)
            st = self.attrs.from_meta(st, meta)
            st.etag = etag if st.etag is not None else None
        self._cache.note_object(path, st)
        return st

    def _owner_of(self, path: bytes, spool: Spool | None) -> Stat:
        """The attributes an upload of ``path`` stores (see `put_object`)."""
        now = time.time_ns()
        st = self.attrs.file(0, now)
        owner = spool.owner if spool is not None else None
        xattr = spool.xattr if spool is not None else None
        if owner is None:
            known = self._cache.known_stat(path)
            if known is not None and known.attrs_known and known.is_reg:
                owner, xattr = (known.st_mode, known.st_uid, known.st_gid), known.xattr
        if owner is not None:
            st = self.attrs.with_owner(st, *owner)
            st.xattr = xattr
        mtime = spool.mtime_ns if spool is not None and spool.mtime_ns else now
        st.st_mtime_ns = mtime
        st.st_atime_ns = spool.atime_ns if spool is not None and spool.atime_ns else mtime
        st.st_ctime_ns = spool.ctime_ns if spool is not None and spool.ctime_ns else now
        return st

    async def get_object_into(self, path: bytes, fd: int) -> int:
        """Download object ``path`` into local descriptor ``fd``; returns its size."""
        key = self.store.key(path)
        return await self.store.download(key, fd, f"download {show(path)}")


def _attrs_of(sp: Spool | None) -> tuple[Any, ...] | None:
    """What of ``sp`` an upload stores besides its bytes (see `OpenFiles.put_object`)."""
    return None if sp is None else (sp.owner, sp.xattr, sp.mtime_ns, sp.atime_ns)


def _copy_fd(src: int, dst: int) -> None:
    off = 0
    while chunk := os.pread(src, CHUNK, off):
        os.pwrite(dst, chunk, off)
        off += len(chunk)
    os.ftruncate(dst, off)
