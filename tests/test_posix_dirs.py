"""Directories through a mount: opendir/readdir/releasedir/fsyncdir with many
entries and with changes during a listing, and trees deeper than PATH_MAX.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from posix_util import (  # noqa: F401  (pair, shared_mount are fixtures)
    DirStream,
    Pair,
    err,
    outcome,
    pair,
    same_on_both,
    shared_mount,
)

from fusefs.control import call


def _touch(path: str, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


def _many(p: Pair) -> int:
    """Entries of the large-directory cases: past one LIST page (1,000 keys) on S3,
    where every entry costs a HEAD (stored attributes) that ``rclone serve s3`` answers
    by reading the whole directory."""
    return 3000 if p.kind == "local" else 1100


def test_readdir_many_entries(pair: Pair) -> None:
    n = _many(pair)
    names = {f"file-{i:05d}-{'x' * (i % 40)}" for i in range(n)}
    src = pair.src
    for name in names:
        _touch(f"{src}/{name}")
    os.mkdir(f"{src}/sub")
    if pair.kind == "local":
        os.symlink("sub", f"{src}/link")
    else:  # another client's symlink is an object with S_IFLNK in its metadata
        os.symlink("sub", f"{pair.mnt}/link")
    listed = os.listdir(pair.mnt)
    assert len(listed) == len(set(listed)) == n + 2
    assert set(listed) == names | {"sub", "link"}
    # readdirplus hands out the inodes and types stat sees
    for e in os.scandir(pair.mnt):
        if e.name in ("sub", "link") or e.name.endswith("7"):
            st = os.lstat(e.path)
            assert e.inode() == st.st_ino, e.name
            assert stat.S_IFMT(e.stat(follow_symlinks=False).st_mode) == \
                stat.S_IFMT(st.st_mode)
    assert next(e for e in os.scandir(pair.mnt) if e.name == "sub").is_dir()
    assert next(e for e in os.scandir(pair.mnt) if e.name == "link").is_symlink()


def test_readdir_of_files_created_through_the_mount(pair: Pair) -> None:
    # S3: each is an upload, which rclone serve s3 answers slower the more the
    # directory holds; more than a LIST page is `test_readdir_many_entries`'s.
    n = 3000 if pair.kind == "local" else 300
    for i in range(n):
        _touch(f"{pair.mnt}/{i}")
    assert sorted(os.listdir(pair.mnt), key=int) == [str(i) for i in range(n)]
    assert sorted(os.listdir(pair.src), key=int) == [str(i) for i in range(n)]
    for i in range(0, n, 2):
        os.unlink(f"{pair.mnt}/{i}")
    assert sorted(os.listdir(pair.mnt), key=int) == [str(i) for i in range(1, n, 2)]


def test_entries_added_and_removed_during_listing(pair: Pair) -> None:
    """POSIX: entries neither added nor removed meanwhile appear exactly once."""
    for root in (pair.plain, pair.mnt):
        for i in range(600):
            _touch(f"{root}/old{i:04d}")
        with DirStream(root) as d:
            first = d.read(100)
            assert len(first) == 100
            gone = set(first[:30])
            for n in first[:30]:
                os.unlink(f"{root}/{n}")
            unseen = sorted({f"old{i:04d}" for i in range(600)} - set(first))
            gone |= set(unseen[:30])
            for n in unseen[:30]:
                os.unlink(f"{root}/{n}")
            for i in range(300):
                _touch(f"{root}/new{i:04d}")
            rest = d.read()
            listed = first + rest
            stable = {f"old{i:04d}" for i in range(600)} - gone
            assert len(listed) == len(set(listed)), root
            assert stable <= set(listed), root
            assert set(listed) <= stable | gone | {f"new{i:04d}" for i in range(300)}
            # rewinddir: the stream now shows the directory as it is
            d.rewind()
            again = d.read()
            assert sorted(again) == sorted(os.listdir(root)), root
            assert len(again) == 600 - 60 + 300, root


def test_interleaved_listings_of_one_directory(pair: Pair) -> None:
    for i in range(500):
        _touch(f"{pair.mnt}/{i}")
    with DirStream(pair.mnt) as a, DirStream(pair.mnt) as b:
        got_a, got_b = [], []
        while True:
            x, y = a.read(7), b.read(13)
            got_a += x
            got_b += y
            if not x and not y:
                break
    assert sorted(got_a, key=int) == sorted(got_b, key=int) == [str(i) for i in range(500)]


def test_empty_and_nested_directories(pair: Pair) -> None:
    def go(r: str) -> Any:
        os.makedirs(f"{r}/a/b/c")
        _touch(f"{r}/a/b/f")
        return (os.listdir(f"{r}/a/b/c"), sorted(os.listdir(f"{r}/a/b")),
                [sorted(d) + sorted(f) for _, d, f in os.walk(r)],
                os.stat(f"{r}/a").st_nlink, os.stat(f"{r}/a/b").st_nlink)
    same_on_both(pair.plain, pair.mnt, go)


def test_opendir_errors(pair: Pair) -> None:
    def go(r: str) -> Any:
        _touch(f"{r}/f")
        return [err(os.listdir, f"{r}/f"), err(os.listdir, f"{r}/missing"),
                err(os.open, f"{r}/f", os.O_RDONLY | os.O_DIRECTORY)]
    assert same_on_both(pair.plain, pair.mnt, go) == ["ENOTDIR", "ENOENT", "ENOTDIR"]


def test_handles_are_released(pair: Pair, shared_mount: Any) -> None:
    os.mkdir(f"{pair.mnt}/d")
    _touch(f"{pair.mnt}/d/f", b"x")
    for _ in range(300):
        fd = os.open(f"{pair.mnt}/d", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.listdir(fd)
        os.close(fd)
        with open(f"{pair.mnt}/d/f", "rb") as f:
            f.read()
    snap = call(shared_mount.mountpoint, "stats")["stats"]["mount"]
    assert snap["handles"] == 0, snap


# -- deeper than PATH_MAX -----------------------------------------------------------------


DEPTH = 100
NAME_LEN = 60
#: Levels of a tree below an S3 test's directory whose keys stay within S3's 1,024 bytes.
S3_DEPTH = 16


def _level(i: int) -> str:
    return f"{i:03d}".ljust(NAME_LEN, "d")


def _deep(root: str, depth: int = DEPTH, links: bool = True) -> list[Any]:
    """Build and use a tree ``depth`` x 60 characters deep, only through directory fds
    (with a hard link at the bottom if ``links``)."""
    out: list[Any] = []
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for i in range(depth):
            os.mkdir(_level(i), 0o755, dir_fd=fds[-1])
            fds.append(os.open(_level(i), os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        bottom = fds[-1]
        full = len(os.path.join(root, *map(_level, range(depth))))
        out.append(full > 4096)
        # a file at the bottom: create, write, read, stat
        fd = os.open("file", os.O_CREAT | os.O_RDWR, 0o640, dir_fd=bottom)
        try:
            os.write(fd, b"at the bottom" * 1000)
            out.append(os.pread(fd, 13, 13 * 999))
            os.fsync(fd)
        finally:
            os.close(fd)
        st = os.stat("file", dir_fd=bottom)
        out.append((stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink))
        out.append(os.listdir(bottom))
        # attributes, links, xattrs, symlinks down there
        os.chmod("file", 0o600, dir_fd=bottom)
        os.utime("file", ns=(10**9, 2 * 10**9), dir_fd=bottom)
        if links:
            os.link("file", "hard", src_dir_fd=bottom, dst_dir_fd=bottom)
        os.symlink("file", "soft", dir_fd=bottom)
        out.append(os.readlink("soft", dir_fd=bottom))
        st = os.stat("hard" if links else "file", dir_fd=bottom)
        out.append((stat.S_IMODE(st.st_mode), st.st_nlink, st.st_mtime_ns))
        fd = os.open("file", os.O_RDONLY, dir_fd=bottom)
        try:
            os.setxattr(fd, "user.deep", b"yes")
            out.append(os.getxattr(fd, "user.deep"))
        finally:
            os.close(fd)
        # rename within the bottom, then half way up, then across the whole depth
        os.rename("file", "renamed", src_dir_fd=bottom, dst_dir_fd=bottom)
        half = fds[depth // 2]
        os.rename("renamed", "up", src_dir_fd=bottom, dst_dir_fd=half)
        out.append(os.stat("up", dir_fd=half).st_size)
        os.rename("up", "down", src_dir_fd=half, dst_dir_fd=bottom)
        out.append(sorted(os.listdir(bottom)))
        # rename a directory high up: the descriptors below stay valid
        os.rename(_level(1), "moved", src_dir_fd=fds[1], dst_dir_fd=fds[1])
        fd = os.open("down", os.O_RDONLY, dir_fd=bottom)
        try:
            out.append(os.read(fd, 13))
        finally:
            os.close(fd)
        out.append(os.stat("hard" if links else "down", dir_fd=bottom).st_nlink)
        # unlink everything at the bottom, then remove the tree from below
        for n in ("down", "hard", "soft") if links else ("down", "soft"):
            os.unlink(n, dir_fd=bottom)
        out.append(os.listdir(bottom))
        names = [_level(i) for i in range(depth)]
        names[1] = "moved"
        for i in range(depth - 1, -1, -1):
            os.close(fds.pop())
            os.rmdir(names[i], dir_fd=fds[-1])
        out.append(os.listdir(fds[0]))
        return out
    finally:
        for fd in fds:
            os.close(fd)


def test_entry_changes_move_the_directory_times(pair: Pair) -> None:
    """POSIX: creating, removing or renaming an entry marks its directory's st_mtime
    and st_ctime for update. Each operation runs after the directory's times were set
    back to 1970; both sides must then show them moved forward (on S3 in the mount
    that made the change: docs/objectstore.md, "Directory times")."""
    old = 10**9
    ops: list[tuple[str, Any, tuple[str, ...]]] = [
        ("create", lambda r: _touch(f"{r}/d/f"), ("d",)),
        ("mkdir", lambda r: os.mkdir(f"{r}/d/sub"), ("d",)),
        ("symlink", lambda r: os.symlink("f", f"{r}/d/l"), ("d",)),
        ("rename within", lambda r: os.rename(f"{r}/d/f", f"{r}/d/g"), ("d",)),
        ("rename across", lambda r: os.rename(f"{r}/d/g", f"{r}/e/g"), ("d", "e")),
        ("rename a directory", lambda r: os.rename(f"{r}/d/sub", f"{r}/e/sub"), ("d", "e")),
        ("unlink", lambda r: os.unlink(f"{r}/d/l"), ("d",)),
        ("rmdir", lambda r: os.rmdir(f"{r}/e/sub"), ("e",)),
        ("unlink the last", lambda r: os.unlink(f"{r}/e/g"), ("e",)),
    ]
    for root in (pair.plain, pair.mnt):
        os.mkdir(f"{root}/d")
        os.mkdir(f"{root}/e")
        for name, op, dirs in ops:
            for d in ("d", "e"):
                os.utime(f"{root}/{d}", ns=(old, old))
                assert os.stat(f"{root}/{d}").st_mtime_ns == old
            op(root)
            for d in ("d", "e"):
                st = os.stat(f"{root}/{d}")
                if d in dirs:
                    assert st.st_ctime_ns >= st.st_mtime_ns > old, (root, name, d)
                else:
                    assert st.st_mtime_ns == old, (root, name, d)
        # a time set by hand after the changes is the one shown
        os.utime(f"{root}/d", ns=(old, 2 * old))
        assert os.stat(f"{root}/d").st_mtime_ns == 2 * old
        assert os.listdir(f"{root}/d") == [] and os.listdir(f"{root}/e") == []


def test_set_group_id_directories_pass_their_group_on(pair: Pair) -> None:
    """A new file, directory or symlink in a set-group-ID directory takes the
    directory's group (not the creator's), and a new directory its set-group-ID bit."""
    def made(root: str) -> tuple[Any, ...]:
        os.mkdir(f"{root}/g")
        os.chown(f"{root}/g", -1, 4321)
        os.chmod(f"{root}/g", 0o2775)
        _touch(f"{root}/g/f")
        os.mkdir(f"{root}/g/sub", 0o755)
        os.symlink("f", f"{root}/g/l")
        os.mkdir(f"{root}/plain")
        _touch(f"{root}/plain/f")
        sub = os.stat(f"{root}/g/sub")
        return (os.stat(f"{root}/g/f").st_gid, sub.st_gid, bool(sub.st_mode & stat.S_ISGID),
                os.lstat(f"{root}/g/l").st_gid, os.stat(f"{root}/plain/f").st_gid)

    assert made(pair.plain) == made(pair.mnt) == (4321, 4321, True, 4321, os.getgid())


def test_tree_deeper_than_path_max(pair: Pair) -> None:
    if pair.kind == "local":
        got = same_on_both(pair.plain, pair.mnt, _deep)
        assert got[0] is True and got[1] == b"at the bottom"
        return
    # S3: a key holds the whole path below the bucket, at most 1,024 bytes, so no tree
    # reaches PATH_MAX; one as deep as keys allow (no hard links) works as on a disk.
    os.mkdir(f"{pair.mnt}/full")
    assert outcome(_deep, f"{pair.mnt}/full") == pair.limit("key over 1024 bytes",
                                                            "ENAMETOOLONG")
    shutil.rmtree(f"{pair.mnt}/full")
    got = same_on_both(pair.plain, pair.mnt, lambda r: _deep(r, S3_DEPTH, links=False))
    assert got[1] == b"at the bottom"


def test_deep_tree_made_through_the_mount_exists_in_the_source(pair: Pair) -> None:
    depth = DEPTH if pair.kind == "local" else S3_DEPTH
    fd = os.open(pair.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(_level(i), dir_fd=fd)
            nfd = os.open(_level(i), os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        _fd = os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(_fd, b"leaf")
        os.close(_fd)
        # S3: one level more makes a key longer than 1,024 bytes
        assert err(os.mkdir, _level(depth), dir_fd=fd) == pair.limit(
            "key over 1024 bytes", "ENAMETOOLONG", None)
    finally:
        os.close(fd)
    # walk the source by descriptors too: its path is as long
    fd = os.open(pair.src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            nfd = os.open(_level(i), os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        _fd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(_fd, 10) == b"leaf"
        os.close(_fd)
    finally:
        os.close(fd)
    # an ordinary tool copes: rmtree walks by descriptors
    if pair.kind == "local":
        assert err(os.stat, os.path.join(pair.mnt, *map(_level, range(DEPTH)))) \
            == "ENAMETOOLONG"
    shutil.rmtree(os.path.join(pair.mnt, _level(0)))
    src = pair.src  # S3: a prefix with no keys left is gone (rclone removes the folder)
    assert (os.listdir(src) if pair.kind == "local" or os.path.isdir(src) else []) == []
