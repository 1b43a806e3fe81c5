"""The FUSE request handlers: kernel requests in, tier and engine calls out.

This is the only module that raises `pyfuse3.FUSEError`. Every handler is
wrapped by `_translate`: an `OSError` from below becomes ``FUSEError(errno)``;
anything else is a bug, logged once with its traceback and answered with
``EIO``, so one bad request never takes the daemon down.

Metadata goes straight to the capacity tier (which keeps its own caches);
file data goes through the `Engine`. Collaborators are passed in, so tests can
drive an `Operations` in-process without a mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import pyfuse3
from pyfuse3 import FUSEError

from .engine import Engine
from .handles import FileHandle, HandleTable
from .inodes import InodeTable, identity_of
from .tiers.capacity import CapacityTier, Stat, TierUnavailable

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# Handlers that may change what a listing's attributes say (names, link
# counts, sizes, times): each one bumps `Operations.mutations` when done.
_MUTATING = frozenset({"setattr", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir",
                       "rename", "create", "write"})


def _translate(fn: F) -> F:
    mutating = fn.__name__ in _MUTATING

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except FUSEError as exc:
            args[0].count_error(name, exc.errno)
            raise
        except OSError as exc:
            if exc.errno is None:
                log.error("%s: OSError without errno: %s", name, exc)
                args[0].count_error(name, errno.EIO, "bug")
                raise FUSEError(errno.EIO) from None
            # EIO because the store did not answer (after its bounds) is counted apart
            # from other tier failures: errors.eio.unavailable.
            args[0].count_error(name, exc.errno,
                                "unavailable" if isinstance(exc, TierUnavailable) else None)
            raise FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s failed; answering EIO", name)
            args[0].count_error(name, errno.EIO, "bug")
            raise FUSEError(errno.EIO) from None
        finally:
            if mutating:
                args[0].mutations += 1

    return wrapper  # type: ignore[return-value]


def _writable(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the kernel may trust what we tell it, in seconds."""

    entry: float = 1.0
    attr: float = 1.0
    negative: float = 1.0
    #: Keep the kernel's page cache across opens without checking the source.
    immutable: bool = False


class Operations(pyfuse3.Operations):
    """Request handlers of one mount."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        capacity: CapacityTier,
        engine: Engine,
        *,
        inodes: InodeTable | None = None,
        handles: HandleTable | None = None,
        timeouts: Timeouts = Timeouts(),
        override_for: Callable[[bytes], Any] = lambda path: None,
        xattrs: bool = True,
        forget_entry: Callable[[int, bytes], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.capacity = capacity
        self.engine = engine
        self.inodes = inodes if inodes is not None else InodeTable(
            use_identity=capacity.supports_links, on_free=self._inode_freed)
        self.handles = handles if handles is not None else HandleTable()
        engine.kernel_files = self.inodes.files_at
        self.timeouts = timeouts
        self.override_for = override_for
        #: False: the xattr handlers answer ENOSYS, which the kernel remembers for the
        #: connection (it answers EOPNOTSUPP itself from then on): ``ls -l`` asks for
        #: two attributes per file, and each write for security.capability.
        self.xattrs = xattrs
        #: Drops the kernel's entry ``(parent, name)`` of a mount, or None (no kernel).
        self.forget_entry = forget_entry
        #: Count of finished mutating requests (see `_MUTATING`).
        self.mutations = 0
        # Last attributes of objects whose last name went (unlink, rmdir,
        # rename over them) while the kernel still holds them: fstat of a
        # descriptor of a removed directory, or of an O_PATH descriptor of a
        # removed file, must still work. Dropped when the kernel forgets.
        self._removed: dict[int, Stat] = {}

    def _inode_freed(self, ino: int) -> None:
        """The inode number is gone for good (never reused): drop its state everywhere."""
        self._removed.pop(ino, None)
        self.engine.forget(ino)

    # Answers that are ordinary outcomes, not failures: a missing name, a full
    # directory listing probe, an unsupported optional call.
    _EXPECTED = frozenset({errno.ENOENT, errno.ENODATA, errno.ENOSYS, errno.EEXIST,
                           errno.ENOTEMPTY})

    def count_error(self, op: str, err: int, cause: str | None = None) -> None:
        """Count an error answer by operation and errno (and EIO by cause: "bug",
        "unavailable" (the store did not answer), else "tier") for stats."""
        if err in self._EXPECTED and cause is None:
            return
        stats = self.engine.stats
        name = errno.errorcode.get(err, str(err))
        stats.add(f"errors.{op}.{name}")
        stats.add("errors.total")
        if err == errno.EIO:
            stats.add(f"errors.eio.{cause or 'tier'}")

    # -- helpers -----------------------------------------------------------
    def _entry(self, ino: int, st: Stat, trusted: float = 0.0) -> pyfuse3.EntryAttributes:
        """The kernel's entry for ``ino``; ``trusted``: seconds the tier will answer the
        same without asking its source (`CapacityTier.trusted_for`), which the kernel
        may keep it too: asking sooner would get the same answer from our cache."""
        self.inodes.told(ino, st.st_size)
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = max(self.timeouts.entry, trusted)
        e.attr_timeout = max(self.timeouts.attr, trusted)
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _remember(self, parent: int, name: bytes, st: Stat, count: int = 1) -> int:
        node = self.inodes.remember(
            parent, name, is_dir=st.is_dir,
            identity=identity_of(st.st_dev, st.st_ino) if st.st_ino else None, count=count)
        return node.ino

    async def _stat_ino(self, ino: int) -> Stat:
        try:
            return await self.capacity.stat(self.inodes.path(ino))
        except FileNotFoundError:
            # Unlinked while open: the open descriptor still knows it.
            for h in self.handles.files_of(ino):
                return self._unlinked(await h.file.fstat())
            if ino in self._removed:
                return self._removed[ino]
            raise

    def _unlinked(self, st: Stat) -> Stat:
        """``st`` of an open file whose name is gone: no name is left where the tier
        has no hard links (a local file's own fstat already says so)."""
        if self.capacity.supports_links or st.st_nlink == 0:
            return st
        return replace(st, st_nlink=0)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if b"/" in name or name in (b"", b".", b".."):
            raise OSError(errno.EINVAL, "invalid name")

    # -- lookups and attributes ----------------------------------------------
    @_translate
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.engine.stats.add("meta.lookup")
        path = self.inodes.child_path(parent_inode, name)
        try:
            st = await self.capacity.stat(path)
        except FileNotFoundError:
            if self.timeouts.negative > 0:
                e = pyfuse3.EntryAttributes()
                e.st_ino = 0  # a negative entry the kernel may cache
                e.entry_timeout = self.timeouts.negative
                return e
            raise
        return self._entry(self._remember(parent_inode, name, st), st,
                           self.capacity.trusted_for(path) if self.capacity.remote else 0.0)

    @_translate
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)  # `_inode_freed` when it was the last reference

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.engine.stats.add("meta.getattr")
        st = await self._stat_ino(inode)
        trusted = 0.0
        if self.capacity.remote:
            try:
                trusted = self.capacity.trusted_for(self.inodes.path(inode))
            except OSError:
                pass  # no name left: an open file's own attributes
        return self._entry(inode, st, trusted)

    @_translate
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        handle = self.handles.file(fh) if fh is not None and fh else None
        unlinked = False
        try:
            # Not handle.path: that is the name at open time, which a rename
            # may since have given to another file.
            path = self.inodes.path(inode)
        except FileNotFoundError:
            unlinked = True
            # Unlinked but open: fchmod/fchown/futimens arrive without a
            # handle, but any open handle of the inode reaches the object.
            handle = handle or next(iter(self.handles.files_of(inode)), None)
            if handle is None:
                raise
            path = handle.path
        kw: dict[str, Any] = {}
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if handle is not None:
            kw["file"] = handle.file
        if fields.update_size:
            # A push in flight must not land after the truncate.
            self.engine.writer_opened(inode)
        try:
            if fields.update_size:
                await self.engine.pushes_drained(inode)
            st = await self.capacity.setattr(path, **kw)
        except FileNotFoundError:
            if handle is None:
                raise
            st = self._unlinked(await handle.file.fstat())  # unlinked but open
        finally:
            if fields.update_size:
                self.engine.writer_closed(inode)
        if fields.update_size:
            self.engine.truncated(inode, path, attr.st_size)
        return self._entry(inode, self._unlinked(st) if unlinked else st)

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.capacity.readlink(self.inodes.path(inode))

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        st = await self._stat_ino(inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            # root may do anything but execute a file nobody may execute
            return not (mode & os.X_OK) or st.is_dir or bool(st.st_mode & 0o111)
        if ctx.uid == st.st_uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return (bits & mode) == mode

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self.capacity.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = s.bsize, s.frsize
        out.f_blocks, out.f_bfree, out.f_bavail = s.blocks, s.bfree, s.bavail
        out.f_files, out.f_ffree, out.f_favail = s.files, s.ffree, s.favail
        out.f_namemax = s.namemax
        return out

    # -- namespace -------------------------------------------------------------
    @_translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        path = self.inodes.child_path(parent_inode, name)
        st = await self.capacity.mknod(path, mode, rdev, ctx.uid, ctx.gid)
        return self._entry(self._remember(parent_inode, name, st), st)

    @_translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        path = self.inodes.child_path(parent_inode, name)
        st = await self.capacity.mkdir(path, mode, ctx.uid, ctx.gid)
        return self._entry(self._remember(parent_inode, name, st), st)

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        path = self.inodes.child_path(parent_inode, name)
        st = await self.capacity.symlink(path, target, ctx.uid, ctx.gid)
        return self._entry(self._remember(parent_inode, name, st), st)

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(new_name)
        if self.inodes.get(inode).is_dir:
            raise OSError(errno.EPERM, "hard links to directories are not allowed")
        src = self.inodes.path(inode)
        dst = self.inodes.child_path(new_parent_inode, new_name)
        st = await self.capacity.link(src, dst)
        return self._entry(self._remember(new_parent_inode, new_name, st), st)

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self.inodes.child_path(parent_inode, name)
        st = await self.capacity.stat(path)
        await self.capacity.unlink(path)
        self.engine.path_removed(path)
        node = self.inodes.unlinked(parent_inode, name)
        if node is not None and not node.locations:
            self.engine.invalidate(node.ino)
            self._keep_removed(node.ino, st)

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self.inodes.child_path(parent_inode, name)
        st = await self.capacity.stat(path)
        await self.capacity.rmdir(path)
        node = self.inodes.unlinked(parent_inode, name)
        if node is not None and not node.locations:
            self._keep_removed(node.ino, st, links=0)

    def _keep_removed(self, ino: int, st: Stat, links: int | None = None) -> None:
        """Remember the attributes of ``ino``, whose last known name just went."""
        if ino in self.inodes:
            self._removed[ino] = replace(
                st, st_nlink=max(st.st_nlink - 1, 0) if links is None else links)

    @_translate
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(name_new)
        old = self.inodes.child_path(parent_inode_old, name_old)
        new = self.inodes.child_path(parent_inode_new, name_new)
        replaced = self.inodes.find(parent_inode_new, name_new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        replaced_st = None
        if replaced is not None and not exchange:
            try:
                replaced_st = await self.capacity.stat(new)
            except FileNotFoundError:
                pass
        await self.capacity.rename(old, new, flags)
        if exchange:
            self.engine.path_removed(old)
            self.engine.path_removed(new)
        else:
            self.engine.path_renamed(old, new)
        self.inodes.renamed(parent_inode_old, name_old, parent_inode_new, name_new,
                            exchange=exchange)
        if replaced is not None and not exchange and replaced in self.inodes \
                and not self.inodes.get(replaced).locations:
            self.engine.invalidate(replaced)
            if replaced_st is not None:
                self._keep_removed(replaced, replaced_st,
                                   links=0 if replaced_st.is_dir else None)

    # -- files -----------------------------------------------------------------
    def _opened(self, h: FileHandle, st: Stat) -> pyfuse3.FileInfo:
        """Tell the engine; the kernel keeps its cached pages only if the engine says the
        source did not change (or the mount is immutable)."""
        found = self.override_for(h.path)
        if found is not None:
            h.rule, h.override = found
        keep = self.engine.opened(h, st)
        if self.engine.direct_io(h):
            return pyfuse3.FileInfo(fh=h.fh, direct_io=True)
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=keep)

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.engine.stats.add("meta.open")
        path = self.inodes.path(inode)
        try:
            f = await self.capacity.open(path, flags)
        except FileNotFoundError:
            # Gone from the store though the kernel still holds its name (for as long
            # as our cache would have vouched for it): the kernel must not keep it.
            if self.forget_entry is not None and self.capacity.remote:
                for parent, name in self.inodes.get(inode).locations:
                    await self.forget_entry(parent, name)
            raise
        try:
            st = await f.fstat()
            node = self.inodes.opened(inode)
        except BaseException:
            await f.close()
            raise
        h = self.handles.add_file(ino=node.ino, path=path, file=f, flags=flags,
                                  pid=ctx.pid, size=st.st_size)
        info = self._opened(h, st)
        if self.inodes.told(node.ino, st.st_size) not in (-1, st.st_size):
            # The open found another size than the kernel holds (a lookup answered by
            # a listing, then the open's HEAD): its reads stop at the size it holds
            # while its attributes are valid, so they must not be. Attributes only:
            # no page lock is taken, safe inside a request.
            self.engine.stats.add("open.kernel_attrs_dropped")
            self.engine.kernel.forget_attrs(node.ino)
        if _writable(flags):
            self.engine.writer_opened(h.ino)
            await self.engine.pushes_drained(h.ino)
        elif not info.keep_cache:
            # The kernel drops the inode's pages when this answer reaches it: a push of
            # the version it replaces must not land after that.
            await self.engine.pushes_drained(h.ino)
        return info

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_name(name)
        path = self.inodes.child_path(parent_inode, name)
        try:
            f, st = await self.capacity.create(path, flags, mode, ctx.uid, ctx.gid)
        except FileExistsError:
            # The kernel's negative entry was stale: the file appeared in the
            # source since. Without O_EXCL, open(2) opens what is there now.
            if flags & os.O_EXCL or not (await self.capacity.stat(path)).is_reg:
                raise
            f = await self.capacity.open(path, flags & ~os.O_CREAT)
            try:
                st = await f.fstat()
            except BaseException:
                await f.close()
                raise
        ino = self._remember(parent_inode, name, st)
        self.engine.created(ino, path)
        self.inodes.opened(ino)
        h = self.handles.add_file(ino=ino, path=path, file=f, flags=flags, pid=ctx.pid)
        info = self._opened(h, st)
        if _writable(flags):
            self.engine.writer_opened(h.ino)
            await self.engine.pushes_drained(h.ino)
        return info, self._entry(ino, st)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.engine.read(self.handles.file(fh), off, size)

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles.file(fh)
        n = await self.engine.write(h, off, buf)
        return n

    @_translate
    async def flush(self, fh: int) -> None:
        if not self.capacity.needs_flush:
            raise FUSEError(errno.ENOSYS)  # the kernel stops sending FLUSH
        await self.engine.flush(self.handles.file(fh))

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.engine.fsync(self.handles.file(fh), datasync)

    @_translate
    async def release(self, fh: int) -> None:
        h = self.handles.pop_file(fh)
        if _writable(h.flags):
            self.engine.writer_closed(h.ino)
        try:
            if h.dirty:
                # Our own writes went through the kernel's cache: it stays valid.
                try:
                    version = (await h.file.fstat()).version()
                except OSError:
                    version = None
                self.engine.consistency.written_version(h.ino, version)
            await self.engine.release(h, last=self.inodes.get(h.ino).open_handles <= 1)
        finally:
            self.inodes.closed(h.ino)

    # -- directories -------------------------------------------------------------
    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.engine.stats.add("meta.opendir")
        self.inodes.get(inode)  # ESTALE for an inode we do not know
        # Listed by readdir at offset 0, not here: a listing shows the
        # directory as it is when read (also after rewinddir or a listing of
        # an old descriptor), as on a local file system.
        return self.handles.add_dir(inode, []).fh

    async def _list(self, ino: int) -> list[tuple[bytes, Stat]]:
        try:
            return await self.capacity.listdir(self.inodes.path(ino))
        except FileNotFoundError:
            if ino in self._removed:
                return []  # removed while open: empty, as on a local file system
            raise

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self.handles.dir(fh)
        if start_id == 0:
            # Later offsets index this snapshot, so they stay stable while
            # the directory changes during the listing.
            h.mutations = self.mutations
            h.entries = await self._list(h.ino)
        entries = h.entries
        # The kernel trusts a later chunk's attributes as newer than any change
        # it saw before sending that request; after a change since the
        # snapshot, its entries are stated again (a link count, a size).
        restat = start_id > 0 and h.mutations != self.mutations
        base = self.inodes.path(h.ino) if self.capacity.remote else None
        for i in range(start_id, len(entries)):
            name, st = entries[i]
            if restat:
                try:
                    st = await self.capacity.stat(self.inodes.child_path(h.ino, name))
                except FileNotFoundError:
                    continue  # gone since the snapshot: not listed
                entries[i] = (name, st)
            # readdirplus: every accepted entry is a lookup the kernel will forget.
            ino = self._remember(h.ino, name, st, count=0)
            trusted = 0.0 if base is None else \
                self.capacity.trusted_for(base + b"/" + name if base else name)
            if not pyfuse3.readdir_reply(token, name, self._entry(ino, st, trusted), i + 1):
                self.inodes.forget(ino, 0)
                break
            self.inodes.get(ino).lookups += 1

    @_translate
    async def releasedir(self, fh: int) -> None:
        self.handles.pop_dir(fh)

    @_translate
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.capacity.fsync_dir(self.inodes.path(self.handles.dir(fh).ino))

    # -- extended attributes ----------------------------------------------------
    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self.engine.stats.add("meta.xattr")
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)
        return await self.capacity.getxattr(self.inodes.path(inode), name)

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.engine.stats.add("meta.xattr")
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)
        await self.capacity.setxattr(self.inodes.path(inode), name, value)

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self.engine.stats.add("meta.xattr")
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)
        return await self.capacity.listxattr(self.inodes.path(inode))

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.engine.stats.add("meta.xattr")
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)
        await self.capacity.removexattr(self.inodes.path(inode), name)

