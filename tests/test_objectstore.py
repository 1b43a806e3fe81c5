"""The object-store capacity tier against a real S3 server on loopback (rclone serve s3).

No client is mocked: every test talks S3 to `s3server.S3Server`. Objects that
only need to exist are created directly in the server's backing directory (fast);
what the tier writes is checked through a second, independent pyarrow client.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import stat as stat_mod
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import trio

from fusefs.tiers.capacity import TierUnavailable, same_version
from fusefs.tiers.objectstore import ObjectStoreTier
from s3server import S3Server

pytestmark = pytest.mark.s3

KiB = 1024
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool directories of tiers a test does not close end up in its tmp_path."""
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(fn, *args):
    return trio.run(fn, *args)


def make_tier(server: S3Server, prefix: str = "", **options) -> ObjectStoreTier:
    options.setdefault("dir_markers", False)  # rclone keeps markers as files: see s3server.py
    options.setdefault("request_timeout", 30)  # a loaded CI machine must not look like a dead server
    options.setdefault("read_timeout", 120)
    return ObjectStoreTier.from_uri(server.uri(prefix), access_key=server.access_key,
                                    secret_key=server.secret_key, **options)


async def started(server: S3Server, prefix: str = "", **options) -> ObjectStoreTier:
    tier = make_tier(server, prefix, **options)
    await tier.start()
    return tier


def put_file(server: S3Server, rel: str, data: bytes) -> None:
    p = server.bucket_dir / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def read_back(server: S3Server, rel: str) -> bytes:
    with server.client().open_input_stream(f"{server.bucket}/{rel}") as f:
        return f.read()


def client_type(server: S3Server, rel: str):
    return server.client().get_file_info(f"{server.bucket}/{rel}").type


async def write_file(tier: ObjectStoreTier, path: bytes, data: bytes) -> None:
    f, _ = await tier.create(path, os.O_WRONLY, 0o644, os.getuid(), os.getgid())
    try:
        await f.pwrite(0, data)
        await f.flush()
    finally:
        await f.close()


async def pread_all(f, ranges: list[tuple[int, int]]) -> list[bytes]:
    """``(offset, size)`` ranges of one handle read concurrently, as the engine's
    read-ahead reads them."""
    out: list[bytes] = [b""] * len(ranges)

    async def one(i: int, off: int, size: int) -> None:
        out[i] = await f.pread(off, size)

    async with trio.open_nursery() as nursery:
        for i, (off, size) in enumerate(ranges):
            nursery.start_soon(one, i, off, size)
    return out


async def raises(code: int, coro) -> OSError:
    try:
        await coro
    except OSError as exc:
        assert exc.errno == code, f"expected {errno.errorcode[code]}, got {exc!r}"
        return exc
    raise AssertionError(f"expected {errno.errorcode[code]}, nothing raised")


# -- start -------------------------------------------------------------------
def test_start_and_root(s3: S3Server) -> None:
    put_file(s3, "pfx/a.bin", b"x" * 10)

    async def main() -> None:
        tier = await started(s3)
        assert (await tier.stat(b"")).is_dir
        sub = await started(s3, "pfx")
        assert [n for n, _ in await sub.listdir(b"")] == [b"a.bin"]
        st = await sub.stat(b"a.bin")
        assert st.is_reg and st.st_size == 10 and stat_mod.S_IMODE(st.st_mode) == 0o644
        assert st.st_uid == os.getuid() and st.etag is None and st.st_mtime_ns > 0
        fs = await sub.statfs()
        assert fs.namemax == 255 and fs.blocks > 1 << 40
        await tier.close()
        await sub.close()

    run(main)


def test_start_errors_are_clear(s3: S3Server) -> None:
    async def main() -> None:
        dead = S3Server.__new__(S3Server)
        dead.__dict__.update(s3.__dict__)
        dead.port = 1  # nothing listens there
        t0 = time.monotonic()
        exc = await raises(errno.EIO, started(dead))
        assert isinstance(exc, TierUnavailable)
        # Refused at once: no retry loop (that would last the 30 s retry budget). The
        # bound is that behaviour, with room for a loaded machine (6.5 s seen at load 12).
        assert "127.0.0.1:1" in str(exc) and time.monotonic() - t0 < 25

        tier = ObjectStoreTier.from_uri(s3.uri(), access_key="WRONGACCESSKEY99",
                                        secret_key="wrong-secret-key-000", dir_markers=False)
        exc = await raises(errno.EACCES, tier.start())
        assert "credentials" in str(exc)

        missing = ObjectStoreTier.from_uri(s3.uri(bucket="nosuchbucket"), access_key=s3.access_key,
                                           secret_key=s3.secret_key)
        exc = await raises(errno.ENOENT, missing.start())
        assert "nosuchbucket" in str(exc)
        exc = await raises(errno.ENOENT, started(s3, "no/such/prefix"))
        assert "no/such/prefix" in str(exc)

    run(main)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown object-store option"):
        ObjectStoreTier.from_uri("s3://bucket", stat_tl=3)
    with pytest.raises(ValueError, match="unknown parameter"):
        ObjectStoreTier.from_uri("s3://bucket?endpoint_overide=x")
    with pytest.raises(ValueError, match="s3:// sources only"):
        ObjectStoreTier.from_uri("file:///tmp", access_key="a")


# -- listing -----------------------------------------------------------------
def test_listing_pages_and_fills_stat_cache(s3: S3Server) -> None:
    many = s3.bucket_dir / "many"
    many.mkdir()
    for i in range(1500):
        (many / f"f{i:05d}").write_bytes(b"y" * (i % 7))
    (many / "sub1").mkdir()
    (many / "sub1" / "inner").write_bytes(b"z")

    async def main() -> None:
        tier = await started(s3)
        entries = dict(await tier.listdir(b"many"))
        assert len(entries) == 1501  # more than one S3 page (1000 keys)
        assert entries[b"f01499"].st_size == 1499 % 7 and entries[b"sub1"].is_dir
        assert tier.list_requests == 1
        stats_before = tier.requests["stat"]
        for i in range(0, 1500, 37):
            assert (await tier.stat(b"many/f%05d" % i)).st_size == i % 7
        await raises(errno.ENOENT, tier.stat(b"many/not-there"))
        assert tier.requests["stat"] == stats_before  # all answered by the listing
        # a second listing within the TTL costs nothing
        await tier.listdir(b"many")
        assert tier.list_requests == 1
        await raises(errno.ENOTDIR, tier.listdir(b"many/f00001"))
        await raises(errno.ENOENT, tier.listdir(b"nothing"))

    run(main)


def test_cache_ttls_with_fake_clock(s3: S3Server) -> None:
    put_file(s3, "d/a", b"1")
    clock = FakeClock()

    async def main() -> None:
        # list_after=0: lookups are HEADs here, whose TTLs this test is about.
        tier = await started(s3, clock=clock, stat_ttl=60, negative_ttl=5, list_ttl=30,
                             list_after=0)
        assert (await tier.stat(b"d/a")).st_size == 1
        await raises(errno.ENOENT, tier.stat(b"d/b"))
        put_file(s3, "d/a", b"1234")  # changed behind the tier's back
        put_file(s3, "d/b", b"new")
        assert (await tier.stat(b"d/a")).st_size == 1  # positive entry still fresh
        await raises(errno.ENOENT, tier.stat(b"d/b"))  # negative entry still fresh
        clock.advance(6)
        assert (await tier.stat(b"d/b")).st_size == 3  # negative expired
        assert (await tier.stat(b"d/a")).st_size == 1
        clock.advance(55)
        assert (await tier.stat(b"d/a")).st_size == 4  # positive expired

        names = {n for n, _ in await tier.listdir(b"d")}
        assert names == {b"a", b"b"}
        put_file(s3, "d/c", b"")
        assert {n for n, _ in await tier.listdir(b"d")} == names
        await raises(errno.ENOENT, tier.stat(b"d/c"))  # the fresh listing says it is not there
        clock.advance(31)
        assert {n for n, _ in await tier.listdir(b"d")} == {b"a", b"b", b"c"}
        assert tier.list_requests == 2

    run(main)


def test_lookups_list_a_directory_after_list_after_misses(s3: S3Server) -> None:
    for i in range(5):
        put_file(s3, f"d/f{i}", b"x" * i)
    put_file(s3, "d/sub/deep", b"deep")
    put_file(s3, "e/only", b"1")

    async def main() -> None:
        tier = await started(s3, clock=FakeClock(), list_after=2)
        assert (await tier.stat(b"d/f1")).st_size == 1  # a HEAD
        assert tier.list_requests == 0
        assert (await tier.stat(b"d/f2")).st_size == 2  # the second miss lists d
        assert tier.list_requests == 1
        heads = tier.requests["stat"]
        # Every other name in d, present or not, comes from that listing.
        assert [(await tier.stat(f"d/f{i}".encode())).st_size for i in range(5)] == [0, 1, 2, 3, 4]
        assert (await tier.stat(b"d/sub")).is_dir
        await raises(errno.ENOENT, tier.stat(b"d/nothing"))
        assert tier.requests["stat"] == heads and tier.list_requests == 1
        # Concurrent lookups in a directory that is due to be listed share one LIST.
        tier2 = await started(s3, clock=FakeClock(), list_after=1)
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(tier2.stat, f"d/f{i}".encode())
        assert tier2.list_requests == 1 and tier2.requests["stat"] == 0
        # A directory probed once is not listed; list_after=0 never lists.
        assert (await tier.stat(b"e/only")).st_size == 1
        assert tier.list_requests == 1
        tier3 = await started(s3, clock=FakeClock(), list_after=0)
        for i in range(5):
            await tier3.stat(f"d/f{i}".encode())
        assert tier3.list_requests == 0 and tier3.requests["stat"] == 5

    run(main)


def test_own_writes_update_the_cache(s3: S3Server) -> None:
    put_file(s3, "d/old", b"old")
    clock = FakeClock()

    async def main() -> None:
        tier = await started(s3, clock=clock)
        await tier.listdir(b"d")
        await raises(errno.ENOENT, tier.stat(b"d/new"))  # negative entry
        await write_file(tier, b"d/new", b"hello")
        assert (await tier.stat(b"d/new")).st_size == 5
        assert dict(await tier.listdir(b"d"))[b"new"].st_size == 5
        await tier.unlink(b"d/old")
        await raises(errno.ENOENT, tier.stat(b"d/old"))
        assert b"old" not in dict(await tier.listdir(b"d"))
        await tier.rename(b"d/new", b"d/renamed")
        names = {n for n, _ in await tier.listdir(b"d")}
        assert names == {b"renamed"}
        assert tier.list_requests == 1  # all of it without re-listing
        assert read_back(s3, "d/renamed") == b"hello"
        assert not (s3.bucket_dir / "d" / "old").exists()

    run(main)


# -- reads -------------------------------------------------------------------
def test_ranged_reads_at_every_alignment(s3: S3Server) -> None:
    data = os.urandom(3 * 4096 + 123)
    put_file(s3, "r/obj", data)
    size = len(data)

    async def main() -> None:
        tier = await started(s3)
        f = await tier.open(b"r/obj", os.O_RDONLY)
        try:
            offsets = [0, 1, 4095, 4096, 4097, 8191, 8192, size - 1, size, size + 1, size + 4096]
            sizes = [0, 1, 4095, 4096, 4097, 8193, size, 10 * size]
            for off in offsets:
                for n in sizes:
                    gets = tier.requests["get"]
                    got = await f.pread(off, n)
                    assert got == data[off:off + n], (off, n)
                    want_get = 1 if n and off < size else 0
                    assert tier.requests["get"] - gets == want_get, (off, n)  # one ranged GET
            ranges = [(o, s) for o in offsets for s in (1, 4096, 5000)]
            got = await pread_all(f, ranges)
            assert got == [data[o:o + s] for o, s in ranges]
            assert (await f.fstat()).st_size == size
        finally:
            await f.close()
            await f.close()  # idempotent

    run(main)


def test_a_small_file_fetched_whole_states_its_version(s3_md5: S3Server) -> None:
    """Walk-ahead's `fetch_small`: one GET whose answer states the version (ETag, size,
    Last-Modified), kept by the stat cache, so the reader's open sends no HEAD; an object
    that changed size since it was listed is refused, never fetched under the old name."""
    a, b = os.urandom(3000), os.urandom(10)
    put_file(s3_md5, "d/a", a)
    put_file(s3_md5, "d/b", b)
    put_file(s3_md5, "d/empty", b"")

    async def main() -> None:
        tier = await started(s3_md5)
        try:
            listed = dict(await tier.listdir(b"d"))
            assert listed[b"a"].etag is None  # listings through pyarrow carry none
            heads, gets = tier.requests["stat"], tier.requests["get"]
            version, got = await tier.fetch_small(b"d/a", listed[b"a"])
            assert got == a
            assert version.etag is not None and version.etag.strip('"') == hashlib.md5(a).hexdigest()
            assert same_version(listed[b"a"].version(), version)
            assert (tier.requests["stat"], tier.requests["get"]) == (heads, gets + 1)
            f = await tier.open(b"d/a", os.O_RDONLY)
            try:
                assert (await f.fstat()).version() == version
                assert tier.requests["stat"] == heads, "the open sent a HEAD"
                assert await f.pread(0, 5000) == a
            finally:
                await f.close()
            version, got = await tier.fetch_small(b"d/empty", listed[b"empty"])
            assert got == b"" and version.size == 0
            put_file(s3_md5, "d/b", os.urandom(20))  # longer than listed
            await raises(errno.ESTALE, tier.fetch_small(b"d/b", listed[b"b"]))
        finally:
            await tier.close()

    run(main)


def test_big_sequential_read(s3: S3Server) -> None:
    total = 64 * MiB
    h = hashlib.sha256()
    with open(s3.bucket_dir / "big.bin", "wb") as out:
        for _ in range(total // (4 * MiB)):
            chunk = os.urandom(4 * MiB)
            h.update(chunk)
            out.write(chunk)
    want = h.hexdigest()

    async def main() -> None:
        tier = await started(s3)
        f = await tier.open(b"big.bin", os.O_RDONLY)
        try:
            got = hashlib.sha256()
            t0 = time.monotonic()
            off = 0
            while chunk := await f.pread(off, 4 * MiB):
                got.update(chunk)
                off += len(chunk)
            seq = time.monotonic() - t0
            assert off == total and got.hexdigest() == want
            got = hashlib.sha256()
            t0 = time.monotonic()
            for base in range(0, total, 16 * MiB):
                for part in await pread_all(f, [(base + i * MiB, MiB) for i in range(16)]):
                    got.update(part)
            par = time.monotonic() - t0
            assert got.hexdigest() == want
            print(f"\n64 MiB: sequential 4 MiB preads {total / MiB / seq:.0f} MiB/s, "
                  f"16 concurrent 1 MiB preads {total / MiB / par:.0f} MiB/s")
        finally:
            await f.close()

    run(main)


# -- writes ------------------------------------------------------------------
def test_writes_reach_the_store(s3: S3Server) -> None:
    put_file(s3, "w/existing", b"0123456789")

    async def main() -> None:
        tier = await started(s3)
        # create: invisible until flush, then one object
        f, st = await tier.create(b"w/new", os.O_WRONLY, 0o644, 0, 0)
        assert st.st_size == 0
        await f.pwrite(0, b"abc")
        await f.pwrite(10, b"xyz")
        assert (await tier.stat(b"w/new")).st_size == 13  # the open writer's view
        assert b"new" in dict(await tier.listdir(b"w"))
        await f.flush()
        assert read_back(s3, "w/new") == b"abc" + b"\0" * 7 + b"xyz"
        await f.pwrite(0, b"A")
        await f.close()  # flushes what is still dirty
        assert read_back(s3, "w/new") == b"Abc" + b"\0" * 7 + b"xyz"
        await raises(errno.EEXIST, tier.create(b"w/new", os.O_WRONLY, 0o644, 0, 0))

        # open without O_TRUNC: partial overwrite keeps the rest
        f = await tier.open(b"w/existing", os.O_RDWR)
        await f.pwrite(2, b"--")
        assert await f.pread(0, 100) == b"01--456789"
        await f.fsync(False)
        await f.close()
        assert read_back(s3, "w/existing") == b"01--456789"

        # O_TRUNC starts empty
        f = await tier.open(b"w/existing", os.O_WRONLY | os.O_TRUNC)
        await f.pwrite(0, b"T")
        await f.close()
        assert read_back(s3, "w/existing") == b"T"

        # a second writer of a file being written shares the first one's spool: one
        # file, one set of bytes, whichever closes last (as two descriptors on a disk)
        f1, _ = await tier.create(b"w/pair", os.O_WRONLY, 0o644, 0, 0)
        await f1.pwrite(0, b"one")
        f2 = await tier.open(b"w/pair", os.O_RDWR)
        assert await f2.pread(0, 10) == b"one"
        await f2.pwrite(3, b"two")
        await f2.close()
        await f1.pwrite(6, b"!")  # after the other's close: still the same file
        await f1.close()
        assert read_back(s3, "w/pair") == b"onetwo!"

        # setattr(size) without a handle rewrites the object
        st = await tier.setattr(b"w/new", size=5)
        assert st.st_size == 5 and read_back(s3, "w/new") == b"Abc\0\0"
        # through a handle: truncate works on the spool
        f = await tier.open(b"w/new", os.O_WRONLY)
        await tier.setattr(b"w/new", size=2, file=f)
        await f.close()
        assert read_back(s3, "w/new") == b"Ab"

        # a large object goes up in parts and comes back intact
        big = os.urandom(12 * MiB + 5)
        await write_file(tier, b"w/big", big)
        assert read_back(s3, "w/big") == big
        st = await tier.stat(b"w/big")
        assert st.st_size == len(big)
        # an empty create still makes an object
        f, _ = await tier.create(b"w/empty", os.O_WRONLY, 0o644, 0, 0)
        await f.close()
        assert read_back(s3, "w/empty") == b""
        await tier.close()

    run(main)


def test_setattr_and_spool(s3: S3Server, tmp_path: Path) -> None:
    put_file(s3, "s/f", b"data")
    spool = tmp_path / "spool"

    async def main() -> None:
        tier = await started(s3, spool_dir=str(spool))
        st = await tier.setattr(b"s/f", mode=0o600, uid=12345, mtime_ns=5)
        assert stat_mod.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid()  # ignored
        strict = await started(s3, strict_setattr=True)
        await raises(errno.EPERM, strict.setattr(b"s/f", mode=0o600))
        await strict.setattr(b"s/f", mode=0o644)  # no change: fine
        f = await tier.open(b"s/f", os.O_WRONLY)
        assert stat_mod.S_IMODE(os.stat(spool).st_mode) == 0o700
        assert os.listdir(spool) == []  # spool files have no name
        await f.close()

    run(main)


def test_spool_dirs_of_dead_daemons_are_removed(s3: S3Server, tmp_path: Path) -> None:
    """Without a configured spool directory the tier makes one per pid in $TMPDIR;
    the empty ones of processes that are gone (killed daemons) go at the next start,
    and a normal close removes its own."""
    put_file(s3, "s/f", b"data")
    spools = tmp_path / "tmp"  # tempfile.tempdir here (the autouse fixture)
    dead = spools / "tierfs-spool-999999999-abc"  # above pid_max: never a live process
    alive = spools / f"tierfs-spool-{os.getppid()}-abc"
    busy = spools / "tierfs-spool-999999998-abc"
    for d in (dead, alive, busy):
        d.mkdir()
    (busy / "kept").write_bytes(b"")  # not empty: not ours to judge

    async def main() -> None:
        tier = await started(s3)
        f = await tier.open(b"s/f", os.O_WRONLY)
        mine = [p for p in spools.iterdir() if p.name.startswith(f"tierfs-spool-{os.getpid()}-")]
        assert len(mine) == 1 and stat_mod.S_IMODE(mine[0].stat().st_mode) == 0o700
        assert not dead.exists() and alive.exists() and busy.exists()
        await f.close()
        await tier.close()
        assert not mine[0].exists()

    run(main)


# -- namespace ---------------------------------------------------------------
def test_mkdir_rmdir_unlink(s3: S3Server) -> None:
    async def main() -> None:
        tier = await started(s3)
        st = await tier.mkdir(b"d", 0o755, 0, 0)
        assert st.is_dir and (await tier.stat(b"d")).is_dir
        assert dict(await tier.listdir(b""))[b"d"].is_dir
        assert await tier.listdir(b"d") == []
        await raises(errno.EEXIST, tier.mkdir(b"d", 0o755, 0, 0))
        await raises(errno.ENOENT, tier.mkdir(b"nope/d", 0o755, 0, 0))
        await tier.mkdir(b"d/e", 0o755, 0, 0)
        await write_file(tier, b"d/e/f", b"1")
        assert read_back(s3, "d/e/f") == b"1"
        await raises(errno.ENOTEMPTY, tier.rmdir(b"d"))
        await raises(errno.ENOTEMPTY, tier.rmdir(b"d/e"))
        await raises(errno.ENOTDIR, tier.rmdir(b"d/e/f"))
        await raises(errno.EISDIR, tier.unlink(b"d/e"))
        await raises(errno.ENOTDIR, tier.mkdir(b"d/e/f/g", 0o755, 0, 0))
        await tier.unlink(b"d/e/f")
        await raises(errno.ENOENT, tier.unlink(b"d/e/f"))
        # the directory outlives its last file, and no stand-in object is left in the store
        assert (await tier.stat(b"d/e")).is_dir
        assert not (s3.bucket_dir / "d").is_file()
        assert not (s3.bucket_dir / "d" / "e").is_file()
        await write_file(tier, b"d/e/again", b"2")  # still usable
        assert read_back(s3, "d/e/again") == b"2"
        await tier.unlink(b"d/e/again")
        await tier.rmdir(b"d/e")
        await raises(errno.ENOENT, tier.stat(b"d/e"))
        await tier.rmdir(b"d")
        assert b"d" not in dict(await tier.listdir(b""))
        await raises(errno.EBUSY, tier.rmdir(b""))

        await raises(errno.EPERM, tier.mknod(b"fifo", stat_mod.S_IFIFO | 0o644, 0, 0, 0))
        await raises(errno.EPERM, tier.symlink(b"ln", b"target", 0, 0))
        await write_file(tier, b"plain", b"p")
        await raises(errno.EPERM, tier.link(b"plain", b"plain2"))
        await raises(errno.EINVAL, tier.readlink(b"plain"))
        await raises(errno.ENOENT, tier.readlink(b"missing"))
        st = await tier.mknod(b"regular", stat_mod.S_IFREG | 0o644, 0, 0, 0)
        assert st.is_reg and read_back(s3, "regular") == b""

    run(main)


def test_unlink_last_file_of_existing_directory(s3: S3Server) -> None:
    put_file(s3, "data/shard/only", b"x")

    async def main() -> None:
        tier = await started(s3)
        await tier.unlink(b"data/shard/only")
        assert (await tier.stat(b"data/shard")).is_dir
        assert await tier.listdir(b"data/shard") == []
        assert not (s3.bucket_dir / "data").is_file()
        assert not (s3.bucket_dir / "data" / "shard").is_file()

    run(main)


def test_marker_mode_detects_a_store_without_markers(s3: S3Server, caplog) -> None:
    async def main() -> None:
        tier = await started(s3, dir_markers=True)
        with caplog.at_level(logging.WARNING, logger="fusefs.tiers.objectstore"):
            await tier.mkdir(b"m", 0o755, 0, 0)
        assert any("dir_markers=false" in r.getMessage() for r in caplog.records)
        assert (await tier.stat(b"m")).is_dir
        assert not (s3.bucket_dir / "m").is_file()
        await write_file(tier, b"m/f", b"ok")
        assert read_back(s3, "m/f") == b"ok"

    run(main)


def test_rename_semantics(s3: S3Server) -> None:
    put_file(s3, "src/a", b"A")
    put_file(s3, "src/b", b"B")
    put_file(s3, "src/sub/c", b"C")
    put_file(s3, "other", b"O")
    for i in range(6):
        put_file(s3, f"wide/k{i}", b"w")

    async def main() -> None:
        tier = await started(s3, max_dir_rename_keys=5)
        await tier.rename(b"src/a", b"a-moved")
        assert read_back(s3, "a-moved") == b"A"
        await raises(errno.ENOENT, tier.stat(b"src/a"))
        assert client_type(s3, "src/a").name == "NotFound"
        await raises(errno.ENOENT, tier.rename(b"src/a", b"x"))
        await raises(errno.EEXIST, tier.rename(b"src/b", b"other", 1))  # RENAME_NOREPLACE
        await raises(errno.EINVAL, tier.rename(b"src/b", b"other", 2))  # RENAME_EXCHANGE
        await tier.rename(b"src/b", b"other")  # replaces a file
        assert read_back(s3, "other") == b"B"
        await raises(errno.EISDIR, tier.rename(b"other", b"src"))
        await raises(errno.ENOTDIR, tier.rename(b"src", b"other"))
        await raises(errno.EINVAL, tier.rename(b"src", b"src/sub/inside"))
        await raises(errno.ENOENT, tier.rename(b"other", b"nodir/x"))

        await tier.rename(b"src", b"dst")  # a directory: key by key
        assert read_back(s3, "dst/sub/c") == b"C"
        await raises(errno.ENOENT, tier.stat(b"src"))
        assert (await tier.stat(b"dst/sub")).is_dir
        assert client_type(s3, "src/sub/c").name == "NotFound"

        exc = await raises(errno.EXDEV, tier.rename(b"wide", b"wide2"))
        assert "max_dir_rename_keys" in str(exc)
        assert read_back(s3, "wide/k0") == b"w"

        await tier.mkdir(b"empty", 0o755, 0, 0)
        await tier.rename(b"empty", b"empty2")
        assert (await tier.stat(b"empty2")).is_dir
        await raises(errno.ENOENT, tier.stat(b"empty"))
        await tier.mkdir(b"target", 0o755, 0, 0)
        await tier.rename(b"dst", b"target")  # over an empty directory
        assert read_back(s3, "target/sub/c") == b"C"
        await write_file(tier, b"empty2/f", b"f")
        await raises(errno.ENOTEMPTY, tier.rename(b"target", b"empty2"))

        # an open writer follows its file
        f, _ = await tier.create(b"w1", os.O_WRONLY, 0o644, 0, 0)
        await f.pwrite(0, b"first")
        await tier.rename(b"w1", b"w2")
        await f.pwrite(5, b"+more")
        await f.close()
        assert read_back(s3, "w2") == b"first+more"
        assert client_type(s3, "w1").name == "NotFound"

    run(main)


def test_names_the_store_cannot_hold(s3: S3Server) -> None:
    async def main() -> None:
        tier = await started(s3)
        bad = b"bad\xff\xfename"
        await raises(errno.EINVAL, tier.stat(bad))
        await raises(errno.EINVAL, tier.create(bad, os.O_WRONLY, 0o644, 0, 0))
        await raises(errno.EINVAL, tier.mkdir(bad, 0o755, 0, 0))
        await raises(errno.EINVAL, tier.stat(b"a//b"))
        await raises(errno.EINVAL, tier.stat(b"a/./b"))
        await raises(errno.EINVAL, tier.rename(b"x", b"a/../b"))
        await raises(errno.ENAMETOOLONG, tier.stat(b"n" * 256))
        await raises(errno.ENAMETOOLONG, tier.create(b"n" * 256, os.O_WRONLY, 0o644, 0, 0))
        deep = b"/".join([b"d" * 250] * 5)  # every name fine, the key too long
        await raises(errno.ENAMETOOLONG, tier.stat(deep))
        await raises(errno.ENOENT, tier.stat(b"n" * 255))
        await write_file(tier, "ünïcode name.txt".encode(), b"u")
        assert read_back(s3, "ünïcode name.txt") == b"u"
        await write_file(tier, b"m" * 255, b"long")
        assert read_back(s3, "m" * 255) == b"long"

    run(main)


def test_upload_memory_is_shared_without_deadlock() -> None:
    """Eight uploads of five parts each through a budget of two parts: each settles its
    own parts before it waits, so all finish, and together they never hold more than
    the budget (the settle here is instant: what matters is who waits for whom)."""
    from fusefs.tiers.objectstore.store import UploadMemory

    part = 10 * MiB
    pool = UploadMemory(2 * part)
    held_at_once: list[int] = []
    lock = threading.Lock()
    settles = [0] * 8

    def upload(i: int) -> None:
        mine = pool.share(lambda: settles.__setitem__(i, settles[i] + 1))
        try:
            for _ in range(5):
                mine.take(part)
                with lock:
                    held_at_once.append(pool.limit - pool._free)
        finally:
            mine.give_back()

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "an upload never got its memory"
    assert max(held_at_once) <= 2 * part and pool.peak <= 2 * part
    assert pool._free == pool.limit  # all given back
    assert sum(settles) > 0  # the budget was reached, and uploads settled to go on


_UPLOAD_CHILD = """
import hashlib, os, sys, trio
from fusefs.tiers.objectstore import ObjectStoreTier
uri, access, secret, limit, size = sys.argv[1:4] + [int(a) for a in sys.argv[4:6]]

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

async def main():
    tier = ObjectStoreTier.from_uri(uri, access_key=access, secret_key=secret,
                                    dir_markers=False, request_timeout=30, upload_memory=limit)
    await tier.start()
    f, _ = await tier.create(b"warmup", os.O_WRONLY, 0o644, 0, 0)
    await f.pwrite(0, os.urandom(11 << 20))  # pyarrow's pools and threads, before measuring
    await f.close()
    f, _ = await tier.create(b"big", os.O_WRONLY, 0o644, 0, 0)
    digest = hashlib.sha256()
    for off in range(0, size, 1 << 20):
        piece = os.urandom(1 << 20)
        digest.update(piece)
        await f.pwrite(off, piece)
    before = hwm()
    await f.close()  # the upload, from the spool file
    print(hwm() - before, tier.statistics()["upload_memory_peak"], digest.hexdigest())
    await tier.close()

trio.run(main)
"""


def test_uploads_hold_at_most_upload_memory(s3: S3Server, tmp_path: Path) -> None:
    """pyarrow keeps every part of an upload until the store has it and sets no limit:
    a 256 MiB file read from its spool faster than the store takes it sat in memory
    (the daemon's peak RSS rose 90-140 MiB on loopback). With ``upload_memory`` the
    upload waits for its own parts first. Measured in a fresh process (its VmHWM)."""
    (s3.bucket_dir / "up").mkdir()
    (s3.bucket_dir / "up" / "seed").write_bytes(b"x")  # an empty directory is no prefix
    child = tmp_path / "child.py"
    child.write_text(_UPLOAD_CHILD)
    limit, size = 16 * MiB, 256 * MiB
    out = subprocess.run([sys.executable, str(child), s3.uri("up"), s3.access_key,
                          s3.secret_key, str(limit), str(size)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    grew, peak, digest = out.stdout.split()
    assert 0 < int(peak) <= limit
    # the limit, pyarrow's copy of one part, the chunk being read, and allocator slack
    assert int(grew) < limit + 48 * MiB, f"peak RSS grew {int(grew) / MiB:.0f} MiB"
    stored = hashlib.sha256()
    with s3.client().open_input_stream(f"{s3.bucket}/up/big") as f:
        while chunk := f.read(8 * MiB):
            stored.update(chunk)
    assert stored.hexdigest() == digest


# -- failures ----------------------------------------------------------------
def test_server_down_and_back(restartable_s3: S3Server, caplog) -> None:
    """Stopped server: what the caches know is served (stale-if-error), everything else
    is a quick EIO with one rate-limited warning; the same tier and handles work again
    once it is back (a probe notices)."""
    server = restartable_s3
    data = os.urandom(100 * KiB)
    put_file(server, "keep/data", data)

    async def main() -> None:
        tier = await started(server, stat_ttl=0, list_ttl=0, negative_ttl=0, probe_interval=0.2)
        f = await tier.open(b"keep/data", os.O_RDONLY)
        assert await f.pread(0, 10) == data[:10]
        assert [n for n, _ in await tier.listdir(b"keep")] == [b"data"]
        w, _ = await tier.create(b"keep/pending", os.O_WRONLY, 0o644, 0, 0)
        await w.pwrite(0, b"kept across the outage")
        server.stop()
        with caplog.at_level(logging.WARNING, logger="fusefs.tiers.objectstore"):
            for op in (tier.stat(b"elsewhere"), f.pread(4096, 100),
                       write_file(tier, b"keep/new", b"n"), w.flush()):
                t0 = time.monotonic()
                exc = await raises(errno.EIO, op)
                assert isinstance(exc, TierUnavailable), exc
                assert time.monotonic() - t0 < 10
            assert tier.statistics()["down"] == 1
            # Stale-if-error: the expired entries answer, at once.
            t0 = time.monotonic()
            assert (await tier.stat(b"keep/data")).st_size == len(data)
            assert {n for n, _ in await tier.listdir(b"keep")} >= {b"data"}
            await raises(errno.ENOENT, tier.stat(b"keep/absent"))  # the last listing lacks it
            assert time.monotonic() - t0 < 1
            assert tier.requests["stale_served"] >= 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        # One for the outage (rate-limited), one for the mode.
        assert len(warnings) == 2, warnings
        assert any("is down" in w for w in warnings)
        server.start()
        # The same tier and the same open handle work again.
        assert await f.pread(4096, 100) == data[4096:4196]
        assert tier.statistics()["down"] == 0
        assert (await tier.stat(b"keep/data")).st_size == len(data)
        await write_file(tier, b"keep/new", b"n")
        assert read_back(server, "keep/new") == b"n"
        await w.flush()  # the failed upload is still dirty: it goes up now
        assert read_back(server, "keep/pending") == b"kept across the outage"
        await w.close()
        await f.close()
        # Down again, and nothing asks the store: the probe ends the mode by itself.
        server.stop()
        await raises(errno.EIO, tier.stat(b"elsewhere"))
        assert tier.statistics()["down"] == 1
        server.start()
        with trio.fail_after(60):
            while tier.statistics()["down"]:
                await trio.sleep(0.1)
        assert tier.requests["probe"] >= 1
        await tier.close()

    run(main)


def test_server_that_hangs(s3: S3Server) -> None:
    """A server that accepts connections and never answers: bounded by request_timeout x retries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    hung = S3Server.__new__(S3Server)
    hung.__dict__.update(s3.__dict__)
    hung.port = listener.getsockname()[1]

    async def main() -> None:
        t0 = time.monotonic()
        exc = await raises(errno.EIO, started(hung, request_timeout=1, retries=2))
        assert isinstance(exc, TierUnavailable) and str(hung.port) in str(exc)
        assert time.monotonic() - t0 < 8
        # The client's own timeout is long: read_timeout cuts the request (its
        # thread is abandoned, and holds its token until it ends). One tier: while
        # a request is in flight pyarrow cannot build another S3 client.
        tier = make_tier(hung, request_timeout=600, read_timeout=1, max_threads=2)
        t0 = time.monotonic()
        exc = await raises(errno.EIO, tier.start())
        assert isinstance(exc, TierUnavailable) and "read_timeout" in str(exc)
        assert time.monotonic() - t0 < 8
        for _ in range(4):  # more requests than threads: each still ends at the bound
            t0 = time.monotonic()
            await raises(errno.EIO, tier.stat(b"x"))
            assert time.monotonic() - t0 < 8
        assert tier.requests["timeouts"] >= 5
        assert tier._store.limiter.borrowed_tokens <= 2

    try:
        run(main)
    finally:
        listener.close()
        for conn in held:
            conn.close()


# -- snapshots ---------------------------------------------------------------
def test_snapshot_avoids_relisting(s3: S3Server, tmp_path: Path) -> None:
    for i in range(1200):
        put_file(s3, f"snap/k{i:05d}", b"s" * (i % 5))
    put_file(s3, "snap/deeper/x", b"x")
    snap = tmp_path / "listing.parquet"

    async def main() -> None:
        first = await started(s3)
        await first.listdir(b"")
        await first.listdir(b"snap")
        saved = await first.save_snapshot(snap)
        assert saved == 1202

        clock = FakeClock()
        second = await started(s3, clock=clock, snapshot_ttl=100)
        assert await second.load_snapshot(snap) == 1202
        entries = dict(await second.listdir(b"snap"))
        assert len(entries) == 1201 and entries[b"k00004"].st_size == 4
        assert (await second.stat(b"snap/k00003")).st_size == 3
        assert (await second.stat(b"snap/deeper")).is_dir
        assert second.list_requests == 0 and second.requests["stat"] == 0
        clock.advance(101)
        await second.listdir(b"snap")
        assert second.list_requests == 1  # expired: listed again

        other = await started(s3, "snap")
        await raises(errno.EINVAL, other.load_snapshot(snap))
        await raises(errno.ENOENT, other.load_snapshot(tmp_path / "missing.parquet"))

    run(main)


def test_snapshot_file_is_private_and_never_a_link(s3: S3Server, tmp_path: Path) -> None:
    put_file(s3, "d/f", b"f")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not to be touched")
    snap = tmp_path / "listing.parquet"
    snap.symlink_to(target)

    async def main() -> None:
        tier = await started(s3)
        await tier.listdir(b"d")
        await raises(errno.ELOOP, tier.load_snapshot(snap))  # a link is not followed
        assert await tier.save_snapshot(snap) == 1  # replaces the link, not its target
        assert target.read_bytes() == b"not to be touched"
        st = os.lstat(snap)
        assert stat_mod.S_ISREG(st.st_mode) and stat_mod.S_IMODE(st.st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == sorted(["elsewhere", "listing.parquet", "tmp"])
        # Loaded as stale only: the store is asked as if nothing were cached.
        other = await started(s3)
        assert await other.load_snapshot(snap, fresh=False) == 1
        assert [n for n, _ in await other.listdir(b"d")] == [b"f"]
        assert other.list_requests == 1

    run(main)


def test_snapshot_keeps_the_version_the_store_stated(tmp_path: Path) -> None:
    """Stored attributes show an mtime of their own; a snapshot keeps both it and the
    store's time that names the version. One of the format before (2) keeps the
    version an older tierfs gave (its shown mtime), as its fast-tier entries have it."""
    import pyarrow.parquet as pq

    from fusefs.tiers.objectstore.metacache import _read_snapshot, _write_snapshot
    from fusefs.tiers.objectstore.options import Attributes, ObjectStoreOptions

    attrs = Attributes(ObjectStoreOptions.make({}), 1)
    stored_ns = 1_500_000_000_123_456_789
    st = attrs.from_meta(attrs.file(5, 1_700_000_000 * 10**9),
                         {"mode": str(stat_mod.S_IFREG | 0o600), "mtime": "1500000000.123456789"})
    assert st.st_mtime_ns == stored_ns and st.version().mtime_ns == 1_700_000_000 * 10**9
    snap = str(tmp_path / "s.parquet")
    _write_snapshot(snap, "b", [(b"d", [(b"f", st)])])
    back = _read_snapshot(snap, "b", attrs)[b"d"][b"f"]
    assert (back.st_mtime_ns, stat_mod.S_IMODE(back.st_mode)) == (stored_ns, 0o600)
    assert back.version() == st.version()

    table = pq.read_table(snap).drop_columns(["modified_ns"])
    pq.write_table(table.replace_schema_metadata(
        {**table.schema.metadata, b"tierfs.snapshot": b"2"}), snap)
    old = _read_snapshot(snap, "b", attrs)[b"d"][b"f"]
    assert old.st_mtime_ns == stored_ns and old.version() == (5, stored_ns, None, None)


# -- the same code over a local directory (markers mode: real directories) ----
def test_file_uri_with_real_directories(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"data")

    async def main() -> None:
        tier = ObjectStoreTier.from_uri(f"file://{root}")
        await tier.start()
        assert (await tier.stat(b"d/f")).st_size == 4
        await tier.mkdir(b"n", 0o755, 0, 0)
        assert (root / "n").is_dir()
        await write_file(tier, b"n/x", b"xx")
        await tier.unlink(b"n/x")
        assert (root / "n").is_dir() and (await tier.stat(b"n")).is_dir
        await tier.rename(b"d", b"d2")
        assert (root / "d2" / "f").read_bytes() == b"data" and not (root / "d").exists()
        await tier.rmdir(b"n")
        assert not (root / "n").exists()
        f = await tier.open(b"d2/f", os.O_RDONLY)
        assert await f.pread(1, 2) == b"at"
        await f.close()
        await tier.close()

    run(main)
