"""The kernel's page cache as a tier: pushing pages into it, dropping a stream's pages.

`KernelPages.push` stores the pages of a fetched block that a random reader did not ask for
in the kernel's page cache (``pyfuse3.notify_store``), so its next reads there never reach
the daemon, where each costs ~100-200 µs. The kernel keeps them across opens while the file's
version does not change (close-to-open) or always (``immutable``). A push in flight would
overwrite pages a write has just filled, so a file with a writer open gets no pushes, and
opening one for writing (or truncating it) first waits for the pushes in flight
(`wait_drained`); so does an open that finds another version (the kernel drops the inode's
pages when that open's answer reaches it; a push must not land after). A write request
itself must never wait for them (the kernel holds the written pages locked while it waits
for our answer).

`KernelPages.drop` makes the kernel forget an inode's pages: a finished big stream (so it
does not push the hot random set out), a read that found its object replaced, and
``tierfs evict`` (`drop_now`, which returns once the kernel has). Both calls run in worker
threads: the kernel locks each page, and a read in flight holds that lock until this event
loop answers it.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from ..stats import Stats
from .consistency import Consistency

log = logging.getLogger(__name__)


class KernelPages:
    """Pushes into and drops from the kernel's page cache for one mount.

    Args:
        consistency: decides whether bytes are still current when a push runs.
        stats: counters.
        push: ``notify_store(inode, offset, data)``, or None (no pushes).
        drop: ``invalidate_inode(inode, attr_only=False)``, or None.
        budget: bytes all pushes in flight may hold.
    """

    def __init__(self, consistency: Consistency, stats: Stats, *,
                 push: Callable[[int, int, bytes], None] | None = None,
                 drop: Callable[..., None] | None = None,
                 budget: int = 256 << 20) -> None:
        self.consistency = consistency
        self.stats = stats
        self.push_fn = push
        self.drop_fn = drop
        self.budget = budget
        self.nursery: trio.Nursery | None = None
        self._pushes: dict[int, int] = {}
        self._drained: dict[int, trio.Event] = {}
        self._bytes = 0
        self._threads = trio.CapacityLimiter(2)

    @property
    def can_push(self) -> bool:
        return self.push_fn is not None and self.nursery is not None

    def push(self, ino: int, gen: int, start: int, data: bytes, req_start: int,
             req_end: int) -> None:
        """Push the parts of block ``data`` at ``start`` outside [req_start, req_end)."""
        if (not self.can_push or self.consistency.has_writer(ino)
                or not self.consistency.is_current(ino, gen)
                or self._bytes + len(data) > self.budget):
            return
        pieces = []
        if start < req_start:
            pieces.append((start, data[:req_start - start]))
        if start + len(data) > req_end:
            pieces.append((req_end, data[req_end - start:]))
        if not pieces:
            return
        self._pushes[ino] = self._pushes.get(ino, 0) + 1
        self._bytes += len(data)
        assert self.nursery is not None
        self.nursery.start_soon(self._push, ino, gen, pieces, len(data))

    async def _push(self, ino: int, gen: int, pieces: list[tuple[int, bytes]],
                    nbytes: int) -> None:
        push = self.push_fn
        assert push is not None
        try:
            for off, piece in pieces:
                if not self.consistency.is_current(ino, gen) or self.consistency.has_writer(ino):
                    break
                await trio.to_thread.run_sync(push, ino, off, piece, limiter=self._threads)
                self.stats.add("kernel.pushed_bytes", len(piece))
        except OSError as exc:  # the kernel forgot the inode, or no support
            self.stats.add("kernel.push_failed")
            log.debug("kernel push to inode %d failed: %s", ino, exc)
        finally:
            self._bytes -= nbytes
            n = self._pushes[ino] - 1
            if n:
                self._pushes[ino] = n
            else:
                del self._pushes[ino]
                ev = self._drained.pop(ino, None)
                if ev is not None:
                    ev.set()

    async def wait_drained(self, ino: int) -> None:
        """Wait until no push to ``ino`` is in flight (after `Consistency.writer_opened`).

        Only from an open or a truncate: the kernel holds no page of the file locked then.
        """
        while self._pushes.get(ino):
            ev = self._drained.setdefault(ino, trio.Event())
            await ev.wait()

    def drop(self, ino: int) -> None:
        """Have the kernel forget the pages of ``ino`` (in the background)."""
        if self.drop_fn is None or self.nursery is None:
            return
        self.nursery.start_soon(self._drop, ino)

    def forget_attrs(self, ino: int) -> None:
        """Have the kernel ask for the attributes of ``ino`` again (its pages stay).

        Synchronous and safe inside a request: the kernel takes no page or inode lock
        for it."""
        if self.drop_fn is None:
            return
        try:
            self.drop_fn(ino, attr_only=True)
        except OSError as exc:  # ENOENT: the kernel no longer holds the inode
            log.debug("kernel attributes of inode %d not dropped: %s", ino, exc)

    async def _drop(self, ino: int) -> bool:
        assert self.drop_fn is not None
        try:
            await trio.to_thread.run_sync(self.drop_fn, ino, limiter=self._threads)
        except OSError as exc:  # the kernel forgot the inode already: nothing cached
            log.debug("kernel invalidation of inode %d failed: %s", ino, exc)
            return False
        self.stats.add("kernel.dropped_files")
        return True

    async def drop_now(self, inos: list[int]) -> int:
        """Have the kernel forget the pages of ``inos``; returns once it has.

        For a command that must not answer before the kernel stops serving what it
        changed (``tierfs evict``). Returns how many inodes the kernel still knew.
        """
        if self.drop_fn is None or not inos:
            return 0
        dropped = 0

        async def one(ino: int) -> None:
            nonlocal dropped
            dropped += await self._drop(ino)

        async with trio.open_nursery() as nursery:
            for ino in inos:
                nursery.start_soon(one, ino)
        return dropped

    def statistics(self) -> dict[str, int]:
        return {"push_bytes_in_flight": self._bytes}
