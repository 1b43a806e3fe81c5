"""Storage tiers: the capacity tier (source of truth) and the fast tier (local NVMe cache).

This package owns `open_capacity`, the choice of a capacity-tier implementation
for a source string, so that the contract (`fusefs.tiers.capacity`) imports
neither implementation. Both are imported lazily: pyarrow is only needed for
object stores.
"""

from __future__ import annotations

from typing import Any

from .capacity import CapacityTier

__all__ = ["open_capacity"]


def open_capacity(source: str, **options: Any) -> CapacityTier:
    """Open the capacity tier for a source string.

    A plain path or ``file://`` URI is a local directory; anything with another
    scheme goes to `pyarrow.fs.FileSystem.from_uri`.

    Raises:
        OSError: the source does not exist or cannot be used, with a message
            that names it.
    """
    if "://" not in source or source.startswith("file://"):
        from .posix import PosixTier

        path = source[len("file://") :] if source.startswith("file://") else source
        return PosixTier(path)
    from .objectstore import ObjectStoreTier  # pyarrow is only needed for stores

    return ObjectStoreTier.from_uri(source, **options)
