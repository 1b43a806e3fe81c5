"""`Operations` driven in-process, without a mount: translation and bookkeeping."""

from __future__ import annotations

import errno
import logging
import os
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import pyfuse3
import pytest
import trio

from fusefs.engine import Engine
from fusefs.operations import Operations, Timeouts
from fusefs.pagecache import PageCache
from fusefs.stats import Stats
from fusefs.tiers.posix import PosixTier

CTX = pyfuse3.RequestContext()


def run(src: str, body: Callable[[Operations], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        tier = PosixTier(src)
        await tier.start()
        try:
            ops = Operations(tier, Engine(tier, stats=Stats()), **kw)
            return await body(ops)
        finally:
            await tier.close()
    return trio.run(main)


def test_lookup_create_write_read(src: str) -> None:
    async def body(ops: Operations) -> None:
        neg = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        assert neg.st_ino == 0 and neg.entry_timeout == 1.0  # cached negative entry
        fi, attr = await ops.create(pyfuse3.ROOT_INODE, b"f", 0o100644,
                                    os.O_RDWR | os.O_CREAT, CTX)
        assert await ops.write(fi.fh, 0, b"abcdef") == 6
        assert await ops.read(fi.fh, 2, 10) == b"cdef"
        await ops.release(fi.fh)
        e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        assert e.st_ino == attr.st_ino and e.st_size == 6
        assert ops.inodes.get(e.st_ino).lookups == 2
        await ops.forget([(e.st_ino, 2)])
        assert e.st_ino not in ops.inodes
    run(src, body)


def test_flush_on_a_local_source_is_enosys(src: str) -> None:
    """Local writes reach the source at once: FLUSH answers ENOSYS, after which the
    kernel stops sending it and close(2) costs no round trip. The data is there."""
    async def body(ops: Operations) -> None:
        fi, _ = await ops.create(pyfuse3.ROOT_INODE, b"f", 0o100644, os.O_RDWR | os.O_CREAT, CTX)
        assert await ops.write(fi.fh, 0, b"abc") == 3
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.flush(fi.fh)
        assert exc.value.errno == errno.ENOSYS
        with open(os.path.join(src, "f"), "rb") as f:
            assert f.read() == b"abc"
        await ops.release(fi.fh)
    run(src, body)


def test_negative_entries_can_be_disabled(src: str) -> None:
    async def body(ops: Operations) -> None:
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.lookup(pyfuse3.ROOT_INODE, b"missing", CTX)
        assert exc.value.errno == errno.ENOENT
    run(src, body, timeouts=Timeouts(negative=0))


def test_errors_become_fuse_errors(src: str) -> None:
    async def body(ops: Operations) -> None:
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.read(12345, 0, 10)
        assert exc.value.errno == errno.EBADF
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.mkdir(pyfuse3.ROOT_INODE, b"x" * 256, 0o40755, CTX)
        assert exc.value.errno == errno.ENAMETOOLONG
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.getattr(999, CTX)
        assert exc.value.errno == errno.ESTALE
        c = ops.engine.stats.counters
        assert c["errors.read.EBADF"] == 1 and c["errors.mkdir.ENAMETOOLONG"] == 1
        assert c["errors.getattr.ESTALE"] == 1 and c["errors.total"] == 3
    run(src, body)


@pytest.mark.allow_log_errors("read failed; answering EIO")
def test_a_bug_is_eio_and_logged_not_fatal(src: str, caplog: pytest.LogCaptureFixture) -> None:
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"data")

    async def body(ops: Operations) -> None:
        e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)

        async def broken(*a: Any) -> bytes:
            raise RuntimeError("boom")
        ops.engine.read = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.read(fi.fh, 0, 4)
        assert exc.value.errno == errno.EIO
        assert "boom" in caplog.text
        assert ops.engine.stats.counters["errors.eio.bug"] == 1
        await ops.release(fi.fh)
    run(src, body)


def test_rename_moves_the_inode(src: str) -> None:
    os.mkdir(os.path.join(src, "d"))
    with open(os.path.join(src, "d", "a"), "wb") as f:
        f.write(b"1")

    async def body(ops: Operations) -> None:
        d = await ops.lookup(pyfuse3.ROOT_INODE, b"d", CTX)
        a = await ops.lookup(d.st_ino, b"a", CTX)
        await ops.rename(d.st_ino, b"a", pyfuse3.ROOT_INODE, b"b", 0, CTX)
        assert ops.inodes.path(a.st_ino) == b"b"
        assert (await ops.getattr(a.st_ino, CTX)).st_size == 1
        fields = SimpleNamespace(update_size=True, update_mode=False, update_uid=False,
                                 update_gid=False, update_atime=False, update_mtime=False)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 5
        st = await ops.setattr(a.st_ino, attr, fields, None, CTX)
        assert st.st_size == 5 and os.path.getsize(os.path.join(src, "b")) == 5
    run(src, body)


def _dram_bytes(ops: Operations, tier: str) -> int:
    return sum(v for k, v in ops.engine.stats.snapshot()["counters"].items()
               if k.startswith(f"read.bytes.{tier}."))


def test_dram_pages_outlive_a_forgotten_inode(src: str) -> None:
    """The kernel forgets inodes when it likes; DRAM pages are the file version's, not the
    inode's: the next open of the same version (a new inode) is served from DRAM, and a
    version changed while no inode existed is never served from the old pages."""
    data = os.urandom(256 << 10)
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(data)

    async def read_scattered(ops: Operations) -> tuple[int, bytes]:
        e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        got = b"".join([await ops.read(fi.fh, off, 4096) for off in (0, 128 << 10, 64 << 10)])
        await ops.release(fi.fh)
        await ops.forget([(e.st_ino, ops.inodes.get(e.st_ino).lookups)])
        assert e.st_ino not in ops.inodes
        return e.st_ino, got

    async def main() -> None:
        tier = PosixTier(src)
        await tier.start()
        engine = Engine(tier, stats=Stats(), pagecache=PageCache(1 << 20, 4096))
        ops = Operations(tier, engine)
        want = data[:4096] + data[128 << 10:(128 << 10) + 4096] + data[64 << 10:(64 << 10) + 4096]
        try:
            ino1, got = await read_scattered(ops)
            assert got == want
            cap, dram = _dram_bytes(ops, "capacity"), _dram_bytes(ops, "dram")
            ino2, got = await read_scattered(ops)
            assert ino2 != ino1 and got == want
            assert _dram_bytes(ops, "capacity") == cap  # nothing read from the source again
            assert _dram_bytes(ops, "dram") - dram == len(want)
            # Replaced behind the mount while no inode of it exists: the new bytes.
            new = os.urandom(len(data))
            with open(os.path.join(src, "f.tmp"), "wb") as f:
                f.write(new)
            os.replace(os.path.join(src, "f.tmp"), os.path.join(src, "f"))
            _, got = await read_scattered(ops)
            assert got == new[:4096] + new[128 << 10:(128 << 10) + 4096] \
                + new[64 << 10:(64 << 10) + 4096]
        finally:
            await engine.close()
            await tier.close()
    trio.run(main)


def test_an_older_handle_never_reads_a_newer_version_from_dram(src: str) -> None:
    """A handle reads the version it opened: after the file was replaced behind the mount
    and a new open filled DRAM with the new bytes, the older handle (whose descriptor holds
    the old file) still reads the old bytes. (On a local source the new file is another
    inode of the mount; `test_s3_versions` has the case where both opens share one.)"""
    old, new = os.urandom(64 << 10), os.urandom(64 << 10)
    path = os.path.join(src, "f")
    with open(path, "wb") as f:
        f.write(old)

    async def main() -> None:
        tier = PosixTier(src)
        await tier.start()
        engine = Engine(tier, stats=Stats(), pagecache=PageCache(1 << 20, 4096))
        ops = Operations(tier, engine)
        try:
            e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
            a = await ops.open(e.st_ino, os.O_RDONLY, CTX)
            assert await ops.read(a.fh, 8192, 4096) == old[8192:12288]
            with open(path + ".tmp", "wb") as f:
                f.write(new)
            os.replace(path + ".tmp", path)
            e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
            b = await ops.open(e.st_ino, os.O_RDONLY, CTX)
            for off in (0, 8192, 32768):
                assert await ops.read(b.fh, off, 4096) == new[off:off + 4096]
            for off in (0, 8192, 32768):
                assert await ops.read(a.fh, off, 4096) == old[off:off + 4096], off
            assert engine.dram.check() == []
            await ops.release(a.fh)
            await ops.release(b.fh)
            assert engine.dram.check() == []
        finally:
            await engine.close()
            await tier.close()
    trio.run(main)
