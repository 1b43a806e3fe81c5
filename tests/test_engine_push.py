"""Pushes into the kernel's page cache, in-process, and how they stay out of writes' way.

On a remote tier a random miss fetches a whole aligned block; with a
``kernel_push`` (immutable mounts) the pages the reader did not ask for are
handed to the kernel from a thread. A push in flight could land on pages a
write has just filled, so a file with a writer open gets no pushes and opening
one waits for those in flight. The kernel side here is a recorder that blocks
until released, so the tests decide when a push completes; nothing depends on
time.
"""

from __future__ import annotations

import os
import threading

import trio
import trio.testing

from fusefs.engine import Engine
from fusefs.handles import HandleTable
from fusefs.pagecache import PageCache
from fusefs.stats import Stats
from fusefs.tiers.posix import PosixTier

KiB = 1 << 10
MiB = 1 << 20


class BlockTier(PosixTier):
    """A local source read the way a remote one is: misses widen to blocks."""

    remote = True


class Kernel:
    """Records pushes; each blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bytes]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def push(self, ino: int, offset: int, data: bytes) -> None:
        self.calls.append((ino, offset, bytes(data)))
        self.entered.release()
        self.gate.wait(30)

    async def pushed(self, n: int) -> None:
        """Wait until ``n`` more pushes have reached the kernel."""
        for _ in range(n):
            assert await trio.to_thread.run_sync(self.entered.acquire, True, 30)


def run(src: str, body: object) -> None:
    async def main() -> None:
        tier = BlockTier(src)
        await tier.start()
        kernel = Kernel()
        engine = Engine(tier, stats=Stats(), pagecache=PageCache(8 * MiB, 4096),
                        remote_block=64 * KiB, kernel_push=kernel.push)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                f = await tier.open(b"f", os.O_RDONLY)
                st = await f.fstat()
                h = HandleTable().add_file(ino=2, path=b"f", file=f, flags=os.O_RDONLY, pid=1,
                                           size=st.st_size)
                engine.opened(h, st)
                try:
                    await body(engine, h, kernel)  # type: ignore[operator]
                finally:
                    kernel.gate.set()
                    await engine.release(h)
                nursery.cancel_scope.cancel()
        finally:
            await engine.close()
            await tier.close()

    trio.run(main)


def test_the_rest_of_a_block_is_pushed(tmp_path: os.PathLike[str]) -> None:
    data = os.urandom(MiB + 1000)
    (tmp_path / "f").write_bytes(data)  # type: ignore[operator]

    async def body(engine: Engine, h: object, kernel: Kernel) -> None:
        kernel.gate.set()
        assert await engine.read(h, 100 * KiB + 5, 10) == data[100 * KiB + 5:100 * KiB + 15]  # type: ignore[arg-type]
        await kernel.pushed(2)
        assert [(o, len(d)) for _, o, d in kernel.calls] == [(64 * KiB, 36 * KiB),
                                                             (104 * KiB, 24 * KiB)]
        assert all(ino == 2 and d == data[o:o + len(d)] for ino, o, d in kernel.calls)
        # The last block is short: one page in it, nothing else to push.
        kernel.calls.clear()
        assert await engine.read(h, MiB, 4096) == data[MiB:MiB + 4096]  # type: ignore[arg-type]
        # The block before it: pieces on both sides of the page read.
        assert await engine.read(h, MiB - 8192, 4096) == data[MiB - 8192:MiB - 4096]  # type: ignore[arg-type]
        await kernel.pushed(2)
        assert sorted((o, len(d)) for _, o, d in kernel.calls) == [(960 * KiB, 56 * KiB),
                                                                   (MiB - 4096, 4096)]
        # Pages of a fetched block are DRAM hits now: a hit pushes nothing.
        kernel.calls.clear()
        assert await engine.read(h, 70 * KiB, 4096) == data[70 * KiB:74 * KiB]  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert kernel.calls == []
        assert engine.stats.snapshot()["counters"]["dram.miss"] == 3

    run(str(tmp_path), body)


def test_a_writer_waits_for_pushes_in_flight_and_stops_new_ones(
        tmp_path: os.PathLike[str]) -> None:
    data = os.urandom(MiB)
    (tmp_path / "f").write_bytes(data)  # type: ignore[operator]

    async def body(engine: Engine, h: object, kernel: Kernel) -> None:
        await engine.read(h, 100 * KiB, 4096)  # type: ignore[arg-type]
        await kernel.pushed(1)  # the first piece is in the kernel
        engine.writer_opened(2)
        drained = trio.Event()

        async def open_writer() -> None:
            await engine.pushes_drained(2)
            drained.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_writer)
            await trio.testing.wait_all_tasks_blocked()
            assert not drained.is_set(), "the writer's open went ahead of a push in flight"
            kernel.gate.set()
        assert drained.is_set()
        # The second piece of that block was not pushed: a writer is open.
        assert [o for _, o, _ in kernel.calls] == [64 * KiB]
        # Nor is anything fetched while it stays open.
        assert await engine.read(h, 300 * KiB, 4096) == data[300 * KiB:304 * KiB]  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert [o for _, o, _ in kernel.calls] == [64 * KiB]
        # Closed: pushes resume.
        engine.writer_closed(2)
        assert await engine.read(h, 500 * KiB, 4096) == data[500 * KiB:504 * KiB]  # type: ignore[arg-type]
        await kernel.pushed(2)
        assert [o for _, o, _ in kernel.calls][1:] == [448 * KiB, 504 * KiB]

    run(str(tmp_path), body)
