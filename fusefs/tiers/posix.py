"""The capacity tier over a local directory.

Every operation works relative to a descriptor of the source root, never by
building an absolute path: the parent directory of a request is opened with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (or a component-by-component
``O_NOFOLLOW`` walk where ``openat2`` is missing, and for paths longer than
``PATH_MAX``), and the final name is handled with the ``*at`` syscalls. So the
mount stays confined to its source even if a directory is swapped for a symlink
behind its back, and trees deeper than ``PATH_MAX`` work.

Metadata calls are single local syscalls and run inline; directory listings,
large reads and fsync go to a worker thread so the event loop never waits on
the disk for long.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
import time
from typing import Any

import trio

from ..safefiles import process_umask
from .capacity import (
    UTIME_NOW,
    CapacityFile,
    CapacityTier,
    SourceVersion,
    Stat,
    StatFs,
)

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
# Longest relative path handed to one resolution call; longer paths are walked.
_CHUNK = 3072
# Reads at least this large go to a thread: they may wait on the disk.
_THREAD_READ = 256 * 1024
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: bytes, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    if _libc.renameat2(olddirfd, old, newdirfd, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), new)


def _pread_dropping(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    # The mount's kernel cache (and the DRAM tier) keep these bytes; a second
    # copy in the source's page cache would only halve what fits in memory.
    os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)
    return data


class PosixFile(CapacityFile):
    """An open local file; the descriptor is owned by this object."""

    __slots__ = ("fd", "_read")

    def __init__(self, fd: int, *, drop_cache: bool = False) -> None:
        self.fd = fd
        self._read = _pread_dropping if drop_cache else os.pread

    def fileno(self) -> int | None:
        return self.fd

    async def pread(self, offset: int, size: int) -> bytes:
        if size >= _THREAD_READ:
            return await trio.to_thread.run_sync(self._read, self.fd, size, offset)
        return self._read(self.fd, size, offset)

    async def pread_offloaded(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(self._read, self.fd, size, offset)

    async def pwrite(self, offset: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, offset)

    async def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    async def fstat(self) -> Stat:
        return Stat.from_os(os.fstat(self.fd))

    async def flush(self) -> None:
        pass

    async def fsync(self, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, self.fd)

    async def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class PosixTier(CapacityTier):
    """A local directory served as it is."""

    kind = "posix"
    supports_links = True
    has_xattrs = True
    needs_flush = False  # writes reach the source file at once; close has nothing to do

    def __init__(self, root: str, *, drop_source_cache: bool = True) -> None:
        """Serve ``root``; ``drop_source_cache`` keeps reads from caching the source twice."""
        self.root = os.path.abspath(root)
        self.drop_source_cache = drop_source_cache
        self._root_fd = -1
        self._have_openat2 = True
        # The daemon's umask (0o077): it must not apply to what a request creates,
        # whose mode the kernel has already masked with the caller's umask.
        self._umask = process_umask()

    @property
    def description(self) -> str:
        return self.root

    async def start(self) -> None:
        try:
            self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"source directory {self.root} does not exist") from None
        except NotADirectoryError:
            raise NotADirectoryError(errno.ENOTDIR, f"source {self.root} is not a directory") from None
        except PermissionError:
            raise PermissionError(errno.EACCES, f"source directory {self.root} is not accessible") from None
        try:
            os.close(_openat2(self._root_fd, b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            self._have_openat2 = False

    async def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- resolution --------------------------------------------------------
    def _open_dir(self, path: bytes, flags: int = os.O_PATH) -> int:
        """Open directory ``path`` (relative) confined beneath the root; caller closes."""
        flags |= os.O_DIRECTORY | os.O_CLOEXEC
        if not path:
            return os.open(b".", flags, dir_fd=self._root_fd)
        if self._have_openat2 and len(path) <= _CHUNK:
            return _openat2(self._root_fd, path, flags)
        # Walk one component at a time: no symlink is followed, any depth works.
        fd = self._root_fd
        try:
            parts = path.split(b"/")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                nfd = os.open(
                    part,
                    (flags if last else os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) | os.O_NOFOLLOW,
                    dir_fd=fd,
                )
                if fd != self._root_fd:
                    os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            if fd != self._root_fd:
                os.close(fd)
            raise

    def _parent(self, path: bytes) -> tuple[int, bytes]:
        """Descriptor of ``path``'s parent and its last name; close with `_done`."""
        head, sep, name = path.rpartition(b"/")
        if not sep:
            return self._root_fd, path
        return self._open_dir(head), name

    def _done(self, fd: int) -> None:
        if fd != self._root_fd:
            os.close(fd)

    def _at(self, path: bytes, fn: Any, *args: Any, **kw: Any) -> Any:
        """Call ``fn(name, *args, dir_fd=parent, **kw)`` for ``path``."""
        if not path:
            raise OSError(errno.EBUSY, "operation not allowed on the root")
        dfd, name = self._parent(path)
        try:
            return fn(name, *args, dir_fd=dfd, **kw)
        finally:
            self._done(dfd)

    def _open_node(self, path: bytes, flags: int) -> int:
        """Open ``path`` itself (never following a final symlink)."""
        if not path:
            return os.open(b".", flags | os.O_CLOEXEC, dir_fd=self._root_fd)
        return self._at(path, os.open, flags | os.O_NOFOLLOW | os.O_CLOEXEC)

    # -- metadata ----------------------------------------------------------
    async def stat(self, path: bytes) -> Stat:
        if not path:
            return Stat.from_os(os.stat(self._root_fd))
        return Stat.from_os(self._at(path, os.stat, follow_symlinks=False))

    async def listdir(self, path: bytes) -> list[tuple[bytes, Stat]]:
        return await trio.to_thread.run_sync(self._listdir_sync, path)

    def _listdir_sync(self, path: bytes) -> list[tuple[bytes, Stat]]:
        fd = self._open_dir(path, os.O_RDONLY)
        try:
            out = []
            for name in os.listdir(fd):
                bname = os.fsencode(name)
                try:
                    st = os.stat(bname, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we listed
                out.append((bname, Stat.from_os(st)))
            return out
        finally:
            os.close(fd)

    async def readlink(self, path: bytes) -> bytes:
        return self._at(path, os.readlink)

    def _proc_path(self, path: bytes) -> tuple[int, str]:
        fd = self._open_node(path, os.O_PATH)
        return fd, f"/proc/self/fd/{fd}"

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
        # With an open file, change the object it holds, not whatever the
        # name means now (renamed, replaced or unlinked since the open).
        fd = file.fileno() if file is not None else None
        if size is not None:
            if fd is not None:
                os.ftruncate(fd, size)
            else:
                tfd = self._open_node(path, os.O_WRONLY)
                try:
                    os.ftruncate(tfd, size)
                finally:
                    os.close(tfd)
        if mode is not None:
            if fd is not None:
                os.chmod(fd, stat_mod.S_IMODE(mode))
            else:
                pfd, proc = self._proc_path(path)
                try:
                    if stat_mod.S_ISLNK(os.stat(pfd).st_mode):
                        raise OSError(errno.EOPNOTSUPP, "cannot change the mode of a symlink")
                    os.chmod(proc, stat_mod.S_IMODE(mode))
                finally:
                    os.close(pfd)
        if uid is not None or gid is not None:
            ids = (-1 if uid is None else uid, -1 if gid is None else gid)
            if fd is not None:
                os.chown(fd, *ids)
            elif path:
                self._at(path, os.chown, *ids, follow_symlinks=False)
            else:
                os.chown(self.root, *ids)
        if atime_ns is not None or mtime_ns is not None:
            cur = Stat.from_os(os.fstat(fd)) if fd is not None else await self.stat(path)
            now = time.time_ns()

            def pick(v: Any, old: int) -> int:
                return old if v is None else now if v is UTIME_NOW else int(v)

            ns = (pick(atime_ns, cur.st_atime_ns), pick(mtime_ns, cur.st_mtime_ns))
            if fd is not None:
                os.utime(fd, ns=ns)
            elif path:
                self._at(path, os.utime, ns=ns, follow_symlinks=False)
            else:
                os.utime(self.root, ns=ns)
        if fd is not None:
            return Stat.from_os(os.fstat(fd))
        return await self.stat(path)

    async def statfs(self) -> StatFs:
        st = os.statvfs(self.root)
        return StatFs(st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail,
                      st.f_files, st.f_ffree, st.f_favail, st.f_namemax)

    async def fsync_dir(self, path: bytes) -> None:
        fd = self._open_dir(path, os.O_RDONLY)
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    # -- namespace ---------------------------------------------------------
    def _give(self, dfd: int, name: bytes | int, uid: int, gid: int, mode: int | None) -> None:
        """Make a new object the caller's, as a kernel file system would have.

        The daemon creates as root. The caller gets the uid, and the gid unless
        the directory is set-group-ID (then the group the file system took from
        it stays). chown clears the set-ID bits of non-directories even for
        root, so they are put back from the (kernel-vetted) creation mode.
        ``name`` may be the new object's own descriptor.
        """
        if os.geteuid() != 0 or (uid, gid) == (0, 0):
            return
        keep_group = bool(os.stat(dfd).st_mode & stat_mod.S_ISGID)
        ids = (uid, -1 if keep_group else gid)
        restore = mode is not None and not stat_mod.S_ISDIR(mode) \
            and bool(mode & (stat_mod.S_ISUID | stat_mod.S_ISGID))
        if isinstance(name, int):
            os.fchown(name, *ids)
            if restore:
                os.fchmod(name, stat_mod.S_IMODE(mode))  # type: ignore[arg-type]
        else:
            os.chown(name, *ids, dir_fd=dfd, follow_symlinks=False)
            if restore:
                os.chmod(name, stat_mod.S_IMODE(mode), dir_fd=dfd)  # type: ignore[arg-type]

    def _own(self, path: bytes, uid: int, gid: int, mode: int | None = None) -> None:
        """`_give` the object at ``path``."""
        if os.geteuid() != 0 or (uid, gid) == (0, 0):
            return
        dfd, name = self._parent(path)
        try:
            self._give(dfd, name, uid, gid, mode)
        finally:
            self._done(dfd)

    def _set_created_mode(self, path: bytes, mode: int) -> None:
        """Give a new directory or node the permission bits the request asked for,
        where the daemon's umask took some away. A directory keeps the set-group-ID
        bit it inherited from its parent (not part of a mkdir request's mode)."""
        if not stat_mod.S_IMODE(mode) & self._umask:
            return
        fd, proc = self._proc_path(path)  # O_PATH | O_NOFOLLOW: the object just made
        try:
            cur = os.stat(fd).st_mode
            keep = cur & stat_mod.S_ISGID if stat_mod.S_ISDIR(cur) else 0
            os.chmod(proc, stat_mod.S_IMODE(mode) | keep)
        finally:
            os.close(fd)

    async def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> Stat:
        self._at(path, os.mkdir, mode)
        self._set_created_mode(path, mode)
        self._own(path, uid, gid)
        return await self.stat(path)

    async def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> Stat:
        self._at(path, os.mknod, mode, rdev)
        self._set_created_mode(path, mode)
        self._own(path, uid, gid, mode)
        return await self.stat(path)

    async def symlink(self, path: bytes, target: bytes, uid: int, gid: int) -> Stat:
        dfd, name = self._parent(path)
        try:
            os.symlink(target, name, dir_fd=dfd)
        finally:
            self._done(dfd)
        self._own(path, uid, gid)
        return await self.stat(path)

    async def link(self, path: bytes, new_path: bytes) -> Stat:
        sfd, sname = self._parent(path)
        try:
            dfd, dname = self._parent(new_path)
            try:
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)
        return await self.stat(new_path)

    async def unlink(self, path: bytes) -> None:
        self._at(path, os.unlink)

    async def rmdir(self, path: bytes) -> None:
        self._at(path, os.rmdir)

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        sfd, sname = self._parent(old)
        try:
            dfd, dname = self._parent(new)
            try:
                if flags:
                    _renameat2(sfd, sname, dfd, dname, flags)
                else:
                    os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)

    # -- data --------------------------------------------------------------
    async def open(self, path: bytes, flags: int) -> PosixFile:
        # O_DIRECT is the caller's contract with the kernel, not with our buffers.
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT)
        # O_APPEND is enforced by the kernel on the mount's side; writes arrive
        # with explicit offsets and use pwrite, so keep the source fd plain.
        # O_DIRECT too: the kernel already bypasses its page cache for the
        # caller, and our buffers are not aligned as O_DIRECT demands (EINVAL).
        flags &= ~(os.O_APPEND | os.O_DIRECT)
        return PosixFile(self._open_node(path, flags), drop_cache=self.drop_source_cache)

    async def fetch_small(self, path: bytes, listed: Stat) -> tuple[SourceVersion, bytes]:
        """Open, stat, read and close in one worker-thread call: four round trips of the
        event loop become one (a warm of many small files)."""
        def fetch() -> tuple[SourceVersion, bytes]:
            fd = self._open_node(path, os.O_RDONLY)
            try:
                version = Stat.from_os(os.fstat(fd)).version()
                read = _pread_dropping if self.drop_source_cache else os.pread
                return version, read(fd, listed.st_size + 1, 0)
            finally:
                os.close(fd)
        return await trio.to_thread.run_sync(fetch)

    async def open_offloaded(self, path: bytes, flags: int) -> PosixFile:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT | os.O_APPEND)
        fd = await trio.to_thread.run_sync(self._open_node, path, flags)
        return PosixFile(fd, drop_cache=self.drop_source_cache)

    async def create(
        self, path: bytes, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[PosixFile, Stat]:
        flags = (flags | os.O_CREAT | os.O_EXCL) & ~(os.O_NOCTTY | os.O_APPEND | os.O_DIRECT)
        if not path:
            raise OSError(errno.EBUSY, "operation not allowed on the root")
        dfd, name = self._parent(path)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
            try:
                if stat_mod.S_IMODE(mode) & self._umask:  # the daemon's umask: undo it
                    os.fchmod(fd, stat_mod.S_IMODE(mode))
                self._give(dfd, fd, uid, gid, stat_mod.S_IFREG | stat_mod.S_IMODE(mode))
                st = Stat.from_os(os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
        finally:
            self._done(dfd)
        return PosixFile(fd, drop_cache=self.drop_source_cache), st

    # -- extended attributes -----------------------------------------------
    async def getxattr(self, path: bytes, name: bytes) -> bytes:
        fd, proc = self._proc_path(path)
        try:
            return os.getxattr(proc, name)
        finally:
            os.close(fd)

    async def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int = 0) -> None:
        fd, proc = self._proc_path(path)
        try:
            os.setxattr(proc, name, value, flags)
        finally:
            os.close(fd)

    async def listxattr(self, path: bytes) -> list[bytes]:
        fd, proc = self._proc_path(path)
        try:
            return [os.fsencode(n) for n in os.listxattr(proc)]
        finally:
            os.close(fd)

    async def removexattr(self, path: bytes, name: bytes) -> None:
        fd, proc = self._proc_path(path)
        try:
            os.removexattr(proc, name)
        finally:
            os.close(fd)
