"""The C page cache must miss exactly as often as libcachesim on the same trace.

S3-FIFO against ``libcachesim.S3FIFO``; CLOCK against ``libcachesim.Clock``
(1-bit counter).

Each request is the engine's read-through: ``get_into``, and ``put`` on a
miss. Objects have size 1 and libcachesim's cache size is the number of
pages, so both count in pages. libcachesim only caches anything once
``capacity * small_size_ratio >= 2`` (an object must be smaller than the
small FIFO), so sizes here start at 20 pages.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusefs.pagecache import PageCache

lcs = pytest.importorskip("libcachesim")

PS = 4096
N_REQ = 100_000


def zipf_trace(n_obj: int, n_req: int, alpha: float, seed: int) -> list[int]:
    """Zipf(alpha) over n_obj objects, ids shuffled so that rank != id."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_obj + 1) ** alpha
    ids = rng.choice(n_obj, size=n_req, p=weights / weights.sum())
    return rng.permutation(n_obj)[ids].tolist()


def scan_zipf_trace(n_obj: int, n_req: int, alpha: float, seed: int, scan: int) -> list[int]:
    """Zipf traffic interrupted by one-pass scans of never-seen objects."""
    hot = zipf_trace(n_obj, n_req, alpha, seed)
    rng = np.random.default_rng(seed + 1)
    out: list[int] = []
    next_new = 10 * n_obj
    i = 0
    while len(out) < n_req:
        if rng.random() < 0.02:
            out.extend(range(next_new, next_new + scan))
            next_new += scan
        else:
            out.extend(hot[i : i + 100])
            i += 100
    return out[:n_req]


def libcachesim_misses(trace: list[int], pages: int, threshold: int) -> int:
    cache = lcs.S3FIFO(
        pages,
        hashpower=16,  # the default 2^24 buckets cost more to allocate than to run
        small_size_ratio=0.1,
        ghost_size_ratio=0.9,
        move_to_main_threshold=threshold,
    )
    req = lcs.Request()
    req.obj_size = 1
    misses = 0
    for obj in trace:
        req.obj_id = obj
        if not cache.get(req):
            misses += 1
    return misses


def libcachesim_clock_misses(trace: list[int], pages: int) -> int:
    cache = lcs.Clock(pages, hashpower=16, n_bit_counter=1)
    req = lcs.Request()
    req.obj_size = 1
    misses = 0
    for obj in trace:
        req.obj_id = obj
        if not cache.get(req):
            misses += 1
    return misses


def pagecache_misses(trace: list[int], pages: int, threshold: int = 2, policy: str = "s3fifo") -> int:
    buf = bytearray(PS)
    data = b"x" * 64
    with PageCache(pages * PS, PS, policy=policy, move_to_main_threshold=threshold) as pc:
        for obj in trace:
            if not pc.get_into(7, obj, buf):
                pc.put(7, obj, data)
        stats = pc.stats()
    assert stats["hits"] + stats["misses"] == len(trace)
    assert stats["insertions"] == stats["misses"]
    return stats["misses"]


TRACES = {
    "zipf1.0": lambda: zipf_trace(20_000, N_REQ, 1.0, 1),
    "zipf0.8": lambda: zipf_trace(50_000, N_REQ, 0.8, 2),
    "zipf1.2": lambda: zipf_trace(100_000, N_REQ, 1.2, 3),
    "scan+zipf1.0": lambda: scan_zipf_trace(20_000, N_REQ, 1.0, 4, 2_000),
    "scan+zipf0.9": lambda: scan_zipf_trace(50_000, N_REQ, 0.9, 5, 10_000),
}


@pytest.fixture(scope="module", params=sorted(TRACES))
def trace(request: pytest.FixtureRequest) -> list[int]:
    return TRACES[request.param]()


@pytest.mark.parametrize("pages", [20, 137, 1000, 5000])
def test_default_parameters_match_exactly(trace: list[int], pages: int) -> None:
    assert len(trace) >= 100_000
    expected = libcachesim_misses(trace, pages, 2)
    assert 0 < expected < len(trace)
    assert pagecache_misses(trace, pages, 2) == expected


@pytest.mark.parametrize("threshold", [1, 3])
def test_other_thresholds_match_exactly(trace: list[int], threshold: int) -> None:
    pages = 2000
    assert pagecache_misses(trace, pages, threshold) == libcachesim_misses(
        trace, pages, threshold
    )


@pytest.mark.parametrize("pages", [20, 1000, 5000])
def test_clock_matches_exactly(trace: list[int], pages: int) -> None:
    expected = libcachesim_clock_misses(trace, pages)
    assert 0 < expected < len(trace)
    assert pagecache_misses(trace, pages, policy="clock") == expected
