"""Namespace operations through a mount: lookup/forget, mkdir, rmdir, unlink,
symlink/readlink, mknod, rename (with flags), link, and their errors.

Where it makes sense each case runs on a plain directory too and the two
outcomes must match, errno for errno.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from typing import Any, Callable

import pytest
from posix_util import (  # noqa: F401  (own*, plain, pair, shared_mount are fixtures)
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    OwnMounts,
    err,
    Pair,
    outcome,
    own,
    own_mounts,
    pair,
    plain,
    renameat2,
    same_on_both,
    shared_mount,
)

from fusefs.control import call

LONG = "n" * 256  # one byte past NAME_MAX


def _tree(root: str) -> None:
    """The starting tree of the error table."""
    os.mkdir(f"{root}/d")
    os.mkdir(f"{root}/empty")
    with open(f"{root}/d/f", "wb") as f:
        f.write(b"x")
    with open(f"{root}/f", "wb") as f:
        f.write(b"top")
    os.symlink("f", f"{root}/sl")
    os.symlink("missing", f"{root}/dangling")
    os.symlink("loop", f"{root}/loop")


ERROR_CASES: dict[str, Callable[[str], Any]] = {
    # lookup
    "stat missing": lambda r: os.stat(f"{r}/nope"),
    "stat through file": lambda r: os.stat(f"{r}/f/x"),
    "stat dangling": lambda r: os.stat(f"{r}/dangling"),
    "lstat dangling": lambda r: stat.S_IFMT(os.lstat(f"{r}/dangling").st_mode),
    "stat loop": lambda r: os.stat(f"{r}/loop"),
    "stat long name": lambda r: os.stat(f"{r}/{LONG}"),
    # mkdir
    "mkdir exists dir": lambda r: os.mkdir(f"{r}/d"),
    "mkdir exists file": lambda r: os.mkdir(f"{r}/f"),
    "mkdir exists symlink": lambda r: os.mkdir(f"{r}/dangling"),
    "mkdir missing parent": lambda r: os.mkdir(f"{r}/nope/x"),
    "mkdir under file": lambda r: os.mkdir(f"{r}/f/x"),
    "mkdir long name": lambda r: os.mkdir(f"{r}/{LONG}"),
    # rmdir
    "rmdir not empty": lambda r: os.rmdir(f"{r}/d"),
    "rmdir file": lambda r: os.rmdir(f"{r}/f"),
    "rmdir symlink": lambda r: os.rmdir(f"{r}/sl"),
    "rmdir missing": lambda r: os.rmdir(f"{r}/nope"),
    "rmdir dot": lambda r: os.rmdir(f"{r}/empty/."),
    "rmdir dotdot": lambda r: os.rmdir(f"{r}/d/.."),
    "rmdir empty": lambda r: (os.rmdir(f"{r}/empty"), os.path.lexists(f"{r}/empty"))[1],
    # unlink
    "unlink dir": lambda r: os.unlink(f"{r}/d"),
    "unlink missing": lambda r: os.unlink(f"{r}/nope"),
    "unlink through file": lambda r: os.unlink(f"{r}/f/x"),
    "unlink symlink": lambda r: (os.unlink(f"{r}/sl"), os.path.exists(f"{r}/f"))[1],
    "unlink long name": lambda r: os.unlink(f"{r}/{LONG}"),
    # symlink / readlink
    "symlink exists": lambda r: os.symlink("x", f"{r}/f"),
    "symlink missing parent": lambda r: os.symlink("x", f"{r}/nope/l"),
    "symlink long name": lambda r: os.symlink("x", f"{r}/{LONG}"),
    "symlink long target": lambda r: os.symlink("t" * 4096, f"{r}/l"),
    "readlink file": lambda r: os.readlink(f"{r}/f"),
    "readlink dir": lambda r: os.readlink(f"{r}/d"),
    "readlink missing": lambda r: os.readlink(f"{r}/nope"),
    "readlink dangling": lambda r: os.readlink(f"{r}/dangling"),
    # mknod
    "mkfifo exists": lambda r: os.mkfifo(f"{r}/f"),
    "mkfifo missing parent": lambda r: os.mkfifo(f"{r}/nope/p"),
    "mknod bad type": lambda r: os.mknod(f"{r}/x", 0o170644),
    # open
    "open missing": lambda r: os.open(f"{r}/nope", os.O_RDONLY),
    "open dir for writing": lambda r: os.open(f"{r}/d", os.O_WRONLY),
    "open excl exists": lambda r: os.open(f"{r}/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
    "open excl symlink": lambda r: os.open(f"{r}/dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
    "open nofollow symlink": lambda r: os.open(f"{r}/sl", os.O_RDONLY | os.O_NOFOLLOW),
    "open directory flag on file": lambda r: os.open(f"{r}/f", os.O_RDONLY | os.O_DIRECTORY),
    "open creat long name": lambda r: os.open(f"{r}/{LONG}", os.O_CREAT | os.O_WRONLY),
    "open creat trailing slash": lambda r: os.open(f"{r}/new/", os.O_CREAT | os.O_WRONLY),
    "truncate dir": lambda r: os.truncate(f"{r}/d", 0),
    "truncate negative": lambda r: os.truncate(f"{r}/f", -1),
    # rename
    "rename missing": lambda r: os.rename(f"{r}/nope", f"{r}/x"),
    "rename into missing dir": lambda r: os.rename(f"{r}/f", f"{r}/nope/x"),
    "rename file over dir": lambda r: os.rename(f"{r}/f", f"{r}/empty"),
    "rename dir over file": lambda r: os.rename(f"{r}/empty", f"{r}/f"),
    "rename dir over nonempty": lambda r: os.rename(f"{r}/empty", f"{r}/d"),
    "rename dir into itself": lambda r: os.rename(f"{r}/d", f"{r}/d/sub"),
    "rename to long name": lambda r: os.rename(f"{r}/f", f"{r}/{LONG}"),
    "rename dir over empty": lambda r: (os.rename(f"{r}/d", f"{r}/empty"),
                                        os.listdir(f"{r}/empty"))[1],
    "rename file over file": lambda r: (os.rename(f"{r}/d/f", f"{r}/f"),
                                        open(f"{r}/f", "rb").read())[1],
    "rename file over itself": lambda r: (os.rename(f"{r}/f", f"{r}/f"),
                                          open(f"{r}/f", "rb").read())[1],
    "rename file to trailing slash": lambda r: os.rename(f"{r}/f", f"{r}/g/"),
    "rename noreplace exists": lambda r: renameat2(f"{r}/d/f", f"{r}/f", RENAME_NOREPLACE),
    "rename noreplace": lambda r: (renameat2(f"{r}/d/f", f"{r}/g", RENAME_NOREPLACE),
                                   sorted(os.listdir(r)), os.listdir(f"{r}/d")),
    "rename exchange missing": lambda r: renameat2(f"{r}/f", f"{r}/nope", RENAME_EXCHANGE),
    "rename exchange both flags": lambda r: renameat2(f"{r}/f", f"{r}/d/f",
                                                      RENAME_EXCHANGE | RENAME_NOREPLACE),
    "rename exchange dir and file": lambda r: (
        renameat2(f"{r}/d", f"{r}/f", RENAME_EXCHANGE),
        open(f"{r}/d", "rb").read(), os.listdir(f"{r}/f"),
        open(f"{r}/f/f", "rb").read()),
    # link
    "link dir": lambda r: os.link(f"{r}/d", f"{r}/d2"),
    "link exists": lambda r: os.link(f"{r}/f", f"{r}/d/f"),
    "link missing": lambda r: os.link(f"{r}/nope", f"{r}/x"),
    "link into missing dir": lambda r: os.link(f"{r}/f", f"{r}/nope/x"),
    "link long name": lambda r: os.link(f"{r}/f", f"{r}/{LONG}"),
    "link symlink": lambda r: (os.link(f"{r}/sl", f"{r}/sl2", follow_symlinks=False),
                               os.readlink(f"{r}/sl2"), os.lstat(f"{r}/sl").st_nlink)[1:],
    # xattr on missing
    "getxattr missing": lambda r: os.getxattr(f"{r}/nope", "user.x"),
}

# The errno Linux gives each failing case (on ext4/tmpfs, as root); a case not listed
# here must succeed. Identical failures on both sides agree only if listed.
EXPECTED_ERRNO: dict[str, str] = {
    "stat missing": "ENOENT",
    "stat through file": "ENOTDIR",
    "stat dangling": "ENOENT",
    "stat loop": "ELOOP",
    "stat long name": "ENAMETOOLONG",
    "mkdir exists dir": "EEXIST",
    "mkdir exists file": "EEXIST",
    "mkdir exists symlink": "EEXIST",
    "mkdir missing parent": "ENOENT",
    "mkdir under file": "ENOTDIR",
    "mkdir long name": "ENAMETOOLONG",
    "rmdir not empty": "ENOTEMPTY",
    "rmdir file": "ENOTDIR",
    "rmdir symlink": "ENOTDIR",
    "rmdir missing": "ENOENT",
    "rmdir dot": "EINVAL",
    "rmdir dotdot": "ENOTEMPTY",
    "unlink dir": "EISDIR",
    "unlink missing": "ENOENT",
    "unlink through file": "ENOTDIR",
    "unlink long name": "ENAMETOOLONG",
    "symlink exists": "EEXIST",
    "symlink missing parent": "ENOENT",
    "symlink long name": "ENAMETOOLONG",
    "symlink long target": "ENAMETOOLONG",
    "readlink file": "EINVAL",
    "readlink dir": "EINVAL",
    "readlink missing": "ENOENT",
    "mkfifo exists": "EEXIST",
    "mkfifo missing parent": "ENOENT",
    "mknod bad type": "EINVAL",
    "open missing": "ENOENT",
    "open dir for writing": "EISDIR",
    "open excl exists": "EEXIST",
    "open excl symlink": "EEXIST",
    "open nofollow symlink": "ELOOP",
    "open directory flag on file": "ENOTDIR",
    "open creat long name": "ENAMETOOLONG",
    "open creat trailing slash": "EISDIR",
    "truncate dir": "EISDIR",
    "truncate negative": "EINVAL",
    "rename missing": "ENOENT",
    "rename into missing dir": "ENOENT",
    "rename file over dir": "EISDIR",
    "rename dir over file": "ENOTDIR",
    "rename dir over nonempty": "ENOTEMPTY",
    "rename dir into itself": "EINVAL",
    "rename to long name": "ENAMETOOLONG",
    "rename file to trailing slash": "ENOTDIR",
    "rename noreplace exists": "EEXIST",
    "rename exchange missing": "ENOENT",
    "rename exchange both flags": "EINVAL",
    "link dir": "EPERM",
    "link exists": "EEXIST",
    "link missing": "ENOENT",
    "link into missing dir": "ENOENT",
    "link long name": "ENAMETOOLONG",
    "getxattr missing": "ENOENT",
}


# Cases a plain directory performs and an S3 source refuses: the documented limit
# (`posix_util.S3_LIMITS`) each meets.
S3_REFUSED: dict[str, tuple[str, str]] = {
    "rename exchange dir and file": ("rename exchange", "EINVAL"),
    "link symlink": ("link", "EPERM"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_same_outcome_as_plain_directory(case: str, pair: Pair) -> None:
    _tree(pair.plain)
    _tree(pair.mnt)
    if pair.kind == "s3" and case in S3_REFUSED:
        assert outcome(ERROR_CASES[case], pair.mnt) == pair.limit(*S3_REFUSED[case])
        # refused before anything changed: the tree is the one it started with
        assert _snapshot(pair.mnt, dir_sizes=False) == _snapshot(pair.plain, dir_sizes=False)
        return
    want = EXPECTED_ERRNO.get(case)
    got = same_on_both(pair.plain, pair.mnt, ERROR_CASES[case], fails=want or ())
    assert want is None or got == want
    # The tree left behind is the same too, seen through the mount and in the source.
    if pair.kind == "local":
        assert _snapshot(pair.mnt) == _snapshot(pair.plain) == _snapshot(pair.src)
        return
    # S3: a directory's size is the file system's own (0 through the mount); in the
    # bucket, symlinks are objects holding the target, and a directory is a prefix
    # (an empty one is in this mount only): the objects must be the plain tree's files.
    tree = _snapshot(pair.plain, dir_sizes=False)
    assert _snapshot(pair.mnt, dir_sizes=False) == tree
    assert _objects(_snapshot(pair.src)) == _objects(tree)


def _snapshot(root: str, dir_sizes: bool = True) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            size = st.st_size if dir_sizes or kind != stat.S_IFDIR else 0
            out.append((os.path.relpath(p, root), kind, size))
    return sorted(out)


def _objects(snapshot: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
    """The objects an S3 bucket holds for a tree: its files and symlinks (the link's
    size is its target's length), by name."""
    return [(name, size) for name, kind, size in snapshot if kind != stat.S_IFDIR]


def test_errors_on_the_mount_root(pair: Pair) -> None:
    mnt = os.path.dirname(pair.mnt)  # the shared mount's root
    assert err(os.rmdir, mnt) in ("EBUSY", "EINVAL")
    assert err(os.unlink, mnt) in ("EISDIR", "EBUSY")
    d = pair.mnt  # a directory right below the root
    assert err(os.rename, d, f"{d}/x") == "EINVAL"
    # the mount point itself belongs to the parent file system
    assert err(os.rename, mnt, f"{d}/x") == "EXDEV"


# -- lookup and forget ---------------------------------------------------------------


def test_lookup_sees_source_changes_and_keeps_inode_numbers(pair: Pair) -> None:
    src, mnt = pair.src, pair.mnt
    # Another client's new file (on S3: an object put in the bucket), never looked up.
    with open(f"{src}/a", "wb") as f:
        f.write(b"abc")
    st1 = os.stat(f"{mnt}/a")
    st2 = os.stat(f"{mnt}/a")
    assert st1.st_ino == st2.st_ino and st1.st_size == 3
    assert os.stat(os.path.dirname(mnt)).st_ino == 1  # FUSE's root inode
    os.mkdir(f"{mnt}/dir")
    assert os.stat(f"{mnt}/dir").st_ino != st1.st_ino
    assert os.path.samestat(os.stat(f"{mnt}/dir/.."), os.stat(mnt))


def _inodes(mountpoint: str) -> int:
    return int(call(mountpoint, "stats")["stats"]["mount"]["inodes"])


def test_forget_empties_the_inode_table(own: Pair) -> None:
    mnt = own.mnt
    os.mkdir(f"{mnt}/d")
    for i in range(300):
        with open(f"{mnt}/d/{i}", "wb"):
            pass
    for i in range(300):
        os.stat(f"{mnt}/d/{i}")
    assert _inodes(mnt) >= 300
    # Dropping the kernel's dentry and inode caches makes it send FORGETs; they
    # arrive asynchronously, so wait for the count (not for a fixed time).
    deadline = time.monotonic() + 60
    while _inodes(mnt) > 10:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        assert time.monotonic() < deadline, f"{_inodes(mnt)} inodes still known"
        os.stat(mnt)
    # Forgotten inodes come back with their data when looked up again.
    assert sorted(os.listdir(f"{mnt}/d"), key=int) == [str(i) for i in range(300)]
    assert os.stat(f"{mnt}/d/7").st_size == 0


# -- mkdir, mknod, symlink -------------------------------------------------------------


def test_mkdir_mode_and_attributes(pair: Pair) -> None:
    plain, mnt = pair.plain, pair.mnt
    old = os.umask(0o022)
    try:
        for root in (plain, mnt):
            os.mkdir(f"{root}/a", 0o777)
            os.mkdir(f"{root}/b", 0o1750)
            os.mkdir(f"{root}/a/c")
    finally:
        os.umask(old)
    for name in ("a", "b", "a/c"):
        p, m = os.stat(f"{plain}/{name}"), os.stat(f"{mnt}/{name}")
        assert (m.st_mode, m.st_uid, m.st_gid) == (p.st_mode, p.st_uid, p.st_gid), name
    assert os.stat(f"{mnt}/a").st_nlink == os.stat(f"{plain}/a").st_nlink == 3


def test_mknod_fifo_and_socket(pair: Pair) -> None:
    mnt = pair.mnt
    made = err(os.mkfifo, f"{mnt}/p", 0o640)
    assert made == pair.limit("mknod fifo", "EPERM")
    if made is None:
        st = os.stat(f"{mnt}/p")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert stat.S_ISFIFO(os.stat(f"{pair.src}/p").st_mode)
        # The pipe itself lives in the kernel: data flows without touching the daemon.
        r = os.open(f"{mnt}/p", os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(f"{mnt}/p", os.O_WRONLY)
        try:
            os.write(w, b"through the fifo")
            assert os.read(r, 100) == b"through the fifo"
        finally:
            os.close(w)
            os.close(r)
    made_s = err(os.mknod, f"{mnt}/s", stat.S_IFSOCK | 0o600)
    assert made_s == pair.limit("mknod socket", "EPERM")
    if made_s is None:
        assert stat.S_ISSOCK(os.lstat(f"{mnt}/s").st_mode)
    os.mknod(f"{mnt}/r", stat.S_IFREG | 0o644)
    assert stat.S_ISREG(os.lstat(f"{mnt}/r").st_mode)
    # a refused node left nothing behind, in the mount or in the source
    names = pair.limit("mknod fifo", ["r"], ["p", "r", "s"])
    assert sorted(os.listdir(mnt)) == names == sorted(os.listdir(pair.src))
    if made is None:
        os.unlink(f"{mnt}/p")
        assert not os.path.lexists(f"{pair.src}/p")


def test_mknod_device_node(pair: Pair) -> None:
    made = err(os.mknod, f"{pair.mnt}/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert made == pair.limit("mknod device", "EPERM")
    if made is None:
        st = os.lstat(f"{pair.mnt}/null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert os.lstat(f"{pair.src}/null").st_rdev == os.makedev(1, 3)
    else:
        assert os.listdir(pair.mnt) == [] == os.listdir(pair.src)


def test_symlink_and_readlink(pair: Pair) -> None:
    mnt = pair.mnt
    targets = ["plain", "../up/and/over", "/absolute/path", "with space", "ünïcode",
               "x" * 1000]
    for i, t in enumerate(targets):
        os.symlink(t, f"{mnt}/l{i}")
        assert os.readlink(f"{mnt}/l{i}") == t
        st = os.lstat(f"{mnt}/l{i}")
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(t.encode())
    for i, t in enumerate(targets):
        # in the source: a symlink; on S3 an object holding the target, its mode S_IFLNK
        stored = pair.stored(f"l{i}")
        assert stat.S_ISLNK(stored.st_mode)
        if pair.kind == "local":
            assert os.readlink(f"{pair.src}/l{i}") == t
        else:
            assert open(f"{pair.src}/l{i}", "rb").read() == t.encode()
    # Relative symlinks resolve inside the mount; absolute ones do not escape to src.
    with open(f"{mnt}/target", "wb") as f:
        f.write(b"T")
    os.symlink("target", f"{mnt}/rel")
    assert open(f"{mnt}/rel", "rb").read() == b"T"
    os.mkdir(f"{mnt}/sub")
    os.symlink("../target", f"{mnt}/sub/up")
    assert open(f"{mnt}/sub/up", "rb").read() == b"T"
    os.symlink(bytes(range(1, 256)).replace(b"/", b""), f"{mnt}/binary".encode())
    assert os.readlink(f"{mnt}/binary".encode()) == bytes(range(1, 256)).replace(b"/", b"")


def test_symlink_ownership_change_without_follow(pair: Pair) -> None:
    mnt = pair.mnt
    with open(f"{mnt}/t", "wb"):
        pass
    os.symlink("t", f"{mnt}/l")
    os.chown(f"{mnt}/l", 123, 456, follow_symlinks=False)
    assert (os.lstat(f"{mnt}/l").st_uid, os.lstat(f"{mnt}/l").st_gid) == (123, 456)
    assert os.stat(f"{mnt}/t").st_uid == 0
    # and the source holds it so
    assert (pair.stored("l").st_uid, pair.stored("l").st_gid) == (123, 456)
    assert pair.stored("t").st_uid == 0


# -- rename ----------------------------------------------------------------------------


def test_rename_keeps_inode_and_open_descriptors(pair: Pair) -> None:
    mnt = pair.mnt
    os.makedirs(f"{mnt}/a/b")
    with open(f"{mnt}/a/b/f", "wb") as f:
        f.write(b"data")
    ino = os.stat(f"{mnt}/a/b/f").st_ino
    fd = os.open(f"{mnt}/a/b/f", os.O_RDWR)
    try:
        os.rename(f"{mnt}/a", f"{mnt}/z")
        assert os.stat(f"{mnt}/z/b/f").st_ino == ino
        assert not os.path.exists(f"{mnt}/a")
        os.pwrite(fd, b"DATA", 0)
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        if pair.kind == "local":
            # a local source is written in place; on S3 the bytes go up after the last
            # close (write-back), checked below
            assert open(f"{pair.src}/z/b/f", "rb").read() == b"DAT"
        os.rename(f"{mnt}/z/b/f", f"{mnt}/g")
        assert os.pread(fd, 10, 0) == b"DAT"
        assert os.fstat(fd).st_ino == ino == os.stat(f"{mnt}/g").st_ino
        # A new file at the name it was opened under must not be mistaken for it.
        os.makedirs(f"{mnt}/a/b")
        with open(f"{mnt}/a/b/f", "wb") as f:
            f.write(b"other file, longer")
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
        assert os.stat(f"{mnt}/g").st_size == 2
        assert os.stat(f"{mnt}/a/b/f").st_size == len(b"other file, longer")
        os.fchmod(fd, 0o640)
        assert stat.S_IMODE(os.stat(f"{mnt}/g").st_mode) == 0o640
        assert open(f"{mnt}/a/b/f", "rb").read() == b"other file, longer"
    finally:
        os.close(fd)
    assert open(f"{pair.src}/g", "rb").read() == b"DA"
    assert open(f"{pair.src}/a/b/f", "rb").read() == b"other file, longer"
    assert stat.S_IMODE(pair.stored("g").st_mode) == 0o640


def test_rename_keeps_read_only_descriptors(pair: Pair) -> None:
    """A read-only descriptor reads its file on after renames of it and of its
    directories (on S3: of an object in the store, read by ranged GETs of its key)."""
    def go(r: str) -> Any:
        os.mkdir(f"{r}/d")
        with open(f"{r}/d/f", "wb") as f:
            f.write(bytes(range(256)) * 20)
        if r == pair.mnt:
            pair.src  # noqa: B018  (on S3: in the store, no write of it pending)
        fd = os.open(f"{r}/d/f", os.O_RDONLY)
        try:
            os.rename(f"{r}/d/f", f"{r}/g")
            first = os.pread(fd, 4, 0)
            os.rename(f"{r}/d", f"{r}/e")
            os.rename(f"{r}/g", f"{r}/e/h")
            os.rename(f"{r}/e", f"{r}/z")
            return first, os.pread(fd, 4, 4097), os.fstat(fd).st_size, os.listdir(f"{r}/z")
        finally:
            os.close(fd)
    assert same_on_both(pair.plain, pair.mnt, go) == (b"\0\1\2\3", b"\1\2\3\4", 5120, ["h"])


def test_rename_over_open_file(pair: Pair) -> None:
    mnt = pair.mnt
    for n in ("a", "b"):
        with open(f"{mnt}/{n}", "wb") as f:
            f.write(n.encode() * 3)
    fd = os.open(f"{mnt}/b", os.O_RDONLY)
    try:
        os.rename(f"{mnt}/a", f"{mnt}/b")
        assert os.pread(fd, 10, 0) == b"bbb"
        assert os.fstat(fd).st_size == 3
        assert open(f"{mnt}/b", "rb").read() == b"aaa"
        assert os.listdir(mnt) == ["b"]
    finally:
        os.close(fd)
    assert os.listdir(pair.src) == ["b"]
    assert open(f"{pair.src}/b", "rb").read() == b"aaa"


def test_rename_over_a_file_open_for_writing(pair: Pair) -> None:
    """The replaced file lives on in its descriptor, written to after the rename, but
    the name holds the renamed file: on S3 the replaced file's spool must never be
    uploaded over it (it was, when the renamed object was already in the store)."""
    def go(r: str) -> Any:
        with open(f"{r}/a", "wb") as f:
            f.write(b"aaa")
        if r == pair.mnt:
            pair.src  # noqa: B018  (on S3: ``a`` is in the store, no write of it pending)
        fd = os.open(f"{r}/b", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"bbb")
            os.rename(f"{r}/a", f"{r}/b")
            os.write(fd, b"BBB")
            held = os.pread(fd, 10, 0), os.fstat(fd).st_nlink
        finally:
            os.close(fd)
        return held, os.listdir(r), open(f"{r}/b", "rb").read()
    assert same_on_both(pair.plain, pair.mnt, go) == ((b"bbbBBB", 0), ["b"], b"aaa")
    assert os.listdir(pair.src) == ["b"]
    assert open(f"{pair.src}/b", "rb").read() == b"aaa"


def test_rename_exchange_swaps_inodes(pair: Pair) -> None:
    mnt = pair.mnt
    os.mkdir(f"{mnt}/d")
    with open(f"{mnt}/d/inner", "wb") as f:
        f.write(b"in")
    with open(f"{mnt}/f", "wb") as f:
        f.write(b"file")
    ino_d, ino_f = os.stat(f"{mnt}/d").st_ino, os.stat(f"{mnt}/f").st_ino
    refused = err(renameat2, f"{mnt}/d", f"{mnt}/f", RENAME_EXCHANGE)
    assert refused == pair.limit("rename exchange", "EINVAL")
    if refused:
        # nothing moved, in the mount or in the store
        assert os.stat(f"{mnt}/d").st_ino == ino_d and os.stat(f"{mnt}/f").st_ino == ino_f
        assert open(f"{mnt}/d/inner", "rb").read() == b"in"
        assert open(f"{pair.src}/d/inner", "rb").read() == b"in"
        assert open(f"{pair.src}/f", "rb").read() == b"file"
        return
    assert os.stat(f"{mnt}/f").st_ino == ino_d and os.stat(f"{mnt}/d").st_ino == ino_f
    assert open(f"{mnt}/f/inner", "rb").read() == b"in"
    assert open(f"{mnt}/d", "rb").read() == b"file"
    assert open(f"{pair.src}/f/inner", "rb").read() == b"in"
    # and back, with the children following their directory
    renameat2(f"{mnt}/f", f"{mnt}/d", RENAME_EXCHANGE)
    assert open(f"{mnt}/d/inner", "rb").read() == b"in"
    assert open(f"{mnt}/f", "rb").read() == b"file"


def test_rename_across_mounts_is_exdev(pair: Pair, own: Pair) -> None:
    # the shared mount and a mount of its own, of the same kind of source
    one, two = pair.mnt, own.mnt
    with open(f"{one}/f", "wb") as f:
        f.write(b"x")
    os.mkdir(f"{one}/d")
    assert err(os.rename, f"{one}/f", f"{two}/f") == "EXDEV"
    assert err(os.rename, f"{one}/d", f"{two}/d") == "EXDEV"
    assert err(os.link, f"{one}/f", f"{two}/f") == "EXDEV"
    assert err(renameat2, f"{one}/f", f"{two}/f", RENAME_NOREPLACE) == "EXDEV"
    # mv falls back to copy + unlink, as across any two file systems
    subprocess.run(["mv", f"{one}/f", f"{two}/f"], check=True)
    assert open(f"{own.src}/f", "rb").read() == b"x"
    assert not os.path.exists(f"{pair.src}/f")


def test_rename_between_hard_links_of_one_file(pair: Pair) -> None:
    def go(r: str) -> Any:
        with open(f"{r}/a", "wb") as f:
            f.write(b"x")
        os.link(f"{r}/a", f"{r}/b")
        os.rename(f"{r}/a", f"{r}/b")  # same file: POSIX says nothing happens
        return sorted(os.listdir(r)), os.stat(f"{r}/a").st_nlink, os.stat(f"{r}/b").st_nlink
    if pair.kind == "s3":
        # no second name to rename onto: the link is refused, and nothing else changed
        assert outcome(go, pair.mnt) == pair.limit("link", "EPERM")
        assert os.listdir(pair.mnt) == ["a"] == os.listdir(pair.src)
        return
    assert same_on_both(pair.plain, pair.mnt, go) == (["a", "b"], 2, 2)
    assert os.stat(f"{pair.mnt}/a").st_ino == os.stat(f"{pair.mnt}/b").st_ino


# -- link ------------------------------------------------------------------------------


def _ids(paths: list[str]) -> set[tuple[int, int, int, int]]:
    return {(s.st_ino, s.st_nlink, s.st_mode, s.st_size) for s in map(os.stat, paths)}


def test_hard_links_share_one_inode(pair: Pair) -> None:
    src, mnt = pair.source_dir, pair.mnt
    os.mkdir(f"{mnt}/d")
    with open(f"{mnt}/a", "wb") as f:
        f.write(b"12345")
    os.chmod(f"{mnt}/a", 0o644)
    refused = err(os.link, f"{mnt}/a", f"{mnt}/b")
    assert refused == pair.limit("link", "EPERM")
    if refused:
        assert os.stat(f"{mnt}/a").st_nlink == 1
        assert sorted(os.listdir(mnt)) == ["a", "d"]
        assert sorted(os.listdir(pair.src)) == ["a"]  # (d: no marker, nothing below)
        return
    os.link(f"{mnt}/b", f"{mnt}/d/c")
    names = [f"{mnt}/a", f"{mnt}/b", f"{mnt}/d/c"]
    ids = _ids(names)
    assert len(ids) == 1 and next(iter(ids))[1] == 3
    # chmod via one name shows through every name
    os.chmod(f"{mnt}/d/c", 0o600)
    ids = _ids(names)
    assert len(ids) == 1 and stat.S_IMODE(next(iter(ids))[2]) == 0o600
    # writes via one name are read through another
    with open(f"{mnt}/b", "r+b") as f:
        f.write(b"ABC")
    assert open(f"{mnt}/d/c", "rb").read() == b"ABC45"
    # unlink one name: the others agree on the new count
    os.unlink(f"{mnt}/a")
    names.remove(f"{mnt}/a")
    ids = _ids(names)
    assert len(ids) == 1 and next(iter(ids))[1] == 2
    assert os.stat(f"{src}/b").st_nlink == 2
    os.unlink(f"{mnt}/d/c")
    assert os.stat(f"{mnt}/b").st_nlink == 1
    # readdir reports the same inode number as stat
    os.link(f"{mnt}/b", f"{mnt}/d/e")
    by_name = {e.name: e.inode() for e in os.scandir(f"{mnt}/d")}
    assert by_name["e"] == os.stat(f"{mnt}/b").st_ino


def test_hard_links_made_in_the_source_share_one_inode(pair: Pair) -> None:
    """On S3 the "source" is the bucket: rclone serves the two names of a hard link in
    its directory as two objects, and so does the mount (what an object store holds)."""
    src, mnt = pair.src, pair.mnt
    with open(f"{src}/a", "wb") as f:
        f.write(b"x")
    os.mkdir(f"{src}/d")
    os.link(f"{src}/a", f"{src}/d/b")
    same = os.stat(f"{mnt}/d/b").st_ino == os.stat(f"{mnt}/a").st_ino
    assert same == pair.limit("link", False, True)
    entries = {e.name: e.inode() for e in os.scandir(mnt)}
    assert entries["a"] == os.stat(f"{mnt}/a").st_ino
    assert os.stat(f"{mnt}/a").st_nlink == pair.limit("link", 1, 2)
    os.chmod(f"{mnt}/a", 0o604)
    assert stat.S_IMODE(os.stat(f"{mnt}/d/b").st_mode) == pair.limit("link", 0o644, 0o604)
    assert open(f"{mnt}/d/b", "rb").read() == b"x"


def test_unlinked_name_is_not_reused_for_a_new_file(pair: Pair) -> None:
    """A new file must not inherit the inode (and cached attributes) of a removed one."""
    mnt = pair.mnt
    for round_ in range(50):
        with open(f"{mnt}/f{round_}", "wb") as f:
            f.write(b"x" * round_)
        st = os.stat(f"{mnt}/f{round_}")
        os.unlink(f"{mnt}/f{round_}")
        with open(f"{mnt}/g{round_}", "wb") as f:
            f.write(b"y" * (round_ + 7))
        os.mkdir(f"{mnt}/h{round_}")
        assert os.stat(f"{mnt}/g{round_}").st_size == round_ + 7
        assert stat.S_ISDIR(os.stat(f"{mnt}/h{round_}").st_mode)
        assert st.st_size == round_


def test_long_names(pair: Pair) -> None:
    plain, mnt = pair.plain, pair.mnt
    ok = "m" * 255
    for r in (plain, mnt):
        with open(f"{r}/{ok}", "wb") as f:
            f.write(b"255")
    assert same_on_both(plain, mnt, lambda r: open(f"{r}/{ok}", "rb").read()) == b"255"
    assert outcome(os.listdir, mnt) == [ok]
    assert same_on_both(plain, mnt, lambda r: os.open(f"{r}/{LONG}", os.O_RDONLY),
                        fails="ENAMETOOLONG") == "ENAMETOOLONG"
    assert same_on_both(plain, mnt, lambda r: os.open(f"{r}/{ok}/../x", os.O_RDONLY),
                        fails="ENOTDIR") == "ENOTDIR"
    assert same_on_both(plain, mnt, lambda r: os.setxattr(f"{r}/{ok}", "user." + "x" * 256,
                                                          b"v"), fails="ERANGE") == "ERANGE"
    # The mount itself (FUSE passes names of up to 1024 bytes to the daemon):
    # a name one byte past NAME_MAX gets ENAMETOOLONG from every call that looks
    # it up or creates it, nothing is made, and statvfs says where the limit is.
    assert os.statvfs(mnt).f_namemax == 255
    calls = {
        "lstat": lambda: os.lstat(f"{mnt}/{LONG}"),
        "creat": lambda: os.open(f"{mnt}/{LONG}", os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": lambda: os.mkdir(f"{mnt}/{LONG}"),
        "symlink": lambda: os.symlink("x", f"{mnt}/{LONG}"),
        "link": lambda: os.link(f"{mnt}/{ok}", f"{mnt}/{LONG}"),
        "rename": lambda: os.rename(f"{mnt}/{ok}", f"{mnt}/{LONG}"),
        "mkfifo": lambda: os.mkfifo(f"{mnt}/{LONG}"),
    }
    assert {k: err(fn) for k, fn in calls.items()} == dict.fromkeys(calls, "ENAMETOOLONG")
    assert os.listdir(mnt) == [ok]


def test_inode_number_reused_by_the_source_is_a_new_inode(pair: Pair) -> None:
    """The source may give a removed file's inode number to a new file at once
    (ext4 does); while the kernel still holds the old inode, the new file must
    not be served as the same inode."""
    def go(r: str) -> Any:
        out = []
        for i in range(20):
            with open(f"{r}/old{i}", "wb") as f:
                f.write(b"old" * (i + 1))
            held = os.open(f"{r}/old{i}", os.O_PATH)  # a kernel reference, no FUSE open
            try:
                os.unlink(f"{r}/old{i}")
                with open(f"{r}/new{i}", "wb") as f:
                    f.write(b"new file")
                st = os.fstat(held)
                out.append((st.st_size, st.st_nlink, os.stat(f"{r}/new{i}").st_size,
                            st.st_ino == os.stat(f"{r}/new{i}").st_ino))
            finally:
                os.close(held)
        return out
    same_on_both(pair.plain, pair.mnt, go)
