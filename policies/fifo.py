"""First in, first out: the other baseline; a hit changes nothing."""

from __future__ import annotations

from collections import OrderedDict

from .base import AccessInfo, Key, Policy

__all__ = ["FIFOPolicy"]


class FIFOPolicy(Policy):
    """Evicts the key inserted longest ago, whatever its use since."""

    name = "fifo"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        self._order: OrderedDict[Key, None] = OrderedDict()

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        self._order[key] = None

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        pass

    def _evict(self, incoming: int) -> Key | None:
        return self._order.popitem(last=False)[0]

    def _on_remove(self, key: Key) -> None:
        del self._order[key]
