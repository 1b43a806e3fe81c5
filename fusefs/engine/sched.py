"""I/O classes of the engine: latency work before throughput work.

Latency-class work is what a caller waits on (a random read's miss); throughput-class work
is what nobody waits on yet (stream read-ahead, whole-file fills, warming). Latency reads go
straight to the capacity tier, counted while in flight; throughput work runs under small
limiters and, where optional, waits while ``latency_pressure`` or more latency reads are in
flight, so that streams and background copies cannot push a random reader's tail up.

This module knows nothing of chunks, files or tiers: only counts, limiters and events.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import trio


class Scheduler:
    """Latency / throughput accounting of one mount (trio thread only).

    Args:
        throughput_slots: concurrent throughput-class capacity reads (read-ahead, warming).
        latency_pressure: latency reads in flight at which optional work waits.
        fill_slots: concurrent reads of background whole-file fills, apart from the
            read-ahead's, so a stream cannot starve the fill a random reader waits on.
    """

    def __init__(self, *, throughput_slots: int = 4, latency_pressure: int = 8,
                 fill_slots: int = 3) -> None:
        self.throughput = trio.CapacityLimiter(throughput_slots)
        self.fills = trio.CapacityLimiter(max(1, fill_slots))
        self.latency_pressure = latency_pressure
        self._latency_inflight = 0
        self._calm: trio.Event | None = None

    @property
    def latency_inflight(self) -> int:
        return self._latency_inflight

    @contextmanager
    def latency(self) -> Iterator[None]:
        """Count a latency-class capacity read while it is in flight."""
        self._latency_inflight += 1
        try:
            yield
        finally:
            self._latency_inflight -= 1
            if self._calm is not None and self._latency_inflight < self.latency_pressure:
                self.wake()

    def wake(self) -> None:
        """Let waiting optional work look again (a reader now waits on some of it)."""
        if self._calm is not None:
            self._calm.set()
            self._calm = None

    async def wait_calm(self, still_optional: Callable[[], bool] = lambda: True,
                        on_wait: Callable[[], None] | None = None) -> None:
        """Wait while latency reads crowd the tier and the work is still optional.

        ``on_wait`` is called once if the caller had to wait (for a counter).
        """
        waited = False
        while still_optional() and self._latency_inflight >= self.latency_pressure:
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if self._calm is None:
                self._calm = trio.Event()
            await self._calm.wait()

    def statistics(self) -> dict[str, int]:
        return {
            "latency_reads_in_flight": self._latency_inflight,
            "readahead_in_flight": self.throughput.borrowed_tokens,
            "readahead_waiting": self.throughput.statistics().tasks_waiting,
            "fills_in_flight": self.fills.borrowed_tokens,
        }
