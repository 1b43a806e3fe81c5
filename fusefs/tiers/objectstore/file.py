"""Open objects of the object-store tier: ranged reads, write spools, upload on flush.

`ObjectFile` is one open handle. `OpenFiles` owns the handles open for
writing (by path: the namespace asks it what is being written, and moves or
detaches them on rename and unlink), the spool directory, and whole-object
transfer (`put_object` / `get_object_into`, the seam the fast tier's destager
will use).

Reads
    `ObjectFile.pread` is one ranged GET (``RandomAccessFile.read_at`` on one
    input file per open handle, opened lazily: a HEAD, then GETs);
    `ObjectFile.pread_many` issues its ranges concurrently.

Writes (until writes go through the fast tier)
    A handle opened for writing keeps the whole object in an unnamed spool
    file in ``spool_dir`` (created 0700): empty after ``O_TRUNC`` or create,
    otherwise downloaded first. ``flush``/``fsync`` upload it as one object
    when dirty (pyarrow uses multipart for large ones). Concurrent writers of
    one key: the last upload wins.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import time
from typing import Any

import trio

from ..capacity import CapacityFile, Stat, TierUnavailable
from .metacache import MetaCache
from .options import Attributes, ObjectStoreOptions
from .store import CHUNK, Store, concurrently, err, show, split, under

log = logging.getLogger(__name__)

_THREAD_IO = 256 * 1024  # spool I/O at least this large goes to a thread


class ObjectFile(CapacityFile):
    """An open object: ranged GETs for reading, a local spool for writing.

    A read-only handle holds one pyarrow input file, opened on first use. A
    writable handle holds the whole object in an unnamed spool file; reads on
    it come from the spool. ``_lock`` serialises spool changes with uploads.
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
        self._fd = -1
        self._dirty = False
        self._unlinked = False
        self._closed = False
        self._reads = 0  # ranged GETs in flight: the input file outlives close() until they end
        self._mtime_ns = st.st_mtime_ns

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

    async def _read_remote(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset < 0:
            if offset < 0:
                raise err(errno.EINVAL, "negative read offset")
            return b""
        self._reads += 1
        try:
            f = await self._open_input()
            if offset >= self._input_size:
                return b""
            size = min(size, self._input_size - offset)
            return await self._store.read_at(f, size, offset, f"read {show(self.path)}")
        except FileNotFoundError:
            # Deleted by another client since the open: the handle is stale, as on NFS
            # (a name that is gone is ENOENT at lookup, not on an open file's read).
            raise err(errno.ESTALE, f"{show(self.path)}: the object was deleted after "
                                    f"it was opened") from None
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

    async def pread(self, offset: int, size: int) -> bytes:
        if self._closed:
            raise err(errno.EBADF, "file is closed")
        if self._fd >= 0:
            if size >= _THREAD_IO:
                return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)
            return os.pread(self._fd, size, offset)
        return await self._read_remote(offset, size)

    async def pread_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read several ``(offset, size)`` ranges, as concurrent ranged GETs."""
        if self._fd >= 0 or len(ranges) <= 1:
            return [await self.pread(off, size) for off, size in ranges]
        if self._closed:
            raise err(errno.EBADF, "file is closed")
        await self._open_input()
        out: list[bytes] = [b""] * len(ranges)

        async def one(i: int, off: int, size: int) -> None:
            out[i] = await self._read_remote(off, size)

        await concurrently([(one, i, off, size) for i, (off, size) in enumerate(ranges)])
        return out

    # -- writing -----------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise err(errno.EBADF, "file is closed")
        if self._fd < 0:
            raise err(errno.EBADF, "file is not open for writing")

    async def pwrite(self, offset: int, data: bytes) -> int:
        self._check_writable()
        async with self._lock:
            if len(data) >= _THREAD_IO:
                n = await trio.to_thread.run_sync(os.pwrite, self._fd, data, offset)
            else:
                n = os.pwrite(self._fd, data, offset)
            self._dirty = True
            self._mtime_ns = time.time_ns()
            return n

    async def truncate(self, size: int) -> None:
        self._check_writable()
        async with self._lock:
            os.ftruncate(self._fd, size)
            self._dirty = True
            self._mtime_ns = time.time_ns()

    def spool_stat(self) -> Stat:
        """Attributes of what this writable handle holds now."""
        return self._attrs.file(os.fstat(self._fd).st_size, self._mtime_ns)

    async def fstat(self) -> Stat:
        if self._fd >= 0:
            return self.spool_stat()
        if self._input is not None and self._input_size != self._stat.st_size:
            return self._attrs.file(self._input_size, self._stat.st_mtime_ns)
        return self._stat

    async def flush(self) -> None:
        if self._fd < 0 or not self._dirty or self._unlinked:
            return
        async with self._lock:
            if not self._dirty or self._unlinked:
                return  # re-check: another flush uploaded while we waited
            self._dirty = False
            try:
                self._stat = await self._files.put_object(self.path, self._fd)
            except BaseException:
                self._dirty = True
                raise
            self._mtime_ns = self._stat.st_mtime_ns

    async def fsync(self, datasync: bool) -> None:
        await self.flush()

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._dirty and not self._unlinked:
                try:
                    await self.flush()
                except OSError as exc:
                    log.error("%s: data written but never uploaded is lost: %s",
                              show(self.path), exc)
        finally:
            self._closed = True
            self._files.forget(self)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._close_input()

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
    """The tier's writable handles by path, their spool directory, and whole-object transfer."""

    def __init__(self, store: Store, cache: MetaCache, attrs: Attributes, opts: ObjectStoreOptions) -> None:
        self.store = store
        self.attrs = attrs
        self._cache = cache
        self._opts = opts
        self._writers: dict[bytes, list[ObjectFile]] = {}
        self._spool_dir: str | None = None
        self._own_spool = False

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

    def _new_spool(self) -> int:
        self.setup_spool()
        fd, name = tempfile.mkstemp(prefix="spool-", dir=self._spool_dir)
        os.unlink(name)  # unnamed: nothing is left behind if the daemon dies
        return fd

    async def close(self) -> None:
        """Close (and so upload) every writable handle; remove a spool directory of our own."""
        for writers in list(self._writers.values()):
            for w in list(writers):
                await w.close()
        if self._own_spool and self._spool_dir:
            try:
                os.rmdir(self._spool_dir)
            except OSError:
                pass
            self._spool_dir = None

    # -- opening -----------------------------------------------------------
    async def open(self, path: bytes, flags: int, st: Stat) -> ObjectFile:
        """Open the existing object ``path`` (``st``), as `CapacityTier.open`."""
        acc = flags & os.O_ACCMODE
        if acc == os.O_RDONLY and not flags & os.O_TRUNC:
            return ObjectFile(self, path, writable=False, st=st)
        f = ObjectFile(self, path, writable=True, st=st)
        f._fd = self._new_spool()
        try:
            if flags & os.O_TRUNC:
                f._dirty = True
                f._mtime_ns = time.time_ns()
            elif self._writers.get(path):
                # Another handle holds newer data than the store: start from its spool.
                src = self._writers[path][-1]._fd
                await trio.to_thread.run_sync(_copy_fd, src, f._fd)
            else:
                await self.get_object_into(path, f._fd)
        except BaseException:
            os.close(f._fd)
            f._fd = -1
            raise
        self._writers.setdefault(path, []).append(f)
        return f

    def create(self, path: bytes) -> tuple[ObjectFile, Stat]:
        """A new empty object ``path``, uploaded on flush even if nothing is written."""
        now = time.time_ns()
        f = ObjectFile(self, path, writable=True, st=self.attrs.file(0, now))
        f._fd = self._new_spool()
        f._dirty = True  # an empty object is uploaded on flush even if nothing is written
        self._cache.drop_negative(path)
        self._writers.setdefault(path, []).append(f)
        return f, f.spool_stat()

    # -- writers by path ---------------------------------------------------
    def latest(self, path: bytes) -> ObjectFile | None:
        """The most recently opened writable handle of ``path``."""
        writers = self._writers.get(path)
        return writers[-1] if writers else None

    def writer_stat(self, path: bytes) -> Stat | None:
        """What ``path`` looks like to this mount while a handle writes it."""
        writers = self._writers.get(path)
        return writers[-1].spool_stat() if writers else None

    def child_stats(self, parent: bytes) -> dict[bytes, Stat]:
        """Name -> Stat of the files being written directly in ``parent``."""
        out: dict[bytes, Stat] = {}
        for p, writers in self._writers.items():
            head, name = split(p)
            if head == parent:
                out[name] = writers[-1].spool_stat()
        return out

    def any_under(self, top: bytes) -> bool:
        return any(under(p, top) for p in self._writers)

    def forget(self, f: ObjectFile) -> None:
        writers = self._writers.get(f.path)
        if writers and f in writers:
            writers.remove(f)
            if not writers:
                del self._writers[f.path]

    def unlinked(self, path: bytes) -> list[ObjectFile]:
        """``path`` was removed: its handles' data dies with the name, as on a disk."""
        pending = self._writers.pop(path, [])
        for w in pending:
            w._unlinked = True
        return pending

    async def flush(self, path: bytes) -> None:
        """Upload what the handles of ``path`` hold (before the object is copied)."""
        for w in list(self._writers.get(path, [])):
            await w.flush()

    async def flush_under(self, top: bytes) -> None:
        for p in [p for p in self._writers if under(p, top)]:
            for w in self._writers[p]:
                await w.flush()

    def move(self, old: bytes, new: bytes) -> None:
        """The file ``old`` is now ``new``: an open descriptor follows its file."""
        writers = self._writers.pop(old, [])
        for w in writers:
            w.path = new
        if writers:
            self._writers.setdefault(new, []).extend(writers)

    def move_under(self, old: bytes, new: bytes) -> None:
        """The directory ``old`` is now ``new``: move the handles of the files below it."""
        moved = {p: ws for p, ws in self._writers.items() if under(p, old)}
        for p, ws in moved.items():
            del self._writers[p]
            np = new + p[len(old):]
            for w in ws:
                w.path = np
            self._writers[np] = ws

    # -- whole-object transfer (the seam for the fast tier's destager) ----
    async def put_object(self, path: bytes, fd: int) -> Stat:
        """Upload the whole content of local descriptor ``fd`` as object ``path``."""
        key = self.store.key(path)
        await self.store.upload(key, fd, f"upload {show(path)}")
        st = (await self.store.head(key, f"stat {show(path)}")
              or self.attrs.file(os.fstat(fd).st_size, time.time_ns()))
        self._cache.note_object(path, st)
        return st

    async def get_object_into(self, path: bytes, fd: int) -> int:
        """Download object ``path`` into local descriptor ``fd``; returns its size."""
        key = self.store.key(path)
        return await self.store.download(key, fd, f"download {show(path)}")


def _copy_fd(src: int, dst: int) -> None:
    off = 0
    while chunk := os.pread(src, CHUNK, off):
        os.pwrite(dst, chunk, off)
        off += len(chunk)
    os.ftruncate(dst, off)
