"""The object-store capacity tier through a real mount, against a real S3 server on loopback.

Every test mounts ``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http``
with ``python -m fusefs.cli mount`` (`mounting.Mounted`) and talks to
``rclone serve s3`` (`s3server.S3Server`): no client is mocked and no traffic
leaves loopback. Objects that only need to exist are created directly in the
server's backing directory; what the mount writes is checked through a second,
independent pyarrow client. Nothing here asserts on timing: waits for a cache
to expire poll with a deadline.

Deletes through the mount send one DeleteObject each (no parent marker, see
``fusefs/tiers/objectstore/store.py``); ``test_s3_namespace.py`` checks the
store's exact keys after deletes, renames and ``rm -rf`` on rclone and moto.
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

from mounting import Mounted, errno_of, is_mounted, resident_pages, tierfs_cmd
from s3mounts import config
from s3server import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.mount]

KiB = 1024
MiB = 1024 * 1024


# -- helpers -------------------------------------------------------------------
def put(server: S3Server, rel: str, data: bytes) -> None:
    p = server.bucket_dir / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def read_back(server: S3Server, rel: str) -> bytes:
    with server.client().open_input_stream(f"{server.bucket}/{rel}") as f:
        return f.read()


def exists_in_store(server: S3Server, rel: str) -> bool:
    import pyarrow.fs as pafs

    return server.client().get_file_info(f"{server.bucket}/{rel}").type != pafs.FileType.NotFound


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def read_direct(path: str, offset: int, size: int) -> bytes:
    """A read the kernel passes to the daemon as it is (O_DIRECT, page-aligned buffer)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, max(size, 1))
        n = os.preadv(fd, [memoryview(buf)[:size]], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def stats(mnt: str) -> dict[str, Any]:
    out = subprocess.run(tierfs_cmd("stats", mnt, "--json"), capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)


def settled(m: Mounted, timeout: float = 120.0) -> None:
    """Wait until the mount's write-back has uploaded every closed file (at once for a
    write-through mount)."""
    def done() -> bool:
        wb = stats(m.mountpoint).get("writeback")
        return not wb or wb.get("pending_files") == 0

    wait_for(done, "pending writes to reach the store", timeout)


# -- (a) listings longer than one page ----------------------------------------------
def test_listing_more_than_one_page(s3: S3Server, mount_s3: Callable[..., Mounted],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    many = s3.bucket_dir / "ds" / "many"
    many.mkdir(parents=True)
    n = 2500  # rclone answers 1000 keys a page
    for i in range(n):
        (many / f"f{i:05d}").write_bytes(b"y" * (i % 13))
    (many / "sub").mkdir()
    (many / "sub" / "inner").write_bytes(b"z")
    # Credentials from the standard AWS environment this time, not the config file.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    with mount_s3(s3, "ds", creds=False) as m:
        d = os.path.join(m.mountpoint, "many")
        names = sorted(os.listdir(d))
        assert len(names) == n + 1
        assert names == sorted([f"f{i:05d}" for i in range(n)] + ["sub"])
        seen = 0
        with os.scandir(d) as it:
            for e in it:  # what ls -l does: readdir, then a stat of every entry
                st = e.stat(follow_symlinks=False)
                if e.name == "sub":
                    assert e.is_dir() and st.st_mode & 0o170000 == 0o040000
                else:
                    assert e.is_file() and st.st_size == int(e.name[1:]) % 13
                    assert st.st_mtime > 0 and st.st_uid == os.getuid()
                seen += 1
        assert seen == n + 1
        assert os.stat(os.path.join(d, "f02499")).st_size == 2499 % 13
        assert os.listdir(os.path.join(d, "sub")) == ["inner"]
        with open(os.path.join(d, "f00012"), "rb") as f:
            assert f.read() == b"y" * 12
        # ls -l of 2501 names cost a few listings, not a request per name.
        tier = stats(m.mountpoint)["capacity"]
        assert 1 <= tier["list"] <= 3 and tier.get("stat", 0) <= 3, tier


# -- (b) ranged reads at many alignments ------------------------------------------------
def test_ranged_reads_at_many_alignments(s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    size = 5 * MiB + 12345
    data = random.Random(7).randbytes(size)
    put(s3, "r/obj.bin", data)
    with mount_s3(s3) as m:
        path = os.path.join(m.mountpoint, "r", "obj.bin")
        assert os.stat(path).st_size == size
        rng = random.Random(11)
        cases = [(0, 1), (1, 4095), (4095, 2), (4096, 4096), (4097, 8190), (MiB - 1, 2),
                 (MiB - 100, 8192), (2 * MiB - 4096, 3 * 4096 + 7), (size - 1, 1),
                 (size - 4096, 4096), (size - 100, 4096), (size, 10), (size + 4096, 4096),
                 (0, 3 * MiB + 5), (MiB, MiB), (size - MiB - 3, MiB + 10)]
        for _ in range(150):
            off = rng.randrange(0, size)
            cases.append((off, rng.choice([1, 7, 512, 4095, 4096, 4097, 65536, 300_000])))
        # Through the daemon as asked (O_DIRECT): any offset and length reach it.
        for off, n in cases:
            got = read_direct(path, off, n)
            assert got == data[off:off + n], f"O_DIRECT read at {off}+{n}"
        # Through the kernel's page cache (buffered reads in a fresh handle each time).
        for off, n in cases[:40]:
            fd = os.open(path, os.O_RDONLY)
            try:
                assert os.pread(fd, n, off) == data[off:off + n], f"read at {off}+{n}"
            finally:
                os.close(fd)
        # One handle, many random reads (the classifier labels them random).
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 64 * KiB)
            for _ in range(200):
                off = rng.randrange(0, size // 512) * 512
                n = os.preadv(fd, [memoryview(buf)[:4096]], off)
                assert bytes(buf[:n]) == data[off:off + 4096]
        finally:
            os.close(fd)


# -- (c) a big file, sequentially -------------------------------------------------------
def test_big_file_sequential_sha256(s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    total = 64 * MiB
    h = hashlib.sha256()
    with open(s3.bucket_dir / "big.bin", "wb") as out:
        for i in range(total // (4 * MiB)):
            chunk = random.Random(i).randbytes(4 * MiB)
            h.update(chunk)
            out.write(chunk)
    with mount_s3(s3) as m:
        got = hashlib.sha256()
        n = 0
        with open(os.path.join(m.mountpoint, "big.bin"), "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                got.update(chunk)
                n += len(chunk)
        assert n == total and got.hexdigest() == h.hexdigest()
        snap = stats(m.mountpoint)
        assert snap["counters"].get("read.class.sequential", 0) > 0
        # Streams abandoned while their read-ahead GETs are in flight: the
        # handle's release must not pull the object from under them (the
        # daemon would log failed reads, which `Mounted` turns into a failure).
        for start in (0, 16 * MiB, 40 * MiB):
            fd = os.open(os.path.join(m.mountpoint, "big.bin"), os.O_RDONLY | os.O_DIRECT)
            try:
                buf = mmap.mmap(-1, MiB)
                for i in range(4):
                    assert os.preadv(fd, [buf], start + i * MiB) == MiB
            finally:
                os.close(fd)
        assert stats(m.mountpoint)["counters"].get("readahead.bytes.capacity", 0) > 0


# -- (d) metadata cache TTLs ----------------------------------------------------------------
def test_metadata_ttls(s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    put(s3, "t/a", b"1")
    short = {"stat_ttl": "1s", "list_ttl": "1s", "negative_ttl": "1s"}
    with mount_s3(s3, source=short) as m:
        d = os.path.join(m.mountpoint, "t")
        assert os.listdir(d) == ["a"]
        put(s3, "t/b", b"22")
        wait_for(lambda: sorted(os.listdir(d)) == ["a", "b"], "a new object to be listed")
        wait_for(lambda: errno_of(lambda: os.stat(os.path.join(d, "b"))) is None,
                 "a new object to be found")
        assert os.stat(os.path.join(d, "b")).st_size == 2
        (s3.bucket_dir / "t" / "a").unlink()
        wait_for(lambda: os.listdir(d) == ["b"], "a removed object to go from the listing")
        wait_for(lambda: errno_of(lambda: os.stat(os.path.join(d, "a"))) == errno.ENOENT,
                 "a removed object to go")
        put(s3, "t/b", b"4444")
        wait_for(lambda: os.stat(os.path.join(d, "b")).st_size == 4, "a changed size")
        with open(os.path.join(d, "b"), "rb") as f:
            assert f.read() == b"4444"

    # Long TTLs: changes behind the mount's back stay unseen, its own show at once.
    long = {"stat_ttl": "1h", "list_ttl": "1h", "negative_ttl": "1h"}
    put(s3, "top", b"top")
    with mount_s3(s3, source=long) as m:
        d = os.path.join(m.mountpoint, "t")
        assert os.listdir(d) == ["b"]
        put(s3, "t/behind", b"x")
        assert os.listdir(d) == ["b"]  # the cached listing answers
        with open(os.path.join(d, "mine"), "wb") as f:
            f.write(b"hello")
        assert sorted(os.listdir(d)) == ["b", "mine"]
        assert os.stat(os.path.join(d, "mine")).st_size == 5
        with open(os.path.join(d, "mine"), "rb") as f:
            assert f.read() == b"hello"
        os.mkdir(os.path.join(d, "sub"))
        assert sorted(os.listdir(d)) == ["b", "mine", "sub"]
        # Deletes at the top level (see the module docstring).
        r = m.mountpoint
        assert sorted(os.listdir(r)) == ["t", "top"]
        os.rename(os.path.join(r, "top"), os.path.join(r, "moved"))
        assert sorted(os.listdir(r)) == ["moved", "t"]
        assert errno_of(lambda: os.stat(os.path.join(r, "top"))) == errno.ENOENT
        os.unlink(os.path.join(r, "moved"))
        assert os.listdir(r) == ["t"]
        assert errno_of(lambda: os.stat(os.path.join(r, "moved"))) == errno.ENOENT


# -- (e) writes through the mount reach the store ------------------------------------------
@pytest.mark.parametrize("mode", ["writeback", "writethrough"])
def test_writes_reach_the_store(s3: S3Server, mount_s3: Callable[..., Mounted],
                                mode: str) -> None:
    put(s3, "keep", b"keep")
    with mount_s3(s3, extra=f'[write]\nmode = "{mode}"\n') as m:
        root = m.mountpoint
        small = b"hello, store\n"
        with open(os.path.join(root, "small"), "wb") as f:
            f.write(small)
        settled(m)
        assert read_back(s3, "small") == small
        big = random.Random(3).randbytes(9 * MiB + 17)  # multipart upload
        with open(os.path.join(root, "big"), "wb") as f:
            for i in range(0, len(big), 128 * KiB):
                f.write(big[i:i + 128 * KiB])
        settled(m)
        assert read_back(s3, "big") == big
        with open(os.path.join(root, "big"), "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(big).digest()
        # Overwrite part of an existing object (read, modify, upload whole).
        with open(os.path.join(root, "keep"), "r+b") as f:
            f.seek(1)
            f.write(b"EE")
        settled(m)
        assert read_back(s3, "keep") == b"kEEp"
        # Rename of a file: copy + delete in the store (top level: see the module docstring).
        os.rename(os.path.join(root, "small"), os.path.join(root, "moved"))
        settled(m)
        assert read_back(s3, "moved") == small
        assert not exists_in_store(s3, "small")
        assert sorted(os.listdir(root)) == ["big", "keep", "moved"]
        # Unlink.
        os.unlink(os.path.join(root, "keep"))
        settled(m)
        assert not exists_in_store(s3, "keep")
        assert errno_of(lambda: os.stat(os.path.join(root, "keep"))) == errno.ENOENT
        # mkdir, then a file in it (rclone keeps no empty directories: the file makes it real).
        os.mkdir(os.path.join(root, "newdir"))
        assert os.path.isdir(os.path.join(root, "newdir"))
        assert os.listdir(os.path.join(root, "newdir")) == []
        with open(os.path.join(root, "newdir", "inside"), "wb") as f:
            f.write(b"in")
        settled(m)
        assert read_back(s3, "newdir/inside") == b"in"
        assert os.listdir(os.path.join(root, "newdir")) == ["inside"]
        # The last object of a directory: the directory stays in this mount.
        os.unlink(os.path.join(root, "newdir", "inside"))
        settled(m)
        assert not exists_in_store(s3, "newdir/inside")
        assert os.listdir(os.path.join(root, "newdir")) == []
        os.rmdir(os.path.join(root, "newdir"))
        assert not os.path.exists(os.path.join(root, "newdir"))
        assert sorted(os.listdir(root)) == ["big", "moved"]
        # The second client sees exactly what the mount shows.
        import pyarrow.fs as pafs

        infos = s3.client().get_file_info(pafs.FileSelector(s3.bucket))
        assert sorted(i.base_name for i in infos) == ["big", "moved"]
    # A fresh mount sees what the first one wrote.
    with mount_s3(s3) as m:
        assert sorted(os.listdir(m.mountpoint)) == ["big", "moved"]
        with open(os.path.join(m.mountpoint, "moved"), "rb") as f:
            assert f.read() == small


# -- (f) the store goes away and comes back ----------------------------------------------
def test_server_down_and_back(restartable_s3: S3Server,
                              mount_s3: Callable[..., Mounted]) -> None:
    server = restartable_s3
    files = {f"d/f{i}": random.Random(i).randbytes(256 * KiB + i) for i in range(4)}
    for rel, data in files.items():
        put(server, rel, data)
    put(server, "e/x", b"x")  # not looked at before the outage
    # Write-through: a close uploads, so a write meets the outage (write-back: see
    # test_writeback.py).
    with mount_s3(server, extra='[write]\nmode = "writethrough"\n') as m:
        m.allow_error(r"not answering")  # the tier's warning, should it ever be an error
        d = os.path.join(m.mountpoint, "d")
        assert sorted(os.listdir(d)) == sorted(os.path.basename(r) for r in files)
        assert read_direct(os.path.join(d, "f0"), 0, 4096) == files["d/f0"][:4096]
        # A handle opened while the store was up, kept across the outage.
        held = os.open(os.path.join(d, "f2"), os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        assert os.preadv(held, [buf], 0) == 4096 and bytes(buf) == files["d/f2"][:4096]
        server.stop()
        pool = concurrent.futures.ThreadPoolExecutor(2)

        def fails(fn: Callable[[], object]) -> int | None:
            return pool.submit(errno_of, fn).result(timeout=120)  # bounded: never a hang

        try:
            # Uncached data: EIO after bounded retries.
            assert fails(lambda: read_direct(os.path.join(d, "f1"), 8192, 4096)) == errno.EIO
            assert fails(lambda: read_direct(os.path.join(d, "f0"), MiB // 8, 4096)) == errno.EIO
            assert fails(lambda: os.preadv(held, [buf], 128 * KiB)) == errno.EIO
            # Uncached metadata: EIO too, never a false "no such file".
            assert fails(lambda: os.stat(os.path.join(m.mountpoint, "unseen"))) == errno.EIO
            assert fails(lambda: os.listdir(os.path.join(m.mountpoint, "e"))) == errno.EIO
            # A write cannot be uploaded: close(2) reports it.
            m.allow_error(r"never uploaded is lost")

            def write_down() -> None:
                with open(os.path.join(d, "new"), "wb") as f:
                    f.write(b"lost")

            assert fails(write_down) == errno.EIO
            # The mount stays up and answers what it has cached.
            assert is_mounted(m.mountpoint)
            assert read_direct(os.path.join(d, "f0"), 0, 4096) == files["d/f0"][:4096]
            assert os.stat(d).st_mode & 0o170000 == 0o040000
            assert sorted(os.listdir(d))[:4] == ["f0", "f1", "f2", "f3"]
        finally:
            pool.shutdown(wait=False)
        server.start()
        # Same port, no remount: reads work again (the first may still meet the restart).
        wait_for(lambda: errno_of(lambda: read_direct(os.path.join(d, "f1"), 0, 1)) is None,
                 "reads to work again")
        # The handle held across the outage reads again.
        assert os.preadv(held, [buf], 128 * KiB) == 4096
        assert bytes(buf) == files["d/f2"][128 * KiB:128 * KiB + 4096]
        os.close(held)
        assert os.listdir(os.path.join(m.mountpoint, "e")) == ["x"]
        assert errno_of(lambda: os.stat(os.path.join(m.mountpoint, "unseen"))) == errno.ENOENT
        for rel, data in files.items():
            p = os.path.join(m.mountpoint, rel)
            assert read_direct(p, 8192, 4096) == data[8192:8192 + 4096]
            with open(p, "rb") as f:
                assert f.read() == data
        with open(os.path.join(d, "after"), "wb") as f:
            f.write(b"written after the restart")
        assert read_back(server, "d/after") == b"written after the restart"


# -- (g) mount-time errors ---------------------------------------------------------------
def _mount_fails(uri: str, mnt: str, tmp_path: Path, cfg: str) -> tuple[int, str]:
    os.makedirs(mnt, exist_ok=True)
    t0 = time.monotonic()
    res = subprocess.run(tierfs_cmd("mount", uri, mnt, "--config", cfg,
                                    "--cache", str(tmp_path / "cache")),
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert not is_mounted(mnt)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tierfs: "), res.stderr
    # "Immediate": no endless retrying (generous bound for a loaded 2-core machine).
    assert took < 100, f"mount took {took:.0f}s to fail"
    return res.returncode, lines[0]


def test_mount_time_errors(s3: S3Server, tmp_path: Path) -> None:
    put(s3, "there/x", b"x")
    mnt = str(tmp_path / "mnt")
    good = config(tmp_path, s3, name="good.toml")
    bad = str(tmp_path / "bad.toml")
    Path(bad).write_text('[source]\naccess_key = "WRONGACCESSKEY99"\n'
                         'secret_key = "wrong-secret-key-000"\n')
    from s3server import free_port

    dead = f"s3://{s3.bucket}?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    code, line = _mount_fails(dead, mnt, tmp_path, good)
    assert code == 4 and "cannot reach" in line and "127.0.0.1:" in line
    slow = "&request_timeout=60"  # see mount_s3
    code, line = _mount_fails(s3.uri() + slow, mnt, tmp_path, bad)
    assert code == 4 and "credentials" in line
    code, line = _mount_fails(s3.uri(bucket="nosuchbucket") + slow, mnt, tmp_path, good)
    assert code == 4 and "nosuchbucket" in line
    code, line = _mount_fails(s3.uri("no/such/prefix") + slow, mnt, tmp_path, good)
    assert code == 4 and "no/such/prefix" in line
    # The exit code is the documented one.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "4 source missing or unreachable" in readme
    # And the good source mounts.
    res = subprocess.run(tierfs_cmd("mount", s3.uri("there") + slow, mnt, "--config", good,
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


# -- (h) names the store cannot hold ---------------------------------------------------
def test_names_the_store_cannot_hold(s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    put(s3, "n/ok", b"ok")
    with mount_s3(s3) as m:
        root = os.fsencode(m.mountpoint)
        n = root + b"/n"
        # A key over 1024 bytes, made of components that are each fine.
        deep = n
        for c in "abcd":
            deep += b"/" + c.encode() * 240
            os.mkdir(deep)
        assert errno_of(lambda: open(deep + b"/" + b"e" * 100, "wb")) == errno.ENAMETOOLONG
        assert errno_of(lambda: os.mkdir(deep + b"/" + b"e" * 100)) == errno.ENAMETOOLONG
        assert errno_of(lambda: os.stat(deep + b"/" + b"e" * 100)) == errno.ENAMETOOLONG
        # A component over 255 bytes.
        assert errno_of(lambda: open(n + b"/" + b"x" * 300, "wb")) == errno.ENAMETOOLONG
        assert errno_of(lambda: os.stat(n + b"/" + b"x" * 300)) == errno.ENAMETOOLONG
        # Not UTF-8.
        bad = n + b"/caf\xe9"
        assert errno_of(lambda: open(bad, "wb")) == errno.EINVAL
        assert errno_of(lambda: os.mkdir(bad)) == errno.EINVAL
        assert errno_of(lambda: os.stat(bad)) == errno.EINVAL
        assert errno_of(lambda: os.rename(n + b"/ok", bad)) == errno.EINVAL
        assert errno_of(lambda: os.rename(n + b"/ok", deep + b"/" + b"e" * 100)) == \
            errno.ENAMETOOLONG
        # Node types a store cannot hold.
        assert errno_of(lambda: os.symlink(b"ok", n + b"/sym")) == errno.EPERM
        assert errno_of(lambda: os.link(n + b"/ok", n + b"/hard")) == errno.EPERM
        assert errno_of(lambda: os.mkfifo(n + b"/fifo")) == errno.EPERM
        assert errno_of(lambda: os.setxattr(n + b"/ok", b"user.k", b"v")) == errno.ENOTSUP
        # The mount keeps serving, and nothing of the above reached the store.
        assert is_mounted(m.mountpoint)
        assert read_back(s3, "n/ok") == b"ok"
        with open(n + b"/ok", "rb") as f:
            assert f.read() == b"ok"
        with open(n + b"/fine", "wb") as f:
            f.write(b"fine")
        settled(m)
        assert read_back(s3, "n/fine") == b"fine"
        assert sorted(os.listdir(n)) == [b"a" * 240, b"fine", b"ok"]


# -- listing snapshots -----------------------------------------------------------------
def _walk(root: str) -> dict[str, int]:
    """Every file below ``root`` with its size, as ``ls -lR`` sees it."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.stat(p).st_size
    return out


def test_listing_snapshot_spares_the_relisting(s3: S3Server, mount_s3: Callable[..., Mounted],
                                               tmp_path: Path) -> None:
    want = {}
    for d in range(3):
        for i in range(700 if d == 0 else 20):  # 'd0' takes more than one page
            rel = f"d{d}/f{i:04d}"
            put(s3, rel, b"x" * (i % 5))
            want[f"d{d}/f{i:04d}"] = i % 5
    put(s3, "d1/deeper/leaf", b"leaf")
    want["d1/deeper/leaf"] = 4
    put(s3, "top", b"top")
    want["top"] = 3
    snap = tmp_path / "snap" / "listing.parquet"
    snap.parent.mkdir()
    src = {"listing_snapshot": str(snap), "list_ttl": "1h", "stat_ttl": "1h"}

    with mount_s3(s3, source=src) as m:
        assert "no listing snapshot" in m.read_log()
        assert _walk(m.mountpoint) == want
        lists = stats(m.mountpoint)["capacity"]["list"]
        assert lists >= 5  # the bucket, d0, d1, d1/deeper, d2
        # On demand, while mounted: `tierfs snapshot MNT FILE`.
        other = tmp_path / "snap" / "now.parquet"
        res = subprocess.run(tierfs_cmd("snapshot", m.mountpoint, str(other)),
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        # One entry per name: every file, and d0, d1, d2, d1/deeper.
        assert f"{other}: {len(want) + 4} entries" in res.stdout
        assert other.exists()
        assert not snap.exists()  # the configured file is written at unmount
    assert snap.exists()
    assert not list((tmp_path / "snap").glob(".listing-*"))  # written to a temp name, renamed

    # Remount: everything is served from the snapshot, without one LIST or HEAD.
    with mount_s3(s3, source=src) as m:
        assert "loaded" in m.read_log()
        assert _walk(m.mountpoint) == want
        counters = stats(m.mountpoint)["capacity"]
        assert counters.get("list", 0) == 0 and counters.get("stat", 0) == 0, counters
        with open(os.path.join(m.mountpoint, "d1", "deeper", "leaf"), "rb") as f:
            assert f.read() == b"leaf"
        # The mount's own changes update the loaded listings at once.
        with open(os.path.join(m.mountpoint, "d2", "new"), "wb") as f:
            f.write(b"new!")
        os.unlink(os.path.join(m.mountpoint, "top"))  # top level: see the module docstring
        names = set(os.listdir(os.path.join(m.mountpoint, "d2")))
        assert "new" in names and "top" not in os.listdir(m.mountpoint)
        assert stats(m.mountpoint)["capacity"].get("list", 0) == 0
    want["d2/new"] = 4
    del want["top"]

    # Loaded listings are trusted for list_ttl from the load, then fetched again.
    put(s3, "d2/behind", b"b")
    short = {**src, "list_ttl": "1s", "stat_ttl": "1s"}
    with mount_s3(s3, source=short) as m:
        d2 = os.path.join(m.mountpoint, "d2")
        wait_for(lambda: "behind" in os.listdir(d2), "the snapshot's listing to expire")
        want["d2/behind"] = 1
        assert _walk(m.mountpoint) == want

    # A snapshot of another source is not used (a warning), and the mount lists as usual.
    with mount_s3(s3, "d1", source=src) as m:
        assert "not used" in m.read_log()
        assert sorted(os.listdir(m.mountpoint)) == sorted(
            [f"f{i:04d}" for i in range(20)] + ["deeper"])
        assert stats(m.mountpoint)["capacity"]["list"] >= 1


def test_snapshot_option_and_errors(s3: S3Server, mount_s3: Callable[..., Mounted],
                                    tmp_path: Path) -> None:
    put(s3, "o/a", b"a")
    snap = tmp_path / "opt.parquet"
    with mount_s3(s3, options=[f"snapshot={snap}"]) as m:
        assert os.listdir(os.path.join(m.mountpoint, "o")) == ["a"]
        res = subprocess.run(tierfs_cmd("snapshot", m.mountpoint), capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert snap.exists() and str(snap) in res.stdout
    with mount_s3(s3) as m:  # no snapshot configured: the command says so
        res = subprocess.run(tierfs_cmd("snapshot", m.mountpoint), capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1 and "listing_snapshot" in res.stderr
    # A corrupt file is ignored with a warning; the mount works.
    snap.write_bytes(b"not parquet")
    with mount_s3(s3, options=[f"snapshot={snap}"]) as m:
        assert os.listdir(os.path.join(m.mountpoint, "o")) == ["a"]
        assert "not used" in m.read_log()


# -- random reads fetch a block ------------------------------------------------------
def test_random_reads_fetch_aligned_blocks(s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    size = 3 * MiB + 4321  # the last block and the last page are short
    data = random.Random(5).randbytes(size)
    put(s3, "rb/f", data)
    nofill = "[policy]\nfill_random_max = 0\n"  # counts GETs: no background fill
    with mount_s3(s3, extra=nofill) as m:
        path = os.path.join(m.mountpoint, "rb", "f")
        assert read_direct(path, 8192, 4096) == data[8192:12288]
        snap = stats(m.mountpoint)
        before, gets = snap["counters"], snap["capacity"]["get"]
        assert before.get("read.remote_blocks") == 1
        # The rest of the 64 KiB block came with it: its pages are DRAM hits.
        for off in (0, 4096, 60 * KiB, 12288 + 5):
            assert read_direct(path, off, 4096) == data[off:off + 4096]
        snap = stats(m.mountpoint)
        after = snap["counters"]
        assert after.get("read.remote_blocks") == 1
        assert snap["capacity"]["get"] == gets  # no request to the store
        dram = sum(v for k, v in after.items() if k.startswith("read.bytes.dram."))
        assert dram == 4 * 4096
        # A read across a block boundary fetches both blocks.
        off = 128 * KiB - 100
        assert read_direct(path, off, 4096) == data[off:off + 4096]
        assert stats(m.mountpoint)["counters"]["read.remote_blocks"] == 2
        # Random reads anywhere, at EOF and past it, match the data.
        rng = random.Random(9)
        for _ in range(300):
            off = rng.choice([rng.randrange(size), size - rng.randrange(1, 70_000)])
            n = rng.choice([1, 100, 4096, 5000, 70_000])
            assert read_direct(path, off, n) == data[off:off + n], (off, n)
        assert read_direct(path, size, 4096) == b""
        # A write into a cached block: readers see the new bytes, and the old
        # neighbours stay right.
        with open(path, "r+b") as f:
            f.seek(8192 + 10)
            f.write(b"NEW")
        data = data[:8192 + 10] + b"NEW" + data[8192 + 13:]
        for off in (0, 8192, 12288):
            assert read_direct(path, off, 4096) == data[off:off + 4096]
        settled(m)
        assert read_back(s3, "rb/f") == data

    # remote_block = page_size turns the widening off: each miss fetches its pages only.
    with mount_s3(s3, extra='[cache]\nremote_block = "4KiB"\n' + nofill) as m:
        path = os.path.join(m.mountpoint, "rb", "f")
        assert read_direct(path, 8192, 4096) == data[8192:12288]
        assert read_direct(path, 0, 4096) == data[:4096]
        c = stats(m.mountpoint)["counters"]
        assert "read.remote_blocks" not in c
        assert sum(v for k, v in c.items() if k.startswith("read.bytes.dram.")) == 0


# -- a file read at random is fetched whole in the background -------------------------
def test_random_reader_fills_the_file_into_the_fast_tier(
        restartable_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """Random misses on an object start one background fill of the file; once it is
    done, every byte is served with the store stopped. A file over the size limit, a
    streamed file and a `cache = false` file are not filled."""
    server = restartable_s3
    table = random.Random(11).randbytes(5 * MiB + 777)
    put(server, "emb/table.f32", table)
    put(server, "emb/big.f32", b"b" * (7 * MiB))
    put(server, "nocache/t.f32", random.Random(12).randbytes(2 * MiB))
    put(server, "shards/s0", random.Random(13).randbytes(4 * MiB))
    extra = ('[policy]\nfill_random_max = "6MiB"\n'
             '[[rule]]\npath = "nocache/**"\ncache = false\n')
    with mount_s3(server, extra=extra) as m:
        m.allow_error(r"not answering")
        emb = os.path.join(m.mountpoint, "emb", "table.f32")
        for off in (3 * MiB, 100 * KiB, 4 * MiB + 5):  # the first is 'unknown', then random
            assert read_direct(emb, off, 4096) == table[off:off + 4096]
        wait_for(lambda: stats(m.mountpoint)["counters"].get("fill.done", 0) >= 1, "the fill")
        snap = stats(m.mountpoint)
        assert snap["counters"]["fill.started"] == 1
        assert snap["counters"]["fill.bytes"] > 0
        # Another random miss of the same version starts no second fill.
        assert read_direct(emb, 2 * MiB, 4096) == table[2 * MiB:2 * MiB + 4096]
        # A streamed file, a file under cache = false and one over the limit: no fill.
        with open(os.path.join(m.mountpoint, "shards", "s0"), "rb") as f:
            while f.read(MiB):
                pass
        for name, size in (("nocache/t.f32", 2 * MiB), ("emb/big.f32", 7 * MiB)):
            p = os.path.join(m.mountpoint, name)
            for off in (MiB, 0, size - 4096):
                read_direct(p, off, 4096)
        snap = stats(m.mountpoint)
        assert snap["counters"]["fill.started"] == 1
        assert snap["fast"]["bytes_used"] == len(table)
        server.stop()
        try:
            rng = random.Random(3)
            for _ in range(200):
                off = rng.randrange(len(table))
                n = rng.choice([1, 4096, 70_000])
                assert read_direct(emb, off, n) == table[off:off + n]
            with open(emb, "rb") as f:
                assert f.read() == table
            # The fill's bytes were of use: the fast tier served them (counted per fill).
            assert stats(m.mountpoint)["counters"].get("fill.used_bytes", 0) > 0
        finally:
            server.start()


# -- a walk over small files is fetched ahead ---------------------------------------
def test_a_walk_over_small_files_is_fetched_ahead(s3: S3Server,
                                                 mount_s3: Callable[..., Mounted]) -> None:
    """stat + open + read of every small file of a directory in name order: after the
    first three, the files come from the walk's read-ahead, and every byte is right; a
    file changed through the mount is read back new."""
    rng = random.Random(4)
    files = {f"w/f{i:03d}": rng.randbytes(rng.choice([0, 1, 4096, 5000, 70_000]))
             for i in range(40)}
    for rel, data in files.items():
        put(s3, rel, data)
    with mount_s3(s3) as m:
        for rel in sorted(files)[:20]:
            p = os.path.join(m.mountpoint, rel)
            assert os.stat(p).st_size == len(files[rel])
            with open(p, "rb") as f:
                assert f.read() == files[rel], rel
        c = stats(m.mountpoint)["counters"]
        # From the fourth file on (the second lists the directory, the third is the
        # second step in order and starts the walk); an empty file is never read.
        assert c.get("walk.hits", 0) >= sum(1 for rel in sorted(files)[3:20] if files[rel])
        assert c.get("read.bytes.ahead.unknown", 0) + c.get("read.bytes.ahead.sequential", 0) > 0
        # Written through the mount (a file fetched ahead): read back new.
        target = os.path.join(m.mountpoint, sorted(files)[25])
        with open(target, "r+b") as f:
            f.write(b"NEW!")
        files[sorted(files)[25]] = b"NEW!" + files[sorted(files)[25]][4:]
        for rel in sorted(files)[20:]:
            with open(os.path.join(m.mountpoint, rel), "rb") as f:
                assert f.read() == files[rel], rel
    # Out of order (and with walk read-ahead on): nothing is fetched ahead.
    with mount_s3(s3) as m:
        for rel in sorted(files, reverse=True)[:10]:
            with open(os.path.join(m.mountpoint, rel), "rb") as f:
                assert f.read() == files[rel], rel
        assert stats(m.mountpoint)["counters"].get("walk.fetched_files", 0) == 0


# -- speculative fetches that go unused back off -------------------------------------
# A listing that stays cached however slow the machine: the walk signal needs it.
_LONG_TTLS = {"stat_ttl": "1h", "list_ttl": "1h"}


def _documents(server: S3Server, n: int, seed: int) -> dict[str, bytes]:
    """``n`` small documents ``docs/d00000``... of 1-40 KB (a retriever's corpus)."""
    rng = random.Random(seed)
    docs = {f"docs/d{i:05d}": rng.randbytes(rng.randrange(1000, 40_000)) for i in range(n)}
    for rel, data in docs.items():
        put(server, rel, data)
    return docs


def _read_all(m: Mounted, docs: dict[str, bytes], rels: list[str]) -> int:
    """Open and read each of ``rels`` through the mount; every byte must be the source's."""
    n = 0
    for rel in rels:
        with open(os.path.join(m.mountpoint, rel), "rb") as f:
            data = f.read()
        assert data == docs[rel], rel
        n += len(data)
    return n


def _walk_settled(m: Mounted) -> dict[str, Any]:
    """Stats once no fetch ahead is in flight (they run in the background)."""
    wait_for(lambda: stats(m.mountpoint)["queues"]["walk_in_flight"] == 0,
             "the fetches ahead to end")
    return stats(m.mountpoint)


def test_random_opens_by_id_fetch_at_most_half_again_what_they_read(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """A retriever's document fetch, cold: 10 documents opened by random id per query
    over 400 small files. Whatever the timing of the background fetches, the bytes
    fetched from the source stay within 1.5x the bytes served, and every byte is the
    source's. (Random ids sort after the previous one half the time: a walk signal made
    of that alone fetched files ahead nobody opened.)"""
    docs = _documents(s3, 400, seed=14)
    names = sorted(docs)
    order = random.Random(1414).sample(names, 100)  # 10 queries of 10 distinct ids
    with mount_s3(s3, source=_LONG_TTLS) as m:
        read = _read_all(m, docs, order)
        snap = _walk_settled(m)
        amp = snap["amplification"]
        assert amp["served_bytes"] >= read  # cold: every byte went through the daemon
        assert amp["source_bytes"] <= 1.5 * amp["served_bytes"], (amp, snap["counters"])


def test_a_walk_in_name_order_is_still_fetched_ahead(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """The same kind of directory read in name order: files come from the walk-ahead."""
    docs = _documents(s3, 400, seed=15)
    with mount_s3(s3, source=_LONG_TTLS) as m:
        _read_all(m, docs, sorted(docs)[:60])
        c = _walk_settled(m)["counters"]
        assert c.get("walk.hits", 0) > 0
        assert counter_sum({"counters": c}, "read.bytes.ahead.") > 0
        assert c.get("walk.used_bytes", 0) > 0
        # `tierfs stats` shows the buffer as a tier, the amplification, and the walk-ahead's
        # fetched/used/wasted bytes.
        out = subprocess.run(tierfs_cmd("stats", m.mountpoint), capture_output=True,
                             text=True, check=True, timeout=60).stdout
        lines = out.splitlines()
        assert any(line.startswith("ahead ") for line in lines), out
        assert any(line.startswith("read amplification ") for line in lines), out
        assert any(line.startswith("walk-ahead ") for line in lines), out


def test_walk_ahead_backs_off_when_unused_and_comes_back_for_a_walk(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """Opening every fourth file in name order looks like a walk, but three of four files
    fetched ahead go unread: the directory's walk-ahead backs off (it fetches fewer than
    the reads it serves would have at full width), and a dense walk later in the same
    directory gets its files fetched ahead again."""
    docs = _documents(s3, 400, seed=16)
    names = sorted(docs)
    with mount_s3(s3, source=_LONG_TTLS) as m:
        _read_all(m, docs, names[0:200:4])  # 50 opens, 4 positions apart
        c = _walk_settled(m)["counters"]
        assert c.get("walk.backoffs", 0) >= 1
        assert c.get("walk.wasted_files", 0) > 0
        # At full width every file past the first steps would be fetched (~200).
        assert c.get("walk.started_files", 0) < 120, c
        hits = c.get("walk.hits", 0)
        ahead = counter_sum({"counters": c}, "read.bytes.ahead.")
        _read_all(m, docs, names[240:320])  # a real walk, further on
        c = _walk_settled(m)["counters"]
        assert c.get("walk.hits", 0) > hits
        assert counter_sum({"counters": c}, "read.bytes.ahead.") > ahead


# -- the rest of a fetched block goes to the kernel ----------------------------------------
@pytest.mark.parametrize("consistency", ["close-to-open", "immutable"])
def test_the_rest_of_a_block_is_pushed_to_the_kernel(
        s3: S3Server, mount_s3: Callable[..., Mounted], consistency: str) -> None:
    """A random miss fetches a 64 KiB block; the pages the reader did not ask for go
    into the kernel's page cache, so reading them never reaches the daemon (with the
    default consistency too: the kernel keeps them while the version does not change).
    A file open for writing gets no pushes, and its readers see the written bytes."""
    data = random.Random(21).randbytes(2 * MiB + 10000)
    put(s3, "kv/blocks", data)
    extra = f'[mount]\nconsistency = "{consistency}"\n[policy]\nfill_random_max = 0\n'
    with mount_s3(s3, extra=extra) as m:
        path = os.path.join(m.mountpoint, "kv", "blocks")
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 100 * KiB) == data[100 * KiB:104 * KiB]
            pushed = 60 * KiB  # [64 KiB, 100 KiB) and [104 KiB, 128 KiB)
            wait_for(lambda: stats(m.mountpoint)["counters"].get("kernel.pushed_bytes") == pushed,
                     "the push")
            before = stats(m.mountpoint)["counters"]["read.requests"]
            for off in range(64 * KiB, 128 * KiB, 4096):
                assert os.pread(fd, 4096, off) == data[off:off + 4096]
            assert stats(m.mountpoint)["counters"]["read.requests"] == before
            # The last block is short: the push ends at the end of the file.
            assert os.pread(fd, 50, 2 * MiB + 10) == data[2 * MiB + 10:2 * MiB + 60]
            pushed += 10000 - 4096
            wait_for(lambda: stats(m.mountpoint)["counters"]["kernel.pushed_bytes"] == pushed,
                     "the push of the short block")
            before = stats(m.mountpoint)["counters"]["read.requests"]
            assert os.pread(fd, 8192, 2 * MiB + 4096) == data[2 * MiB + 4096:]
            assert os.fstat(fd).st_size == len(data)
            assert stats(m.mountpoint)["counters"]["read.requests"] == before
            # A writer is open: a block fetched now is not pushed (a push in flight
            # could land on the pages a write just filled).
            with open(path, "r+b", buffering=0) as w:
                assert os.pread(fd, 4096, MiB + 8192) == data[MiB + 8192:MiB + 12288]
                w.seek(MiB + 4096)
                w.write(b"X" * 4096)
                assert stats(m.mountpoint)["counters"]["kernel.pushed_bytes"] == pushed
        finally:
            os.close(fd)
        # Closed: the object is written, and a new open reads the new bytes.
        with open(path, "rb", buffering=0) as f:
            f.seek(MiB)
            assert f.read(12288) == data[MiB:MiB + 4096] + b"X" * 4096 + \
                data[MiB + 8192:MiB + 12288]
    assert read_back(s3, "kv/blocks")[MiB + 4096:MiB + 8192] == b"X" * 4096


def test_pushed_pages_of_an_old_version_are_never_served(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """Default consistency: pages pushed into the kernel belong to the version read; an
    object replaced between two opens (same size) is read whole at its new version."""
    rng = random.Random(31)
    for i in range(3):
        put(s3, f"kv/b{i}", rng.randbytes(512 * KiB))
    with mount_s3(s3, source={"stat_ttl": "0s", "list_ttl": "0s"},
                  extra="[policy]\nfill_random_max = 0\n") as m:
        for i in range(3):
            path = os.path.join(m.mountpoint, "kv", f"b{i}")
            old = (s3.bucket_dir / "kv" / f"b{i}").read_bytes()
            new = rng.randbytes(len(old))
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                assert os.pread(fd, 4096, 100 * KiB) == old[100 * KiB:104 * KiB]
                # The rest of the block [64 KiB, 128 KiB) lands in the kernel's cache.
                wait_for(lambda: resident_pages(fd, 128 * KiB) >= 16, "the push")
            finally:
                os.close(fd)
            p = s3.bucket_dir / "kv" / f"b{i}"
            p.write_bytes(new)
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a new second
            with open(path, "rb") as f:
                assert f.read() == new, "bytes of the old version were served"


# -- the warm cache survives a remount and serves with the store gone --------------------
def test_remount_serves_warm_cache_with_the_store_stopped(
        restartable_s3: S3Server, mount_s3: Callable[..., Mounted], tmp_path: Path) -> None:
    """Warm, unmount, remount, stop the server: the fast tier and the listing
    snapshot answer every read of the warm file; only cold data fails (EIO)."""
    server = restartable_s3
    hot = random.Random(5).randbytes(3 * MiB + 123)
    put(server, "emb/table.f32", hot)
    put(server, "emb/cold.bin", b"c" * 10000)
    cache = str(tmp_path / "cache")
    snap = tmp_path / "listing.parquet"
    src = {"listing_snapshot": str(snap), "list_ttl": "1h", "stat_ttl": "1h"}
    with mount_s3(server, source=src, cache=cache) as m:
        res = subprocess.run(tierfs_cmd("warm", os.path.join(m.mountpoint, "emb", "table.f32")),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert stats(m.mountpoint)["fast"]["bytes_used"] == len(hot)
        assert sorted(os.listdir(os.path.join(m.mountpoint, "emb"))) == ["cold.bin", "table.f32"]
    with mount_s3(server, source=src, cache=cache) as m:
        m.allow_error(r"not answering")
        server.stop()
        try:
            path = os.path.join(m.mountpoint, "emb", "table.f32")
            assert os.stat(path).st_size == len(hot)
            rng = random.Random(9)
            for _ in range(50):
                off = rng.randrange(0, len(hot))
                assert read_direct(path, off // 4096 * 4096, 4096) == \
                    hot[off // 4096 * 4096:off // 4096 * 4096 + 4096]
            with open(path, "rb") as f:
                assert f.read() == hot
            snapshot = stats(m.mountpoint)
            assert snapshot["counters"].get("read.bytes.capacity.random", 0) == 0
            assert counter_sum(snapshot, "read.bytes.fast.") > 0
            # Cold data cannot come from anywhere: EIO, and the mount stays up.
            assert errno_of(lambda: read_direct(
                os.path.join(m.mountpoint, "emb", "cold.bin"), 0, 4096)) == errno.EIO
            assert is_mounted(m.mountpoint)
        finally:
            server.start()


def counter_sum(snap: dict[str, Any], prefix: str) -> int:
    return sum(v for k, v in snap["counters"].items() if k.startswith(prefix))
