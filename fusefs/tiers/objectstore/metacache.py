"""The object-store tier's metadata cache: stats, listings, misses and their snapshots.

`MetaCache` owns what the tier remembers of the store's namespace, and for
how long (``clock`` is injectable):

- positive stats, ``stat_ttl`` seconds;
- failed lookups (negative entries), ``negative_ttl``;
- directory listings (`Listing`), ``list_ttl``. A listing also answers
  ``stat`` for every child (``ls -l`` costs one paged listing, not one request
  per file) and is authoritative for names it lacks;
- list-after: a lookup that misses in a directory with no listing is a HEAD;
  the ``list_after``-th such miss in one directory lists it instead (one LIST
  answers every later lookup there, as rclone's directory cache does; a
  directory probed once, such as one of millions of keys, is never listed
  for it). Concurrent lookups in one directory share one LIST.

While the store is down, `stale_lookup` and `stale_listing` answer from
whatever is cached, however old (stale-if-error; the namespace decides when).
The mount's own writes update the entry and its parent's listing in place
(`note_object`, `note_gone`). `save_snapshot` / `load_snapshot` keep the
listings across a remount as a Parquet file. The cache sends no request
itself: the listing a lookup needs comes from the ``listdir`` it is given.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pyarrow as pa
import trio

from ...safefiles import check_trusted, write_atomic
from ..capacity import Stat
from .options import Attributes, ObjectStoreOptions
from .store import err, short, show, split, under

# 2: mode, uid, gid, xattr (stored attributes; 0 mode: not read). 3: modified_ns, the
# store's time that names a file's version where the mtime shown is a stored one.
_SNAPSHOT_FORMAT = b"3"
_OLDER_FORMATS = (b"2",)  # still read

Lister = Callable[[bytes], Awaitable[object]]


class Listing:
    """One cached directory listing: child name -> Stat, with its two deadlines."""

    __slots__ = ("entries", "list_expires", "stat_expires")

    def __init__(self, entries: dict[bytes, Stat], list_expires: float, stat_expires: float) -> None:
        self.entries = entries
        self.list_expires = list_expires  # until then, a name it lacks does not exist
        self.stat_expires = stat_expires  # until then, its Stats answer stat()


class MetaCache:
    """TTL caches of stats, negative lookups and listings of one store root."""

    def __init__(
        self,
        opts: ObjectStoreOptions,
        attrs: Attributes,
        *,
        root: str,
        clock: Callable[[], float],
        requests: collections.Counter[str],
        limiter: trio.CapacityLimiter,
    ) -> None:
        """``requests`` counts lookups that listed ("lookup_lists"); ``limiter``
        bounds the threads snapshot files are read and written in; ``root`` is
        the source a snapshot belongs to."""
        self._opts = opts
        self._attrs = attrs
        self._root = root
        self._clock = clock
        self._requests = requests
        self._limiter = limiter
        self._stats: dict[bytes, tuple[float, Stat]] = {}
        self._negative: dict[bytes, float] = {}
        # Lookups that missed per unlisted directory, and listings in flight
        # (concurrent lookups in one directory share one LIST).
        self._misses: dict[bytes, int] = {}
        self._listing: dict[bytes, trio.Event] = {}
        self._sweep_at = 4096
        self._lists: dict[bytes, Listing] = {}
        #: Bumped by every change to the listings (what a snapshot holds).
        self.generation = 0

    # -- lookups -----------------------------------------------------------
    async def lookup(self, path: bytes, listdir: Lister) -> Stat | None:
        """``path``'s cached Stat, or None when only the store can tell.

        Raises `FileNotFoundError` for a fresh negative entry or a name a fresh
        listing lacks. May list the parent through ``listdir`` (list-after).
        """
        now = self._clock()
        hit = self._stats.get(path)
        if hit is not None and hit[0] > now:
            return hit[1]
        neg = self._negative.get(path)
        if neg is not None and neg > now:
            raise err(errno.ENOENT, f"{show(path)}: no such object")
        own = self._lists.get(path)
        if own is not None and own.stat_expires > now:
            # Its own listing is known (e.g. from a snapshot whose parent was
            # never listed): only a directory has one.
            return self._attrs.dir(0, known=False)
        parent, name = split(path)
        listing = self._lists.get(parent)
        if listing is None or listing.list_expires <= now:
            listing = await self._list_for_lookup(parent, listdir)
        if listing is not None and listing.list_expires > now:
            st = listing.entries.get(name)
            if st is None:
                raise err(errno.ENOENT, f"{show(path)}: no such object")
            if listing.stat_expires > now:
                return st
        return None

    async def _list_for_lookup(self, parent: bytes, listdir: Lister) -> Listing | None:
        """The listing of ``parent`` if this lookup should list it (see the module docstring)."""
        ev = self._listing.get(parent)
        if ev is not None:
            await ev.wait()  # another lookup is listing it
            return self._lists.get(parent)
        if self._opts.list_after <= 0:
            return None
        n = self._misses.get(parent, 0) + 1
        if n < self._opts.list_after:
            if len(self._misses) >= 10_000:
                self._misses.clear()  # bounded; at worst a directory lists later
            self._misses[parent] = n
            return None
        self._misses.pop(parent, None)
        ev = self._listing[parent] = trio.Event()
        try:
            await listdir(parent)
        except OSError:
            return None  # not a directory, or the store failed: the HEAD decides
        finally:
            del self._listing[parent]
            ev.set()
        self._requests["lookup_lists"] += 1
        return self._lists.get(parent)

    def remember(self, path: bytes, st: Stat | None) -> None:
        """What a HEAD of ``path`` answered: ``st``, or None for nothing there."""
        self._sweep()
        if st is None:
            self._negative[path] = self._clock() + self._opts.negative_ttl
        else:
            self._stats[path] = (self._clock() + self._opts.stat_ttl, st)
            # A listing that could not say when this object changed takes the
            # HEAD's answer: both then describe one version (a snapshot keeps it).
            parent, name = split(path)
            listing = self._lists.get(parent)
            old = listing.entries.get(name) if listing is not None else None
            if old is not None and _same_object_better(old, st):
                listing.entries[name] = st  # type: ignore[union-attr]

    def fresh_for(self, path: bytes) -> float:
        """Seconds for which `lookup` will still answer ``path`` from this cache without
        asking the store (0: it would ask now)."""
        now = self._clock()
        hit = self._stats.get(path)
        if hit is not None and hit[0] > now:
            return hit[0] - now
        parent, name = split(path)
        listing = self._lists.get(parent)
        if listing is None or name not in listing.entries:
            return 0.0
        return max(0.0, min(listing.stat_expires, listing.list_expires) - now)

    def _sweep(self) -> None:
        """Drop expired single-object entries once the tables have doubled since the last sweep."""
        size = len(self._stats) + len(self._negative)
        if size < self._sweep_at:
            return
        now = self._clock()
        self._stats = {p: e for p, e in self._stats.items() if e[0] > now}
        self._negative = {p: t for p, t in self._negative.items() if t > now}
        self._sweep_at = max(4096, 2 * (len(self._stats) + len(self._negative)))

    # -- listings ----------------------------------------------------------
    def fresh_listing(self, path: bytes) -> Listing | None:
        """The listing of ``path`` if it is still authoritative."""
        listing = self._lists.get(path)
        if listing is None or listing.list_expires <= self._clock():
            return None
        return listing

    def put_listing(self, path: bytes, entries: dict[bytes, Stat]) -> Listing:
        """Remember a listing just fetched; its children are no longer misses."""
        now = self._clock()
        # Where the listing gives no mtime, keep the one a HEAD or an earlier listing
        # stated for the same object: one object shows one version within a mount.
        # (Also from a listing kept for outages only: one object, one version across
        # mounts, as with a configured snapshot.)
        old = self._lists.get(path)
        if self._attrs.stored:
            # A listing carries no user metadata: keep the attributes a HEAD read within
            # stat_ttl for the same object (same kind, same size).
            for name, st in entries.items():
                hit = None if st.attrs_known else self._stats.get(path + b"/" + name if path else name)
                if hit is not None and hit[0] > now and hit[1].attrs_known \
                        and hit[1].is_dir == st.is_dir and (st.is_dir or hit[1].st_size == st.st_size):
                    entries[name] = hit[1]
        for name, st in entries.items():
            if st.mtime_known or not st.is_reg:
                continue
            hit = self._stats.get(path + b"/" + name if path else name)
            known = hit[1] if hit is not None else \
                old.entries.get(name) if old is not None else None
            if known is not None and _same_object_better(st, known):
                entries[name] = known
        listing = Listing(entries, now + self._opts.list_ttl, now + self._opts.stat_ttl)
        self._lists[path] = listing
        self.generation += 1
        for name in entries:
            self._negative.pop(path + b"/" + name if path else name, None)
        return listing

    def cached_listing(self, path: bytes) -> dict[bytes, Stat] | None:
        """The children of ``path`` if its listing still answers stat()."""
        listing = self._lists.get(path)
        if listing is None or listing.stat_expires <= self._clock():
            return None
        return listing.entries

    # -- stale-if-error ----------------------------------------------------
    def stale_lookup(self, path: bytes) -> Stat | None:
        """What the cache last knew of ``path``, however old (the store is down).

        Raises `FileNotFoundError` where the last listing of the parent lacks
        the name (or a negative entry says so); None where nothing is known.
        """
        hit = self._stats.get(path)
        if hit is not None:
            return hit[1]
        if path in self._lists:
            return self._attrs.dir(0)
        parent, name = split(path)
        listing = self._lists.get(parent)
        if listing is not None:
            st = listing.entries.get(name)
            if st is None:
                raise err(errno.ENOENT, f"{show(path)}: no such object (last listing)")
            return st
        if path in self._negative:
            raise err(errno.ENOENT, f"{show(path)}: no such object")
        return None

    def stale_listing(self, path: bytes) -> Listing | None:
        """The last listing of ``path``, however old (the store is down)."""
        return self._lists.get(path)

    # -- the mount's own changes -------------------------------------------
    def note_object(self, path: bytes, st: Stat) -> None:
        """``path`` now exists as ``st`` (after the mount's own change)."""
        self._stats[path] = (self._clock() + self._opts.stat_ttl, st)
        self._negative.pop(path, None)
        parent, name = split(path)
        listing = self._lists.get(parent)
        if listing is not None:
            listing.entries[name] = st
            self.generation += 1

    def note_gone(self, path: bytes, *, tree: bool = True) -> None:
        """``path`` (and, if ``tree``, everything below it) no longer exists."""
        self.generation += 1
        self._stats.pop(path, None)
        self._lists.pop(path, None)
        self._negative[path] = self._clock() + self._opts.negative_ttl
        parent, name = split(path)
        listing = self._lists.get(parent)
        if listing is not None:
            listing.entries.pop(name, None)
        if not tree:
            return
        for table in (self._stats, self._negative, self._lists):
            for p in [p for p in table if under(p, path)]:
                del table[p]

    def known_stat(self, path: bytes) -> Stat | None:
        """The last Stat of ``path`` the cache holds, fresh or not, without a request."""
        hit = self._stats.get(path)
        if hit is not None:
            return hit[1]
        parent, name = split(path)
        listing = self._lists.get(parent)
        return listing.entries.get(name) if listing is not None else None

    def drop_stat(self, path: bytes) -> None:
        self._stats.pop(path, None)

    def forget_version(self, path: bytes) -> None:
        """An open of ``path`` found the object changed: forget the ETag it was opened
        with (and its cached Stat), so that the next open asks the store."""
        self._stats.pop(path, None)
        parent, name = split(path)
        listing = self._lists.get(parent)
        old = listing.entries.get(name) if listing is not None else None
        if old is not None and old.etag is not None:
            listing.entries[name] = replace(old, etag=None)  # type: ignore[union-attr]

    def drop_negative(self, path: bytes) -> None:
        self._negative.pop(path, None)

    def known_absent(self, path: bytes) -> bool:
        """Whether the cache knows, without a request, that the store holds no ``path``
        (a fresh negative entry, or a fresh listing of its parent without it)."""
        now = self._clock()
        hit = self._stats.get(path)
        if hit is not None and hit[0] > now:
            return False
        neg = self._negative.get(path)
        if neg is not None and neg > now:
            return True
        parent, name = split(path)
        listing = self._lists.get(parent)
        return listing is not None and listing.list_expires > now and name not in listing.entries

    def drop_file_stat(self, path: bytes) -> None:
        """Forget ``path``'s Stat if it says file (a listing found a prefix there)."""
        hit = self._stats.get(path)
        if hit is not None and not hit[1].is_dir:
            del self._stats[path]

    def invalidate(self, path: bytes | None = None) -> None:
        """Drop cached metadata of ``path`` (and its listing), or all of it."""
        if path is None:
            self._stats.clear()
            self._negative.clear()
            self._lists.clear()
            return
        self._stats.pop(path, None)
        self._negative.pop(path, None)
        self._lists.pop(path, None)

    # -- listing snapshots -------------------------------------------------
    async def save_snapshot(self, path: str | os.PathLike[str]) -> int:
        """Write every cached directory listing to a Parquet file; returns the entries written.

        Rows are ``(dir, name, is_dir, size, mtime_ns, modified_ns, mode, uid, gid,
        xattr)`` (`_write_snapshot`), plus one row with a
        null name per listed directory (so empty directories are kept). The
        file's metadata names the source root; it is written to a temporary
        name, fsynced and renamed into place.
        """
        lists = [(d, list(lst.entries.items())) for d, lst in self._lists.items()]
        return await trio.to_thread.run_sync(_write_snapshot, os.fspath(path), self._root, lists,
                                             limiter=self._limiter)

    async def load_snapshot(self, path: str | os.PathLike[str], *, fresh: bool = True) -> int:
        """Load listings saved by `save_snapshot`, so a remount need not re-list the store.

        Loaded listings count as fresh for ``snapshot_ttl`` seconds from now
        (default: ``list_ttl``, and ``stat_ttl`` for the attributes in them);
        after that they are fetched again as usual. ``fresh=False`` loads them
        already expired: they answer only while the store is down
        (stale-if-error). The mount's own writes update them like any cached
        listing. A snapshot of another source is refused (``EINVAL``); a
        missing file raises `FileNotFoundError`; a symbolic link is not followed
        (``ELOOP``).

        Returns:
            The number of entries loaded.
        """
        tables = await trio.to_thread.run_sync(_read_snapshot, os.fspath(path), self._root,
                                               self._attrs, limiter=self._limiter)
        now = self._clock()
        ttl = self._opts.snapshot_ttl
        list_exp = now + (self._opts.list_ttl if ttl is None else ttl) if fresh else now
        stat_exp = now + (self._opts.stat_ttl if ttl is None else ttl) if fresh else now
        count = 0
        for d, entries in tables.items():
            if d not in self._lists:  # what this mount listed already is newer
                self._lists[d] = Listing(entries, list_exp, stat_exp)
                count += len(entries)
        return count


def _write_snapshot(path: str, root: str, lists: list[tuple[bytes, list[tuple[bytes, Stat]]]]) -> int:
    import pyarrow.parquet as pq

    dirs: list[bytes] = []
    names: list[bytes | None] = []
    is_dir: list[bool] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    modified: list[int] = []
    modes: list[int] = []
    uids: list[int] = []
    gids: list[int] = []
    xattrs: list[str | None] = []
    count = 0
    for d, entries in lists:
        dirs.append(d)
        names.append(None)
        is_dir.append(True)
        sizes.append(0)
        mtimes.append(0)
        modified.append(0)
        modes.append(0)
        uids.append(0)
        gids.append(0)
        xattrs.append(None)
        for name, st in entries:
            dirs.append(d)
            names.append(name)
            is_dir.append(st.is_dir)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns if st.mtime_known else 0)  # 0: not stated
            modified.append(st.version().mtime_ns if st.mtime_known and not st.is_dir else 0)
            modes.append(st.st_mode if st.attrs_known else 0)  # 0: the store was not asked
            uids.append(st.st_uid)
            gids.append(st.st_gid)
            xattrs.append(st.xattr if st.attrs_known else None)
            count += 1
    table = pa.table(
        {
            "dir": pa.array(dirs, pa.binary()),
            "name": pa.array(names, pa.binary()),
            "is_dir": pa.array(is_dir, pa.bool_()),
            "size": pa.array(sizes, pa.int64()),
            "mtime_ns": pa.array(mtimes, pa.int64()),
            "modified_ns": pa.array(modified, pa.int64()),
            "mode": pa.array(modes, pa.int64()),
            "uid": pa.array(uids, pa.int64()),
            "gid": pa.array(gids, pa.int64()),
            "xattr": pa.array(xattrs, pa.string()),
        }
    ).replace_schema_metadata({b"tierfs.snapshot": _SNAPSHOT_FORMAT, b"tierfs.root": root.encode()})
    # A private temporary file of a random name beside the snapshot, renamed over it:
    # a symlink planted at a predictable name cannot redirect the write.
    write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))
    return count


def _read_snapshot(path: str, root: str, attrs: Attributes) -> dict[bytes, dict[bytes, Stat]]:
    import pyarrow.parquet as pq

    # Never through a symbolic link (ELOOP), and, since listings from a file someone else
    # could have written would show a tree the store does not hold, only the user's own,
    # unshared file is read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise err(errno.ENOENT, f"listing snapshot {path} does not exist") from None
    except OSError as exc:
        raise err(exc.errno or errno.EIO, f"listing snapshot {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        check_trusted(f.fileno(), path, "listing snapshot")
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            raise err(errno.EINVAL, f"{path}: not a tierfs listing snapshot: {short(exc)}") from None
    meta = table.schema.metadata or {}
    fmt = meta.get(b"tierfs.snapshot")
    if fmt != _SNAPSHOT_FORMAT and fmt not in _OLDER_FORMATS:
        raise err(errno.EINVAL, f"{path}: not a tierfs listing snapshot (format {meta.get(b'tierfs.snapshot')!r})")
    saved_root = meta.get(b"tierfs.root", b"").decode()
    if saved_root != root:
        raise err(errno.EINVAL, f"{path}: snapshot of '{saved_root}', not of '{root}'")
    out: dict[bytes, dict[bytes, Stat]] = {}
    cols = [table.column(c).to_pylist()
            for c in ("dir", "name", "is_dir", "size", "mtime_ns", "mode", "uid", "gid", "xattr")]
    # Format 2 kept only the mtime shown, which an older tierfs also took as the version
    # (and tied fast-tier entries to): kept as it was, until the store states the version.
    cols.append(table.column("modified_ns").to_pylist() if fmt == _SNAPSHOT_FORMAT
                else [None] * table.num_rows)
    for d, name, isdir, size, mtime, mode, uid, gid, xattr, modified in zip(*cols):
        entries = out.setdefault(d, {})
        if name is not None:
            if isdir:
                st = attrs.dir(mtime, known=False)
            else:
                stamp = mtime if modified is None else modified
                st = attrs.file(size, stamp or attrs.started_ns, known=False)
                st.mtime_known = bool(stamp)
            if mode:  # the attributes the store holds, as a HEAD read them
                st = attrs.with_owner(st, mode, uid, gid)
                st.st_mtime_ns = st.st_atime_ns = st.st_ctime_ns = mtime or st.st_mtime_ns
                st.xattr = xattr
                if modified is None and not isdir:
                    st.modified_ns = st.st_mtime_ns
            entries[name] = st
    return out


def _same_object_better(old: Stat, new: Stat) -> bool:
    """``new`` describes the object ``old`` described (a file of the same size), and
    states the mtime ``old`` could not."""
    return (old.is_reg and new.is_reg and not old.mtime_known and new.mtime_known
            and old.st_size == new.st_size)
