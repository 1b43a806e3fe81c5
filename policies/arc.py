"""ARC: adaptive replacement between recency (T1) and frequency (T2), steered by ghosts.

T1 holds keys used once since they entered, T2 keys used at least twice; B1 and B2 remember
the keys recently evicted from each. A miss found in B1 says T1 was too small: the target
size ``p`` of T1 grows; a miss found in B2 shrinks it. On eviction, T1's oldest key goes to
B1 when T1 is over its target, otherwise T2's oldest goes to B2. Sizes are in bytes, so the
algorithm of the paper (which counts pages) holds for equal-size objects and degrades
gracefully for others.

The ghost-hit adaptation happens when the miss is looked up, the replacement when room is
made: for a full cache of equal-size objects this is exactly the paper's order.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import AccessInfo, Key, Policy

__all__ = ["ARCPolicy"]


class ARCPolicy(Policy):
    """Adaptive Replacement Cache (Megiddo and Modha, FAST '03)."""

    name = "arc"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        # Each list maps key -> size, LRU first.
        self._t1: OrderedDict[Key, int] = OrderedDict()
        self._t2: OrderedDict[Key, int] = OrderedDict()
        self._b1: OrderedDict[Key, int] = OrderedDict()
        self._b2: OrderedDict[Key, int] = OrderedDict()
        self._t1_bytes = 0
        self._t2_bytes = 0
        self._b1_bytes = 0
        self._b2_bytes = 0
        self._p = 0
        # The key of the current miss if it was found in a ghost list (1 or 2), else 0.
        self._pending: Key | None = None
        self._pending_list = 0

    def _on_miss(self, key: Key, info: AccessInfo) -> None:
        c = self.capacity
        size = self._b1.pop(key, None)
        if size is not None:
            delta = max(self._b2_bytes // self._b1_bytes, 1) if self._b1_bytes else 1
            self._b1_bytes -= size
            self._p = min(self._p + delta * size, c)
            self._pending, self._pending_list = key, 1
            return
        size = self._b2.pop(key, None)
        if size is not None:
            delta = max(self._b1_bytes // self._b2_bytes, 1) if self._b2_bytes else 1
            self._b2_bytes -= size
            self._p = max(self._p - delta * size, 0)
            self._pending, self._pending_list = key, 2
            return
        self._pending, self._pending_list = None, 0

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        from_ghost = self._pending_list != 0 and self._pending == key
        self._pending, self._pending_list = None, 0
        if from_ghost:
            self._t2[key] = size
            self._t2_bytes += size
        else:
            self._t1[key] = size
            self._t1_bytes += size

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        size = self._t1.pop(key, None)
        if size is not None:
            self._t1_bytes -= size
            self._t2[key] = size
            self._t2_bytes += size
        else:
            self._t2.move_to_end(key)

    def _evict(self, incoming: int) -> Key | None:
        c = self.capacity
        ghost_hit = self._pending_list != 0
        if not ghost_hit:
            if self._t1_bytes + self._b1_bytes + incoming > c:
                if self._t1_bytes < c and self._b1:
                    # L1 = T1 + B1 is full: forget B1's oldest, then replace.
                    _, gsize = self._b1.popitem(last=False)
                    self._b1_bytes -= gsize
                elif self._t1:
                    # T1 alone fills the cache: its oldest leaves without a ghost.
                    key, size = self._t1.popitem(last=False)
                    self._t1_bytes -= size
                    return key
            elif self._t1_bytes + self._t2_bytes + self._b1_bytes + self._b2_bytes + incoming > 2 * c and self._b2:
                _, gsize = self._b2.popitem(last=False)
                self._b2_bytes -= gsize
        return self._replace(in_b2=self._pending_list == 2)

    def _replace(self, *, in_b2: bool) -> Key:
        if self._t1 and (self._t1_bytes > self._p or (in_b2 and self._t1_bytes == self._p) or not self._t2):
            key, size = self._t1.popitem(last=False)
            self._t1_bytes -= size
            self._b1[key] = size
            self._b1_bytes += size
        else:
            key, size = self._t2.popitem(last=False)
            self._t2_bytes -= size
            self._b2[key] = size
            self._b2_bytes += size
        return key

    def _on_remove(self, key: Key) -> None:
        size = self._t1.pop(key, None)
        if size is not None:
            self._t1_bytes -= size
        else:
            self._t2_bytes -= self._t2.pop(key)
