"""Inode numbers, the names behind them, and the kernel's lookup counts.

The kernel knows files by inode number; the capacity tier knows them by path.
This module owns the mapping. Each `Inode` keeps the set of (parent inode, name)
locations it is known under (several for hard links), so a path can be rebuilt
by walking parents to the root, and renames or unlinks through the mount move or
drop one location without touching the rest of the tree.

Inode numbers are handed out from a counter and never reused during a mount, so
the FUSE generation number can stay 0. On tiers that have stable object
identities (``st_dev``, ``st_ino`` of a local file), two names of one object map
to one inode, which is what makes hard links show one inode and one link count.

Lookup counts follow the kernel's protocol: +1 for every entry handed out by
lookup, create, mknod, mkdir, symlink, link and readdirplus; -n in forget. An
inode leaves the table when its count reaches zero and no handle is open on it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable

import pyfuse3

ROOT = pyfuse3.ROOT_INODE

Location = tuple[int, bytes]


def identity_of(dev: int, ino: int) -> int:
    """One int for a source object's (st_dev, st_ino): smaller than the tuple, and a
    million inodes keep one each (issue 14's memory budget is 500 bytes per inode)."""
    return dev << 64 | ino


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    is_dir: bool
    identity: int | None = None
    #: The name `path` uses (None: no name left), and any further ones (hard links):
    #: nearly every inode has one name, so no list is kept for it.
    loc: Location | None = None
    more: list[Location] | None = None
    lookups: int = 0
    open_handles: int = 0
    #: The size the kernel was last told (an entry or attributes); -1: none yet.
    told_size: int = -1

    @property
    def locations(self) -> list[Location]:
        """Every known name, the one `path` uses first."""
        if self.loc is None:
            return []
        return [self.loc, *self.more] if self.more else [self.loc]

    def put_first(self, loc: Location) -> None:
        """Make ``loc`` the name `path` uses (adding it if new)."""
        if self.loc is None and self.more is None:  # a new inode: the common case
            self.loc = loc
            return
        if self.loc == loc:
            return
        rest = [x for x in self.locations if x != loc]
        self.loc, self.more = loc, rest or None

    def drop(self, loc: Location) -> None:
        """Forget the name ``loc`` (nothing if it is not one)."""
        if self.loc == loc:
            self.loc = self.more.pop(0) if self.more else None
        elif self.more and loc in self.more:
            self.more.remove(loc)
        if not self.more:
            self.more = None


class InodeTable:
    """The inode <-> path map of one mount. Not thread-safe: trio-only."""

    def __init__(self, *, use_identity: bool,
                 on_free: Callable[[int], None] | None = None) -> None:
        self._use_identity = use_identity
        # Told of every inode number that goes, whichever of forget, release, unlink or
        # rename let it go: the engine's per-inode state must go with it.
        self._on_free = on_free
        self._next = ROOT + 1
        root = Inode(ROOT, True, lookups=1)
        self._inodes: dict[int, Inode] = {ROOT: root}
        self._by_loc: dict[Location, int] = {}
        self._by_identity: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._inodes)

    def __contains__(self, ino: int) -> bool:
        return ino in self._inodes

    def get(self, ino: int) -> Inode:
        try:
            return self._inodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, f"unknown inode {ino}") from None

    def told(self, ino: int, size: int) -> int:
        """Note that the kernel was told ``ino`` is ``size`` bytes; returns the size it
        was told before (-1: none, or an inode this table does not hold)."""
        node = self._inodes.get(ino)
        if node is None:
            return -1
        before, node.told_size = node.told_size, size
        return before

    def path(self, ino: int) -> bytes:
        """The tier path of ``ino`` through its first known location."""
        if ino not in self._inodes:
            raise OSError(errno.ESTALE, f"unknown inode {ino}")
        parts: list[bytes] = []
        seen = 0
        while ino != ROOT:
            node = self._inodes.get(ino)
            if node is None or node.loc is None:
                raise OSError(errno.ENOENT, "the file has no name left")
            parent, name = node.loc
            parts.append(name)
            ino = parent
            seen += 1
            if seen > 100_000:  # a cycle would be a bug; fail the request, not the daemon
                raise OSError(errno.ELOOP, "inode tree cycle")
        parts.reverse()
        return b"/".join(parts)

    def child_path(self, parent: int, name: bytes) -> bytes:
        head = self.path(parent)
        return name if not head else head + b"/" + name

    def find(self, parent: int, name: bytes) -> int | None:
        return self._by_loc.get((parent, name))

    def files_at(self, path: bytes) -> list[int]:
        """The non-directory inodes the kernel knows at or below ``path`` (b"" is the root).

        For dropping the kernel's pages of what a command changed (``tierfs evict``): one
        walk of the table, so not for a request's hot path.
        """
        ino: int | None = ROOT
        for name in (path.split(b"/") if path else ()):
            ino = self._by_loc.get((ino, name)) if ino is not None else None
        node = self._inodes.get(ino) if ino is not None else None
        if node is None:
            return []
        if not node.is_dir:
            return [node.ino]
        children: dict[int, list[int]] = {}
        for (parent, _name), child in self._by_loc.items():
            children.setdefault(parent, []).append(child)
        out: list[int] = []
        stack = [node.ino]
        seen = {node.ino}
        while stack:
            for child in children.get(stack.pop(), ()):
                if child in seen:
                    continue
                seen.add(child)
                cnode = self._inodes.get(child)
                if cnode is None:
                    continue
                if cnode.is_dir:
                    stack.append(child)
                else:
                    out.append(child)
        return out

    def remember(self, parent: int, name: bytes, *, is_dir: bool,
                 identity: int | None, count: int = 1) -> Inode:
        """The inode for ``parent/name``, created if new; adds ``count`` lookups."""
        loc = (parent, name)
        ino = self._by_loc.get(loc)
        node = self._inodes.get(ino) if ino is not None else None
        if node is not None and self._use_identity and identity is not None \
                and node.identity != identity:
            # Replaced behind our back: the name now means another object.
            self._drop_location(node, loc)
            if node.loc is None:
                self._orphan(node)
            node = None
        if node is None and self._use_identity and identity is not None:
            ino = self._by_identity.get(identity)
            node = self._inodes.get(ino) if ino is not None else None
            if node is not None and node.is_dir != is_dir:
                node = None
        if node is None:
            node = Inode(self._next, is_dir, identity if self._use_identity else None)
            self._next += 1
            self._inodes[node.ino] = node
            if node.identity is not None:
                self._by_identity[node.identity] = node.ino
        if loc not in self._by_loc or self._by_loc[loc] != node.ino:
            self._by_loc[loc] = node.ino
        # A lookup just proved this name: it goes first, so `path` uses it. Another
        # known name may be gone behind our back (deleted, its inode number reused
        # by the file found here).
        node.put_first(loc)
        node.lookups += count
        return node

    def _drop_location(self, node: Inode, loc: Location) -> None:
        if self._by_loc.get(loc) == node.ino:
            del self._by_loc[loc]
        node.drop(loc)

    def _orphan(self, node: Inode) -> None:
        """``node`` has no name left: stop finding it by its identity.

        The source may hand the number of a removed file to the next file it
        creates (ext4 does so at once) while the kernel still holds the old
        inode; that file must get an inode of its own. The price: if a hard
        link we never looked up survives, it gets a new inode number too.
        """
        if node.identity is not None and self._by_identity.get(node.identity) == node.ino:
            del self._by_identity[node.identity]

    def unlinked(self, parent: int, name: bytes) -> Inode | None:
        """Drop the location ``parent/name``; returns the inode that had it."""
        ino = self._by_loc.get((parent, name))
        if ino is None:
            return None
        node = self._inodes[ino]
        self._drop_location(node, (parent, name))
        if node.loc is None:
            self._orphan(node)
        self._maybe_free(node)
        return node

    def renamed(self, parent_old: int, old: bytes, parent_new: int, new: bytes,
                *, exchange: bool = False) -> None:
        """Move a location after the tier renamed ``old`` to ``new``."""
        src = self._by_loc.get((parent_old, old))
        dst = self._by_loc.get((parent_new, new))
        src_node = self._inodes.get(src) if src is not None else None
        dst_node = self._inodes.get(dst) if dst is not None else None
        if src_node is not None:
            self._drop_location(src_node, (parent_old, old))
        if dst_node is not None:
            self._drop_location(dst_node, (parent_new, new))
        if src_node is not None:
            self._by_loc[(parent_new, new)] = src_node.ino
            src_node.put_first((parent_new, new))
        if exchange and dst_node is not None:
            self._by_loc[(parent_old, old)] = dst_node.ino
            dst_node.put_first((parent_old, old))
        elif dst_node is not None:
            if dst_node.loc is None:
                self._orphan(dst_node)
            self._maybe_free(dst_node)

    def forget(self, ino: int, count: int) -> None:
        node = self._inodes.get(ino)
        if node is None or ino == ROOT:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_free(node)

    def opened(self, ino: int) -> Inode:
        node = self.get(ino)
        node.open_handles += 1
        return node

    def closed(self, ino: int) -> None:
        node = self._inodes.get(ino)
        if node is None:
            return
        node.open_handles -= 1
        self._maybe_free(node)

    def _maybe_free(self, node: Inode) -> None:
        if node.lookups > 0 or node.open_handles > 0 or node.ino == ROOT:
            return
        for loc in node.locations:
            if self._by_loc.get(loc) == node.ino:
                del self._by_loc[loc]
        node.loc = node.more = None
        if node.identity is not None and self._by_identity.get(node.identity) == node.ino:
            del self._by_identity[node.identity]
        del self._inodes[node.ino]
        if self._on_free is not None:
            self._on_free(node.ino)
