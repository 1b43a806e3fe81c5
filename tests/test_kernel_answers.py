"""What the kernel is told, so that it asks the daemon only when the answer can differ.

Extended attributes: a source that keeps no extended attributes (an ``s3://`` bucket without
``stored_attributes``) answers the first xattr request of each kind with ENOSYS; the
kernel remembers it for the mount and answers EOPNOTSUPP itself, so ``ls -l`` (two
getxattr per file) and writes (security.capability) stop costing round trips to the
daemon. A local source keeps its attributes unless ``-o noxattr`` is given. Counts
asserted here are of requests that reach the daemon in a single-threaded sequence
(no timing in them): the kernel forwards none once it was told.

Names and attributes: the kernel keeps them as long as the mount's own metadata cache
would give the same answer, and is told sooner when an open finds the object changed
(another size) or gone.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from mounting import Mounted, errno_of, tierfs_cmd
from s3server import S3Server

pytestmark = [pytest.mark.mount]


def counters(mnt: str) -> dict[str, Any]:
    out = subprocess.run(tierfs_cmd("stats", mnt, "--json"), capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)["counters"]


def ls_l(path: str) -> str:
    return subprocess.run(["ls", "-l", path], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.mark.s3
def test_a_store_without_attributes_is_asked_once(s3: S3Server,
                                                   mount_s3: Callable[..., Mounted]) -> None:
    for i in range(20):
        (s3.bucket_dir / "x" / f"f{i:02d}").parent.mkdir(parents=True, exist_ok=True)
        (s3.bucket_dir / "x" / f"f{i:02d}").write_bytes(b"%d" % i * 100)
    with mount_s3(s3, "x") as m:
        mp = m.mountpoint
        f = f"{mp}/f00"
        for fn in (lambda: os.getxattr(f, "user.a"), lambda: os.listxattr(f),
                   lambda: os.setxattr(f, "user.a", b"v"), lambda: os.removexattr(f, "user.a")):
            assert errno_of(fn) == errno.ENOTSUP
        told = counters(mp).get("meta.xattr", 0)
        assert told >= 1  # the daemon was asked, and said ENOSYS
        listing = ls_l(mp)
        assert listing.count(" f") == 20
        for i in range(20):
            p = f"{mp}/f{i:02d}"
            assert errno_of(lambda: os.getxattr(p, "security.selinux")) == errno.ENOTSUP
            with open(p, "r+b") as fh:  # a write asks for security.capability
                fh.write(b"w")
            with open(p, "rb") as fh:
                assert fh.read() == b"w" + (b"%d" % i * 100)[1:]
        assert counters(mp).get("meta.xattr", 0) == told


def test_a_local_source_keeps_its_attributes_unless_told(tmp_path: Path,
                                                         make_mount: Callable[..., Mounted]
                                                         ) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.setxattr(src / "f", "user.colour", b"blue")
    with make_mount(str(src)) as m:
        assert os.getxattr(f"{m.mountpoint}/f", "user.colour") == b"blue"
        assert os.listxattr(f"{m.mountpoint}/f") == ["user.colour"]
    with make_mount(str(src), options=["noxattr"]) as m:
        f = f"{m.mountpoint}/f"
        assert errno_of(lambda: os.getxattr(f, "user.colour")) == errno.ENOTSUP
        assert errno_of(lambda: os.listxattr(f)) == errno.ENOTSUP
        assert errno_of(lambda: os.setxattr(f, "user.x", b"1")) == errno.ENOTSUP
        told = counters(m.mountpoint).get("meta.xattr", 0)
        ls_l(m.mountpoint)
        assert errno_of(lambda: os.getxattr(f, "user.colour")) == errno.ENOTSUP
        assert counters(m.mountpoint).get("meta.xattr", 0) == told
        with open(f, "rb") as fh:
            assert fh.read() == b"data"
    assert os.getxattr(src / "f", "user.colour") == b"blue"  # nothing lost at the source
    assert "user.x" not in os.listxattr(src / "f")


@pytest.mark.s3
def test_an_open_that_finds_a_new_size_tells_the_kernel(s3: S3Server,
                                                        mount_s3: Callable[..., Mounted]
                                                        ) -> None:
    """The listing (cached for list_ttl) told the kernel one size; the open's HEAD finds
    the object replaced by a longer one: every byte of the new version is read, not
    only as many as the kernel's attributes said."""
    d = s3.bucket_dir / "y"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (d / f"f{i}").write_bytes(b"old-%d" % i)
    with mount_s3(s3, "y") as m:
        mp = m.mountpoint
        assert sorted(os.listdir(mp)) == ["f0", "f1", "f2", "f3"]  # listed: sizes cached
        for i in range(4):
            assert os.stat(f"{mp}/f{i}").st_size == 5
        new = {i: b"new-%d-" % i + os.urandom(3000) for i in range(4)}
        for i in range(4):
            (d / f"f{i}").write_bytes(new[i])
        for i in range(4):
            with open(f"{mp}/f{i}", "rb") as fh:
                assert fh.read() == new[i]
            assert os.stat(f"{mp}/f{i}").st_size == len(new[i])


@pytest.mark.s3
def test_the_kernel_keeps_what_the_mount_would_answer_anyway(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """Names and attributes the mount's metadata cache vouches for (stat_ttl) are the
    kernel's for as long: a second walk sends no lookups, though it starts after the
    configured 1 s timeouts have passed; a name an open finds gone is gone for stat."""
    d = s3.bucket_dir / "z"
    d.mkdir(parents=True, exist_ok=True)
    files = {f"f{i:02d}": b"%02d" % i * (50 + i) for i in range(30)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "a-gone").write_bytes(b"here")
    with mount_s3(s3, "z", source={"stat_ttl": "1h", "list_ttl": "1h"}) as m:
        mp = m.mountpoint

        def walk() -> None:
            for name, data in files.items():
                assert os.stat(f"{mp}/{name}").st_size == len(data)
                with open(f"{mp}/{name}", "rb") as fh:
                    assert fh.read() == data

        walk()
        time.sleep(1.5)  # past [mount] entry_timeout and attr_timeout (1 s)
        before = counters(mp).get("meta.lookup", 0)
        walk()
        assert counters(mp).get("meta.lookup", 0) - before < len(files) // 4

        # Listed, never opened: its open asks the store, which no longer has it.
        assert os.stat(f"{mp}/a-gone").st_size == 4
        (d / "a-gone").unlink()  # behind the mount's back
        assert errno_of(lambda: open(f"{mp}/a-gone", "rb")) == errno.ENOENT
        assert errno_of(lambda: os.stat(f"{mp}/a-gone")) == errno.ENOENT
