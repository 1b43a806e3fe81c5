"""The fast tier in-process: admission, watermarks, durability across reopen, CRCs."""

from __future__ import annotations

import os
from typing import Any

import trio

from fusefs.policies import get_policy
from fusefs.policies.base import Tier
from fusefs.stats import Stats
from fusefs.tiers.capacity import SourceVersion
from fusefs.tiers.fast import FastTier

CHUNK = 64 * 1024
V = SourceVersion(10 * CHUNK, 123, None)


def make(root: str, capacity: int) -> FastTier:
    policy = get_policy("lru")(capacity, tier=Tier.FAST, object_size=CHUNK)
    return FastTier(root, policy=policy, stats=Stats())


def test_watermarks_evict_in_batches(tmp_path: Any) -> None:
    async def main() -> None:
        fast = make(str(tmp_path), 20 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        for i in range(40):
            assert await fast.admit(cf, i * CHUNK, bytes([i]) * CHUNK)
            assert fast.policy.used <= 0.95 * fast.policy.capacity + CHUNK
        assert fast.stats.counters["fast.watermark_runs"] >= 1
        # the newest extents survived (LRU), the oldest were punched out
        assert await fast.read(cf, 39 * CHUNK, CHUNK) == bytes([39]) * CHUNK
        assert await fast.read(cf, 0, CHUNK) is None
        await fast.close()
    trio.run(main)


def test_reopen_keeps_committed_extents_and_checks_crc(tmp_path: Any) -> None:
    async def first() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"dir/f", V)
        for i in range(4):
            await fast.admit(cf, i * CHUNK, bytes([i + 1]) * CHUNK, pinned=(i == 0))
        await fast.close()  # commits

    async def second() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        assert fast.file_for(b"dir/f", SourceVersion(1, 1, None)) is None  # other version
        fast2 = make(str(tmp_path), 100 * CHUNK)
        await fast.close()
        await fast2.open()
        cf = fast2.file_for(b"dir/f", V)
        assert cf is None  # the version mismatch above dropped it for good
        await fast2.close()

    async def third() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = fast.file_for(b"dir/f", V)
        assert cf is not None and len(cf.extents) == 4
        assert fast.policy.pinned_bytes == CHUNK
        # damage one extent on disk: detected on first read, dropped, others fine
        with open(os.path.join(str(tmp_path), "data", str(cf.id)), "r+b") as f:
            f.seek(2 * CHUNK + 7)
            f.write(b"X")
        assert await fast.read(cf, 2 * CHUNK, 4096) is None
        assert fast.stats.counters["fast.corrupt_extents"] == 1
        assert await fast.read(cf, 3 * CHUNK, 4096) == bytes([4]) * 4096
        await fast.close()

    trio.run(first)
    trio.run(third)
    trio.run(second)


def test_admit_fits_between_existing_extents(tmp_path: Any) -> None:
    async def main() -> None:
        fast = make(str(tmp_path), 100 * CHUNK)
        await fast.open()
        cf = await fast.file_create(b"f", V)
        await fast.admit(cf, CHUNK, b"a" * CHUNK)
        # a larger write over it replaces the covered extent
        await fast.admit(cf, 0, b"b" * 3 * CHUNK)
        assert list(cf.extents) == [0]
        assert await fast.read(cf, CHUNK, 10) == b"b" * 10
        # a write overlapping the head is trimmed to what is missing
        assert await fast.admit(cf, 2 * CHUNK, b"c" * 2 * CHUNK)
        assert list(cf.extents) == [0, 3 * CHUNK]
        assert await fast.read(cf, 3 * CHUNK, 10) == b"c" * 10
        assert not await fast.admit(cf, 0, b"d" * CHUNK)  # fully present already
        await fast.close()
    trio.run(main)
