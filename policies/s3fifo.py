"""S3-FIFO: a small probationary FIFO, a main FIFO with a 2-bit clock, and a ghost FIFO.

New keys enter the small queue (10% of the capacity). When the small queue has to give up
its oldest key, a key that was used again while there (``move_to_main_threshold`` uses,
default 1: "on reuse") moves to the main queue; the others are evicted and remembered in the
ghost queue (keys only, sized at 90% of the capacity in bytes). A missed key found in the
ghost goes straight to main. The main queue evicts its oldest key whose use counter is zero,
re-queueing the others with the counter decremented (counters saturate at 3: 2 bits).

Eviction takes from main when main is over its share or the small queue is empty, otherwise
from the small queue. Until the first eviction, keys that do not fit in a full small queue
go to main, so a cold cache fills main as well.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import AccessInfo, Key, Policy

__all__ = ["S3FIFOPolicy"]


class S3FIFOPolicy(Policy):
    """S3-FIFO eviction (Yang et al., SOSP '23).

    Args:
        capacity: Bytes the tier may hold.
        small_ratio: Share of the capacity for the small queue.
        ghost_ratio: Bytes of keys the ghost queue remembers, as a share of the capacity.
        move_to_main_threshold: Uses in the small queue that earn a move to main.
        **options: Passed to :class:`~fusefs.policies.base.Policy`.
    """

    name = "s3fifo"

    def __init__(
        self,
        capacity: int,
        *,
        small_ratio: float = 0.1,
        ghost_ratio: float = 0.9,
        move_to_main_threshold: int = 1,
        **options: object,
    ) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        self._small_cap = int(self.capacity * small_ratio)
        self._main_cap = self.capacity - self._small_cap
        self._ghost_cap = int(self.capacity * ghost_ratio)
        self._threshold = move_to_main_threshold
        # Each queue maps key -> size, oldest first; _freq holds the use counters.
        self._small: OrderedDict[Key, int] = OrderedDict()
        self._main: OrderedDict[Key, int] = OrderedDict()
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._freq: dict[Key, int] = {}
        self._small_bytes = 0
        self._main_bytes = 0
        self._ghost_bytes = 0
        self._has_evicted = False
        self._ghost_hit: Key | None = None
        self._ghost_hit_set = False

    def _on_miss(self, key: Key, info: AccessInfo) -> None:
        size = self._ghost.pop(key, None)
        if size is not None:
            self._ghost_bytes -= size
            self._ghost_hit, self._ghost_hit_set = key, True

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        ghost_hit = self._ghost_hit_set and self._ghost_hit == key
        self._ghost_hit, self._ghost_hit_set = None, False
        if not ghost_hit:
            # Inserted without a lookup first (or unpinned): the ghost is still to be asked.
            gsize = self._ghost.pop(key, None)
            if gsize is not None:
                self._ghost_bytes -= gsize
                ghost_hit = True
        self._freq[key] = 0
        if ghost_hit or (not self._has_evicted and self._small_bytes >= self._small_cap):
            self._main[key] = size
            self._main_bytes += size
        else:
            self._small[key] = size
            self._small_bytes += size

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        f = self._freq[key]
        if f < 3:
            self._freq[key] = f + 1

    def _evict(self, incoming: int) -> Key | None:
        self._has_evicted = True
        if self._main_bytes > self._main_cap or not self._small:
            return self._evict_main()
        return self._evict_small()

    def _evict_small(self) -> Key | None:
        small, freq = self._small, self._freq
        while small:
            key, size = small.popitem(last=False)
            self._small_bytes -= size
            if freq[key] >= self._threshold:
                # Reused while on probation: promote, its counter starts afresh in main.
                freq[key] = 0
                self._main[key] = size
                self._main_bytes += size
                continue
            del freq[key]
            self._remember(key, size)
            return key
        return None

    def _evict_main(self) -> Key | None:
        main, freq = self._main, self._freq
        while main:
            key, size = main.popitem(last=False)
            f = freq[key]
            if f >= 1:
                freq[key] = f - 1
                main[key] = size
                continue
            self._main_bytes -= size
            del freq[key]
            return key
        return None

    def _remember(self, key: Key, size: int) -> None:
        if size > self._ghost_cap:
            return
        ghost = self._ghost
        while self._ghost_bytes + size > self._ghost_cap:
            _, gsize = ghost.popitem(last=False)
            self._ghost_bytes -= gsize
        ghost[key] = size
        self._ghost_bytes += size

    def _on_remove(self, key: Key) -> None:
        size = self._small.pop(key, None)
        if size is not None:
            self._small_bytes -= size
        else:
            self._main_bytes -= self._main.pop(key)
        del self._freq[key]

    def _on_invalidate_file(self, file_id: int) -> None:
        # Ghost entries of a changed file describe data that no longer exists; they are
        # harmless (a ghost hit only speeds promotion) and age out, so they stay.
        pass
