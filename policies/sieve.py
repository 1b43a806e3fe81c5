"""SIEVE: a FIFO queue with one visited bit per key and a hand that sweeps it.

New keys enter at the head. The hand starts at the tail (the oldest key) and walks towards
the head; a visited key it passes loses its bit and stays where it is, the first unvisited
key is evicted, and the hand rests on the next newer key. At the head it wraps to the tail.
Hits only set a bit, so they are cheap and never reorder anything.
"""

from __future__ import annotations

from .base import AccessInfo, Key, Policy

__all__ = ["SievePolicy"]


class SievePolicy(Policy):
    """SIEVE eviction (Zhang et al., NSDI '24)."""

    name = "sieve"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        # A doubly linked list in two dicts: towards the head (newer) and the tail (older).
        self._newer: dict[Key, Key | None] = {}
        self._older: dict[Key, Key | None] = {}
        self._visited: dict[Key, bool] = {}
        self._head: Key | None = None  # newest
        self._tail: Key | None = None  # oldest
        self._hand: Key | None = None
        self._has_hand = False

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        old_head = self._head
        self._older[key] = old_head
        self._newer[key] = None
        if old_head is None:
            self._tail = key
        else:
            self._newer[old_head] = key
        self._head = key
        self._visited[key] = False

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        self._visited[key] = True

    def _evict(self, incoming: int) -> Key | None:
        visited = self._visited
        newer = self._newer
        obj = self._hand if self._has_hand else self._tail
        while visited[obj]:
            visited[obj] = False
            nxt = newer[obj]
            obj = self._tail if nxt is None else nxt
        nxt = newer[obj]
        self._hand, self._has_hand = nxt, nxt is not None
        self._unlink(obj)
        return obj

    def _on_remove(self, key: Key) -> None:
        if self._has_hand and self._hand == key:
            nxt = self._newer[key]
            self._hand, self._has_hand = nxt, nxt is not None
        self._unlink(key)

    def _unlink(self, key: Key) -> None:
        newer = self._newer.pop(key)
        older = self._older.pop(key)
        del self._visited[key]
        if newer is None:
            self._head = older
        else:
            self._older[newer] = older
        if older is None:
            self._tail = newer
        else:
            self._newer[older] = newer
