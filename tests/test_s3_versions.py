"""One open of an S3 object never mixes versions, through a real mount, on two S3 servers.

Another client overwrites an object between two reads of one open handle, with the
same size (and, on rclone, the very same mtime: the ETag is all that differs). The
old handle's next read must fail with ``ESTALE`` (or give old bytes only, from a
cache of the old version): never new bytes. A new open reads exactly the new bytes.
The daemon logs one WARNING and no ERROR (`Mounted` fails the test on an ERROR).

The servers: ``rclone serve s3`` with ``--etag-hash MD5`` (its ETag is the content's
MD5; it ignores ``If-Match``, so the check of the answer's ETag is what catches the
change) and moto (it answers ``If-Match`` with 412 Precondition Failed).
"""

from __future__ import annotations

import errno
import os
import random
import time
from typing import Callable

import pytest

from mounting import Mounted, resident_pages
from s3server import S3Server, api
from test_s3_mount import read_direct, stats

pytestmark = [pytest.mark.s3, pytest.mark.mount]

KiB = 1024
MiB = 1024 * KiB


# No fast-tier fill: the second read must reach the store (a fill would copy the old
# version; its bytes would be right, but would not test the GETs).
_NO_FILL = "[policy]\nfill_random_max = 0\n"


def overwrite_same_size(server: S3Server, key: str, data: bytes) -> None:
    """Put ``data`` over ``key`` through another client; on rclone, give it back the old
    mtime too (size and Last-Modified unchanged: only the ETag tells)."""
    client = api(server)
    before = client.head_object(Bucket=server.bucket, Key=key)
    assert before["ContentLength"] == len(data)
    on_disk = server.bucket_dir / key
    old = os.stat(on_disk) if getattr(server, "kind", "") == "rclone" else None
    client.put_object(Bucket=server.bucket, Key=key, Body=data)
    if old is not None:
        os.utime(on_disk, ns=(old.st_atime_ns, old.st_mtime_ns))
    after = client.head_object(Bucket=server.bucket, Key=key)
    assert after["ETag"] != before["ETag"]
    assert after["ContentLength"] == before["ContentLength"]


def test_overwrite_between_two_reads_of_one_open(
        versioned_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    s = versioned_s3
    size = MiB + 12345
    old = random.Random(1).randbytes(size)
    new = random.Random(2).randbytes(size)
    api(s).put_object(Bucket=s.bucket, Key="d/obj", Body=old)
    with mount_s3(s, extra=_NO_FILL) as m:
        path = os.path.join(m.mountpoint, "d", "obj")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap
            buf = mmap.mmap(-1, 64 * KiB)
            assert os.preadv(fd, [buf], 0) == 64 * KiB
            assert bytes(buf) == old[:64 * KiB]
            overwrite_same_size(s, "d/obj", new)
            # Far from the first read: not in any block fetched so far.
            off = 768 * KiB
            try:
                n = os.preadv(fd, [buf], off)
            except OSError as exc:
                assert exc.errno == errno.ESTALE, exc
            else:
                got = bytes(buf[:n])
                assert got == old[off:off + n], "the old handle read bytes of the new version"
            # Stale for good: the same handle never reads the new version.
            for where in (0, 512 * KiB, size - 4096):
                try:
                    n = os.preadv(fd, [memoryview(buf)[:4096]], where)
                except OSError as exc:
                    assert exc.errno == errno.ESTALE, exc
                else:
                    assert bytes(buf[:n]) == old[where:where + n]
        finally:
            os.close(fd)
        # A new open reads the new version, all of it.
        assert read_direct(path, 0, size) == new
        with open(path, "rb") as f:
            assert f.read() == new
        counters = stats(m.mountpoint)
        assert counters["capacity"].get("changed", 0) >= 1, counters["capacity"]
        log = m.read_log()
        assert "the object changed after it was opened" in log
        assert " WARNING " in log or "WARNING" in log


def test_a_change_found_mid_read_drops_the_kernels_pages(
        versioned_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """A read that finds the object replaced answers ESTALE, and the kernel forgets what it
    cached of the old version: no handle is served it from the kernel's cache afterwards."""
    s = versioned_s3
    size = 2 * MiB
    old = random.Random(3).randbytes(size)
    new = random.Random(4).randbytes(size)
    api(s).put_object(Bucket=s.bucket, Key="d/obj", Body=old)
    with mount_s3(s, extra=_NO_FILL) as m:
        path = os.path.join(m.mountpoint, "d", "obj")
        fd = os.open(path, os.O_RDONLY)
        try:
            # No kernel read-ahead: each read below reaches the daemon as asked.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            assert os.pread(fd, 4096, 0) == old[:4096]
            assert resident_pages(fd, 4096) == 1
            overwrite_same_size(s, "d/obj", new)
            with pytest.raises(OSError) as caught:
                os.pread(fd, 4096, size - 4096)  # no cache holds it: the store answers
            assert caught.value.errno == errno.ESTALE
            # The drop runs beside the read (the kernel holds the page locked until we
            # answer), so it lands soon after, not before the answer.
            deadline = time.monotonic() + 60
            while resident_pages(fd, 4096) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert resident_pages(fd, 4096) == 0, "the kernel still holds the old version"
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == new


def test_change_before_the_first_read(
        versioned_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """An open whose object changes before its first read: ESTALE, not the new bytes
    under the old version's name (which the fast tier and DRAM would keep)."""
    s = versioned_s3
    old = b"A" * 200_000
    new = b"B" * 200_000
    api(s).put_object(Bucket=s.bucket, Key="e/obj", Body=old)
    with mount_s3(s, extra=_NO_FILL) as m:
        path = os.path.join(m.mountpoint, "e", "obj")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            overwrite_same_size(s, "e/obj", new)
            try:
                got = read_fd(fd, 0, 4096)
            except OSError as exc:
                assert exc.errno == errno.ESTALE, exc
            else:
                assert got == old[:4096]
        finally:
            os.close(fd)
        assert read_direct(path, 0, len(new)) == new
        # The object as it is now is what the tiers keep: read again, still the new bytes.
        assert read_direct(path, 4096, 4096) == new[4096:8192]
        assert stats(m.mountpoint)["capacity"].get("changed", 0) >= 1


def read_fd(fd: int, offset: int, size: int) -> bytes:
    import mmap
    buf = mmap.mmap(-1, size)
    n = os.preadv(fd, [buf], offset)
    return bytes(buf[:n])


def test_an_older_handle_never_reads_the_newer_versions_dram_pages(versioned_s3: S3Server) -> None:
    """In-process, the DRAM tier in the way: handle A reads, another client overwrites the
    object (same size), handle B opens the new version and fills DRAM with it; A's next
    reads are its own version's bytes or ESTALE, never the new version's pages (on an
    object store both opens share one inode: the DRAM entry is per handle)."""
    import pyfuse3
    import trio

    from fusefs.engine import Engine
    from fusefs.operations import Operations
    from fusefs.pagecache import PageCache
    from fusefs.stats import Stats
    from fusefs.tiers.objectstore import ObjectStoreTier

    server = versioned_s3
    rng = random.Random(41)
    old, new = rng.randbytes(256 * KiB), rng.randbytes(256 * KiB)
    client = api(server)
    client.put_object(Bucket=server.bucket, Key="t.bin", Body=old)
    ctx = pyfuse3.RequestContext()
    offsets = (0, 64 * KiB, 192 * KiB)

    async def main() -> None:
        tier = ObjectStoreTier.from_uri(
            server.uri() + "&request_timeout=60", access_key=server.access_key,
            secret_key=server.secret_key, dir_markers=server.kind == "moto", stat_ttl=0.0,
            negative_ttl=0.0, list_ttl=0.0)
        await tier.start()
        engine = Engine(tier, stats=Stats(), pagecache=PageCache(4 * MiB, 4096))
        ops = Operations(tier, engine)
        try:
            ino = (await ops.lookup(pyfuse3.ROOT_INODE, b"t.bin", ctx)).st_ino
            a = await ops.open(ino, os.O_RDONLY, ctx)
            for off in offsets:
                assert await ops.read(a.fh, off, 4096) == old[off:off + 4096]
            client.put_object(Bucket=server.bucket, Key="t.bin", Body=new)
            assert (await ops.lookup(pyfuse3.ROOT_INODE, b"t.bin", ctx)).st_ino == ino
            b = await ops.open(ino, os.O_RDONLY, ctx)
            for off in offsets:
                assert await ops.read(b.fh, off, 4096) == new[off:off + 4096]
            for off in offsets:
                try:
                    got = await ops.read(a.fh, off, 4096)
                except pyfuse3.FUSEError as exc:
                    assert exc.errno == errno.ESTALE, exc.errno
                    continue
                assert got == old[off:off + 4096], f"old handle at {off}: not its version"
            assert engine.dram.check() == []
            await ops.release(a.fh)
            await ops.release(b.fh)
        finally:
            await engine.close()
            await tier.close()
    trio.run(main)
