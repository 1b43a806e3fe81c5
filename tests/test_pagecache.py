"""Unit tests of fusefs.pagecache: the API contract, one behaviour at a time."""

from __future__ import annotations

import errno

import pytest

from fusefs.pagecache import Hint, PageCache

PS = 4096


def page_bytes(file_id: int, page: int, length: int = PS) -> bytes:
    """Bytes that name their key, so a misplaced page cannot pass for another."""
    stamp = f"<{file_id}:{page}>".encode()
    return (stamp * (length // len(stamp) + 1))[:length]


@pytest.fixture
def cache() -> PageCache:
    with PageCache(64 * PS, PS) as pc:
        yield pc


def test_miss_then_hit_copies_into_buffer(cache: PageCache) -> None:
    buf = bytearray(PS)
    assert cache.get_into(1, 0, buf) == 0
    cache.put(1, 0, page_bytes(1, 0))
    assert cache.get_into(1, 0, buf) == PS
    assert bytes(buf) == page_bytes(1, 0)
    s = cache.stats()
    assert (s["hits"], s["misses"], s["insertions"]) == (1, 1, 1)


def test_contains_probes_without_counting(cache: PageCache) -> None:
    assert (1, 0) not in cache
    cache.put(1, 0, page_bytes(1, 0))
    cache.put(1, 1, page_bytes(1, 1, 10))
    assert (1, 0) in cache and (1, 1) in cache
    assert (1, 2) not in cache and (2, 0) not in cache
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (0, 0)
    assert cache.entry(1, 0)[1] == 0  # the probe left its frequency alone
    cache.invalidate(1, 0)
    assert (1, 0) not in cache and (1, 1) in cache


def test_get_into_accepts_memoryview_slices(cache: PageCache) -> None:
    cache.put(1, 0, page_bytes(1, 0))
    big = bytearray(3 * PS)
    assert cache.get_into(1, 0, memoryview(big)[PS : 2 * PS]) == PS
    assert big[PS : 2 * PS] == page_bytes(1, 0)
    assert big[:PS] == bytes(PS)


def test_get_range_into_copies_a_run_of_pages(cache: PageCache) -> None:
    for p in range(4):
        cache.put(1, p, page_bytes(1, p))
    cache.put(1, 4, page_bytes(1, 4, 100))  # the file's short last page
    cache.put(1, 5, page_bytes(1, 5))
    buf = bytearray(8 * PS)
    assert cache.get_range_into(1, 0, buf) == 4 * PS + 100
    assert bytes(buf[: 4 * PS + 100]) == b"".join(
        [page_bytes(1, p) for p in range(4)] + [page_bytes(1, 4, 100)]
    )
    assert cache.stats()["hits"] == 5 and cache.stats()["misses"] == 0
    assert cache.get_range_into(1, 2, memoryview(buf)[: 2 * PS + 50]) == 2 * PS
    assert cache.get_range_into(1, 6, buf) == 0
    assert cache.get_range_into(2, 0, buf) == 0
    assert cache.stats()["misses"] == 2
    cache.invalidate(1, 1)
    assert cache.get_range_into(1, 0, buf) == PS


def test_partial_last_page_keeps_its_length(cache: PageCache) -> None:
    cache.put(7, 3, page_bytes(7, 3, 1000))
    buf = bytearray(PS)
    assert cache.get_into(7, 3, buf) == 1000
    assert cache.get(7, 3) == page_bytes(7, 3, 1000)
    assert cache.stats()["bytes_used"] == 1000


def test_put_overwrites_in_place(cache: PageCache) -> None:
    cache.put(1, 1, b"a" * PS)
    cache.put(1, 1, b"b" * 10)
    assert cache.get(1, 1) == b"b" * 10
    s = cache.stats()
    assert (s["insertions"], s["updates"], s["bytes_used"]) == (1, 1, 10)


def test_buffer_too_small_is_value_error(cache: PageCache) -> None:
    cache.put(1, 1, page_bytes(1, 1))
    with pytest.raises(ValueError):
        cache.get_into(1, 1, bytearray(100))


def test_readonly_buffer_rejected(cache: PageCache) -> None:
    cache.put(1, 1, page_bytes(1, 1))
    with pytest.raises(BufferError):
        cache.get_into(1, 1, bytes(PS))


@pytest.mark.parametrize("data", [b"", b"x" * (PS + 1)])
def test_put_rejects_bad_lengths(cache: PageCache, data: bytes) -> None:
    with pytest.raises(ValueError):
        cache.put(1, 1, data)


@pytest.mark.parametrize("page_size", [0, 1024, 4095, 3 * 4096, 2 << 20])
def test_bad_page_size(page_size: int) -> None:
    with pytest.raises(ValueError):
        PageCache(1 << 24, page_size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy": "lru"},
        {"small_ratio": 0.0},
        {"small_ratio": 1.0},
        {"ghost_ratio": -0.1},
        {"move_to_main_threshold": 0},
        {"move_to_main_threshold": 4},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PageCache(1 << 20, PS, **kwargs)


def test_capacity_smaller_than_a_page() -> None:
    with pytest.raises(ValueError):
        PageCache(PS - 1, PS)


@pytest.mark.parametrize("page_size", [4096, 65536, 1 << 20])
def test_page_sizes(page_size: int) -> None:
    with PageCache(4 * page_size, page_size) as pc:
        data = page_bytes(0, 0, page_size)
        pc.put(0, 0, data)
        assert pc.get(0, 0) == data
        assert pc.capacity_pages == 4


def test_dont_admit_is_a_counted_noop(cache: PageCache) -> None:
    cache.put(2, 0, page_bytes(2, 0), hint=Hint.DONT_ADMIT)
    assert cache.get(2, 0) is None
    assert cache.stats()["not_admitted"] == 1
    assert cache.stats()["insertions"] == 0


def test_eviction_keeps_capacity() -> None:
    with PageCache(32 * PS, PS) as pc:
        for p in range(200):
            pc.put(0, p, page_bytes(0, p))
        s = pc.stats()
        assert s["pages_used"] == 32
        assert s["evictions"] == 200 - 32
        assert s["bytes_used"] == 32 * PS
        kept = [p for p in range(200) if pc.peek(0, p) is not None]
        assert len(kept) == 32
        for p in kept:
            assert pc.peek(0, p) == page_bytes(0, p)


def test_pinned_pages_survive_and_busy_when_all_pinned() -> None:
    with PageCache(4 * PS, PS) as pc:
        for p in range(4):
            pc.put(0, p, page_bytes(0, p), hint=Hint.PIN)
        assert pc.stats()["pinned_pages"] == 4
        with pytest.raises(OSError) as exc:
            pc.put(0, 99, page_bytes(0, 99))
        assert exc.value.errno == errno.EBUSY
        assert pc.stats()["busy"] == 1
        pc.unpin(0, 2)
        pc.put(0, 99, page_bytes(0, 99))
        assert pc.peek(0, 2) is None  # the only unpinned page went
        for p in (0, 1, 3, 99):
            assert pc.peek(0, p) == page_bytes(0, p)


def test_pins_nest_and_unpin_errors(cache: PageCache) -> None:
    with pytest.raises(OSError) as exc:
        cache.pin(5, 5)
    assert exc.value.errno == errno.ENOENT
    cache.put(5, 5, page_bytes(5, 5))
    cache.pin(5, 5)
    cache.pin(5, 5)
    assert cache.entry(5, 5) == ("pinned", 0, 2)
    cache.unpin(5, 5)
    assert cache.entry(5, 5) == ("pinned", 0, 1)
    cache.unpin(5, 5)
    assert cache.entry(5, 5) == ("main", 0, 0)
    assert cache.stats()["pinned_pages"] == 0
    with pytest.raises(ValueError):
        cache.unpin(5, 5)


def test_invalidate_page_range_file(cache: PageCache) -> None:
    for f in (1, 2):
        for p in range(10):
            cache.put(f, p, page_bytes(f, p))
    cache.pin(1, 4)
    assert cache.invalidate(1, 4) == 1  # pinned pages go too
    assert cache.invalidate(1, 4) == 0
    assert cache.invalidate(1, 2, end=6) == 3
    assert [p for p in range(10) if cache.peek(1, p)] == [0, 1, 6, 7, 8, 9]
    assert cache.invalidate(1) == 6
    assert cache.invalidate(1, 0, end=2**64 - 1) == 0  # range via the scan
    assert all(cache.peek(2, p) == page_bytes(2, p) for p in range(10))
    s = cache.stats()
    assert s["invalidations"] == 10
    assert s["pages_used"] == 10
    assert s["pinned_pages"] == 0
    with pytest.raises(ValueError):
        cache.invalidate(2, 5, end=4)
    with pytest.raises(ValueError):
        cache.invalidate(2, end=4)


def test_wide_range_invalidation_uses_scan(cache: PageCache) -> None:
    cache.put(3, 2**63, page_bytes(3, 0))
    cache.put(3, 5, page_bytes(3, 5))
    assert cache.invalidate(3, 6, end=2**64 - 1) == 1
    assert cache.peek(3, 5) is not None


def test_large_keys(cache: PageCache) -> None:
    top = 2**64 - 1
    cache.put(top, top, page_bytes(1, 1))
    assert cache.get(top, top) == page_bytes(1, 1)
    with pytest.raises(OverflowError):
        cache.put(-1, 0, b"x")


def test_stats_fields(cache: PageCache) -> None:
    s = cache.stats()
    for name in (
        "hits",
        "misses",
        "insertions",
        "evictions",
        "ghost_hits",
        "bytes_used",
        "pinned_pages",
        "not_admitted",
    ):
        assert s[name] == 0
    assert s["capacity_pages"] == 64
    assert s["page_size"] == PS


def test_close_is_idempotent_and_use_after_close_raises() -> None:
    pc = PageCache(4 * PS, PS)
    pc.put(0, 0, b"x")
    pc.close()
    pc.close()
    assert pc.closed
    for call in (
        lambda: pc.get_into(0, 0, bytearray(PS)),
        lambda: pc.get(0, 0),
        lambda: pc.put(0, 0, b"x"),
        lambda: pc.pin(0, 0),
        lambda: pc.unpin(0, 0),
        lambda: pc.invalidate(0),
        pc.stats,
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        with pc:
            pass


def test_context_manager_closes() -> None:
    with PageCache(4 * PS, PS) as pc:
        pc.put(0, 0, b"x")
    assert pc.closed


def test_metadata_per_page_within_budget() -> None:
    # 64 bytes a page before the per-file index, which adds 8 to each
    # descriptor (its list links) and 6 of file slots: 74.3 from the structs,
    # up to 77.4 as allocated for mid-sized caches (per-shard slack).
    assert PageCache.meta_bytes_per_page() <= 75
    sizes = PageCache.struct_sizes()
    assert sizes["page_desc"] == 40
    for pages in (1000, 4096, 5000, 100_000):
        with PageCache(pages * PS, PS) as pc:
            assert pc.meta_bytes() / pages <= 78


def test_s3fifo_resists_a_scan() -> None:
    """A one-pass scan must not flush pages that were used twice."""
    with PageCache(100 * PS, PS) as pc:
        buf = bytearray(PS)
        hot = range(50)
        for _ in range(3):
            for p in hot:
                if not pc.get_into(0, p, buf):
                    pc.put(0, p, page_bytes(0, p))
        for p in range(1000, 3000):
            if not pc.get_into(1, p, buf):
                pc.put(1, p, page_bytes(1, p))
        assert all(pc.peek(0, p) is not None for p in hot)
        assert pc.stats()["ghost_hits"] == 0


def test_clock_policy_has_no_small_queue_or_ghost() -> None:
    with PageCache(8 * PS, PS, policy="clock") as pc:
        assert pc.policy == "clock"
        for p in range(8):
            pc.put(0, p, page_bytes(0, p))
        assert pc.get(0, 0) is not None  # reference bit set
        pc.put(0, 8, page_bytes(0, 8))  # second chance for page 0; page 1 goes
        assert pc.peek(0, 0) is not None and pc.peek(0, 1) is None
        s = pc.stats()
        assert (s["small_pages"], s["main_pages"], s["ghost_entries"]) == (0, 8, 0)
        assert pc.entry(0, 0) == ("main", 0, 0)
