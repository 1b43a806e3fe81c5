"""Stateful property test: the C page cache against tests/s3fifo_model.py.

Any sequence of put/get/invalidate/pin/unpin must give the same hits, misses
and counters, the same contents (bytes per key), the same queue, frequency
and pin count per key, and the same ghost entries. Invalidations must drop
exactly the pages of their file and range, seen from the C cache alone, and
``PageCache.check()`` (the C structures, the per-file index among them)
must hold after every step.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fusefs.pagecache import Hint, PageCache
from s3fifo_model import MAIN, PINNED, SMALL, ModelError, S3FIFOModel

PS = 4096
U64_MAX = 2**64 - 1
FILE_IDS = (0, 1, 2, U64_MAX)
PAGE_NUMS = tuple(range(16)) + (2**40, 2**63)
ALL_KEYS = tuple((f, p) for f in FILE_IDS for p in PAGE_NUMS)
FILES = st.sampled_from(FILE_IDS)
PAGES = st.sampled_from(PAGE_NUMS)
LENGTHS = st.sampled_from([1, 7, 1000, PS])
HINTS = st.sampled_from([Hint.NORMAL, Hint.NORMAL, Hint.NORMAL, Hint.DONT_ADMIT, Hint.PIN])
QUEUE_NAMES = {SMALL: "small", MAIN: "main", PINNED: "pinned"}
COUNTERS = (
    "hits",
    "misses",
    "insertions",
    "evictions",
    "ghost_hits",
    "not_admitted",
    "invalidations",
    "updates",
)


def payload(file_id: int, page: int, version: int, length: int) -> bytes:
    stamp = f"{file_id}:{page}:{version};".encode()
    return (stamp * (length // len(stamp) + 1))[:length]


class PageCacheMachine(RuleBasedStateMachine):
    """Drives the C cache and the model with the same operations."""

    def __init__(self) -> None:
        super().__init__()
        self.pc: PageCache | None = None
        self.model: S3FIFOModel | None = None
        self.version = 0

    @initialize(
        pages=st.sampled_from([1, 2, 3, 5, 10, 20, 33]),
        threshold=st.integers(min_value=1, max_value=3),
        ghost_ratio=st.sampled_from([0.0, 0.5, 0.9]),
        policy=st.sampled_from(["s3fifo", "s3fifo", "clock"]),
    )
    def create(self, pages: int, threshold: int, ghost_ratio: float, policy: str) -> None:
        self.pages = pages
        self.pc = PageCache(
            pages * PS,
            PS,
            policy=policy,
            move_to_main_threshold=threshold,
            ghost_ratio=ghost_ratio,
        )
        self.model = S3FIFOModel(
            pages, move_to_main_threshold=threshold, ghost_ratio=ghost_ratio, policy=policy
        )

    def teardown(self) -> None:
        if self.pc is not None:
            self.pc.close()

    def _same_outcome(self, c_call, m_call) -> None:
        c_err = m_err = None
        try:
            c_call()
        except OSError as exc:
            c_err = exc.errno
        except ValueError:
            c_err = errno.EINVAL
        try:
            m_call()
        except ModelError as exc:
            m_err = exc.errno
        assert c_err == m_err

    @rule(file_id=FILES, page=PAGES, length=LENGTHS, hint=HINTS)
    def put(self, file_id: int, page: int, length: int, hint: Hint) -> None:
        self.version += 1
        data = payload(file_id, page, self.version, length)
        self._same_outcome(
            lambda: self.pc.put(file_id, page, data, hint=hint),
            lambda: self.model.put((file_id, page), data, int(hint)),
        )

    @rule(file_id=FILES, page=PAGES)
    def get(self, file_id: int, page: int) -> None:
        buf = bytearray(PS)
        n = self.pc.get_into(file_id, page, buf)
        expected = self.model.get((file_id, page))
        if expected is None:
            assert n == 0
        else:
            assert bytes(buf[:n]) == expected

    @rule(
        file_id=FILES,
        first=PAGES,
        room=st.sampled_from([1, PS - 1, PS, 2 * PS + 5, 5 * PS]),
    )
    def get_range(self, file_id: int, first: int, room: int) -> None:
        buf = bytearray(room)
        n = self.pc.get_range_into(file_id, first, buf)
        assert bytes(buf[:n]) == self.model.get_range(file_id, first, room, PS)

    @rule(file_id=FILES, page=PAGES)
    def read_through(self, file_id: int, page: int) -> None:
        """The engine's pattern: get, and put on a miss."""
        if self.model.get((file_id, page)) is None:
            assert self.pc.get(file_id, page) is None
            self.put(file_id, page, PS, Hint.NORMAL)
        else:
            assert self.pc.get(file_id, page) is not None

    @rule(file_id=FILES, page=PAGES)
    def pin(self, file_id: int, page: int) -> None:
        self._same_outcome(
            lambda: self.pc.pin(file_id, page),
            lambda: self.model.pin((file_id, page)),
        )

    @rule(file_id=FILES, page=PAGES)
    def unpin(self, file_id: int, page: int) -> None:
        self._same_outcome(
            lambda: self.pc.unpin(file_id, page),
            lambda: self.model.unpin((file_id, page)),
        )

    def _held(self) -> set[tuple[int, int]]:
        """Keys the C cache holds, from the C cache alone."""
        return {k for k in ALL_KEYS if self.pc.peek(*k) is not None}

    def _drops_exactly(self, file_id: int, first: int, end: int, call) -> int:
        """Run an invalidation; check that it dropped every page of file_id
        in [first, end) and nothing else, and return its count."""
        before = self._held()
        n = call()
        after = self._held()
        want = {k for k in before if k[0] == file_id and first <= k[1] < end}
        assert before - after == want
        assert after == before - want
        assert n == len(want)
        return n

    @rule(file_id=FILES, page=PAGES)
    def invalidate_page(self, file_id: int, page: int) -> None:
        n = self._drops_exactly(
            file_id, page, page + 1, lambda: self.pc.invalidate(file_id, page)
        )
        assert n == int(self.model.invalidate((file_id, page)))

    @rule(file_id=FILES, first=PAGES, span=st.integers(min_value=0, max_value=6))
    def invalidate_range(self, file_id: int, first: int, span: int) -> None:
        """Spans within the cache's size: probed page by page."""
        end = min(first + span, U64_MAX)
        n = self._drops_exactly(
            file_id, first, end, lambda: self.pc.invalidate(file_id, first, end=end)
        )
        assert n == self.model.invalidate_range(file_id, first, end)

    @rule(
        file_id=FILES,
        first=st.sampled_from((0, 3, 9, 2**40, 2**63)),
        extra=st.sampled_from((1, 2, 100, None)),
    )
    def invalidate_range_wide(self, file_id: int, first: int, extra: int | None) -> None:
        """Spans wider than the cache: the file's list is walked."""
        end = U64_MAX if extra is None else first + self.pages + extra
        n = self._drops_exactly(
            file_id, first, end, lambda: self.pc.invalidate(file_id, first, end=end)
        )
        assert n == self.model.invalidate_range(file_id, first, end)

    @precondition(lambda self: self.version % 7 == 0)
    @rule(file_id=FILES)
    def invalidate_file(self, file_id: int) -> None:
        n = self._drops_exactly(file_id, 0, 2**64, lambda: self.pc.invalidate(file_id))
        assert n == self.model.invalidate_file(file_id)

    @invariant()
    def structures_consistent(self) -> None:
        if self.pc is not None:
            assert self.pc.check() == 0

    @invariant()
    def same_state(self) -> None:
        if self.pc is None:
            return
        s = self.pc.stats()
        m = self.model
        for name in COUNTERS:
            assert s[name] == m.stats[name], name
        assert s["pages_used"] == m.used()
        assert s["pinned_pages"] == m.pinned()
        assert s["small_pages"] == len(m.small)
        assert s["main_pages"] == len(m.main)
        assert s["ghost_entries"] == len(m.ghost)
        assert s["bytes_used"] == sum(len(e.data) for e in m.entries.values())
        for key in ALL_KEYS:
            f, p = key
            entry = m.entries.get(key)
            assert self.pc.peek(f, p) == m.peek(key)
            if entry is None:
                assert self.pc.entry(f, p) is None
            else:
                assert self.pc.entry(f, p) == (
                    QUEUE_NAMES[entry.queue],
                    entry.freq,
                    entry.pins,
                )
            assert self.pc.in_ghost(f, p) == (key in m.ghost)


PageCacheMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pagecache_matches_model = PageCacheMachine.TestCase


@pytest.mark.parametrize("policy", ["s3fifo", "clock"])
@pytest.mark.parametrize("pages", [20, 57, 200])
def test_long_random_sequence_matches_model(pages: int, policy: str) -> None:
    """A longer, seeded walk than hypothesis explores, with evictions galore."""
    import random

    rng = random.Random(pages)
    model = S3FIFOModel(pages, policy=policy)
    with PageCache(pages * PS, PS, policy=policy) as pc:
        buf = bytearray(PS)
        for i in range(20_000):
            if i % 1000 == 0:
                assert pc.check() == 0
            key = (rng.randrange(3), int(rng.paretovariate(1.0)) % (pages * 3))
            op = rng.random()
            if op < 0.7:
                got = pc.get_into(*key, buf)
                want = model.get(key)
                assert (bytes(buf[:got]) if got else None) == want
                if want is None:
                    data = payload(*key, i, 1 + rng.randrange(PS))
                    pc.put(*key, data)
                    model.put(key, data)
            elif op < 0.8:
                data = payload(*key, i, PS)
                hint = rng.choice([Hint.NORMAL, Hint.DONT_ADMIT])
                pc.put(*key, data, hint=hint)
                model.put(key, data, int(hint))
            elif op < 0.88:
                assert pc.invalidate(*key) == int(model.invalidate(key))
            elif op < 0.89:
                first = key[1]
                end = first + rng.choice([1, 5, pages + 1, 2**40])
                assert pc.invalidate(key[0], first, end=end) == model.invalidate_range(
                    key[0], first, end
                )
            elif op < 0.9:
                assert pc.invalidate(key[0]) == model.invalidate_file(key[0])
            elif op < 0.95 and key in model.entries and model.pinned() < pages // 2:
                pc.pin(*key)
                model.pin(key)
            elif key in model.entries and model.entries[key].pins:
                pc.unpin(*key)
                model.unpin(key)
        assert pc.check() == 0
        s = pc.stats()
        for name in COUNTERS:
            assert s[name] == model.stats[name], name
        for key, entry in model.entries.items():
            assert pc.peek(*key) == entry.data
