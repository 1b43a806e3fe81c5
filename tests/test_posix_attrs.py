"""Attributes through a mount: getattr/setattr (mode, owner, size, times),
statfs, access and extended attributes, compared with a plain directory.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import pytest
from posix_util import (  # noqa: F401  (own*, pair, plain, shared_mount are fixtures)
    UTIME_NOW,
    UTIME_OMIT,
    OwnMounts,
    Pair,
    err,
    own,
    own_mounts,
    pair,
    plain,
    private_tmpfs,
    same_on_both,
    shared_mount,
    utimensat,
)

SECOND = 1_000_000_000
# Longer than the kernel's timestamp granularity (one jiffy of the coarse clock,
# at most 10 ms): a ctime set after this pause is strictly later than one read
# before it, so "ctime advanced" can be asserted strictly without flakiness.
TICK = 0.05


def _mkfile(path: str, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


def _both(p: Pair, fn: Any, **kw: Any) -> Any:
    return same_on_both(p.plain, p.mnt, fn, **kw)


def _attrs(path: str) -> tuple[int, ...]:
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtime_ns)


# -- mode, owner, size -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 0o400, 0o644, 0o755, 0o777, 0o1777, 0o2755, 0o4755,
                                  0o7777])
def test_chmod(pair: Pair, mode: int) -> None:
    def go(r: str) -> tuple[int, int]:
        _mkfile(f"{r}/f")
        os.mkdir(f"{r}/d")
        os.chmod(f"{r}/f", mode)
        os.chmod(f"{r}/d", mode)
        return os.stat(f"{r}/f").st_mode, os.stat(f"{r}/d").st_mode
    assert _both(pair, go) == (stat.S_IFREG | mode, stat.S_IFDIR | mode)
    assert pair.stored("f").st_mode == stat.S_IFREG | mode


def test_chmod_changes_ctime_not_mtime(pair: Pair) -> None:
    _mkfile(f"{pair.mnt}/f")
    os.utime(f"{pair.mnt}/f", ns=(5 * SECOND, 7 * SECOND))
    before = os.stat(f"{pair.mnt}/f")
    time.sleep(TICK)
    os.chmod(f"{pair.mnt}/f", 0o600)
    after = os.stat(f"{pair.mnt}/f")
    assert after.st_mtime_ns == 7 * SECOND and after.st_atime_ns == 5 * SECOND
    # POSIX: chmod marks st_ctime for update
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_ctime_ns == pair.stored("f").st_ctime_ns


def test_chown(pair: Pair) -> None:
    def go(r: str) -> list[tuple[int, int]]:
        _mkfile(f"{r}/f")
        os.mkdir(f"{r}/d")
        os.symlink("f", f"{r}/l")
        os.chown(f"{r}/f", 1234, 5678)
        os.chown(f"{r}/d", 42, -1)
        os.chown(f"{r}/d", -1, 43)
        os.chown(f"{r}/l", 7, 8, follow_symlinks=False)
        return [(os.lstat(f"{r}/{n}").st_uid, os.lstat(f"{r}/{n}").st_gid) for n in "fdl"]
    assert _both(pair, go) == [(1234, 5678), (42, 43), (7, 8)]


def test_chown_clears_setuid_like_a_plain_directory(pair: Pair) -> None:
    def go(r: str) -> int:
        _mkfile(f"{r}/f")
        os.chmod(f"{r}/f", 0o6755)
        os.chown(f"{r}/f", 1000, 1000)
        return os.stat(f"{r}/f").st_mode
    _both(pair, go)


def test_truncate_grow_and_shrink(pair: Pair) -> None:
    # An S3 object holds its holes as bytes: 8 GiB would be uploaded whole.
    big = 1 << 33 if pair.kind == "local" else 1 << 24

    def go(r: str) -> list[Any]:
        _mkfile(f"{r}/f", b"0123456789")
        out: list[Any] = []
        for size in (4, 0, 3, 70000, 5):
            os.truncate(f"{r}/f", size)
            out.append((os.stat(f"{r}/f").st_size, open(f"{r}/f", "rb").read()))
        fd = os.open(f"{r}/f", os.O_RDWR)
        try:
            os.ftruncate(fd, 2)
            out.append((os.fstat(fd).st_size, os.pread(fd, 10, 0)))
            os.ftruncate(fd, big)  # sparse 8 GiB (16 MiB on S3)
            out.append((os.fstat(fd).st_size, os.pread(fd, 4, big - 2)))
        finally:
            os.close(fd)
        return out
    _both(pair, go)
    assert os.stat(f"{pair.src}/f").st_size == big


# -- times -------------------------------------------------------------------------------


def _times(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns


def test_utime_exact_nanoseconds(pair: Pair) -> None:
    def go(r: str) -> list[tuple[int, int]]:
        _mkfile(f"{r}/f")
        os.mkdir(f"{r}/d")
        os.symlink("f", f"{r}/l")
        os.utime(f"{r}/f", ns=(1_000_000_123, 2_000_000_456))
        os.utime(f"{r}/d", ns=(3 * SECOND + 1, 4 * SECOND + 999_999_999))
        os.utime(f"{r}/l", ns=(5 * SECOND, 6 * SECOND), follow_symlinks=False)
        os.utime(f"{r}/f", (10, 20))  # seconds as numbers
        return [_times(f"{r}/{n}") for n in "fdl"]
    assert _both(pair, go) == [(10 * SECOND, 20 * SECOND), (3 * SECOND + 1, 4 * SECOND +
                                                            999_999_999),
                               (5 * SECOND, 6 * SECOND)]


def test_utime_now_with_times_none(pair: Pair) -> None:
    for r in (pair.plain, pair.mnt):
        _mkfile(f"{r}/f")
        os.utime(f"{r}/f", ns=(SECOND, SECOND))
    # The plain file system uses a coarse clock: allow it a second of lag.
    t0 = time.time_ns() - SECOND
    for r in (pair.plain, pair.mnt):
        os.utime(f"{r}/f", times=None)
    t1 = time.time_ns() + SECOND
    for r in (pair.plain, pair.mnt):
        a, m = _times(f"{r}/f")
        assert t0 <= a <= t1 and t0 <= m <= t1, r


def test_utimensat_omit_and_now(pair: Pair) -> None:
    t0 = time.time_ns() - SECOND
    for r in (pair.plain, pair.mnt):
        _mkfile(f"{r}/f")
        os.utime(f"{r}/f", ns=(11 * SECOND, 22 * SECOND))
        utimensat(f"{r}/f", (0, UTIME_OMIT), (33, 44))
        assert _times(f"{r}/f") == (11 * SECOND, 33 * SECOND + 44), r
        utimensat(f"{r}/f", (55, 66), (0, UTIME_OMIT))
        assert _times(f"{r}/f") == (55 * SECOND + 66, 33 * SECOND + 44), r
        utimensat(f"{r}/f", (0, UTIME_OMIT), (0, UTIME_NOW))
        a, m = _times(f"{r}/f")
        assert a == 55 * SECOND + 66 and m >= t0, r
        utimensat(f"{r}/f", (0, UTIME_NOW), (0, UTIME_OMIT))
        a2, m2 = _times(f"{r}/f")
        assert a2 >= t0 and m2 == m, r
        utimensat(f"{r}/f", (0, UTIME_OMIT), (0, UTIME_OMIT))
        assert _times(f"{r}/f") == (a2, m2), r
        os.symlink("f", f"{r}/l")
        utimensat(f"{r}/l", (0, UTIME_OMIT), (77, 0), follow_symlinks=False)
        assert _times(f"{r}/l")[1] == 77 * SECOND and _times(f"{r}/f")[1] == m2, r


def test_futimens_on_open_descriptor(pair: Pair) -> None:
    def go(r: str) -> tuple[int, int]:
        fd = os.open(f"{r}/f", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"x")
            os.utime(fd, ns=(SECOND, 2 * SECOND))
            return os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
    assert _both(pair, go) == (SECOND, 2 * SECOND)


def test_write_updates_mtime_and_ctime(pair: Pair) -> None:
    _mkfile(f"{pair.mnt}/f")
    os.utime(f"{pair.mnt}/f", ns=(SECOND, SECOND))
    before = os.stat(f"{pair.mnt}/f")
    time.sleep(TICK)
    with open(f"{pair.mnt}/f", "ab") as f:
        f.write(b"more")
    st = os.stat(f"{pair.mnt}/f")
    assert st.st_mtime_ns > SECOND and st.st_size == 4
    # POSIX: a successful write marks st_ctime and st_mtime for update
    assert st.st_ctime_ns > before.st_ctime_ns
    src = pair.stored("f")
    assert (st.st_mtime_ns, st.st_ctime_ns) == (src.st_mtime_ns, src.st_ctime_ns)


def test_root_attributes(own: Pair) -> None:
    mnt = own.mnt
    os.chmod(mnt, 0o711)
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o711
    os.utime(mnt, ns=(SECOND, 2 * SECOND))
    assert _times(mnt) == (SECOND, 2 * SECOND)
    os.chown(mnt, 12, 34)
    st = os.stat(mnt)
    assert (st.st_uid, st.st_gid) == (12, 34)
    assert stat.S_IMODE(st.st_mode) == 0o711 and _times(mnt) == (SECOND, 2 * SECOND)
    # The source holds them too; on S3 nothing can: no key names the root.
    src = os.stat(own.src)
    held = (stat.S_IMODE(src.st_mode), _times(own.src), src.st_uid, src.st_gid)
    want = (0o711, (SECOND, 2 * SECOND), 12, 34)
    assert (held == want) == own.limit("root attributes", False, True)
    assert os.listdir(own.src) == []  # (on S3: no object was made for them)


# -- statfs and access -------------------------------------------------------------------


_STATFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax")


def _statfs(st: os.statvfs_result) -> dict[str, int]:
    return {k: getattr(st, k) for k in _STATFS_FIELDS}


def test_statfs_reports_the_source_file_system(tmp_path: Any, own_mounts: OwnMounts) -> None:
    """Every statvfs field is the source's. The source is a private tmpfs (its free
    counts change only by this test), so the free counts are compared exactly too.

    A bucket has no capacity to report (the "statfs" limit): an S3 mount gives fixed
    large counts, 4 KiB blocks and NAME_MAX, which writing does not change."""
    values = _statfs
    if own_mounts.kind == "s3":
        with own_mounts.mount() as m:
            want = own_mounts.pair(m, "").limit("statfs", {
                "f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 50, "f_bfree": 1 << 50,
                "f_bavail": 1 << 50, "f_files": 1 << 40, "f_ffree": 1 << 40,
                "f_favail": 1 << 40, "f_namemax": 255})
            assert values(os.statvfs(m.mountpoint)) == want
            with open(f"{m.mountpoint}/f", "wb") as f:
                f.write(b"x" * (1 << 20))
            os.mkdir(f"{m.mountpoint}/d")
            assert values(os.statvfs(m.mountpoint)) == want
            fd = os.open(m.mountpoint, os.O_RDONLY)
            try:
                assert values(os.fstatvfs(fd)) == want
            finally:
                os.close(fd)
        return
    with private_tmpfs(os.path.join(tmp_path, "tmpfs"), "16m") as src, \
            own_mounts.mount(src) as m:
        assert values(os.statvfs(m.mountpoint)) == values(os.statvfs(src))
        with open(f"{m.mountpoint}/f", "wb") as f:
            f.write(b"x" * (1 << 20))
        os.mkdir(f"{m.mountpoint}/d")
        a, b = os.statvfs(src), os.statvfs(m.mountpoint)
        assert values(b) == values(a)
        assert a.f_blocks == 4096 and a.f_bfree == 4096 - 256
        fd = os.open(m.mountpoint, os.O_RDONLY)
        try:
            assert values(os.fstatvfs(fd)) == values(a)
        finally:
            os.close(fd)


def test_access_as_root(pair: Pair) -> None:
    def go(r: str) -> list[bool]:
        _mkfile(f"{r}/none")
        os.chmod(f"{r}/none", 0)
        _mkfile(f"{r}/x")
        os.chmod(f"{r}/x", 0o001)
        os.mkdir(f"{r}/d", 0)
        out = []
        for n in ("none", "x", "d", "missing"):
            for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.X_OK):
                out.append(os.access(f"{r}/{n}", m))
        return out
    _both(pair, go)


# -- extended attributes ---------------------------------------------------------------


def test_xattrs(pair: Pair) -> None:
    def go(r: str) -> list[Any]:
        _mkfile(f"{r}/f")
        os.mkdir(f"{r}/d")
        os.symlink("f", f"{r}/l")
        out: list[Any] = []
        for n in ("f", "d"):
            p = f"{r}/{n}"
            out.append(sorted(os.listxattr(p)))
            os.setxattr(p, "user.a", b"alpha")
            os.setxattr(p, "user.bin", bytes(range(256)) * 4)
            os.setxattr(p, "user.empty", b"")
            out.append(sorted(os.listxattr(p)))
            out.append((os.getxattr(p, "user.a"), os.getxattr(p, "user.bin"),
                        os.getxattr(p, "user.empty")))
            out.append(err(os.getxattr, p, "user.missing"))
            out.append(err(os.removexattr, p, "user.missing"))
            out.append(err(os.setxattr, p, "user.a", b"x", os.XATTR_CREATE))
            out.append(err(os.setxattr, p, "user.new", b"x", os.XATTR_REPLACE))
            os.setxattr(p, "user.a", b"replaced", os.XATTR_REPLACE)
            os.setxattr(p, "user.c", b"created", os.XATTR_CREATE)
            os.removexattr(p, "user.bin")
            out.append(sorted(os.listxattr(p)))
            out.append(os.getxattr(p, "user.a"))
            out.append(err(os.setxattr, p, "nonamespace", b"x"))
            out.append(err(os.setxattr, p, "user.big", b"v" * 70000))
            out.append(err(os.getxattr, p, "user."))
        # through the symlink, and on the symlink itself
        out.append(os.getxattr(f"{r}/l", "user.a"))
        out.append(err(os.setxattr, f"{r}/l", "user.x", b"x", follow_symlinks=False))
        out.append(os.listxattr(f"{r}/l", follow_symlinks=False))
        out.append(err(os.getxattr, f"{r}/l", "user.a", follow_symlinks=False))
        # through an open descriptor
        fd = os.open(f"{r}/f", os.O_RDONLY)
        try:
            os.setxattr(fd, "user.fd", b"by fd")
            out.append(os.getxattr(fd, "user.fd"))
        finally:
            os.close(fd)
        return out
    _both(pair, go)
    assert pair.stored("f").xattrs["user.fd"] == b"by fd"


def test_trusted_xattrs_as_root(pair: Pair) -> None:
    def go(r: str) -> Any:
        _mkfile(f"{r}/f")
        os.setxattr(f"{r}/f", "trusted.t", b"root only")
        return os.getxattr(f"{r}/f", "trusted.t"), "trusted.t" in os.listxattr(f"{r}/f")
    _both(pair, go)


def test_xattr_values_survive_rename_and_link(pair: Pair) -> None:
    def go(r: str) -> Any:
        _mkfile(f"{r}/f")
        os.setxattr(f"{r}/f", "user.k", b"v")
        os.rename(f"{r}/f", f"{r}/g")
        linked = err(os.link, f"{r}/g", f"{r}/h")
        os.setxattr(f"{r}/{'h' if linked is None else 'g'}", "user.k2", b"v2")
        return linked, os.getxattr(f"{r}/g", "user.k"), os.getxattr(f"{r}/g", "user.k2")
    assert go(pair.plain) == (None, b"v", b"v2")
    assert go(pair.mnt) == (pair.limit("link", "EPERM"), b"v", b"v2")
