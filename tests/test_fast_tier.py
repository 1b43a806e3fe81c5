"""The fast tier in-process: admission, watermarks, durability across reopen, CRCs."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
import trio

from fusefs.policies import get_policy
from fusefs.policies.base import Tier
from fusefs.stats import Stats
from fusefs.tiers.capacity import SourceVersion
from fusefs.tiers.fast import FastTier

CHUNK = 64 * 1024
V = SourceVersion(10 * CHUNK, 123, None)


def make(root: str, capacity: int, **kwargs: Any) -> FastTier:
    policy = get_policy("lru")(capacity, tier=Tier.FAST, object_size=CHUNK)
    return FastTier(root, policy=policy, stats=Stats(), **kwargs)


def test_watermarks_evict_in_batches(tmp_path: Any) -> None:
    async def main() -> None:
        fast = make(str(tmp_path), 20 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        for i in range(40):
            assert await fast.admit(cf, i * CHUNK, bytes([i]) * CHUNK)
            assert fast.policy.used <= 0.95 * fast.policy.capacity + CHUNK
        assert fast.stats.counters["fast.watermark_runs"] >= 1
        # the newest extents survived (LRU), the oldest were punched out
        assert await fast.read(cf, 39 * CHUNK, CHUNK) == bytes([39]) * CHUNK
        assert await fast.read(cf, 0, CHUNK) is None
        await fast.close()
    trio.run(main)


def test_reopen_keeps_committed_extents_and_checks_crc(tmp_path: Any) -> None:
    async def first() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"dir/f", V)
        for i in range(4):
            await fast.admit(cf, i * CHUNK, bytes([i + 1]) * CHUNK, pinned=(i == 0))
        await fast.close()  # commits

    async def second() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        assert fast.file_for(b"dir/f", SourceVersion(1, 1, None)) is None  # other version
        fast2 = make(str(tmp_path), 100 * CHUNK)
        await fast.close()
        await fast2.open()
        cf = fast2.file_for(b"dir/f", V)
        assert cf is None  # the version mismatch above dropped it for good
        await fast2.close()

    async def third() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = fast.file_for(b"dir/f", V)
        assert cf is not None and len(cf.extents) == 4
        assert fast.policy.pinned_bytes == CHUNK
        # damage one extent on disk: detected on first read, dropped, others fine
        with open(os.path.join(str(tmp_path), "data", str(cf.id)), "r+b") as f:
            f.seek(2 * CHUNK + 7)
            f.write(b"X")
        assert await fast.read(cf, 2 * CHUNK, 4096) is None
        assert fast.stats.counters["fast.corrupt_extents"] == 1
        assert await fast.read(cf, 3 * CHUNK, 4096) == bytes([4]) * 4096
        await fast.close()

    trio.run(first)
    trio.run(third)
    trio.run(second)


def test_verify_off_reads_only_the_range_and_trusts_it(tmp_path: Any) -> None:
    """``[cache] verify = false``: no checksum is checked, so damage is served (what the
    setting trades away, documented with its measured cost); the checksums are still
    made at admission, so turning it back on catches the same damage."""
    async def main() -> None:
        fast = make(str(tmp_path), 100 * CHUNK, verify=False)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        assert await fast.admit(cf, 0, bytes([1]) * CHUNK)
        assert len(cf.extents[0].crcs) == 4 * (CHUNK // 16384)
        with open(os.path.join(str(tmp_path), "data", str(cf.id)), "r+b") as f:
            f.seek(5000)
            f.write(b"X")
        assert await fast.read(cf, 4990, 20) == bytes([1]) * 10 + b"X" + bytes([1]) * 9
        assert await fast.read(cf, 20000, 100) == bytes([1]) * 100
        assert fast.stats.counters["fast.corrupt_extents"] == 0
        fast.verify = True
        assert await fast.read(cf, 20000, 100) == bytes([1]) * 100  # another piece
        assert await fast.read(cf, 4990, 20) is None
        assert fast.stats.counters["fast.corrupt_extents"] == 1
        await fast.close()
    trio.run(main)


def test_admit_fits_between_existing_extents(tmp_path: Any) -> None:
    async def main() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        await fast.admit(cf, CHUNK, b"a" * CHUNK)
        # a larger write over it replaces the covered extent
        await fast.admit(cf, 0, b"b" * 3 * CHUNK)
        assert list(cf.extents) == [0]
        assert await fast.read(cf, CHUNK, 10) == b"b" * 10
        # a write overlapping the head is trimmed to what is missing
        assert await fast.admit(cf, 2 * CHUNK, b"c" * 2 * CHUNK)
        assert list(cf.extents) == [0, 3 * CHUNK]
        assert await fast.read(cf, 3 * CHUNK, 10) == b"c" * 10
        assert not await fast.admit(cf, 0, b"d" * CHUNK)  # fully present already
        await fast.close()
    trio.run(main)


def test_damage_while_open_is_caught_on_the_next_read(tmp_path: Any) -> None:
    """Every read checks its pieces: bytes damaged after they were admitted (this mount)
    are never returned, only the damaged extent goes, its neighbours stay."""
    async def main() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        for i in range(3):
            assert await fast.admit(cf, i * CHUNK, bytes([i + 1]) * CHUNK)
        assert await fast.read(cf, CHUNK + 5000, 100) == bytes([2]) * 100
        with open(os.path.join(str(tmp_path), "data", str(cf.id)), "r+b") as f:
            f.seek(CHUNK + 40000)  # a different 16 KiB piece of extent 1 than read above
            f.write(b"X")
        assert await fast.read(cf, CHUNK + 5000, 100) == bytes([2]) * 100, \
            "an undamaged piece still reads"
        assert await fast.read(cf, CHUNK + 39990, 20) is None
        assert fast.stats.counters["fast.corrupt_extents"] == 1
        assert await fast.read(cf, CHUNK, 10) is None, "the damaged extent is gone whole"
        assert await fast.read(cf, 0, CHUNK) == bytes([1]) * CHUNK
        assert await fast.read(cf, 2 * CHUNK, CHUNK) == bytes([3]) * CHUNK
        assert fast.check() == []
        await fast.close()
    trio.run(main)


def test_a_schema_2_catalog_is_migrated_and_its_unchecked_entries_dropped(
        tmp_path: Any) -> None:
    import sqlite3
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "data"), mode=0o700)
    db = sqlite3.connect(os.path.join(root, "catalog.db"))
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '2');
        CREATE TABLE files (id INTEGER PRIMARY KEY, path BLOB NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, etag TEXT NOT NULL DEFAULT '',
            ident TEXT NOT NULL DEFAULT '');
        CREATE TABLE extents (file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            start INTEGER NOT NULL, length INTEGER NOT NULL, crc INTEGER NOT NULL,
            pinned INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (file_id, start));
        CREATE TABLE pins (path BLOB PRIMARY KEY);
        INSERT INTO files VALUES (7, X'66', 655360, 123, '', '');
        INSERT INTO extents VALUES (7, 0, 65536, 42, 0);
        INSERT INTO pins VALUES (X'646f6373');
    """)
    db.commit()
    db.close()
    with open(os.path.join(root, "data", "7"), "wb") as f:
        f.write(b"x" * CHUNK)

    async def main() -> None:
        fast = make(root, 100 * CHUNK)
        await fast.open()
        assert fast.file_for(b"f", V) is None
        assert fast.pinned_paths == {b"docs"}
        assert not os.path.exists(os.path.join(root, "data", "7"))
        cf = await fast.file_create(b"f", V)
        assert cf.id > 7, "ids are never reused"
        assert await fast.admit(cf, 0, b"y" * CHUNK)
        await fast.close()
        fast = make(root, 100 * CHUNK)
        await fast.open()
        cf = fast.file_for(b"f", V)
        assert cf is not None and await fast.read(cf, 0, CHUNK) == b"y" * CHUNK
        await fast.close()
    trio.run(main)


def test_a_pin_during_a_commit_reaches_the_catalog(tmp_path: Any) -> None:
    """`set_pinned` while a commit's rows are being written (worker thread): the catalog
    must end up with the extent's pin as memory has it, and keep it across a reopen."""
    import threading

    async def main() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        assert await fast.admit(cf, 0, b"a" * CHUNK)
        ext = cf.extents[0]
        catalog = fast.catalog
        assert catalog is not None
        real_apply = catalog.apply
        writing, resume = threading.Event(), threading.Event()

        def apply(**kw: Any) -> Any:  # the real write, held until the pin happened
            writing.set()
            assert resume.wait(60)
            return real_apply(**kw)

        catalog.apply = apply  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fast.commit)
            await trio.to_thread.run_sync(writing.wait)
            fast.set_pinned(cf, ext, True)
            resume.set()
        catalog.apply = real_apply  # type: ignore[method-assign]
        await fast.commit()
        assert await fast.check_catalog() == []
        await fast.close()
        again = make(str(tmp_path), 100 * CHUNK)
        await again.open()
        assert again.policy.pinned_bytes == CHUNK
        await again.close()

    trio.run(main)


def test_small_copies_take_one_fetch_and_fall_back_when_the_file_grew(tmp_path: Any) -> None:
    """`Filler.copy_small` (a warm of small files): a file listed at most one chunk long
    is fetched in one call and stored under the version that fetch saw; one that grew
    past its listing, or is cached already, goes through the general copy. The bytes
    are the source's either way."""
    from fusefs.engine.fill import Filler
    from fusefs.engine.sched import Scheduler
    from fusefs.tiers.posix import PosixTier

    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "cache").mkdir()
    (src / "small").write_bytes(b"s" * 5000)
    (src / "grew").write_bytes(b"g" * 100)

    async def main() -> None:
        cap = PosixTier(str(src))
        await cap.start()
        fast = make(str(tmp_path / "cache"), 100 * CHUNK)
        await fast.open()
        filler = Filler(cap, fast, fast.policy, Scheduler(), fast.stats, chunk_size=CHUNK)
        listed = dict(await cap.listdir(b""))
        (src / "grew").write_bytes(b"G" * (3 * CHUNK + 7))  # after the listing
        assert await filler.copy_small(b"small", listed[b"small"]) == 5000
        assert await filler.copy_small(b"grew", listed[b"grew"]) == 3 * CHUNK + 7
        for name, want in ((b"small", b"s" * 5000), (b"grew", b"G" * (3 * CHUNK + 7))):
            version = (await cap.stat(name)).version()
            cf = fast.file_for(name, version)
            assert cf is not None, f"{name!r} not cached at the source's version"
            assert await fast.read(cf, 0, len(want)) == want
        # cached already: nothing fetched again, and a pin reaches the cached extent
        assert await filler.copy_small(b"small", listed[b"small"], pinned=True) == 0
        assert fast.has_pinned(b"small")
        await fast.close()
        await cap.close()
    trio.run(main)


def test_commit_syncs_spread_over_threads_report_the_first_failure(tmp_path: Any) -> None:
    """`_fdatasync_all` syncs every descriptor (several threads share them) and, when
    one fails, still syncs the rest and raises that failure once all are done (the
    commit then keeps the batch for the next try)."""
    from fusefs.tiers import fast as fast_mod

    fds = [os.open(str(tmp_path / f"f{i}"), os.O_CREAT | os.O_RDWR, 0o600) for i in range(40)]
    try:
        for fd in fds:
            os.pwrite(fd, b"x" * 4096, 0)
        trio.run(fast_mod._fdatasync_all, fds)
        trio.run(fast_mod._fdatasync_all, [])
        r, w = os.pipe()  # fdatasync of a pipe is EINVAL
        try:
            with pytest.raises(OSError) as exc:
                trio.run(fast_mod._fdatasync_all, fds[:20] + [r] + fds[20:])
            assert exc.value.errno == errno.EINVAL
        finally:
            os.close(r)
            os.close(w)
    finally:
        for fd in fds:
            os.close(fd)
