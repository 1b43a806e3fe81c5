"""Namespace operations of an S3 source through a real mount, on two S3 servers.

Each test runs against ``rclone serve s3`` (a store over a disk: directories are
folders, ``dir_markers = false``) and moto's server (every key as given, markers
are objects, ``dir_markers = true``, as on AWS S3), and checks the store's exact
keys with an independent botocore client after every step that matters: a
delete never hides or leaves behind other objects, never writes a marker, a
rename moves exactly the keys below it, and no directory ever shows as a file.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import shutil
import stat
from typing import Callable

import pytest

from mounting import Mounted
from s3server import S3Server, all_keys, api

pytestmark = [pytest.mark.s3, pytest.mark.mount]


def put(server: S3Server, key: str, data: bytes) -> None:
    api(server).put_object(Bucket=server.bucket, Key=key, Body=data)


def get(server: S3Server, key: str) -> bytes:
    return api(server).get_object(Bucket=server.bucket, Key=key)["Body"].read()


def files_in(server: S3Server) -> list[str]:
    """The store's object keys, markers left out."""
    return [k for k in all_keys(server) if not k.endswith("/")]


def test_delete_keeps_siblings(any_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """The issue's sequence: deletes in a directory that keeps other objects."""
    for i in range(1, 4):
        put(any_s3, f"t3/f{i}", f"file {i}".encode())
    put(any_s3, "t3/deeper/g", b"g")
    with mount_s3(any_s3) as m:
        t3 = os.path.join(m.mountpoint, "t3")
        os.unlink(os.path.join(t3, "f1"))
        assert open(os.path.join(t3, "f2"), "rb").read() == b"file 2"
        os.unlink(os.path.join(t3, "f2"))
        assert sorted(os.listdir(t3)) == ["deeper", "f3"]
        assert files_in(any_s3) == ["t3/deeper/g", "t3/f3"]
        assert "t3/" not in all_keys(any_s3)  # a delete writes no marker

        with open(os.path.join(t3, "c"), "w") as f:
            f.write("hello\n")
        os.rename(os.path.join(t3, "c"), os.path.join(t3, "d"))
        assert open(os.path.join(t3, "d")).read() == "hello\n"
        assert get(any_s3, "t3/d") == b"hello\n"

        with pytest.raises(OSError) as exc:
            os.rmdir(t3)
        assert exc.value.errno == errno.ENOTEMPTY
        for name in ("f3", "d"):
            os.unlink(os.path.join(t3, name))
        os.unlink(os.path.join(t3, "deeper", "g"))
        # Emptied by this mount: the directories stay (empty), as on a disk.
        assert os.listdir(t3) == ["deeper"]
        assert os.listdir(os.path.join(t3, "deeper")) == []
        os.rmdir(os.path.join(t3, "deeper"))
        os.rmdir(t3)
        assert not os.path.exists(t3)
        assert all_keys(any_s3) == []
    with mount_s3(any_s3) as m:
        assert os.listdir(m.mountpoint) == []


def test_rm_rf_leaves_nothing(any_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    rng = random.Random(7)
    expected = {}
    for i in range(30):
        key = f"tree/{rng.choice('abc')}/{rng.choice('xy')}/f{i}"
        expected[key] = os.urandom(rng.randrange(1, 5000))
        put(any_s3, key, expected[key])
    put(any_s3, "keep/k", b"k")
    with mount_s3(any_s3) as m:
        got = {}
        for root, _dirs, names in os.walk(os.path.join(m.mountpoint, "tree")):
            for n in names:
                p = os.path.join(root, n)
                got[os.path.relpath(p, m.mountpoint)] = open(p, "rb").read()
        assert got == expected
        os.mkdir(os.path.join(m.mountpoint, "tree", "empty"))
        shutil.rmtree(os.path.join(m.mountpoint, "tree"))
        assert os.listdir(m.mountpoint) == ["keep"]
        assert all_keys(any_s3) == ["keep/k"]


def test_rename_moves_exactly_its_keys(any_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    put(any_s3, "src/a", b"A")
    put(any_s3, "src/sub/b", b"B")
    put(any_s3, "src/sub/deep/c", b"C")
    put(any_s3, "srcx/other", b"O")  # shares the prefix "src": must not move
    with mount_s3(any_s3) as m:
        mp = m.mountpoint
        os.mkdir(os.path.join(mp, "src", "made"))
        os.rename(os.path.join(mp, "src"), os.path.join(mp, "dst"))
        assert files_in(any_s3) == ["dst/a", "dst/sub/b", "dst/sub/deep/c", "srcx/other"]
        assert not [k for k in all_keys(any_s3) if k.startswith("src/")]
        assert open(os.path.join(mp, "dst", "sub", "deep", "c"), "rb").read() == b"C"
        assert sorted(os.listdir(os.path.join(mp, "dst"))) == ["a", "made", "sub"]
        assert sorted(os.listdir(mp)) == ["dst", "srcx"]
        # A file over a file, then into another directory.
        os.rename(os.path.join(mp, "dst", "a"), os.path.join(mp, "srcx", "other"))
        assert get(any_s3, "srcx/other") == b"A"
        assert files_in(any_s3) == ["dst/sub/b", "dst/sub/deep/c", "srcx/other"]


def test_directories_never_show_as_files(any_s3: S3Server,
                                         mount_s3: Callable[..., Mounted]) -> None:
    with mount_s3(any_s3) as m:
        mp = m.mountpoint
        os.makedirs(os.path.join(mp, "a", "b"))
        with open(os.path.join(mp, "a", "b", "f"), "wb") as f:
            f.write(b"x")
        os.unlink(os.path.join(mp, "a", "b", "f"))
        os.mkdir(os.path.join(mp, "a", "c"))
        for p in ("a", "a/b", "a/c"):
            assert stat.S_ISDIR(os.stat(os.path.join(mp, p)).st_mode), p
        os.rmdir(os.path.join(mp, "a", "b"))
        # No zero-byte object stands where a directory is (what a marker becomes on rclone).
        assert not [k for k in all_keys(any_s3) if not k.endswith("/")]
    with mount_s3(any_s3) as m:
        for root, dirs, names in os.walk(m.mountpoint):
            assert not names, f"a file appeared in {root}: {names}"
            for d in dirs:
                assert stat.S_ISDIR(os.stat(os.path.join(root, d)).st_mode)


def test_concurrent_namespace_changes(any_s3: S3Server,
                                      mount_s3: Callable[..., Mounted]) -> None:
    """Eight writers create, rename and delete in one directory at once; the mount and
    the store end with exactly the model's files and bytes."""
    for i in range(8):
        put(any_s3, f"shared/seed{i}", b"seed %d" % i)

    def worker(w: int, mp: str) -> dict[str, bytes]:
        rng = random.Random(w)
        mine: dict[str, bytes] = {}
        d = os.path.join(mp, "shared")
        for step in range(12):
            op = rng.random()
            if op < 0.5 or not mine:
                name = f"w{w}-{step}"
                data = os.urandom(rng.randrange(1, 3000))
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
                mine[name] = data
            elif op < 0.75:
                old = rng.choice(sorted(mine))
                new = f"w{w}-r{step}"
                os.rename(os.path.join(d, old), os.path.join(d, new))
                mine[new] = mine.pop(old)
            else:
                old = rng.choice(sorted(mine))
                os.unlink(os.path.join(d, old))
                del mine[old]
        if w < 4:  # half the writers also delete a seed object
            os.unlink(os.path.join(d, f"seed{w}"))
        return mine

    with mount_s3(any_s3) as m:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda w: worker(w, m.mountpoint), range(8)))
        model = {f"shared/{n}": b for r in results for n, b in r.items()}
        model.update({f"shared/seed{i}": b"seed %d" % i for i in range(4, 8)})
        d = os.path.join(m.mountpoint, "shared")
        assert sorted(os.listdir(d)) == sorted(k.split("/")[1] for k in model)
        for key, data in model.items():
            assert open(os.path.join(m.mountpoint, key), "rb").read() == data
    # After the umount (which waits for write-back) the store holds exactly the model.
    assert files_in(any_s3) == sorted(model)
    for key, data in model.items():
        assert get(any_s3, key) == data


def test_link_counts(any_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """A directory counts 2 + its subdirectories; an open, unlinked file has no link."""
    put(any_s3, "ds/x/f", b"f")
    put(any_s3, "ds/y/g", b"g")
    put(any_s3, "ds/h", b"h")
    with mount_s3(any_s3) as m:
        mp = m.mountpoint
        ds = os.path.join(mp, "ds")
        assert sorted(os.listdir(ds)) == ["h", "x", "y"]
        assert os.stat(ds).st_nlink == 4
        os.mkdir(os.path.join(ds, "z"))
        assert os.stat(ds).st_nlink == 5
        assert os.stat(os.path.join(ds, "z")).st_nlink == 2
        os.rmdir(os.path.join(ds, "z"))
        assert os.stat(ds).st_nlink == 4
        assert os.stat(os.path.join(ds, "h")).st_nlink == 1
        with open(os.path.join(ds, "h"), "rb") as f:
            os.unlink(os.path.join(ds, "h"))
            assert os.fstat(f.fileno()).st_nlink == 0
            # Its bytes are gone from the store and were never read: ESTALE, not
            # data (see docs/objectstore.md, "Not supported").
        with open(os.path.join(ds, "w"), "wb") as f:
            f.write(b"new")
            os.unlink(os.path.join(ds, "w"))
            assert os.fstat(f.fileno()).st_nlink == 0
        assert sorted(os.listdir(ds)) == ["x", "y"]
