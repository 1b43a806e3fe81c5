"""``gs://`` sources through a real mount, against a real GCS server on loopback.

Every test mounts ``gs://bucket?endpoint_override=127.0.0.1:PORT&scheme=http&anonymous=true``
with ``python -m fusefs.cli mount`` (`mounting.Mounted`) and talks to
fake-gcs-server (`gcsserver.GcsServer`), once with each backend (``filesystem``,
run with ``dir_markers = false`` as it drops marker objects; ``memory``, which
keeps them as GCS does). No client is mocked and no traffic leaves loopback.
Objects are put and checked through a second, independent pyarrow client.
Nothing here asserts on timing: waits for a cache to expire poll with a deadline.
The mount counterpart of ``test_s3_mount.py`` for GCS (a representative subset).
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import mmap
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from gcsserver import GcsServer
from mounting import Mounted, errno_of, is_mounted, tierfs_cmd
from s3server import free_port

pytestmark = [pytest.mark.gcs, pytest.mark.mount]

KiB = 1024
MiB = 1024 * 1024


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stats(mnt: str) -> dict[str, Any]:
    out = subprocess.run(tierfs_cmd("stats", mnt, "--json"), capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)


def settled(m: Mounted, timeout: float = 120.0) -> None:
    """Wait until the mount's write-back has uploaded every closed file."""
    def done() -> bool:
        wb = stats(m.mountpoint).get("writeback")
        return not wb or wb.get("pending_files") == 0

    wait_for(done, "pending writes to reach the store", timeout)


def read_direct(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, max(size, 1))
        n = os.preadv(fd, [memoryview(buf)[:size]], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def tree(root: str) -> dict[str, bytes | None]:
    """Every path below ``root``: file contents, None for a directory."""
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = f.read()
    return out


def store_files(server: GcsServer) -> dict[str, bytes]:
    """What a second client finds in the bucket: object name -> content (markers left out)."""
    return {k: server.get(k) for k in server.keys() if not k.endswith("/")}


@pytest.fixture
def mount_gcs(make_mount: Callable[..., Mounted], tmp_path: Path) -> Callable[..., Mounted]:
    """Factory: a mount of ``server``'s bucket (or a prefix of it)."""

    def factory(server: GcsServer, prefix: str = "", *, source: dict[str, Any] | None = None,
                extra: str = "", **kw: Any) -> Mounted:
        n = len(list(tmp_path.glob("cfg*.toml")))
        # fake-gcs-server's filesystem backend drops marker objects: see gcsserver.py.
        # A loaded 2-core machine must not look like an outage.
        src = {"dir_markers": server.markers, "read_timeout": "120s", **(source or {})}
        cfg = tmp_path / f"cfg{n}.toml"
        cfg.write_text("[source]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in src.items())
                       + extra)
        return make_mount(server.uri(prefix), config=str(cfg), **kw)

    return factory


def test_reads_and_listings(gcs: GcsServer, mount_gcs: Callable[..., Mounted]) -> None:
    """Every byte of every file, read through the mount, is the store's; listings match."""
    rng = random.Random(5)
    files = {"top.bin": rng.randbytes(1),
             "ds/a/0.bin": rng.randbytes(4096),
             "ds/a/1.bin": rng.randbytes(4097),
             "ds/a/deep/er/x": rng.randbytes(300_000),
             "ds/b/big.bin": rng.randbytes(6 * MiB + 12345),
             "ds/empty": b"",
             "ds/ünï côde": b"u"}
    for rel, data in files.items():
        gcs.put(rel, data)
    with mount_gcs(gcs) as m:
        got = tree(m.mountpoint)
        dirs = {"ds", "ds/a", "ds/a/deep", "ds/a/deep/er", "ds/b"}
        assert {k for k, v in got.items() if v is None} == dirs
        assert {k: v for k, v in got.items() if v is not None} == files
        assert sorted(os.listdir(os.path.join(m.mountpoint, "ds"))) == \
            ["a", "b", "empty", "ünï côde"]
        big = files["ds/b/big.bin"]
        path = os.path.join(m.mountpoint, "ds/b/big.bin")
        assert os.stat(path).st_size == len(big)
        for off, n in [(0, 1), (4095, 2), (MiB - 100, 8192), (len(big) - 1, 1),
                       (len(big) - 4096, 8192), (len(big), 10)] + \
                [(rng.randrange(len(big)), rng.choice([1, 4096, 65536])) for _ in range(40)]:
            assert read_direct(path, off, n) == big[off:off + n], (off, n)
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(big).digest()
        assert errno_of(lambda: os.stat(os.path.join(m.mountpoint, "ds/nothing"))) == errno.ENOENT
        assert errno_of(lambda: os.listdir(os.path.join(m.mountpoint, "top.bin"))) == errno.ENOTDIR


@pytest.mark.parametrize("mode", ["writeback", "writethrough"])
def test_namespace_changes_reach_the_store(gcs: GcsServer, mount_gcs: Callable[..., Mounted],
                                           mode: str) -> None:
    """create/write/overwrite, unlink, rename of files and directories, mkdir/rmdir, in
    subdirectories with siblings (unlike rclone, GCS has no trouble there); a second
    client and a remount see exactly what the mount shows."""
    gcs.put("d/keep", b"keep")
    gcs.put("d/sib1", b"s1")
    gcs.put("d/sib2", b"s2")
    gcs.put("tree/x/1", b"1")
    gcs.put("tree/x/2", b"2")
    gcs.put("tree/y", b"y")
    with mount_gcs(gcs, extra=f'[write]\nmode = "{mode}"\n') as m:
        r = m.mountpoint
        small = b"hello, gcs\n"
        with open(os.path.join(r, "d", "new"), "wb") as f:
            f.write(small)
        big = random.Random(3).randbytes(9 * MiB + 17)
        with open(os.path.join(r, "d", "big"), "wb") as f:
            for i in range(0, len(big), 128 * KiB):
                f.write(big[i:i + 128 * KiB])
        with open(os.path.join(r, "d", "keep"), "r+b") as f:  # overwrite in place
            f.seek(1)
            f.write(b"EE")
        with open(os.path.join(r, "d", "sib2"), "wb") as f:  # truncate and rewrite
            f.write(b"rewritten")
        settled(m)
        assert gcs.get("d/new") == small and gcs.get("d/big") == big
        assert gcs.get("d/keep") == b"kEEp" and gcs.get("d/sib2") == b"rewritten"
        # unlink and rename with siblings left in the directory
        os.unlink(os.path.join(r, "d", "sib1"))
        os.rename(os.path.join(r, "d", "new"), os.path.join(r, "d", "moved"))
        settled(m)
        assert sorted(os.listdir(os.path.join(r, "d"))) == ["big", "keep", "moved", "sib2"]
        with open(os.path.join(r, "d", "moved"), "rb") as f:
            assert f.read() == small
        assert errno_of(lambda: os.stat(os.path.join(r, "d", "new"))) == errno.ENOENT
        assert errno_of(lambda: os.stat(os.path.join(r, "d", "sib1"))) == errno.ENOENT
        # rename of a directory (key by key), then of a file across directories
        os.rename(os.path.join(r, "tree"), os.path.join(r, "tree2"))
        assert sorted(os.listdir(os.path.join(r, "tree2"))) == ["x", "y"]
        assert errno_of(lambda: os.stat(os.path.join(r, "tree"))) == errno.ENOENT
        os.rename(os.path.join(r, "tree2", "x", "1"), os.path.join(r, "d", "one"))
        settled(m)
        # mkdir, a file in it, rmdir refused while not empty, then emptied and removed
        os.mkdir(os.path.join(r, "nd"))
        os.mkdir(os.path.join(r, "nd", "sub"))
        assert errno_of(lambda: os.mkdir(os.path.join(r, "nd"))) == errno.EEXIST
        with open(os.path.join(r, "nd", "sub", "f"), "wb") as f:
            f.write(b"f")
        settled(m)
        assert errno_of(lambda: os.rmdir(os.path.join(r, "nd"))) == errno.ENOTEMPTY
        assert errno_of(lambda: os.rmdir(os.path.join(r, "nd", "sub"))) == errno.ENOTEMPTY
        os.unlink(os.path.join(r, "nd", "sub", "f"))
        settled(m)
        assert os.listdir(os.path.join(r, "nd", "sub")) == []  # it outlives its last file
        os.rmdir(os.path.join(r, "nd", "sub"))
        assert os.listdir(os.path.join(r, "nd")) == []
        os.rmdir(os.path.join(r, "nd"))
        assert errno_of(lambda: os.stat(os.path.join(r, "nd"))) == errno.ENOENT
        # the last file of tree2/x moved away: x stays a directory here
        assert os.listdir(os.path.join(r, "tree2", "x")) == ["2"]
        shown = tree(r)
        want = {"d/big": big, "d/keep": b"kEEp", "d/moved": small, "d/sib2": b"rewritten",
                "d/one": b"1", "tree2/x/2": b"2", "tree2/y": b"y"}
        assert {k: v for k, v in shown.items() if v is not None} == want
        assert store_files(gcs) == want  # the second client sees the same files
    with mount_gcs(gcs) as m:  # and so does a fresh mount
        again = tree(m.mountpoint)
        assert {k: v for k, v in again.items() if v is not None} == want
        assert {k for k, v in again.items() if v is None} == {"d", "tree2", "tree2/x"}


def test_another_client_changes_objects(gcs: GcsServer, mount_gcs: Callable[..., Mounted]) -> None:
    gcs.put("t/a", b"1")
    short = {"stat_ttl": "1s", "list_ttl": "1s", "negative_ttl": "1s"}
    with mount_gcs(gcs, source=short) as m:
        d = os.path.join(m.mountpoint, "t")
        assert os.listdir(d) == ["a"]
        gcs.put("t/b", b"22")
        gcs.put("t/sub/c", b"333")
        wait_for(lambda: sorted(os.listdir(d)) == ["a", "b", "sub"], "new objects to be listed")
        assert os.stat(os.path.join(d, "b")).st_size == 2
        with open(os.path.join(d, "sub", "c"), "rb") as f:
            assert f.read() == b"333"
        gcs.client().delete_file(f"{gcs.bucket}/t/a")
        wait_for(lambda: errno_of(lambda: os.stat(os.path.join(d, "a"))) == errno.ENOENT,
                 "a removed object to go")
        assert sorted(os.listdir(d)) == ["b", "sub"]
        gcs.put("t/b", b"4444")
        wait_for(lambda: os.stat(os.path.join(d, "b")).st_size == 4, "a changed size")
        with open(os.path.join(d, "b"), "rb") as f:
            assert f.read() == b"4444"


def test_one_open_never_mixes_generations(gcs: GcsServer,
                                          mount_gcs: Callable[..., Mounted]) -> None:
    """An object replaced (same size) between two reads of one open: the open's next read
    of bytes no cache holds is ESTALE, never bytes of the new generation; a new open reads
    the new object whole, though its size is unchanged (the generation is its version)."""
    size = MiB + 4321
    old = random.Random(1).randbytes(size)
    new = random.Random(2).randbytes(size)
    gcs.put("v/obj", old)
    with mount_gcs(gcs, source={"stat_ttl": "0s", "list_ttl": "0s"},
                   extra="[policy]\nfill_random_max = 0\n") as m:
        path = os.path.join(m.mountpoint, "v", "obj")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 64 * KiB)
            assert os.preadv(fd, [buf], 0) == 64 * KiB
            assert bytes(buf) == old[:64 * KiB]
            gcs.put("v/obj", new)
            with pytest.raises(OSError) as caught:
                os.preadv(fd, [buf], 768 * KiB)  # in no block fetched so far
            assert caught.value.errno == errno.ESTALE
            for where in (0, size - 4096):  # stale for good; cached old bytes at most
                try:
                    n = os.preadv(fd, [memoryview(buf)[:4096]], where)
                except OSError as exc:
                    assert exc.errno == errno.ESTALE, exc
                else:
                    assert bytes(buf[:n]) == old[where:where + n]
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == new
        assert "changed or was deleted after it was opened" in m.read_log()


def test_server_down_and_back(restartable_gcs: GcsServer,
                              mount_gcs: Callable[..., Mounted]) -> None:
    """The store stops under a live mount: uncached reads and lookups are EIO (never
    ENOENT), a write-through close is EIO, cached data still reads; once the server is
    back on the same port the mount and a handle held across the outage work again."""
    server = restartable_gcs
    files = {f"d/f{i}": random.Random(i).randbytes(256 * KiB + i) for i in range(3)}
    for rel, data in files.items():
        server.put(rel, data)
    server.put("e/x", b"x")  # not looked at before the outage
    with mount_gcs(server, extra='[write]\nmode = "writethrough"\n') as m:
        m.allow_error(r"not answering")
        d = os.path.join(m.mountpoint, "d")
        assert sorted(os.listdir(d)) == ["f0", "f1", "f2"]
        assert read_direct(os.path.join(d, "f0"), 0, 4096) == files["d/f0"][:4096]
        held = os.open(os.path.join(d, "f2"), os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        assert os.preadv(held, [buf], 0) == 4096 and bytes(buf) == files["d/f2"][:4096]
        server.stop()
        pool = concurrent.futures.ThreadPoolExecutor(2)

        def fails(fn: Callable[[], object]) -> int | None:
            return pool.submit(errno_of, fn).result(timeout=300)  # never a hang

        try:
            assert fails(lambda: read_direct(os.path.join(d, "f1"), 8192, 4096)) == errno.EIO
            assert fails(lambda: os.preadv(held, [buf], 128 * KiB)) == errno.EIO
            assert fails(lambda: os.stat(os.path.join(m.mountpoint, "unseen"))) == errno.EIO
            assert fails(lambda: os.listdir(os.path.join(m.mountpoint, "e"))) == errno.EIO
            m.allow_error(r"never uploaded is lost")

            def write_down() -> None:
                with open(os.path.join(d, "new"), "wb") as f:
                    f.write(b"lost")

            assert fails(write_down) == errno.EIO
            assert is_mounted(m.mountpoint)
            # Cached data reads, through the handle held across the outage. (A file
            # reopened by path here once failed with EIO under CPU load: its DRAM pages
            # had been invalidated, perhaps with an inode the kernel forgot. Not
            # GCS's: the same read is in test_s3_mount.py. Not pinned down yet.)
            assert os.preadv(held, [buf], 0) == 4096 and bytes(buf) == files["d/f2"][:4096]
            assert sorted(os.listdir(d))[:3] == ["f0", "f1", "f2"]
        finally:
            pool.shutdown(wait=False)
        server.start()
        wait_for(lambda: errno_of(lambda: read_direct(os.path.join(d, "f1"), 0, 1)) is None,
                 "reads to work again", timeout=120)
        assert os.preadv(held, [buf], 128 * KiB) == 4096
        assert bytes(buf) == files["d/f2"][128 * KiB:128 * KiB + 4096]
        os.close(held)
        assert os.listdir(os.path.join(m.mountpoint, "e")) == ["x"]
        for rel, data in files.items():
            with open(os.path.join(m.mountpoint, rel), "rb") as f:
                assert f.read() == data
        with open(os.path.join(d, "after"), "wb") as f:
            f.write(b"written after the restart")
        assert server.get("d/after") == b"written after the restart"


def _mount_fails(uri: str, mnt: str, tmp_path: Path) -> tuple[int, str]:
    os.makedirs(mnt, exist_ok=True)
    cfg = tmp_path / "fail.toml"
    cfg.write_text('[source]\nread_timeout = "120s"\n')
    res = subprocess.run(tierfs_cmd("mount", uri, mnt, "--config", str(cfg),
                                    "--cache", str(tmp_path / "cache")),
                         capture_output=True, text=True, timeout=180)
    assert not is_mounted(mnt)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tierfs: "), res.stderr
    return res.returncode, lines[0]


def test_mount_time_errors(gcs_server: GcsServer, tmp_path: Path) -> None:
    server = gcs_server
    server.put("there/x", b"x")
    mnt = str(tmp_path / "mnt")
    dead = f"gs://{server.bucket}?endpoint_override=127.0.0.1:{free_port()}&scheme=http&anonymous=true"
    code, line = _mount_fails(dead, mnt, tmp_path)
    assert code == 4 and "cannot reach" in line and "127.0.0.1:" in line
    code, line = _mount_fails(server.uri(bucket="nosuchbucket"), mnt, tmp_path)
    assert code == 4 and "nosuchbucket" in line
    code, line = _mount_fails(server.uri("no/such/prefix"), mnt, tmp_path)
    assert code == 4 and "no/such/prefix" in line
    code, line = _mount_fails(server.uri() + "&region=x", mnt, tmp_path)
    assert code == 4 and "unknown parameter 'region'" in line
    res = subprocess.run(tierfs_cmd("mount", server.uri("there"), mnt,
                                    "--cache", str(tmp_path / "cache")),
                         capture_output=True, text=True, timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        assert os.listdir(mnt) == ["x"]
    finally:
        subprocess.run(tierfs_cmd("umount", mnt), capture_output=True, timeout=120)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt])
    assert not is_mounted(mnt)
