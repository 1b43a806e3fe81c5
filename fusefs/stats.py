"""Counters and latency histograms of one mount.

Everything `tierfs stats` prints comes from here. Recording is O(1) and
allocation-free on the hot path (a dict increment, a bucket increment), so it
can sit in every request. Histograms use fixed log-spaced buckets (8 per
power of two, 1 us to ~1 min): percentiles are exact to within one bucket
(about 9%), which is all a tail-latency report needs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

_SUB = 8  # buckets per power of two
_NBUCKETS = 26 * _SUB  # 2**26 us ~ 67 s


def _bucket(us: float) -> int:
    if us <= 1.0:
        return 0
    b = int(math.log2(us) * _SUB)
    return b if b < _NBUCKETS else _NBUCKETS - 1


def _bucket_upper(b: int) -> float:
    return 2 ** ((b + 1) / _SUB)


class Histogram:
    """Latency histogram in microseconds."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0.0

    def record(self, us: float) -> None:
        self.counts[_bucket(us)] += 1
        self.n += 1
        self.total += us

    def percentile(self, p: float) -> float:
        """Upper bound of the bucket holding the p-th percentile (0 < p <= 100)."""
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(self.n * p / 100.0))
        seen = 0
        for b, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _bucket_upper(b)
        return _bucket_upper(_NBUCKETS - 1)

    def summary(self) -> dict[str, float]:
        return {
            "count": self.n,
            "mean_us": self.total / self.n if self.n else 0.0,
            "p50_us": self.percentile(50),
            "p99_us": self.percentile(99),
            "p999_us": self.percentile(99.9),
        }


class Stats:
    """All counters of a mount, keyed by dotted names (``read.bytes.dram``)."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.histograms: defaultdict[str, Histogram] = defaultdict(Histogram)
        #: Callables returning a dict merged into snapshots (tiers, caches).
        self.sources: dict[str, Any] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def latency(self, name: str, seconds: float) -> None:
        self.histograms[name].record(seconds * 1e6)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uptime_s": self._clock() - self.started,
            "counters": dict(sorted(self.counters.items())),
            "latency": {k: h.summary() for k, h in sorted(self.histograms.items())},
        }
        for name, fn in self.sources.items():
            try:
                out[name] = fn()
            except Exception as exc:  # a broken source must not break stats
                out[name] = {"error": str(exc)}
        return out
