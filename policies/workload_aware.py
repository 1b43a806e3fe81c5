"""The default policy: admission by access class; ordering by whichever of two experts the
workload currently favours.

What it decides, in order:

1. Overrides from per-path rules win (handled by the base class for ``pin`` and
   ``cache = false``; ``class = "stream"`` / ``"random"`` replace the classifier's label).
2. Sequential data (a stream) is not admitted on its first pass: a one-pass scan would flush
   the hot set and never be read again. Its uses do not feed the frequency sketch or the
   miniature simulations either, so a scan neither ages the random readers' frequencies nor
   sways the choice of expert.
3. A file read as a stream again (a second epoch: more bytes streamed than the file holds)
   is admitted whole if it fits, beside the other files admitted so, in ``whole_file_ratio``
   of the capacity (a budget: shards re-read in turn, each small but together as large as
   the cache, would churn through it and push the random readers out); its keys go
   straight to the main cache's probation segment, since the next use of a page streamed
   once per epoch is a whole epoch away and the window would drop it first.
4. Random (and not yet classified) data is admitted to DRAM at once; to the fast tier only
   on its second access: the first miss only records the key in a ghost of recently seen
   keys (reject-first), which keeps one-off reads from costing an NVMe write.

What is admitted is ordered by two experts that both keep their bookkeeping over the same
resident keys: W-TinyLFU (:mod:`.wtinylfu`), close to the frequency-ordered optimum on a
stationary skewed (Zipf-like) popularity and on loops, and ARC (:mod:`.arc`), which follows
a hot set that moves (measured: on a Zipf whose ranking rotates, W-TinyLFU misses up to 35%
more than LRU at a 12.5% cache, whatever its window). Only the leading expert chooses
victims; the other is told which keys left. The leader is chosen by miniature simulation
(Waldspurger et al., ATC '17): a spatially sampled share of the keys (all of them for a
small cache) is replayed through one standalone cache per expert, scaled down by the same
rate, and every ``period`` sampled uses the expert whose miniature missed less (misses
decayed by half each period, with a 1% margin against flapping) takes the lead.

What the miniatures are fed: in a simulation, every non-stream use (:meth:`access`). In a
mount the policy hears of the fast tier's hits only (the engine finds misses by itself), a
stream that would make the miniatures of a cache that always hits; so once the engine
reports the tier's request stream through :meth:`on_use` (every random request DRAM did not
serve), the miniatures learn from that instead and no longer from hits. A request in a mount
costs the daemon some 200 us, so there the sampling rate is also capped at
:data:`OBSERVED_MAX_RATE` of the keys (the miniatures are rebuilt at the capped rate when
the first use is reported).
"""

from __future__ import annotations

from collections import OrderedDict

from ..access import UNKNOWN_ACCESS, effective_label
from .arc import ARCPolicy
from .base import AccessInfo, Key, Label, Policy, Tier
from .mrc import ShadowMRC
from .wtinylfu import _M1, _MASK64, WTinyLFUPolicy

__all__ = ["OBSERVED_MAX_RATE", "WorkloadAwarePolicy"]

_SAMPLE_BITS = 24
#: Largest share of the keys whose uses reported by :meth:`WorkloadAwarePolicy.on_use` (a
#: mount's requests) the miniatures replay: a sampled use costs two miniature accesses, a
#: request in a mount some 200 us (measured: docs/policies.md, benchmarks/miniature_cost.py).
OBSERVED_MAX_RATE = 1 / 8


def _is_stream(info: AccessInfo) -> bool:
    return effective_label(info) == Label.SEQUENTIAL


class _FrequencyExpert(WTinyLFUPolicy):
    """W-TinyLFU whose sketch ignores streams (so a scan does not age the frequencies)."""

    def _counts(self, info: AccessInfo) -> bool:
        return not _is_stream(info)

    def admit_to_probation(self, key: Key, size: int) -> None:
        """A second-epoch key: straight to probation, counted as used twice."""
        self._sketch.increment(key)
        self._probation[key] = size


class _FileEpoch:
    """How much of one file has been streamed."""

    __slots__ = ("streamed", "extent", "rereading", "granted")

    def __init__(self) -> None:
        self.streamed = 0
        self.extent = 0
        self.rereading = False
        self.granted = 0  # bytes of the whole-file budget this file holds


class WorkloadAwarePolicy(Policy):
    """Admission by access class; W-TinyLFU or ARC ordering, chosen by miniature
    simulation. The default policy.

    Args:
        capacity: Bytes the tier may hold.
        ghost_ratio: Bytes of rejected keys remembered for reject-first, as a share of the
            capacity.
        whole_file_ratio: Re-streamed files are admitted whole while all of them together
            are at most this share of the capacity.
        max_files: Files whose streaming history is kept (least recently streamed dropped).
        sketch_factor: Frequency-sketch counters per row per cached object.
        window_ratio: The W-TinyLFU expert's window share.
        protected_ratio: The W-TinyLFU expert's protected share of its main cache.
        sample_factor: The W-TinyLFU expert's sketch aging (see :mod:`.wtinylfu`).
        mini_objects: Objects a miniature cache holds at most: the sampling rate is
            ``mini_objects`` over the objects the tier holds (at most 1; at most
            :data:`OBSERVED_MAX_RATE` once :meth:`on_use` reports a mount's requests).
        period_factor: Sampled uses between two choices of the leader, per object in a
            miniature (at least 512).
        experts: ``"adaptive"`` (the choice above), or ``"frequency"`` / ``"recency"`` to
            keep one expert (for measurements).
        mrc: Keep live miss-ratio curves of LRU, S3-FIFO and ARC at 0.25x to 4x this tier's
            size (:class:`~fusefs.policies.mrc.ShadowMRC`, on the non-stream uses), shown
            by :meth:`statistics` and so by ``tierfs stats``. Off by default: it costs 15
            shadow accesses per sampled use.
        **options: Passed to :class:`~fusefs.policies.base.Policy`.
    """

    name = "workload_aware"

    def __init__(
        self,
        capacity: int,
        *,
        ghost_ratio: float = 1.0,
        whole_file_ratio: float = 0.25,
        max_files: int = 4096,
        sketch_factor: int = 8,
        window_ratio: float = 0.01,
        protected_ratio: float = 0.8,
        sample_factor: int = 32,
        mini_objects: int = 2048,
        period_factor: int = 2,
        experts: str = "adaptive",
        mrc: bool = False,
        **options: object,
    ) -> None:
        super().__init__(capacity, **options)  # type: ignore[arg-type]
        if experts not in ("adaptive", "frequency", "recency"):
            raise ValueError("experts must be 'adaptive', 'frequency' or 'recency'")
        obj = self._object_size
        # A retrieval index holds far more objects than the cache; a sketch of one counter
        # per cached object blurs the mid-popularity keys that decide the miss ratio
        # (measured: 1.21x Belady at a 1% cache with 1 counter per object, 1.17x with 8).
        wt = {"window_ratio": window_ratio, "protected_ratio": protected_ratio,
              "sample_factor": sample_factor, "sketch_factor": sketch_factor}
        self._freq = _FrequencyExpert(self.capacity, object_size=obj, **wt)  # type: ignore[arg-type]
        self._rec = ARCPolicy(self.capacity, object_size=obj)
        self._experts = experts
        self._lead: Policy = self._rec if experts == "recency" else self._freq
        self._other: Policy = self._freq if self._lead is self._rec else self._rec
        # Miniatures: standalone caches of unit objects fed the sampled keys' uses.
        self._wt = wt
        self._items = max(self.capacity // obj, 1)
        self._mini_objects = mini_objects
        self._period_factor = period_factor
        self._mini_freq: Policy | None = None
        self._mini_rec: Policy | None = None
        self._observed = False  # the engine reports the request stream (on_use)
        self._mini_uses = 0  # non-stream uses offered to the miniatures
        self._mini_sampled = 0  # of which sampled
        self._switches = 0
        self._build_miniatures(min(1.0, mini_objects / self._items))
        self._mrc = ShadowMRC(self._items) if mrc else None
        self._ghost_cap = int(self.capacity * ghost_ratio)
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._ghost_bytes = 0
        self._whole_limit = int(self.capacity * whole_file_ratio)
        self._whole_granted = 0
        self._max_files = max_files
        self._files: OrderedDict[int, _FileEpoch] = OrderedDict()
        self._whole_admitted = 0

    _is_stream = staticmethod(_is_stream)

    # -- the two experts ---------------------------------------------------------------------

    def _build_miniatures(self, rate: float) -> None:
        """(Re)start the miniatures at sampling ``rate``, empty, with no misses counted."""
        self._sample_below = int(rate * (1 << _SAMPLE_BITS))
        mini_cap = max(int(self._items * rate), 1)
        if self._experts == "adaptive":
            self._mini_freq = _FrequencyExpert(mini_cap, object_size=1, **self._wt)  # type: ignore[arg-type]
            self._mini_rec = ARCPolicy(mini_cap, object_size=1)
        self._period = max(self._period_factor * mini_cap, 512)
        self._sampled = 0
        self._miss_freq = 0.0  # decayed misses of each miniature
        self._miss_rec = 0.0

    def on_use(self, key: Key, info: AccessInfo | None = None) -> None:
        """A request for the tier's data, hit or miss: from the first one on, the
        miniatures (and ``mrc`` curves) learn from these instead of from the hits."""
        if not self._observed:
            self._observed = True
            rate = min(1.0, self._mini_objects / self._items, OBSERVED_MAX_RATE)
            if self._sample_below > int(rate * (1 << _SAMPLE_BITS)):
                self._build_miniatures(rate)
        self._simulate(key, info if info is not None else UNKNOWN_ACCESS)

    def _simulate(self, key: Key, info: AccessInfo) -> None:
        """Feed one non-stream use to the miniatures if its key is sampled; choose the
        leader at the end of a period."""
        if self._is_stream(info):
            return
        if self._mrc is not None:
            self._mrc.record(key)
        mini_f = self._mini_freq
        if mini_f is None:
            return
        self._mini_uses += 1
        if (((hash(key) & _MASK64) * _M1) & _MASK64) >> (64 - _SAMPLE_BITS) >= self._sample_below:
            return
        mini_r = self._mini_rec
        assert mini_r is not None
        # Plain uses: an override (a pin) is the mount's business, not the miniatures'.
        if not mini_f.access(key, 1, UNKNOWN_ACCESS):
            self._miss_freq += 1
        if not mini_r.access(key, 1, UNKNOWN_ACCESS):
            self._miss_rec += 1
        self._mini_sampled += 1
        self._sampled += 1
        if self._sampled >= self._period:
            self._sampled = 0
            self._choose()

    def _choose(self) -> None:
        mf, mr = self._miss_freq, self._miss_rec
        lead_rec = self._lead is self._rec
        # The other expert must be better by a margin, so that noise does not flap.
        if (mr < 0.99 * mf) if not lead_rec else (mf < 0.99 * mr):
            self._lead, self._other = self._other, self._lead
            self._switches += 1
        self._miss_freq, self._miss_rec = mf / 2, mr / 2

    @property
    def leader(self) -> str:
        """The expert choosing victims now: ``"frequency"`` (W-TinyLFU) or ``"recency"`` (ARC)."""
        return "recency" if self._lead is self._rec else "frequency"

    def _on_insert(self, key: Key, size: int, info: AccessInfo) -> None:
        if self._is_stream(info) and info.file_id is not None:
            st = self._files.get(info.file_id)
            if st is not None and st.rereading:
                # Second epoch: W-TinyLFU's probation (counted as used twice); ARC's T1.
                self._whole_admitted += 1
                self._freq.admit_to_probation(key, size)
                self._rec._on_insert(key, size, info)
                return
        self._freq._on_insert(key, size, info)
        self._rec._on_insert(key, size, info)

    def _on_hit(self, key: Key, info: AccessInfo) -> None:
        self._freq._on_hit(key, info)
        self._rec._on_hit(key, info)
        if not self._observed:
            self._simulate(key, info)

    def _on_miss(self, key: Key, info: AccessInfo) -> None:
        self._freq._on_miss(key, info)
        self._rec._on_miss(key, info)
        if not self._observed:
            self._simulate(key, info)

    def _evict(self, incoming: int) -> Key | None:
        victim = self._lead._evict(incoming)
        if victim is not None:
            self._other._on_remove(victim)
        return victim

    def _on_remove(self, key: Key) -> None:
        self._freq._on_remove(key)
        self._rec._on_remove(key)

    def on_read(self, info: AccessInfo) -> None:
        """Track how much of each file has been streamed, to spot a second epoch."""
        fid = info.file_id
        if fid is None or not self._is_stream(info):
            return
        files = self._files
        st = files.get(fid)
        if st is None:
            st = _FileEpoch()
            files[fid] = st
            if len(files) > self._max_files:
                self._whole_granted -= files.popitem(last=False)[1].granted
        else:
            files.move_to_end(fid)
        size_known = info.file_size is not None
        extent = info.file_size if size_known else st.extent
        if not st.rereading and extent and st.streamed >= extent:
            # More bytes streamed than the file holds: this pass re-reads it. Without a
            # known size, only a request behind the furthest byte seen counts as a re-read
            # (during a first pass the stream is always at the edge).
            if size_known or info.offset < st.extent:
                # The budget bounds all re-read files together: shards re-read in turn,
                # each small but together as large as the cache, would churn through it
                # and push the random readers out (measured on the scan family).
                if self._whole_granted + extent <= self._whole_limit:
                    st.rereading = True
                    st.granted = extent
                    self._whole_granted += extent
        st.streamed += info.size
        end = info.offset + info.size
        if end > st.extent:
            st.extent = end

    def _admit(self, key: Key, size: int, info: AccessInfo, tier: Tier) -> bool:
        if self._is_stream(info):
            st = self._files.get(info.file_id) if info.file_id is not None else None
            return st is not None and st.rereading
        if tier is Tier.DRAM:
            return True
        ghost = self._ghost
        gsize = ghost.pop(key, None)
        if gsize is not None:
            self._ghost_bytes -= gsize
            return True
        if size <= self._ghost_cap:
            while self._ghost_bytes + size > self._ghost_cap:
                _, old = ghost.popitem(last=False)
                self._ghost_bytes -= old
            ghost[key] = size
            self._ghost_bytes += size
        return False

    def _on_invalidate_file(self, file_id: int) -> None:
        # The file changed: its streaming history describes other bytes.
        st = self._files.pop(file_id, None)
        if st is not None:
            self._whole_granted -= st.granted

    def statistics(self) -> dict[str, int]:
        """Base counters plus ``whole_file_admitted``, ``ghost_bytes``, ``leader_recency``
        (1 while ARC leads), ``leader_switches``, the miniatures' decayed misses, and
        ``mini_uses`` / ``mini_sampled``: the uses offered to the miniatures and the sampled
        ones among them."""
        out = super().statistics()
        out["whole_file_admitted"] = self._whole_admitted
        out["ghost_bytes"] = self._ghost_bytes
        out["leader_recency"] = int(self._lead is self._rec)
        out["leader_switches"] = self._switches
        out["mini_misses_frequency"] = int(self._miss_freq)
        out["mini_misses_recency"] = int(self._miss_rec)
        out["mini_uses"] = self._mini_uses
        out["mini_sampled"] = self._mini_sampled
        if self._mrc is not None:
            out.update(self._mrc.statistics())
        return out
