"""W-TinyLFU: an LRU window in front of a segmented LRU, gated by a frequency sketch.

New keys enter the window (1% of the capacity at first), which absorbs bursts. When room is needed
and the window is full, its oldest key (the candidate) duels with the main cache's victim
(the oldest key of the probation segment): the one the sketch says was used more often
stays. The main cache is a segmented LRU: keys arrive in probation (20%) and move to
protected (80%) on a hit; protected overflow goes back to probation.

The sketch is a count-min sketch of 4 rows of 4-bit counters (kept in a ``bytearray``)
sized from the number of objects the main cache holds. It counts the uses that say
something about long-term popularity: an insertion, a hit in the main cache, and a window
candidate leaving the window; hits inside the window are recency, not frequency, and are
not counted. Every counter is halved after ``sample_factor`` increments per object the main
cache holds, so the frequencies follow a changing workload.

The window adapts (``adaptive=True``, as in Caffeine): a hill climber measures the hit ratio
over samples of ``climb_factor`` uses per cached object, and moves the window's share by a
step (6.25% of the capacity, decaying by 2% a sample) in the direction that last improved it,
reversing when the hit ratio fell. A workload where recency pays (a drifting hot set) grows
the window towards LRU; a stationary skewed one shrinks it towards pure LFU admission. A
larger window fills lazily (the main cache gives up victims without a duel while the window
is under its share); a smaller one hands its oldest keys to probation at once.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import AccessInfo, Key, Policy

__all__ = ["FrequencySketch", "WTinyLFUPolicy"]

_MASK64 = (1 << 64) - 1
_M1 = 0x9E3779B97F4A7C15
_M2 = 0xC2B2AE3D27D4EB4F
# bytearray.translate with this table halves every counter in one C-level pass.
_HALVE = bytes(b >> 1 for b in range(256))


class FrequencySketch:
    """Approximate use counts: count-min, 4 rows, saturating at 15, periodically halved.

    Args:
        expected_items: Objects the cache holds; sets the width.
        period: Increments between two halvings of every count.
    """

    def __init__(self, expected_items: int, *, period: int) -> None:
        width = 64
        while width < expected_items:
            width <<= 1
        self._mask = width - 1
        self._rows = [bytearray(width) for _ in range(4)]
        self._period = max(period, 16)
        self._samples = 0

    def _indexes(self, key: Key) -> tuple[int, int, int, int]:
        h = hash(key) & _MASK64
        a = (h * _M1) & _MASK64
        b = ((h ^ (h >> 29)) * _M2) & _MASK64
        m = self._mask
        return (a >> 32) & m, a & m, (b >> 32) & m, b & m

    def estimate(self, key: Key) -> int:
        """The estimated use count of ``key`` (never below the truth, up to halvings)."""
        i0, i1, i2, i3 = self._indexes(key)
        r = self._rows
        return min(r[0][i0], r[1][i1], r[2][i2], r[3][i3])

    def increment(self, key: Key) -> None:
        """Count one use of ``key``."""
        i0, i1, i2, i3 = self._indexes(key)
        r0, r1, r2, r3 = self._rows
        # Conservative update: only the counters at the minimum grow, which keeps keys
        # that collide with a hot key from inheriting its count.
        low = min(r0[i0], r1[i1], r2[i2], r3[i3])
        if low < 15:
            if r0[i0] == low:
                r0[i0] = low + 1
            if r1[i1] == low:
                r1[i1] = low + 1
            if r2[i2] == low:
                r2[i2] = low + 1
            if r3[i3] == low:
                r3[i3] = low + 1
        self._samples += 1
        if self._samples >= self._period:
            self._samples = 0
            self._rows = [row.translate(_HALVE) for row in self._rows]


class WTinyLFUPolicy(Policy):
    """W-TinyLFU (Einziger, Friedman and Manes, ACM ToS 2017).

    Args:
        capacity: Bytes the tier may hold.
        window_ratio: Share of the capacity for the LRU window.
        protected_ratio: Share of the main cache for the protected segment.
        sample_factor: Sketch increments between two halvings, per object the main cache
            holds.
        sketch_factor: Sketch counters per row, per object the main cache holds (rounded
            up to a power of two).
        adaptive: Let the hill climber move the window's share (``window_ratio`` is then
            the starting point).
        climb_factor: Uses per cached object in one hill-climbing sample.
        max_window_ratio: Largest share of the capacity the window may reach.
        **options: Passed to :class:`~fusefs.policies.base.Policy` (``object_size`` turns
            bytes into object counts for the sketch).
    """

    name = "wtinylfu"

    def __init__(
        self,
        capacity: int,
        *,
        window_ratio: float = 0.01,
        protected_ratio: float = 0.8,
        sample_factor: int = 32,
        sketch_factor: int = 1,
        adaptive: bool = False,
        climb_factor: int = 10,
        max_window_ratio: float = 0.8,
        **options: object,
    ) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        self._window_cap = int(self.capacity * window_ratio)
        self._protected_ratio = protected_ratio
        main_cap = self.capacity - self._window_cap
        self._protected_cap = int(main_cap * protected_ratio)
        main_items = max(main_cap // self._object_size, 1)
        self._sketch = FrequencySketch(main_items * sketch_factor, period=sample_factor * main_items)
        # Hill climbing of the window's share (Caffeine's simple climber).
        self._adaptive = adaptive
        items = max(self.capacity // self._object_size, 1)
        self._climb_period = max(climb_factor * items, 256)
        self._climb_hits = 0
        self._climb_uses = 0
        self._prev_hit_ratio: float | None = None
        self._step_unit = self.capacity * 0.0625
        self._step = self._step_unit
        self._max_window = int(self.capacity * max_window_ratio)
        self._window_adjustments = 0
        self._window: OrderedDict[Key, int] = OrderedDict()
        self._probation: OrderedDict[Key, int] = OrderedDict()
        self._protected: OrderedDict[Key, int] = OrderedDict()
        self._window_bytes = 0
        self._protected_bytes = 0

    def _counts(self, info: AccessInfo) -> bool:
        """Whether this use feeds the frequency sketch (subclasses filter scans out)."""
        return True

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        if self._counts(info):
            self._sketch.increment(key)
        window = self._window
        window[key] = size
        self._window_bytes += size
        # Before the cache is full the window's overflow simply moves on to probation.
        while self._window_bytes > self._window_cap and len(window) > 1:
            k, s = window.popitem(last=False)
            self._window_bytes -= s
            self._probation[k] = s

    def _on_miss(self, key: Key, info: AccessInfo) -> None:
        if self._adaptive and self._counts(info):
            self._climb_uses += 1
            if self._climb_uses >= self._climb_period:
                self._climb()

    def _climb(self) -> None:
        """End of a sample: step the window's share towards a higher hit ratio."""
        ratio = self._climb_hits / self._climb_uses
        self._climb_hits = self._climb_uses = 0
        prev = self._prev_hit_ratio
        self._prev_hit_ratio = ratio
        if prev is None:
            step = self._step  # no baseline yet: try the first step
        else:
            change = ratio - prev
            step = self._step if change >= 0 else -self._step
            # A large change means the workload moved: restart with a full step.
            if abs(change) >= 0.05:
                self._step = self._step_unit if step >= 0 else -self._step_unit
            else:
                self._step = step * 0.98
        self._resize_window(int(self._window_cap + step))

    def _resize_window(self, window_cap: int) -> None:
        window_cap = min(max(window_cap, 0), self._max_window)
        if window_cap == self._window_cap:
            return
        self._window_adjustments += 1
        self._window_cap = window_cap
        self._protected_cap = int((self.capacity - window_cap) * self._protected_ratio)
        # A smaller window hands its oldest keys to probation now; a larger one fills as
        # new keys arrive (eviction takes from main while the window is under its share).
        window = self._window
        while self._window_bytes > window_cap and window:
            k, s = window.popitem(last=False)
            self._window_bytes -= s
            self._probation[k] = s
        protected = self._protected
        while self._protected_bytes > self._protected_cap and protected:
            k, s = protected.popitem(last=False)
            self._protected_bytes -= s
            self._probation[k] = s

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        if self._adaptive and self._counts(info):
            self._climb_hits += 1
            self._climb_uses += 1
            if self._climb_uses >= self._climb_period:
                self._climb()
        if key in self._window:
            self._window.move_to_end(key)
            return
        if self._counts(info):
            self._sketch.increment(key)
        size = self._probation.pop(key, None)
        if size is None:
            self._protected.move_to_end(key)
            return
        protected = self._protected
        protected[key] = size
        self._protected_bytes += size
        while self._protected_bytes > self._protected_cap and len(protected) > 1:
            k, s = protected.popitem(last=False)
            self._protected_bytes -= s
            self._probation[k] = s

    def _main_victim(self) -> Key | None:
        if self._probation:
            return next(iter(self._probation))
        if self._protected:
            return next(iter(self._protected))
        return None

    def _evict(self, incoming: int) -> Key | None:
        window = self._window
        sketch = self._sketch
        if window and (self._window_bytes + incoming > self._window_cap or not (self._probation or self._protected)):
            cand = next(iter(window))
            victim = self._main_victim()
            keep = victim is not None and sketch.estimate(cand) > sketch.estimate(victim)
            # Having been wanted recently counts once the duel is decided.
            sketch.increment(cand)
            if keep:
                # The candidate is used more often: it takes the victim's place in main.
                self._pop_main(victim)
                csize = window.pop(cand)
                self._window_bytes -= csize
                self._probation[cand] = csize
                return victim
            self._window_bytes -= window.pop(cand)
            return cand
        victim = self._main_victim()
        if victim is None:
            victim = next(iter(window))
            self._window_bytes -= window.pop(victim)
            return victim
        self._pop_main(victim)
        return victim

    def _pop_main(self, key: Key) -> None:
        if self._probation.pop(key, None) is None:
            self._protected_bytes -= self._protected.pop(key)

    def _on_remove(self, key: Key) -> None:
        size = self._window.pop(key, None)
        if size is not None:
            self._window_bytes -= size
            return
        self._pop_main(key)

    def statistics(self) -> dict[str, int]:
        """Base counters plus ``window_bytes`` (the window's current share, in bytes) and
        ``window_adjustments`` (steps of the hill climber)."""
        out = super().statistics()
        out["window_bytes"] = self._window_cap
        out["window_adjustments"] = self._window_adjustments
        return out
