"""Write-back of object-store writes through the cache directory, on real mounts.

Every test mounts the loopback S3 server (`s3server.S3Server`, ``rclone serve s3``)
with ``python -m fusefs.cli mount`` and checks what the store holds with a second,
independent pyarrow client (`test_s3_mount.read_back`), byte for byte. A pending
write is made to stay pending the honest way: the server is stopped (closes still
succeed: the bytes are durable in the cache directory), or the daemon is killed with
SIGKILL before its destager runs. Waits poll with generous deadlines; nothing asserts
on timing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from mounting import Mounted, tierfs_cmd
from s3server import S3Server
from test_s3_mount import exists_in_store, put, read_back, stats, wait_for

pytestmark = [pytest.mark.s3, pytest.mark.mount]

KiB = 1024
MiB = 1024 * 1024

#: Listings and negative entries that outlive a test: creates need no request while
#: the store is stopped.
LONG_TTLS = {"list_ttl": "1h", "stat_ttl": "1h", "negative_ttl": "1h"}
WRITETHROUGH = '[write]\nmode = "writethrough"\n'


def store_read(server: S3Server, rel: str) -> bytes:
    """The object as the store serves it. rclone replaces an object's file in place while
    it receives an upload (S3 itself is atomic): a read that met that (its size changed
    between pyarrow's HEAD and GET, or the file was briefly missing) is repeated; an
    object really missing or damaged fails all 20 tries."""
    for attempt in range(20):
        try:
            return read_back(server, rel)
        except OSError as exc:
            transient = any(t in str(exc) for t in ("InvalidRange", "416", "NO_SUCH_KEY"))
            if not transient or attempt == 19:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def store_or_none(server: S3Server, rel: str) -> bytes | None:
    return store_read(server, rel) if exists_in_store(server, rel) else None


def pending(m: Mounted) -> int:
    wb = stats(m.mountpoint)["writeback"]
    assert "pending_files" in wb, wb
    return wb["pending_files"]


def destaged(m: Mounted, timeout: float = 120.0) -> None:
    """Wait until the mount has no write waiting for its upload."""
    wait_for(lambda: pending(m) == 0, "the destage queue to drain", timeout)


def kill9(m: Mounted) -> None:
    """SIGKILL the daemon, then detach its dead mount."""
    assert m.proc is not None
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(timeout=30)
    m.unmount()


# -- the truncating overwrite (dd of=, a shell's >) never empties the object -------------
@pytest.mark.parametrize("mode", ["writeback", "writethrough"])
def test_truncating_overwrite_never_shows_an_empty_object(
        s3: S3Server, mount_s3: Callable[..., Mounted], mode: str) -> None:
    old = random.Random(1).randbytes(200 * KiB)
    new = random.Random(2).randbytes(300 * KiB + 5)
    put(s3, "x", old)
    with mount_s3(s3, extra=WRITETHROUGH if mode == "writethrough" else "") as m:
        p = os.path.join(m.mountpoint, "x")
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.close(os.dup(fd))  # what dd and a shell do: a FLUSH before any write
        assert store_read(s3, "x") == old
        for i in range(0, len(new), 64 * KiB):
            os.write(fd, new[i:i + 64 * KiB])
            assert store_read(s3, "x") == old  # never empty, never partial
        os.fsync(fd) if mode == "writeback" else None
        assert store_read(s3, "x") == old  # fsync with durability "fast": no upload
        os.close(fd)
        seen: set[bytes] = set()

        def arrived() -> bool:
            got = store_read(s3, "x")
            seen.add(got)
            return got == new

        wait_for(arrived, "the new object")
        # Never empty or another size before the upload; during it, rclone (not S3: its
        # PUT is atomic) writes the object's file in place, so a GET may see a prefix.
        assert all(got in (old, new) or (got and new.startswith(got)) for got in seen)
        with open(p, "rb") as f:
            assert f.read() == new
        # The shell's way and dd's way, over the object just written.
        src = Path(m.mountpoint).parent / f"src-{mode}"
        src.write_bytes(old)
        subprocess.run(["sh", "-c", f'cat "{src}" > "{p}"'], check=True)
        wait_for(lambda: store_read(s3, "x") == old, "the shell's overwrite")
        subprocess.run(["dd", f"if={src}", f"of={p}", "bs=64k", "status=none"], check=True)
        with open(p, "rb") as f:
            assert f.read() == old
        if mode == "writeback":
            destaged(m)
        assert store_read(s3, "x") == old


def test_kill9_during_a_truncating_overwrite_keeps_the_old_object(
        s3: S3Server, mount_s3: Callable[..., Mounted], tmp_path: Path) -> None:
    """dd's pattern, and the daemon dies before the last close: the old object stays."""
    old = random.Random(3).randbytes(100 * KiB)
    put(s3, "y", old)
    cache = str(tmp_path / "cache")
    with mount_s3(s3, cache=cache) as m:
        fd = os.open(os.path.join(m.mountpoint, "y"), os.O_WRONLY | os.O_TRUNC)
        os.close(os.dup(fd))
        os.write(fd, b"half of the new")
        kill9(m)
        try:
            os.close(fd)
        except OSError:
            pass  # the daemon is gone
    with mount_s3(s3, cache=cache) as m:
        assert pending(m) == 0
        with open(os.path.join(m.mountpoint, "y"), "rb") as f:
            assert f.read() == old
    assert store_read(s3, "y") == old


# -- a close is durable: SIGKILL before the upload loses nothing ------------------------
def test_kill9_after_close_loses_nothing(restartable_s3: S3Server,
                                         mount_s3: Callable[..., Mounted],
                                         tmp_path: Path) -> None:
    server = restartable_s3
    cache = str(tmp_path / "cache")
    rng = random.Random(13)
    model: dict[str, bytes] = {}
    maybe: dict[str, bytes] = {}  # written when the kill landed: absent or whole
    for rnd in range(4):
        with mount_s3(server, cache=cache, source=LONG_TTLS) as m:
            os.listdir(m.mountpoint)  # a fresh listing: creates need no request
            server.stop()  # the destager cannot upload: the kill lands before it
            closed: list[tuple[str, bytes]] = []
            current: list[tuple[str, bytes]] = []
            failed: list[BaseException] = []

            def burst() -> None:
                try:
                    for i in range(1000):
                        name = f"r{rnd}-f{i:03d}"
                        data = rng.randbytes(rng.choice([0, 1, 4096, 70 * KiB, 300 * KiB]))
                        current[:] = [(name, data)]
                        with open(os.path.join(m.mountpoint, name), "wb") as f:
                            for j in range(0, len(data), 32 * KiB):
                                f.write(data[j:j + 32 * KiB])
                        closed.append((name, data))
                        current.clear()
                except OSError:
                    pass  # the daemon is gone
                except BaseException as exc:  # noqa: BLE001
                    failed.append(exc)

            t = threading.Thread(target=burst)
            t.start()
            deadline = time.monotonic() + 60
            target = rng.randrange(2, 25)
            while len(closed) < target and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)  # somewhere inside the next file
            kill9(m)
            t.join(60)
            assert not t.is_alive() and not failed, failed
            assert closed, "nothing was written before the kill"
            model.update(closed)
            maybe.update(current)
            server.start()
        with mount_s3(server, cache=cache) as m:
            # Recovered before the mount serves: visible and readable at once.
            for name, data in closed[-3:]:
                with open(os.path.join(m.mountpoint, name), "rb") as f:
                    assert f.read() == data
            destaged(m)
            for name, data in model.items():
                assert store_read(server, name) == data, name
            for name, data in maybe.items():
                assert store_or_none(server, name) in (None, data), name
            assert "ERROR" not in m.read_log()


# -- the store is down while files are written ------------------------------------------
def test_store_down_writes_succeed_and_arrive_later(restartable_s3: S3Server,
                                                    mount_s3: Callable[..., Mounted]) -> None:
    server = restartable_s3
    put(server, "d/old", b"old bytes")
    with mount_s3(server, source=LONG_TTLS) as m:
        d = os.path.join(m.mountpoint, "d")
        assert os.listdir(d) == ["old"]
        with open(os.path.join(d, "old"), "rb") as f:
            assert f.read() == b"old bytes"
        server.stop()
        files = {f"d/n{i}": random.Random(i).randbytes(100 * KiB + i) for i in range(6)}
        files["d/old"] = b"new bytes for an old object"
        for rel, data in files.items():
            with open(os.path.join(m.mountpoint, rel), "wb") as f:
                f.write(data)
        for rel, data in files.items():  # read-your-writes, with the store gone
            with open(os.path.join(m.mountpoint, rel), "rb") as f:
                assert f.read() == data
            assert os.stat(os.path.join(m.mountpoint, rel)).st_size == len(data)
        assert sorted(os.listdir(d)) == sorted(r[2:] for r in files)
        assert pending(m) == len(files)
        snap = stats(m.mountpoint)
        assert snap["writeback"]["pending_bytes"] == sum(map(len, files.values()))
        wait_for(lambda: stats(m.mountpoint)["counters"].get("writeback.upload_failures", 0)
                 >= 2, "retries")
        server.start()
        destaged(m)
        for rel, data in files.items():
            assert store_read(server, rel) == data
        log = m.read_log()
        assert log.count("write-back: upload of") == 1, log  # one warning, then quiet
        assert "takes uploads again" in log
        counters = stats(m.mountpoint)["counters"]
        assert counters["writeback.uploaded_bytes"] >= sum(map(len, files.values()))


# -- rename, unlink and opens of pending files; a KV-cache-like workload ------------------
def test_pending_files_rename_unlink_reopen(restartable_s3: S3Server,
                                            mount_s3: Callable[..., Mounted]) -> None:
    server = restartable_s3
    put(server, "old", b"store copy")
    with mount_s3(server, source=LONG_TTLS) as m:
        root = m.mountpoint
        assert sorted(os.listdir(root)) == ["old"]
        server.stop()
        j = lambda n: os.path.join(root, n)  # noqa: E731
        with open(j("a"), "wb") as f:
            f.write(b"A" * 5000)
        with open(j("b"), "wb") as f:
            f.write(b"B" * 7000)
        with open(j("c"), "wb") as f:
            f.write(b"C" * 10)
        # A second open of a pending file sees its data; a writer starts from it.
        with open(j("a"), "r+b") as f:
            assert f.read() == b"A" * 5000
            f.seek(10)
            f.write(b"xx")
        a = b"A" * 10 + b"xx" + b"A" * 4988
        with open(j("a"), "rb") as f:
            assert f.read() == a
        os.rename(j("a"), j("a2"))  # pending: the journal row follows the name
        os.unlink(j("b"))  # pending: dropped, never uploaded
        os.truncate(j("c"), 4)
        assert os.stat(j("c")).st_size == 4
        with open(j("e"), "wb") as f:
            f.write(b"EEE")
        os.rename(j("e"), j("e2"))
        os.rename(j("e2"), j("c2"))
        with open(j("c2"), "rb") as f:
            assert f.read() == b"EEE"
        with open(j("g"), "wb") as f:
            f.write(b"GG")
        os.rename(j("g"), j("c2"))  # over a pending file: that one is never uploaded
        with open(j("c2"), "rb") as f:
            assert f.read() == b"GG"
        assert sorted(os.listdir(root)) == ["a2", "c", "c2", "old"]
        server.start()
        os.rename(j("old"), j("old2"))  # not pending: copy + delete in the store
        destaged(m)
        assert store_read(server, "a2") == a
        assert store_read(server, "c") == b"CCCC"
        assert store_read(server, "c2") == b"GG"
        assert store_read(server, "old2") == b"store copy"
        for gone in ("a", "b", "old", "e", "e2", "g"):
            assert not exists_in_store(server, gone), gone


def test_kv_cache_blocks_end_equal_to_the_model(s3: S3Server,
                                                mount_s3: Callable[..., Mounted]) -> None:
    """Fixed-size 256 KiB blocks written once, read back at random, some deleted."""
    rng = random.Random(5)
    block = 256 * KiB
    model: dict[str, bytes] = {}
    with mount_s3(s3, source=LONG_TTLS) as m:
        root = m.mountpoint
        os.mkdir(os.path.join(root, "kv"))
        for i in range(48):
            name = f"kv/blk{i:04d}"
            model[name] = rng.randbytes(block)
            with open(os.path.join(root, name), "wb") as f:
                f.write(model[name])
            if i % 5 == 4:  # read some back at random while uploads run
                for _ in range(8):
                    name = rng.choice(sorted(model))
                    off = rng.randrange(0, block - 4096)
                    with open(os.path.join(root, name), "rb") as f:
                        f.seek(off)
                        assert f.read(4096) == model[name][off:off + 4096]
            if i % 7 == 6:
                victim = rng.choice(sorted(model))
                os.unlink(os.path.join(root, victim))
                del model[victim]
        assert sorted(os.listdir(os.path.join(root, "kv"))) == sorted(
            n[3:] for n in model)
        destaged(m)
    import pyarrow.fs as pafs

    infos = s3.client().get_file_info(pafs.FileSelector(f"{s3.bucket}/kv"))
    assert sorted(i.base_name for i in infos) == sorted(n[3:] for n in model)
    for name, data in model.items():
        assert store_read(s3, name) == data, name


# -- unmount drains the queue ----------------------------------------------------------
def test_umount_drains_the_queue(restartable_s3: S3Server, mount_s3: Callable[..., Mounted],
                                 tmp_path: Path) -> None:
    server = restartable_s3
    cache = str(tmp_path / "cache")
    files = {f"f{i}": random.Random(100 + i).randbytes(512 * KiB + i) for i in range(12)}
    later = {f"g{i}": random.Random(200 + i).randbytes(64 * KiB + i) for i in range(3)}

    def write(m: Mounted, batch: dict[str, bytes]) -> None:
        for rel, data in batch.items():
            with open(os.path.join(m.mountpoint, rel), "wb") as f:
                f.write(data)

    def umount(m: Mounted) -> None:
        res = subprocess.run(tierfs_cmd("umount", m.mountpoint), capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr

    with mount_s3(server, cache=cache, source=LONG_TTLS) as m:
        os.listdir(m.mountpoint)
        server.stop()  # a backlog builds up; the destager backs off
        write(m, files)
        wait_for(lambda: stats(m.mountpoint)["counters"].get("writeback.upload_failures", 0)
                 >= 3, "failed uploads")  # the destager now waits 4 s or more to retry
        server.start()
        umount(m)  # does not wait for the backoff: drains now
        for rel, data in files.items():  # everything is there when umount returns
            assert store_read(server, rel) == data
        # (The destager's next retry may have come before the unmount: then the drain
        # had nothing left to do.)
        if "unmount: uploading" in m.read_log():
            assert "every pending write is uploaded" in m.read_log()
    # The store is down at unmount: what stays pending is said, and uploaded next time.
    with mount_s3(server, cache=cache, source=LONG_TTLS) as m:
        os.listdir(m.mountpoint)
        server.stop()
        write(m, later)
        umount(m)
        assert f"the object store did not take {len(later)} pending writes" in m.read_log()
    server.start()
    with mount_s3(server, cache=cache) as m:
        destaged(m)
        for rel, data in {**files, **later}.items():
            assert store_read(server, rel) == data


# -- recovery and fsck of a damaged journal (in-process, no mount) ----------------------
def _journal_with_damage(root: Path) -> None:
    from fusefs.catalog import Journal, JournalRow

    (root / "writeback").mkdir(mode=0o700)
    (root / "data").mkdir(mode=0o700)
    (root / "writeback" / "1").write_bytes(b"x" * 100)  # whole
    (root / "writeback" / "3").write_bytes(b"y" * 10)  # short: its row says 50
    (root / "writeback" / "4").write_bytes(b"z")  # no row: never flushed
    j = Journal(str(root / "catalog.db"))
    j.apply(put=[JournalRow(1, b"ok", 100, "ready", 1, 1, 1),
                 JournalRow(2, b"missing", 20, "open", 2, 2, 2),
                 JournalRow(3, b"short", 50, "ready", 3, 3, 3)])
    j.close()


@pytest.mark.allow_log_errors(r"write-back: the spool file")
def test_recovery_keeps_damaged_rows_and_fsck_reports_them(tmp_path: Path) -> None:
    import trio

    from fusefs.catalog import Journal
    from fusefs.fsck import check_cache_dir
    from fusefs.tiers.objectstore.writeback import WriteBack

    _journal_with_damage(tmp_path)

    async def recover() -> WriteBack:
        wb = WriteBack(str(tmp_path), None, durability="fast")  # type: ignore[arg-type]
        await wb.open(take_lock=True)
        await wb.close()
        return wb

    wb = trio.run(recover)
    assert list(wb.pending) == [b"ok"] and wb.pending[b"ok"][0].size == 100

    async def other_source(source: str) -> None:
        w = WriteBack(str(tmp_path), None, durability="fast")  # type: ignore[arg-type]
        await w.open(take_lock=True, source=source)
        await w.close()

    trio.run(other_source, "s3://one")  # the rows are of s3://one from now on
    with pytest.raises(OSError, match="pending writes of s3://one, not of s3://two"):
        trio.run(other_source, "s3://two")
    assert sorted(r.path for r in wb.damaged) == [b"missing", b"short"]
    report = check_cache_dir(str(tmp_path))
    assert len(report.errors) == 2, report.errors
    assert any("missing" in e and "writeback/2" in e for e in report.errors)
    assert any("10 of 50" in e for e in report.errors)
    assert any("b'ok'" in n and "next mount" in n for n in report.notes)
    assert any("writeback/4" in n for n in report.notes)
    report = check_cache_dir(str(tmp_path), repair=True)
    assert report.fixed == ["dropped the journal row of the missing spool writeback/2"]
    j = Journal(str(tmp_path / "catalog.db"))
    assert sorted(r.id for r in j.rows()) == [1, 3]
    j.close()
    # No spool file was ever deleted.
    assert sorted(os.listdir(tmp_path / "writeback")) == ["1", "3", "4"]


def test_a_schema_3_catalog_gains_the_journal(tmp_path: Path) -> None:
    import sqlite3

    from fusefs.catalog import Catalog, FileRow, Journal

    path = str(tmp_path / "catalog.db")
    c = Catalog(path)
    c.apply(new_files=[FileRow(5, b"f", 10, 1, "")])
    c.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE pending_writes; UPDATE meta SET value='3' WHERE key='schema';")
    db.commit()
    db.close()
    c = Catalog(path)
    assert c.migrated_from == 3 and [f.id for f in c.files()] == [5]
    c.close()
    j = Journal(path)
    assert j.rows() == []
    j.close()


# -- durability "capacity": close returns once the store holds the file -----------------
def test_capacity_durability_uploads_before_close_returns(
        s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    put(s3, "c", b"old object")
    with mount_s3(s3, extra='[write]\ndurability = "capacity"\ndestage_defer = "0s"\n') as m:
        assert stats(m.mountpoint)["writeback"]["destage_defer_s"] == 0  # the config's
        p = os.path.join(m.mountpoint, "c")
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.close(os.dup(fd))  # a close before any write: the object is not emptied
        assert store_read(s3, "c") == b"old object"
        os.write(fd, b"first")
        os.fsync(fd)
        assert store_read(s3, "c") == b"first"
        os.write(fd, b" second")
        os.close(fd)
        assert store_read(s3, "c") == b"first second"
        with open(os.path.join(m.mountpoint, "n"), "wb") as f:
            f.write(b"new")
        assert store_read(s3, "n") == b"new"
        destaged(m)
        assert store_read(s3, "c") == b"first second"


# -- in-process: the tier with write-back (no destager running: everything stays pending) --
def test_tier_pending_writes_follow_renames_in_the_journal(s3: S3Server, tmp_path: Path) -> None:
    import trio

    from fusefs.catalog import Journal
    from test_objectstore import started, write_file

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)

    async def main() -> None:
        tier = await started(s3)
        await tier.start_writeback(str(cache), durability="fast", stats=None, take_lock=True)
        await tier.mkdir(b"d", 0o755, 0, 0)
        await write_file(tier, b"d/a", b"AAAA")
        await write_file(tier, b"top", b"T")
        # Those writes hold uploads back (the destager waits for writers to pause).
        wb = tier.writeback
        assert wb is not None
        quiet, defer_max = wb.quiet, wb.defer_max
        wb.quiet = wb.defer_max = 3600.0
        wb._running = 1  # an upload in progress: a second one waits for the writers
        with trio.move_on_after(0.2) as scope:
            await wb.turn(trio.current_time())
        assert scope.cancelled_caught
        wb.quiet, wb.defer_max, wb._running = quiet, defer_max, 0
        assert (await tier.stat(b"d/a")).st_size == 4
        assert not exists_in_store(s3, "d/a")  # pending: nobody uploads it here
        await tier.rename(b"top", b"top2")
        rows = {r.path: r for r in Journal(str(cache / "catalog.db")).rows()}
        assert set(rows) == {b"d/a", b"top2"} and rows[b"top2"].state == "ready"
        # A directory rename copies keys in the store: what is pending below goes first.
        await tier.rename(b"d", b"e")
        assert store_read(s3, "e/a") == b"AAAA" and not exists_in_store(s3, "d/a")
        rows = {r.path for r in Journal(str(cache / "catalog.db")).rows()}
        assert rows == {b"top2"}
        f = await tier.open(b"top2", os.O_RDONLY)
        assert await f.pread(0, 10) == b"T"
        await f.close()
        await tier.unlink(b"top2")
        assert Journal(str(cache / "catalog.db")).rows() == []
        assert os.listdir(cache / "writeback") == []
        await tier.stop_writeback()
        await tier.close()
        assert not exists_in_store(s3, "top2") and not exists_in_store(s3, "top")

    trio.run(main)


# -- while writers write, one upload at a time; never starved --------------------------
def test_uploads_beside_writers_one_at_a_time_never_starved(tmp_path: Path) -> None:
    """The destager's rule, on trio's virtual clock (no real waiting, no timing): with an
    upload running, another starts once no write reached a spool for ``quiet`` seconds,
    at the latest ``defer_max`` after its spool was ready, when the running one ends, or
    at once when the unmount drains the queue; with none running, at once."""
    import trio
    import trio.testing

    from fusefs.tiers.objectstore.writeback import WriteBack

    async def main() -> None:
        wb = WriteBack(str(tmp_path), None, quiet=0.25, defer_max=10.0)  # type: ignore[arg-type]
        wb._running = 1  # an upload is in progress
        t0 = trio.current_time()
        await wb.turn(t0)  # nothing written yet: no wait
        assert trio.current_time() == t0
        await trio.sleep(1.0)
        wb.wrote()
        t1 = trio.current_time()
        await wb.turn(t0)  # the write just now: wait for a pause of `quiet`
        assert trio.current_time() == pytest.approx(t1 + 0.25)
        async with trio.open_nursery() as nursery:
            async def writer() -> None:  # never pauses for `quiet`
                while True:
                    wb.wrote()
                    await trio.sleep(0.1)

            nursery.start_soon(writer)
            await trio.sleep(0.05)
            t2 = trio.current_time()
            with trio.fail_after(60):  # a starved upload fails here, not by hanging
                await wb.turn(t2)  # deferred, but not longer than defer_max
            assert trio.current_time() == pytest.approx(t2 + 10.0)

            async def upload_ends() -> None:
                await trio.sleep(3.0)
                wb._ended()

            nursery.start_soon(upload_ends)
            t3 = trio.current_time()
            await wb.turn(t3)  # the running upload ended: the next one starts
            assert trio.current_time() == pytest.approx(t3 + 3.0)
            await wb.turn(t3)  # none running: at once, writer or not
            assert trio.current_time() == pytest.approx(t3 + 3.0)

            wb._running = 1

            async def drain_soon() -> None:
                await trio.sleep(0.5)
                wb._draining = True  # what drain() sets: the unmount waits for nobody

            nursery.start_soon(drain_soon)
            t4 = trio.current_time()
            await wb.turn(t4 + 100)
            assert trio.current_time() <= t4 + 0.5 + 0.25
            nursery.cancel_scope.cancel()
        assert wb.stats.snapshot()["counters"]["writeback.deferred_to_writers"] == 4
        # [write] destage_defer = 0: uploads start at once, writing or not.
        wb0 = WriteBack(str(tmp_path), None, defer_max=0.0)  # type: ignore[arg-type]
        wb0._running = 1
        wb0.wrote()
        t5 = trio.current_time()
        await wb0.turn(t5)
        assert trio.current_time() == t5

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
