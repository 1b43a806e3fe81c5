"""Least recently used: the baseline every other policy is measured against."""

from __future__ import annotations

from collections import OrderedDict

from .base import AccessInfo, Key, Policy

__all__ = ["LRUPolicy"]


class LRUPolicy(Policy):
    """Evicts the key used longest ago. Scans flush it: that is what it is here to show."""

    name = "lru"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        # Oldest first; a use moves the key to the end.
        self._order: OrderedDict[Key, None] = OrderedDict()

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        self._order[key] = None

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        self._order.move_to_end(key)

    def _evict(self, incoming: int) -> Key | None:
        return self._order.popitem(last=False)[0]

    def _on_remove(self, key: Key) -> None:
        del self._order[key]
