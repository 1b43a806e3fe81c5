"""The engine's two I/O classes, in-process over a real local source.

Latency reads (random misses served from the capacity tier) have priority:
optional stream read-ahead waits while ``latency_pressure`` or more of them
are in flight, and goes as soon as a reader needs the chunk. Nothing here
depends on time: the tests look at which chunks exist and have started.
"""

from __future__ import annotations

import os

import trio
import trio.testing

from fusefs.engine import Engine
from fusefs.handles import HandleTable
from fusefs.policies.base import Override
from fusefs.stats import Stats
from fusefs.tiers.posix import PosixTier

MiB = 1 << 20


def _file(src: str, size: int) -> bytes:
    data = os.urandom(size)
    with open(os.path.join(src, "shard"), "wb") as f:
        f.write(data)
    return data


def run_stream(src: str, pressure: int, body: object) -> None:
    async def main() -> None:
        tier = PosixTier(src)
        await tier.start()
        engine = Engine(tier, stats=Stats(), pagecache=None, latency_pressure=pressure)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                f = await tier.open(b"shard", os.O_RDONLY)
                st = await f.fstat()
                h = HandleTable().add_file(ino=2, path=b"shard", file=f, flags=os.O_RDONLY, pid=1,
                                       size=st.st_size,
                                       override=Override(access_class="stream"))
                engine.opened(h, st)
                try:
                    await body(engine, h)  # type: ignore[operator]
                finally:
                    await engine.release(h)
                nursery.cancel_scope.cancel()
        finally:
            await engine.close()
            await tier.close()

    trio.run(main)


def test_read_ahead_yields_to_latency_reads(tmp_path: os.PathLike[str]) -> None:
    src = str(tmp_path)
    data = _file(src, 8 * MiB)

    async def body(engine: Engine, h: object) -> None:
        assert await engine.read(h, 0, 128 * 1024) == data[:128 * 1024]  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        chunks = h.stream.chunks  # type: ignore[attr-defined]
        ahead = [c for c in chunks.values() if c.start > 0]
        assert ahead, "the stream scheduled read-ahead"
        # Each one is parked before the throughput limiter, none holds it.
        assert engine.sched.throughput.borrowed_tokens == 0
        assert all(not c.done.is_set() for c in ahead), "optional read-ahead went anyway"
        assert engine.stats.snapshot()["counters"]["readahead.yielded"] >= len(ahead)
        # A reader that needs a deferred chunk takes it at once.
        got = await engine.read(h, MiB, 128 * 1024)  # type: ignore[arg-type]
        assert got == data[MiB:MiB + 128 * 1024]

    run_stream(src, 0, body)


def test_read_ahead_runs_without_pressure(tmp_path: os.PathLike[str]) -> None:
    src = str(tmp_path)
    data = _file(src, 8 * MiB)

    async def body(engine: Engine, h: object) -> None:
        assert await engine.read(h, 0, 128 * 1024) == data[:128 * 1024]  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        ahead = [c for c in h.stream.chunks.values() if c.start > 0]  # type: ignore[attr-defined]
        assert ahead
        with trio.fail_after(60):  # a guard against a hang, not a timing check
            for c in ahead:
                await c.done.wait()
        assert "readahead.yielded" not in engine.stats.snapshot()["counters"]

    run_stream(src, 8, body)


def test_dram_entries_name_versions_not_inodes() -> None:
    """One DRAM entry per (path, version): the same version reopened under a new inode
    finds it; a new version, an unname or a trim beyond the limit drops its pages, but a
    trimmed entry's pages stay while an inode is bound to it. (An entry may be dropped
    twice: when it loses its name, and again when its last inode goes, for what that
    inode's reads put there since.)"""
    from fusefs.engine.consistency import DramEntries
    from fusefs.tiers.capacity import SourceVersion
    dropped: list[int] = []
    d = DramEntries(dropped.append, limit=2)
    v1, v2 = SourceVersion(10, 1, None), SourceVersion(10, 2, None)
    a = d.bind(2, b"a", v1)
    d.forget(2)
    assert dropped == [] and d.bind(3, b"a", v1) == a  # found again by a new inode
    b = d.bind(3, b"a", v2)  # the source changed: old pages go at once
    assert b != a and set(dropped) == {a}
    c = d.bind(4, b"c", v1)
    e = d.bind(5, b"e", v1)  # 3 paths, limit 2: "a" loses its name, inode 3 keeps it
    assert set(dropped) == {a} and d.current(3) == b
    d.forget(3)
    assert set(dropped) == {a, b}
    d.forget(4)
    assert d.unname(b"", tree=True) == 2 and set(dropped) == {a, b, c, e}
    d.forget(5)
    assert d.check() == [] and d.bound_inodes() == []
    f = d.bind(6, b"dir/x", v1)
    g = d.bind(7, b"dir/sub/y", v1)
    assert d.unname(b"dir", tree=True) == 2 and {f, g} <= set(dropped)
    assert d.of(8) not in (a, b, c, e, f, g)  # private, never a reused id
    assert d.check() == []
