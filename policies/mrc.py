"""Live miss-ratio curves: shadow caches of several sizes fed a spatial sample of the keys.

This module owns :class:`ShadowMRC`, which a policy feeds with its uses to say what the miss
ratio *would* be under other policies and at other sizes of the tier (SHARDS, Waldspurger et
al., FAST '15: a key is sampled when its hash is below a threshold, so every use of a sampled
key is seen and reuse distances keep their shape; a cache of ``c`` objects is simulated by
one of ``c * rate``). The shadows are the shipped policies themselves, run on unit objects,
so a curve is exactly what those policies would do on the sampled keys. Nothing here reads
data or time; the cost is one hash per use and, for sampled uses, one access per shadow.

A sampled use costs about 15 shadow accesses of pure-Python policies (some 70 us on a 2-core
machine, a third of what the daemon spends on a whole read request), so inside a mount the
rate is also capped at :data:`MOUNT_MAX_RATE` of the keys (``max_rate``): measured with
``benchmarks/mrc_cost.py``, uncapped curves of small tiers (every key sampled) more than
doubled the daemon's CPU per request. A small tier then keeps small shadows and a coarse curve.
"""

from __future__ import annotations

from collections.abc import Sequence

from .arc import ARCPolicy
from .base import Key, Policy
from .lru import LRUPolicy
from .s3fifo import S3FIFOPolicy
from .sieve import SievePolicy
from .wtinylfu import _M1, _MASK64, WTinyLFUPolicy

__all__ = ["MOUNT_MAX_RATE", "ShadowMRC"]

_SAMPLE_BITS = 24
#: Largest share of the keys whose uses a mount's curves replay (see the module docstring).
MOUNT_MAX_RATE = 1 / 128
_SHADOWS: dict[str, type[Policy]] = {
    "lru": LRUPolicy,
    "sieve": SievePolicy,
    "s3fifo": S3FIFOPolicy,
    "arc": ARCPolicy,
    "wtinylfu": WTinyLFUPolicy,
}


class ShadowMRC:
    """Miss ratios of several policies at several multiples of a tier's size, sampled.

    Args:
        objects: Objects the tier holds (its capacity over its object size).
        policies: Names of the shadowed policies (of ``lru``, ``sieve``, ``s3fifo``,
            ``arc``, ``wtinylfu``).
        multiples: Sizes simulated, as multiples of the tier's.
        sample_objects: Objects a shadow of the tier's own size holds at most: the
            sampling rate is this over ``objects`` (at most 1).
        max_rate: The sampling rate is at most this share of the keys, whatever the
            tier's size: it bounds the cost per use (:data:`MOUNT_MAX_RATE` in a mount).
    """

    def __init__(
        self,
        objects: int,
        *,
        policies: Sequence[str] = ("lru", "s3fifo", "arc"),
        multiples: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        sample_objects: int = 1024,
        max_rate: float = 1.0,
    ) -> None:
        unknown = [p for p in policies if p not in _SHADOWS]
        if unknown:
            raise ValueError(f"no shadow for {unknown}; choose from {sorted(_SHADOWS)}")
        objects = max(objects, 1)
        if not 0 < max_rate <= 1:
            raise ValueError(f"max_rate must be in (0, 1], not {max_rate}")
        self.rate = min(1.0, sample_objects / objects, max_rate)
        self._below = int(self.rate * (1 << _SAMPLE_BITS))
        self.multiples = tuple(multiples)
        self._shadows: dict[tuple[str, float], Policy] = {
            (name, m): _SHADOWS[name](max(round(m * objects * self.rate), 1), object_size=1)
            for name in policies
            for m in self.multiples
        }
        self._misses = dict.fromkeys(self._shadows, 0)
        self.sampled = 0
        self.uses = 0

    def record(self, key: Key) -> None:
        """One use of ``key`` (hit or miss in the real tier: the shadows decide their own)."""
        self.uses += 1
        if (((hash(key) & _MASK64) * _M1) & _MASK64) >> (64 - _SAMPLE_BITS) >= self._below:
            return
        self.sampled += 1
        misses = self._misses
        for ident, shadow in self._shadows.items():
            if not shadow.access(key, 1):
                misses[ident] += 1

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """Per policy, ``(multiple of the tier's size, miss ratio)`` pairs, smallest first."""
        out: dict[str, list[tuple[float, float]]] = {}
        n = self.sampled
        for (name, m), misses in self._misses.items():
            out.setdefault(name, []).append((m, misses / n if n else 0.0))
        return out

    def statistics(self) -> dict[str, int]:
        """The curves as counters for ``tierfs stats``: ``mrc.<policy>@<multiple>x`` is the
        miss ratio in thousandths; ``mrc.sampled`` the sampled uses, ``mrc.uses`` all."""
        out = {"mrc.sampled": self.sampled, "mrc.uses": self.uses}
        for name, points in self.curves().items():
            for m, ratio in points:
                out[f"mrc.{name}@{m:g}x"] = round(1000 * ratio)
        return out
