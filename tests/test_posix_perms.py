"""Permissions through a mount, as an unprivileged user (uid/gid 65534).

The daemon runs as root with ``default_permissions``: the kernel checks modes
and owners, and new objects must end up owned by their creator, with the
group and set-id bits a local file system would give them. Each probe runs
in a child process that drops to ``nobody`` and reaches the plain directory
and the mount through inherited directory descriptors (the pytest temp
directories are private to root).
"""

from __future__ import annotations

import os
from typing import Any

from posix_util import (  # noqa: F401  (own_mounts, shared_mount are fixtures)
    NOBODY,
    OwnMounts,
    Pair,
    open_dir_fd,
    own_mounts,
    run_as,
    shared_mount,
)

GROUP = 1234  # a group nobody is not a member of


def _setup(r: str) -> None:
    """The same tree, built as root, in the plain directory and the mount."""
    def mk(path: str, mode: int, uid: int = 0, gid: int = 0, data: bytes = b"data") -> None:
        with open(f"{r}/{path}", "wb") as f:
            f.write(data)
        os.chown(f"{r}/{path}", uid, gid)
        os.chmod(f"{r}/{path}", mode)

    def md(path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        os.mkdir(f"{r}/{path}")
        os.chown(f"{r}/{path}", uid, gid)
        os.chmod(f"{r}/{path}", mode)

    md("secret", 0o700)
    mk("secret/f", 0o644)
    mk("private", 0o600)
    mk("public", 0o644)
    md("pubdir", 0o755)
    mk("pubdir/x", 0o666)
    md("world", 0o777)
    md("sticky", 0o1777)
    mk("sticky/roots", 0o666)
    mk("sticky/mine", 0o644, NOBODY, NOBODY)
    md("sgid", 0o2777, 0, GROUP)
    mk("own", 0o644, NOBODY, NOBODY)
    mk("own_ro", 0o444, NOBODY, NOBODY)
    mk("own_suid", 0o4777, NOBODY, NOBODY)
    mk("writable", 0o666)


# Run by the unprivileged child on each root (a directory descriptor `r`).
_PROBES = '''
import stat
def mode(name):
    return oct(os.stat(name, dir_fd=r, follow_symlinks=False).st_mode)
def owner(name):
    st = os.stat(name, dir_fd=r, follow_symlinks=False)
    return [st.st_uid, st.st_gid]
def create(name, m, flags=os.O_CREAT | os.O_EXCL | os.O_WRONLY):
    os.close(os.open(name, flags, m, dir_fd=r))
def write(name, data):
    fd = os.open(name, os.O_WRONLY, dir_fd=r)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
def listdir(name):
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=r)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)

for root, r in FDS.items():
    p = lambda key, fn, *a, **kw: probe(root + ":" + key, fn, *a, **kw)
    # reading and searching
    p("list secret", listdir, "secret")
    p("stat secret/f", os.stat, "secret/f", dir_fd=r)
    p("open secret/f", os.open, "secret/f", os.O_RDONLY, dir_fd=r)
    p("open private", os.open, "private", os.O_RDONLY, dir_fd=r)
    p("open public rd", lambda: os.close(os.open("public", os.O_RDONLY, dir_fd=r)))
    p("open public wr", os.open, "public", os.O_WRONLY, dir_fd=r)
    p("open public trunc", os.open, "public", os.O_RDONLY | os.O_TRUNC, dir_fd=r)
    p("list pubdir", listdir, "pubdir")
    # changing a directory one may not write
    p("create in pubdir", create, "pubdir/new", 0o644)
    p("mkdir in pubdir", os.mkdir, "pubdir/new", dir_fd=r)
    p("unlink in pubdir", os.unlink, "pubdir/x", dir_fd=r)
    p("rename in pubdir", os.rename, "pubdir/x", "pubdir/y", src_dir_fd=r, dst_dir_fd=r)
    p("rename out of pubdir", os.rename, "pubdir/x", "world/y", src_dir_fd=r, dst_dir_fd=r)
    p("symlink in pubdir", os.symlink, "t", "pubdir/l", dir_fd=r)
    p("mkfifo in pubdir", os.mkfifo, "pubdir/p", dir_fd=r)
    p("link into pubdir", os.link, "own", "pubdir/own", src_dir_fd=r, dst_dir_fd=r)
    # attributes of someone else's file
    p("chmod public", os.chmod, "public", 0o666, dir_fd=r)
    p("chown public", os.chown, "public", 65534, 65534, dir_fd=r)
    p("utime public times", os.utime, "public", ns=(1, 1), dir_fd=r)
    p("utime public now", os.utime, "public", dir_fd=r)
    p("utime writable now", os.utime, "writable", dir_fd=r)
    p("utime writable times", os.utime, "writable", ns=(1, 1), dir_fd=r)
    p("setxattr public", os.setxattr, f"/proc/self/fd/{r}/public", "user.k", b"v")
    p("setxattr writable", os.setxattr, f"/proc/self/fd/{r}/writable", "user.k", b"v")
    p("link public (protected_hardlinks)", os.link, "public", "world/hl",
      src_dir_fd=r, dst_dir_fd=r)
    # one's own file
    p("chmod own", os.chmod, "own", 0o4755, dir_fd=r)
    p("mode own", mode, "own")
    p("chown own to root", os.chown, "own", 0, -1, dir_fd=r)
    p("chgrp own to a foreign group", os.chown, "own", -1, 1234, dir_fd=r)
    p("chown own to self", os.chown, "own", 65534, 65534, dir_fd=r)
    p("utime own times", os.utime, "own", ns=(5, 6), dir_fd=r)
    p("setxattr own", os.setxattr, f"/proc/self/fd/{r}/own", "user.k", b"v")
    p("open own_ro wr", os.open, "own_ro", os.O_WRONLY, dir_fd=r)
    p("write own_suid", write, "own_suid", b"x")
    p("mode own_suid after write", mode, "own_suid")
    # the sticky directory
    p("unlink sticky/roots", os.unlink, "sticky/roots", dir_fd=r)
    p("rename sticky/roots", os.rename, "sticky/roots", "sticky/r2", src_dir_fd=r,
      dst_dir_fd=r)
    p("write sticky/roots", write, "sticky/roots", b"ok")
    p("unlink sticky/mine", os.unlink, "sticky/mine", dir_fd=r)
    # what one creates is one's own
    p("create in world", create, "world/f", 0o4755)
    p("owner world/f", owner, "world/f")
    p("mode world/f", mode, "world/f")
    p("mkdir in world", os.mkdir, "world/d", 0o2755, dir_fd=r)
    p("owner world/d", owner, "world/d")
    p("mode world/d", mode, "world/d")
    p("mkfifo in world", os.mkfifo, "world/p", 0o640, dir_fd=r)
    p("owner world/p", owner, "world/p")
    p("symlink in world", os.symlink, "target", "world/l", dir_fd=r)
    p("owner world/l", owner, "world/l")
    p("mknod in world", os.mknod, "world/n", 0o100640, dir_fd=r)
    p("owner world/n", owner, "world/n")
    p("chardev in world", os.mknod, "world/c", 0o20600, os.makedev(1, 3), dir_fd=r)
    # the set-group-ID directory hands down its group
    p("create in sgid", create, "sgid/f", 0o2775)
    p("owner sgid/f", owner, "sgid/f")
    p("mode sgid/f", mode, "sgid/f")
    p("mkdir in sgid", os.mkdir, "sgid/d", 0o755, dir_fd=r)
    p("owner sgid/d", owner, "sgid/d")
    p("mode sgid/d", mode, "sgid/d")
    p("mkfifo in sgid", os.mkfifo, "sgid/p", 0o600, dir_fd=r)
    p("owner sgid/p", owner, "sgid/p")
    p("symlink in sgid", os.symlink, "t", "sgid/l", dir_fd=r)
    p("owner sgid/l", owner, "sgid/l")
    # access(2)
    p("access", lambda: [os.access(n, m, dir_fd=r) for n in
                         ("public", "private", "own_ro", "secret", "secret/f", "world")
                         for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)])
'''


# Probes a plain directory performs and an S3 source refuses: the documented limit
# (`posix_util.S3_LIMITS`) each meets; the "owner" probes of what was refused find nothing.
S3_REFUSED: dict[str, tuple[str, str]] = {
    "mkfifo in world": ("mknod fifo", "EPERM"),
    "mkfifo in sgid": ("mknod fifo", "EPERM"),
}
S3_MISSING = ("owner world/p", "owner sgid/p")


def _compare(out: dict[str, Any], p: Pair) -> None:
    keys = sorted({k.split(":", 1)[1] for k in out})
    want = {k: out[f"plain:{k}"] for k in keys}
    if p.kind == "s3":
        for k, (op, errno_name) in S3_REFUSED.items():
            assert want[k] is None, f"{k}: a plain directory gave {want[k]!r}"
            want[k] = p.limit(op, errno_name)
        for k in S3_MISSING:
            want[k] = "ENOENT"
    diff = {k: (want[k], out[f"mnt:{k}"]) for k in keys if want[k] != out[f"mnt:{k}"]}
    assert not diff, "plain directory (or its documented S3 limit) vs mount: " + repr(diff)


def _run(plain: str, mountpoint: str, probes: str) -> dict[str, Any]:
    fds = {"plain": open_dir_fd(plain), "mnt": open_dir_fd(mountpoint)}
    try:
        return run_as(NOBODY, probes, fds=fds.values(), FDS=fds)
    finally:
        for fd in fds.values():
            os.close(fd)


def test_unprivileged_user_with_allow_other(tmp_path: Any, own_mounts: OwnMounts) -> None:
    plain = os.path.join(tmp_path, "plain")
    os.mkdir(plain)
    os.chmod(plain, 0o755)
    src = own_mounts.source()
    os.chmod(src, 0o755)
    with own_mounts.mount(src, options=["allow_other"]) as m:
        p = own_mounts.pair(m, plain)
        _setup(plain)
        _setup(m.mountpoint)
        out = _run(plain, m.mountpoint, _PROBES)
        # the headline cases, spelled out
        for root in ("plain", "mnt"):
            assert out[f"{root}:list secret"] == "EACCES"
            assert out[f"{root}:open private"] == "EACCES"
            assert out[f"{root}:open public wr"] == "EACCES"
            assert out[f"{root}:create in pubdir"] == "EACCES"
            assert out[f"{root}:chmod public"] == "EPERM"
            assert out[f"{root}:chown own to root"] == "EPERM"
            assert out[f"{root}:owner world/f"] == [NOBODY, NOBODY]
            assert out[f"{root}:owner sgid/f"] == [NOBODY, GROUP]
        _compare(out, p)
        # and the source holds what the mount showed (a directory's owner only on a
        # local source: without markers, S3 keeps a directory's attributes in the mount)
        stored = p.stored("sgid/f")
        assert (stored.st_uid, stored.st_gid) == (NOBODY, GROUP)
        if p.kind == "local":
            st = os.stat(os.path.join(p.src, "sgid", "d"))
            assert (st.st_uid, st.st_gid) == (NOBODY, GROUP)


def test_unprivileged_user_without_allow_other(own_mounts: OwnMounts) -> None:
    src = own_mounts.source()
    os.chmod(src, 0o755)
    with open(os.path.join(src, "public"), "wb") as f:  # (on S3: an object in the bucket)
        f.write(b"x")
    os.chmod(os.path.join(src, "public"), 0o644)
    with own_mounts.mount(src) as m:
        fd = open_dir_fd(m.mountpoint)
        try:
            out = run_as(NOBODY, '''
probe("stat root", lambda: os.stat(r) and None)
probe("stat public", lambda: os.stat("public", dir_fd=r) and None)
probe("open public", os.open, "public", os.O_RDONLY, dir_fd=r)
probe("create", os.open, "new", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=r)
probe("mkdir", os.mkdir, "newdir", dir_fd=r)
probe("access root", os.access, f"/proc/self/fd/{r}", os.R_OK)
''', fds=[fd], r=fd)
        finally:
            os.close(fd)
        assert out == {"stat root": "EACCES", "stat public": "EACCES", "open public": "EACCES",
                       "create": "EACCES", "mkdir": "EACCES", "access root": False}
        # root itself is still served
        assert os.listdir(m.mountpoint) == ["public"]
