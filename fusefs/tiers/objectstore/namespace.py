"""The tree an object store shows as a file system: lookups, listings, directories, renames.

`Namespace` answers ``stat`` and ``listdir`` from the cache, the files this
mount is writing and the store (in that order), and emulates what a key space
lacks: directories, ``rename``, ``rmdir`` and the refusal of links.

Directories
    A directory is a key prefix, or a directory marker object (``dir/``). With
    ``dir_markers=True`` (the default, right for S3, MinIO, Ceph and GCS)
    ``mkdir`` writes a marker and ``rmdir`` deletes it. Some S3 servers map
    keys onto a file system and cannot hold a marker next to a folder of the
    same name (``rclone serve s3`` over a local disk stores ``dir/`` as an
    empty *file* ``dir``): use ``dir_markers=False`` there. Then ``mkdir``
    creates the directory in this mount only (it becomes real in the store
    when a file is written below it, and is gone after a remount if it stays
    empty). In marker mode the first ``mkdir`` checks for that behaviour and
    switches to ``dir_markers=False`` with one warning.

    On ``s3://`` sources every namespace change sends exactly the requests
    `Store` names (botocore; see `store`), and a delete writes no marker: the
    directories above a deleted key stay in this mount (`_keep_parents`). On
    other stores pyarrow sends them, and pyarrow writes a parent marker after
    each delete; zero-byte stand-ins that a marker becomes on a store without
    markers are deleted again (`_remove_stand_ins`).

Namespace operations
    ``rename`` of a file is copy + delete (not atomic); of a directory, copy +
    delete of every key below it, refused with ``EXDEV`` above
    ``max_dir_rename_keys`` keys (``mv`` then falls back to copying).
    ``RENAME_NOREPLACE`` is checked before copying (a race with another client
    is possible); ``RENAME_EXCHANGE`` is ``EINVAL``. ``link`` is ``EPERM``
    (the errno POSIX gives for a file system without that kind of node), and
    so is ``symlink`` unless objects store attributes.

Stored attributes (``stored_attributes``, ``s3://``)
    Mode, owner, times and extended attributes live in each object's user
    metadata (a directory's in its marker), in s3fs's convention (see
    `options`). A listing carries none, so `_fill` HEADs an entry whose
    metadata was not read within ``stat_ttl`` (`listdir_attrs`: concurrently);
    `set_attrs` and `set_xattr` store changes with a metadata-only copy of the
    object onto itself (or leave them to the upload that is due). Symbolic
    links are objects holding the target, S_IFLNK in their mode; the daemon
    never follows one.

    A new entry takes the group of a set-group-ID parent directory (and a new
    directory its set-group-ID bit), as on a disk.

Directory times
    Creating, removing or renaming an entry moves its directory's mtime and
    ctime to now, in this mount (`entries_changed`): what a disk shows, without
    a request. The marker keeps the time ``mkdir`` or the last chmod/utimes
    stored, which is what another mount (or this one after a remount) shows:
    rewriting it on every entry change would cost one PUT per create (s3fs's
    ``update_parent_dir_stat``, off by default there too).
"""

from __future__ import annotations

import errno
import logging
import stat as stat_mod
import time
from dataclasses import replace

import trio

from ..capacity import Stat, TierUnavailable
from .file import OpenFiles
from .metacache import Listing, MetaCache
from .options import META_LIMIT, Attributes, ObjectStoreOptions, decode_xattrs, encode_xattrs, meta_size
from .store import Store, concurrently, err, show, split, under

log = logging.getLogger(__name__)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_PATH_MAX = 4096
_LINK_MODE = stat_mod.S_IFLNK | 0o777
#: Directories whose entry changes this mount remembers (about 100 bytes each); the
#: oldest is forgotten first (its directory then shows the time its marker stores).
_DIR_TIMES_MAX = 65536


async def _no_listing(path: bytes) -> None:
    raise TierUnavailable("the store is down: no listing")


class Namespace:
    """Lookups, listings and namespace changes of one store root."""

    def __init__(
        self,
        store: Store,
        cache: MetaCache,
        files: OpenFiles,
        attrs: Attributes,
        opts: ObjectStoreOptions,
    ) -> None:
        self._store = store
        self._cache = cache
        self._files = files
        self._attrs = attrs
        self._opts = opts
        self._markers = opts.dir_markers
        self._markers_checked = False
        #: Directories that exist in this mount only (no markers): path -> Stat.
        self._local_dirs: dict[bytes, Stat] = {}
        #: The root's attributes (its mtime is when the tier started).
        self.root_stat = attrs.dir(attrs.started_ns)
        #: Directories whose entries this mount changed: path -> when (ns), oldest
        #: first, at most `_DIR_TIMES_MAX` (see "Directory times").
        self._dir_changed: dict[bytes, int] = {}

    # -- lookups -----------------------------------------------------------
    async def stat(self, path: bytes, *, exact: bool = False) -> Stat:
        """Attributes of ``path``; ``exact``: a file's version must be stated by the
        store (a listing that gave no mtime is asked again with a HEAD).

        Stale-if-error: while the store is down, or when it does not answer,
        what the cache last knew answers (see `MetaCache.stale_lookup`).

        A directory's link count is 2 + its subdirectories where this mount has
        listed it (the last listing, with this mount's own directories), else 1:
        "not counted", as btrfs and most network file systems say, which find(1)
        and fts understand; counting would cost a LIST per directory stat."""
        st = await self._fill(path, await self._stat(path, exact))
        if not st.is_dir:
            return st
        st = self._dir_times(path, st)
        links = self._dir_links(path)
        return st if links == st.st_nlink else replace(st, st_nlink=links)

    # -- directory times ---------------------------------------------------
    def entries_changed(self, *paths: bytes) -> None:
        """Entries ``paths`` were created, removed or renamed: their directories'
        mtime and ctime are now (in this mount; see "Directory times")."""
        now = time.time_ns()
        for p in paths:
            parent = split(p)[0]
            self._dir_changed.pop(parent, None)  # to the end: the newest
            self._dir_changed[parent] = now
        while len(self._dir_changed) > _DIR_TIMES_MAX:
            del self._dir_changed[next(iter(self._dir_changed))]

    def _dir_times(self, path: bytes, st: Stat) -> Stat:
        """Directory ``st`` with the time of this mount's last change of its entries,
        where that is later than what it shows."""
        t = self._dir_changed.get(path)
        if t is None or (st.st_mtime_ns >= t and st.st_ctime_ns >= t):
            return st
        return replace(st, st_mtime_ns=max(st.st_mtime_ns, t), st_ctime_ns=max(st.st_ctime_ns, t))

    async def inherit(self, parent: bytes, mode: int, gid: int) -> tuple[int, int]:
        """The mode and group of a new entry in directory ``parent``, created with
        ``mode`` by a caller of group ``gid``: a set-group-ID directory gives its group
        (and a new directory its set-group-ID bit), where objects store attributes."""
        if not self._attrs.stored:
            return mode, gid
        pst = await self.stat(parent) if parent else self.root_stat
        if not pst.st_mode & stat_mod.S_ISGID:
            return mode, gid
        if stat_mod.S_ISDIR(mode):
            mode |= stat_mod.S_ISGID
        return mode, pst.st_gid

    def _dir_links(self, path: bytes) -> int:
        listing = self._cache.stale_listing(path)
        subdirs = {p for p in self._local_dirs if split(p)[0] == path}
        if listing is None and not subdirs:
            return 2 if path in self._local_dirs else 1
        if listing is not None:
            subdirs.update(path + b"/" + n if path else n
                           for n, st in listing.entries.items() if st.is_dir)
        return 2 + len(subdirs)

    async def _stat(self, path: bytes, exact: bool) -> Stat:
        if not path:
            return self.root_stat
        self._store.key(path)
        st = self._files.writer_stat(path) or self._local_dirs.get(path)
        if st is not None:
            return st
        if self._files.writeback is not None and self._files.any_under(path):
            # Files written below it that the store may not hold yet (write-back, maybe
            # from before a crash) make the directory, without a request: with the
            # attributes last known of it (a chmod's), else the defaults.
            known = self._cache.known_stat(path)
            return known if known is not None and known.is_dir else self._attrs.dir(self._attrs.started_ns)
        if self._store.down:
            st = self._stale_stat(path)
            if st is not None:
                return st
        try:
            return await self._fresh_stat(path, exact)
        except TierUnavailable:
            st = self._stale_stat(path)
            if st is None:
                raise
            return st

    def _stale_stat(self, path: bytes) -> Stat | None:
        st = self._cache.stale_lookup(path)  # raises ENOENT for a name the last listing lacks
        if st is not None:
            self._store.requests["stale_served"] += 1
        return st

    async def _fresh_stat(self, path: bytes, exact: bool) -> Stat:
        key = self._store.key(path)
        # While the store is down a lookup lists nothing: a HEAD gives up sooner.
        st = await self._cache.lookup(path, _no_listing if self._store.down else self.listdir)
        if st is None and self._attrs.stored:
            # An object's HEAD with its metadata first: a file then costs one request.
            st = await self._store.head_meta(key, f"stat {show(path)}")
            if st is not None:
                self._cache.note_object(path, st)
                return st
        if st is None:
            st = await self._store.head(key, f"stat {show(path)}")
            self._cache.remember(path, st)
            if st is None:
                raise err(errno.ENOENT, f"{show(path)}: no such object")
        versioned = self._store.versioned
        stored = self._attrs.stored and not st.attrs_known
        if exact and st.is_reg and (not st.mtime_known or (versioned and st.etag is None) or stored):
            # An open's version: stated by a HEAD (on S3 with the ETag, which a
            # listing through pyarrow lacks; cached as long as a stat).
            try:
                if self._attrs.stored:
                    head = await self._store.head_meta(key, f"stat {show(path)}")
                elif versioned:
                    head = await self._store.head_version(key, f"stat {show(path)}")
                else:
                    head = await self._store.head(key, f"stat {show(path)}")
            except TierUnavailable:
                self._store.requests["stale_served"] += 1
                return st  # stale-if-error: what the listing said
            if head is not None and self._attrs.stored:
                self._cache.note_object(path, head)  # the listing's entry too: it has them now
            else:
                self._cache.remember(path, head)
            if head is None:
                raise err(errno.ENOENT, f"{show(path)}: no such object")
            return head
        return st

    # -- stored attributes --------------------------------------------------
    async def _fill(self, path: bytes, st: Stat) -> Stat:
        """``st`` with the attributes the store holds for ``path`` where objects store
        them and ``st`` does not carry them yet (a listing's): one HEAD of the object
        (a directory: of its marker), cached as a stat (``stat_ttl``). While the store
        is down, or without an answer, ``st`` as it is (stale-if-error)."""
        if st.attrs_known or not self._attrs.stored or not path or self._store.down:
            return st
        if st.is_dir and (not self._markers or path in self._local_dirs):
            done = replace(st, attrs_known=True)  # without markers a directory stores nothing
            self._cache.note_object(path, done)
            return done
        key = self._store.key(path)
        try:
            if st.is_dir:
                head = await self._store.head_meta(key + "/", f"stat {show(path)}", kind="dir")
                if head is None:  # implied by keys below it, no marker: nothing stored
                    head = replace(st, attrs_known=True)
            else:
                head = await self._store.head_meta(key, f"stat {show(path)}")
        except TierUnavailable:
            self._store.requests["stale_served"] += 1
            return st
        if head is None:
            self._cache.note_gone(path, tree=False)
            raise err(errno.ENOENT, f"{show(path)}: no such object")
        self._cache.note_object(path, head)
        return head

    async def listdir_attrs(self, path: bytes) -> list[tuple[bytes, Stat]]:
        """`listdir`, every entry with the attributes the store holds for it (where
        objects store them): the HEADs a listing needs, ``max_threads`` at a time."""
        entries = await self.listdir(path)
        if not self._attrs.stored or self._store.down:
            return entries
        todo = [i for i, (_, st) in enumerate(entries) if not st.attrs_known]
        if not todo:
            return entries
        out: list[tuple[bytes, Stat] | None] = list(entries)
        # Each HEAD's read_timeout must start when it gets a thread, not in a queue of
        # thousands: no more at once than there are threads.
        slots = trio.CapacityLimiter(self._opts.max_threads)

        async def one(i: int) -> None:
            name, st = entries[i]
            async with slots:
                child = path + b"/" + name if path else name
                try:
                    filled = await self._fill(child, st)
                    out[i] = (name, self._dir_times(child, filled) if filled.is_dir else filled)
                except FileNotFoundError:
                    out[i] = None  # gone since the listing

        await concurrently([(one, i) for i in todo])
        return [e for e in out if e is not None]

    async def set_attrs(self, path: bytes, *, mode: int | None, uid: int | None,
                        gid: int | None, atime_ns: int | None, mtime_ns: int | None) -> Stat:
        """chmod/chown/utimes where objects store attributes.

        A file: one CopyObject of the object onto itself with the new metadata (its
        bytes stay; a new ETag is followed by this mount's opens), or, while a write of
        it waits for its upload, only that write's attributes. A directory: its marker
        is written again with them (marker mode); without markers it keeps them in
        this mount only."""
        cur = await self.stat(path, exact=True)
        now = time.time_ns()
        new = self._attrs.with_owner(
            cur, stat_mod.S_IFMT(cur.st_mode) | stat_mod.S_IMODE(cur.st_mode if mode is None else mode),
            cur.st_uid if uid is None else uid, cur.st_gid if gid is None else gid)
        if atime_ns is not None:
            new.st_atime_ns = atime_ns
        if mtime_ns is not None:
            new.st_mtime_ns = mtime_ns
        new.st_ctime_ns = now
        return await self._store_attrs(path, cur, new)

    async def _store_attrs(self, path: bytes, cur: Stat, new: Stat) -> Stat:
        """Make ``path`` (now ``cur``) store the attributes of ``new`` (see `set_attrs`)."""
        if not path:  # the bucket (or prefix) has no marker of its own to hold them
            self.root_stat = new
            return new
        if cur.is_dir:
            self._dir_changed.pop(path, None)  # a time set by hand replaces this mount's
            if path in self._local_dirs or not self._markers:
                self._local_dirs[path] = new
                return new
            await self._store.create_dir(self._store.key(path), f"setattr {show(path)}",
                                         self._attrs.to_meta(new))
            self._cache.note_object(path, new)
            return new
        if self._files.set_owner(path, new):
            return new  # the upload that is due carries them
        key = self._store.key(path)
        etag = await self._store.set_meta(key, self._attrs.to_meta(new), f"setattr {show(path)}")
        self._store.note_same_bytes(key, cur.etag, etag)
        new.etag = etag if cur.etag is not None else None
        new.mtime_known = True
        self._cache.note_object(path, new)
        return new

    async def xattrs(self, path: bytes) -> dict[str, bytes]:
        """The extended attributes ``path`` stores (name -> value)."""
        return decode_xattrs((await self.stat(path)).xattr)

    async def set_xattr(self, path: bytes, name: str, value: bytes | None, flags: int = 0) -> None:
        """Set (``value``) or remove (None) one extended attribute of ``path``: stored
        as `set_attrs` stores a mode. ``flags``: XATTR_CREATE (1), XATTR_REPLACE (2).

        Raises:
            OSError: ``ENODATA`` (removing or replacing what is not there), ``EEXIST``
                (creating what is), ``E2BIG`` (the attribute alone would not fit in
                S3's 2 KiB of user metadata), ``ENOSPC`` (not beside the others).
        """
        cur = await self.stat(path, exact=True)
        xs = decode_xattrs(cur.xattr)
        if name not in xs and (value is None or flags & 2):
            raise err(errno.ENODATA, f"{show(path)}: no attribute {name}")
        if name in xs and value is not None and flags & 1:
            raise err(errno.EEXIST, f"{show(path)}: attribute {name} exists")
        if value is None:
            del xs[name]
        else:
            xs[name] = value
        new = replace(cur, xattr=encode_xattrs(xs), st_ctime_ns=time.time_ns())
        if value is not None and meta_size(self._attrs.to_meta(new)) > META_LIMIT:
            alone = replace(cur, xattr=encode_xattrs({name: value}))
            big = meta_size(self._attrs.to_meta(alone)) > META_LIMIT
            raise err(errno.E2BIG if big else errno.ENOSPC,
                      f"{show(path)}: extended attributes beyond the store's {META_LIMIT} bytes "
                      "of metadata per object")
        await self._store_attrs(path, cur, new)

    async def symlink(self, path: bytes, target: bytes, uid: int, gid: int) -> Stat:
        """A symbolic link: an object holding the target, ``x-amz-meta-mode`` saying
        S_IFLNK (as s3fs stores them). The daemon never follows it."""
        key = self._store.key(path)
        if not self._attrs.stored:
            raise err(errno.EPERM, "symbolic links need stored_attributes = true (s3:// sources)")
        if not target or len(target) >= _PATH_MAX:
            raise err(errno.ENAMETOOLONG if target else errno.ENOENT,
                      f"{show(path)}: symlink target of {len(target)} bytes")
        await self.require_dir(split(path)[0])
        await self.absent(path)
        now = time.time_ns()
        _, gid = await self.inherit(split(path)[0], _LINK_MODE, gid)
        st = self._attrs.with_owner(self._attrs.file(len(target), now), _LINK_MODE, uid, gid)
        st.st_mtime_ns = st.st_atime_ns = st.st_ctime_ns = now
        await self._store.put_bytes(key, target, self._attrs.to_meta(st), f"symlink {show(path)}")
        self._store.forget_same_bytes(key)
        self._cache.note_object(path, st)
        self.entries_changed(path)
        return st

    async def listdir(self, path: bytes) -> list[tuple[bytes, Stat]]:
        key = self._store.key(path)
        listing = self._cache.fresh_listing(path)
        if listing is None and self._store.down:
            listing = self._stale_listing(path)
        if listing is None:
            try:
                infos = await self._list(path)
            except TierUnavailable:
                listing = self._stale_listing(path)
                if listing is None:
                    raise
        if listing is None:
            if not infos and path:
                # An empty answer: an empty directory, or nothing at all.
                if not (await self.stat(path)).is_dir:
                    raise err(errno.ENOTDIR, f"{show(path)}: not a directory")
            elif path:
                self._cache.drop_file_stat(path)  # was a file, now a prefix
            cut = len(key) + 1 if key else 0
            entries: dict[bytes, Stat] = {}
            for child_key, st in infos:
                child = child_key[cut:]
                if not child or "/" in child or st is None:
                    continue
                bname = child.encode("utf-8")
                if bname in entries and not st.is_dir:
                    continue  # a key that is both an object and a prefix: the directory wins
                entries[bname] = st
            listing = self._cache.put_listing(path, entries)
        out = dict(listing.entries)
        for p, st in self._local_dirs.items():
            parent, name = split(p)
            if parent == path:
                out.setdefault(name, st)
        out.update(self._files.child_stats(path))
        if self._dir_changed:
            for name, st in out.items():
                if st.is_dir:
                    out[name] = self._dir_times(path + b"/" + name if path else name, st)
        return list(out.items())

    def _stale_listing(self, path: bytes) -> Listing | None:
        listing = self._cache.stale_listing(path)
        if listing is not None:
            self._store.requests["stale_served"] += 1
        return listing

    async def _list(self, path: bytes, *, recursive: bool = False) -> list[tuple[str, Stat | None]]:
        key = self._store.key(path)
        return await self._store.list_keys(key, f"list {show(path)}", recursive=recursive)

    async def require_dir(self, path: bytes) -> None:
        if path and not (await self.stat(path)).is_dir:
            raise err(errno.ENOTDIR, f"{show(path)}: not a directory")

    async def absent(self, path: bytes) -> None:
        try:
            await self.stat(path)
        except FileNotFoundError:
            return
        raise err(errno.EEXIST, f"{show(path)}: already exists")

    async def absent_in_store(self, path: bytes) -> None:
        """Raise ``EEXIST`` if the store holds an object ``path`` that the caches said
        was missing (another client wrote it since the listing or the negative entry):
        one HEAD. A create must not replace what it never saw."""
        if self._files.writer_stat(path) is not None or path in self._local_dirs:
            return  # this mount's own: `absent` has answered for it
        key = self._store.key(path)
        if self._attrs.stored:
            st = await self._store.head_meta(key, f"create {show(path)}")
            if st is not None:
                self._cache.note_object(path, st)
        else:
            st = await self._store.head(key, f"create {show(path)}")
            self._cache.remember(path, st)
        if st is not None:
            raise err(errno.EEXIST, f"{show(path)}: already exists (written by another client)")

    async def readlink(self, path: bytes) -> bytes:
        st = await self.stat(path)
        if not stat_mod.S_ISLNK(st.st_mode):
            raise err(errno.EINVAL, f"{show(path)}: not a symbolic link")
        if not st.st_size:
            return b""
        return await self._store.get_small(self._store.key(path), min(st.st_size, _PATH_MAX),
                                           f"readlink {show(path)}")

    def _gone(self, path: bytes, *, tree: bool = True) -> None:
        """``path`` (and, if ``tree``, everything below it) no longer exists."""
        self._cache.note_gone(path, tree=tree)
        self._local_dirs.pop(path, None)
        self._dir_changed.pop(path, None)
        if tree:
            for p in [p for p in self._local_dirs if under(p, path)]:
                del self._local_dirs[p]

    # -- directories and markers -------------------------------------------
    async def mkdir(self, path: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Stat:
        if not path:
            raise err(errno.EEXIST, "the root exists")
        key = self._store.key(path)
        await self.require_dir(split(path)[0])
        await self.absent(path)
        st = self._attrs.dir(time.time_ns())
        meta = None
        if self._attrs.stored:
            mode, gid = await self.inherit(split(path)[0], mode, gid)
            st = self._attrs.with_owner(st, mode, uid, gid)
            meta = self._attrs.to_meta(st)
        if self._markers:
            await self._store.create_dir(key, f"mkdir {show(path)}", meta)
            if not self._markers_checked:
                await self._check_markers(path, key)
        if self._markers:
            self._cache.note_object(path, st)
        else:
            self._cache.drop_negative(path)
            self._local_dirs[path] = st
        self.entries_changed(path)
        return st

    async def _check_markers(self, path: bytes, key: str) -> None:
        """After the first marker: does the store keep it, or turn it into a plain object?"""
        self._markers_checked = True
        if self._store.type_name != "s3":
            return
        if await self._store.stand_in_size(key) != 0:
            return
        log.warning("%s stores directory markers as plain objects (rclone serve s3 does): "
                    "switching to dir_markers=false, new empty directories live in this mount only",
                    self._store.description)
        self._markers = False
        await self._remove_stand_ins(path)

    async def _remove_stand_ins(self, path: bytes) -> None:
        """Without markers: remove the zero-byte objects left where directories were.

        pyarrow writes a marker ``d/`` when the last object below ``d`` is deleted;
        a store that maps keys onto files keeps it as an empty file ``d``, which
        would hide the directory. Delete it (one level up may follow), and keep
        the directory in this mount, as a local one.
        """
        p: bytes | None = path
        while p is not None:
            if not p and not self._store.prefix:
                return  # a bucket needs no marker
            key = self._store.key(p)
            if await self._store.stand_in_size(key) != 0:
                return
            await self._delete_key(p, key)
            if p:
                self._local_dirs.setdefault(p, self._attrs.dir(time.time_ns()))
                self._cache.drop_stat(p)
                p = split(p)[0]
            else:
                p = None

    def _keep_parents(self, path: bytes) -> None:
        """Keep the directories above ``path`` in this mount after a delete below them.

        A delete sends one request and writes no marker, so a directory that was
        implied only by the deleted key is gone from the store; here it stays (empty)
        until ``rmdir`` or the next mount, as on a disk. No request is sent."""
        p = split(path)[0]
        now = self._attrs.dir(time.time_ns())
        while p and p not in self._local_dirs:
            self._local_dirs[p] = now
            p = split(p)[0]

    async def _delete_key(self, path: bytes, key: str) -> None:
        """Delete object ``key``; tolerate pyarrow failing to write a parent marker after it."""
        if self._store.sends_own_requests:
            await self._store.delete_file(key, f"delete {show(path)}")
            self._keep_parents(path)
            return
        try:
            await self._store.delete_file(key, f"delete {show(path)}")
        except TierUnavailable:
            raise
        except FileNotFoundError:
            raise
        except OSError:
            if self._markers or await self._store.stand_in_size(key) is not None:
                raise
            # Deleted; only the parent marker that pyarrow adds failed: not wanted here.

    async def _keep_parent(self, path: bytes) -> None:
        """GCS: the parent of a removed ``path`` stays a directory, as on a disk.

        pyarrow's GCS ``delete_file``/``delete_dir`` write no parent marker (its S3
        ones do), so a directory whose last entry goes would vanish. If the store no
        longer has the parent: with markers, write its marker (and its parents');
        without, keep it (and each parent that went with it) in this mount, as
        `mkdir` does. A failure leaves the removal done, with a warning.
        """
        if self._store.type_name != "gcs":
            return
        p = split(path)[0]
        try:
            while True:
                key = self._store.key(p)
                what = f"keep directory {show(p)}"
                if key == self._store.bucket or await self._store.dir_exists(key, what):
                    return
                if self._markers:
                    await self._store.create_dir(key, what)
                    return
                if not p:
                    return
                self._local_dirs.setdefault(p, self._attrs.dir(time.time_ns()))
                self._cache.drop_stat(p)
                p = split(p)[0]
        except OSError as exc:
            log.warning("%s: directory %s may vanish from the store (%s)",
                        self._store.description, show(p), exc)

    # -- removal -----------------------------------------------------------
    async def unlink(self, path: bytes) -> None:
        key = self._store.key(path)
        st = await self.stat(path)
        if st.is_dir:
            raise err(errno.EISDIR, f"{show(path)}: is a directory")
        absent = self._cache.known_absent(path)  # before the pending write's view goes
        pending = await self._files.unlinked(path)
        try:
            if not (pending and absent):  # a new file the store never held: no request
                await self._delete_key(path, key)
        except FileNotFoundError:
            if not pending:
                self._gone(path, tree=False)
                raise
        self._gone(path, tree=False)
        self.entries_changed(path)
        self._store.forget_same_bytes(key)
        await self._keep_parent(path)
        if not self._markers and not self._store.sends_own_requests:
            await self._remove_stand_ins(split(path)[0])

    async def rmdir(self, path: bytes) -> None:
        if not path:
            raise err(errno.EBUSY, "cannot remove the root")
        key = self._store.key(path)
        if not (await self.stat(path)).is_dir:
            raise err(errno.ENOTDIR, f"{show(path)}: not a directory")
        await self._require_empty(path)
        if self._store.sends_own_requests:
            # One DELETE of ``key/``: S3 answers it whether or not there is a marker, and a
            # store over a disk (rclone) removes its empty directory.
            await self._store.delete_marker(key, f"rmdir {show(path)}")
            self._gone(path)
            self.entries_changed(path)
            self._keep_parents(path)
            return
        if path not in self._local_dirs and self._markers:
            try:
                await self._store.delete_marker(key, f"rmdir {show(path)}")
            except FileNotFoundError:
                pass  # no marker: the directory was only implied
        self._gone(path)
        self.entries_changed(path)
        await self._keep_parent(path)
        if not self._markers:
            await self._remove_stand_ins(split(path)[0])

    async def _require_empty(self, path: bytes) -> None:
        busy = self._files.any_under(path) or any(under(p, path) for p in self._local_dirs)
        if not busy:
            busy = bool(await self._list(path))
        if busy:
            raise err(errno.ENOTEMPTY, f"{show(path)}: directory not empty")

    # -- rename ------------------------------------------------------------
    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        if flags & _RENAME_EXCHANGE:
            raise err(errno.EINVAL, "RENAME_EXCHANGE is not possible on an object store")
        if flags & ~_RENAME_NOREPLACE:
            raise err(errno.EINVAL, f"unsupported rename flags {flags:#x}")
        if not old or not new:
            raise err(errno.EBUSY, "cannot rename the root")
        okey, nkey = self._store.key(old), self._store.key(new)
        src = await self.stat(old)
        if old == new:
            return
        if under(new, old):
            raise err(errno.EINVAL, f"cannot move {show(old)} into itself")
        await self.require_dir(split(new)[0])
        try:
            dst: Stat | None = await self.stat(new)
        except FileNotFoundError:
            dst = None
        if dst is not None:
            if flags & _RENAME_NOREPLACE:
                raise err(errno.EEXIST, f"{show(new)}: already exists")
            if src.is_dir and not dst.is_dir:
                raise err(errno.ENOTDIR, f"{show(new)}: not a directory")
            if not src.is_dir and dst.is_dir:
                raise err(errno.EISDIR, f"{show(new)}: is a directory")
            if dst.is_dir:
                await self.rmdir(new)
        if src.is_dir:
            await self._rename_dir(old, new, okey, nkey, src)
        else:
            await self._rename_file(old, new, okey, nkey)
        self.entries_changed(old, new)

    async def _rename_file(self, old: bytes, new: bytes, okey: str, nkey: str) -> None:
        wb = self._files.writeback
        if wb is None or not self._files.has_changes(old):
            await self._rename_file_held(old, new, okey, nkey)
            return
        # No upload of ``old`` may start while its spools move to ``new``: it would
        # write the old key after it was deleted here.
        wb.hold_uploads(old)
        try:
            await self._rename_file_held(old, new, okey, nkey)
        finally:
            wb.release_uploads(old)

    async def _rename_file_held(self, old: bytes, new: bytes, okey: str, nkey: str) -> None:
        if self._files.has_changes(old):
            # Write-back: what ``old`` holds here is newer than the store's object (if
            # any). Nothing to copy: the old key goes, and the pending write (its
            # journal row too) follows the new name.
            if self._files.writeback is not None:
                await self._files.writeback.wait_uploads(old)
            if self._files.has_changes(old):
                await self._files.unlinked(new)  # replaced: never uploaded
                if not self._cache.known_absent(old):  # a new file: nothing in the store
                    try:
                        await self._delete_key(old, okey)
                    except FileNotFoundError:
                        pass
                await self._files.move(old, new)
                self._gone(old, tree=False)
                self._cache.drop_stat(new)
                self._cache.drop_negative(new)
                await self._keep_parent(old)
                if not self._markers and not self._store.sends_own_requests:
                    await self._remove_stand_ins(split(old)[0])
                return
        await self._files.flush(old)  # the object must exist before it can be copied
        # The file it replaces dies with its name, pending writes too: an upload of them
        # after the copy would put the replaced bytes back under the new name.
        await self._files.unlinked(new)
        await self._store.copy(okey, nkey, f"rename {show(old)}")
        try:
            await self._delete_key(old, okey)
        except FileNotFoundError:
            pass
        await self._files.move(old, new)
        self._gone(old, tree=False)
        self._cache.drop_stat(new)
        self._cache.drop_negative(new)
        head = self._store.head_meta if self._attrs.stored else self._store.head
        st = await head(nkey, f"stat {show(new)}")
        self._store.forget_same_bytes(okey)
        self._store.forget_same_bytes(nkey)
        if st is not None:
            self._cache.note_object(new, st)
        await self._keep_parent(old)
        if not self._markers and not self._store.sends_own_requests:
            await self._remove_stand_ins(split(old)[0])

    async def _rename_dir(self, old: bytes, new: bytes, okey: str, nkey: str, src: Stat) -> None:
        await self._files.flush_under(old)
        infos = await self._list(old, recursive=True)
        limit = self._opts.max_dir_rename_keys
        if len(infos) > limit:
            raise err(errno.EXDEV, f"{show(old)} holds more than {limit} keys; an object store "
                                   "renames a directory key by key (raise max_dir_rename_keys, or copy)")
        cut = len(okey)
        files = [k for k, st in infos if st is not None and st.is_reg]
        dirs = [k for k, st in infos if st is not None and st.is_dir]

        async def copy(src_key: str) -> None:
            await self._store.copy(src_key, nkey + src_key[cut:], f"rename {src_key}")

        if self._markers:  # first, so that stores with real directories have the parents
            metas: dict[str, dict[str, str] | None] = {
                okey: self._attrs.to_meta(src) if self._attrs.stored and src.attrs_known else None}
            if self._attrs.stored and dirs:
                # The markers below keep their attributes too: one HEAD each (a listing
                # carries no metadata), then each new marker is written with them.
                async def read(d: str) -> None:
                    st = await self._store.head_meta(d + "/", f"rename {d}", kind="dir")
                    metas[d] = self._attrs.to_meta(st) if st is not None else None

                await concurrently([(read, d) for d in dirs])
            for d in [okey, *dirs]:
                await self._store.create_dir(nkey + d[cut:], f"mkdir {nkey + d[cut:]}",
                                             metas.get(d))
        await concurrently([(copy, k) for k in files])
        if self._store.sends_own_requests:
            # Exactly the keys copied, then the markers below (deepest first) and the
            # directory's own: a store over a disk removes a directory only once empty.
            await self._store.delete_keys(files, f"rename {show(old)}")
            markers = sorted([d + "/" for d in dirs], key=lambda k: -k.count("/"))
            await self._store.delete_keys(markers + [okey + "/"], f"rename {show(old)}")
            self._keep_parents(old)
        elif infos or (self._markers and old not in self._local_dirs):
            try:
                await self._store.delete_dir(okey, f"delete {show(old)}")
            except FileNotFoundError:
                pass
            except OSError:
                if self._markers or await self._list(old):
                    raise
        # Move what lives in this mount only (local directories, open writers).
        moved_local = {new + p[len(old):]: st for p, st in self._local_dirs.items() if p == old or under(p, old)}
        changed = self._dir_changed.get(old)
        self._gone(old)
        if changed is not None:
            self._dir_changed[new] = changed
        await self._keep_parent(old)
        await self._files.move_under(old, new)
        self._cache.invalidate(new)
        if self._markers or infos:
            self._cache.note_object(new, src if self._markers and src.attrs_known
                                    else self._attrs.dir(src.st_mtime_ns, known=False))
        if not self._markers:
            self._local_dirs.update(moved_local)
            if not infos:
                self._local_dirs[new] = self._attrs.dir(src.st_mtime_ns)
            # Empty directories below ``old`` that the store knew of are not carried over
            # here: a store without markers cannot hold them.
            if not self._store.sends_own_requests:
                await self._remove_stand_ins(split(old)[0])
