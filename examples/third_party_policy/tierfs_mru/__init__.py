"""An example of a policy shipped as its own package: most recently used eviction.

MRU evicts the key used last. It is the right choice for one thing only, a loop over a
data set slightly larger than the cache, where LRU misses every time; it is here to show
what a third-party policy needs: subclass ``fusefs.policies.Policy``, give it a ``name``,
implement the four ordering hooks, and register it under the ``tierfs.policies`` entry-point
group (see ``pyproject.toml``). Then ``[policy] name = "mru"`` selects it.
"""

from __future__ import annotations

from collections import OrderedDict

from fusefs.policies import AccessInfo, Key, Policy

__all__ = ["MRUPolicy"]


class MRUPolicy(Policy):
    """Evicts the most recently used key."""

    name = "mru"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        self._order: OrderedDict[Key, None] = OrderedDict()  # least recent first

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        self._order[key] = None

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        self._order.move_to_end(key)

    def _evict(self, incoming: int) -> Key | None:
        return self._order.popitem(last=True)[0]

    def _on_remove(self, key: Key) -> None:
        del self._order[key]
