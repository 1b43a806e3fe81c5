"""Multi-threaded stress of the C page cache, then content verification.

Threads run random gets, puts, overwrites, pins and invalidations on a key
space larger than the cache. Every put of a key stores the same bytes, which
spell out the key, so any page ever returned must equal exactly those bytes.
Each thread runs at least MIN_OPS operations, then stops at OPS_PER_THREAD or
after about three seconds, whichever comes first; no assertion depends on how
far past MIN_OPS it got.
"""

from __future__ import annotations

import errno
import random
import threading
import time
import zlib

import pytest

from fusefs.pagecache import Hint, PageCache

THREADS = 4
OPS_PER_THREAD = 40_000
MIN_OPS = 4_000
TIME_CAP = 3.0
FILES = 4
PAGES_PER_FILE = 128


def expected_bytes(file_id: int, page: int, page_size: int) -> bytes:
    """The only content ever stored for a key; its length varies by key."""
    length = 1 + zlib.crc32(f"{file_id}/{page}".encode()) % page_size
    stamp = f"[{file_id}:{page}]".encode()
    return (stamp * (length // len(stamp) + 1))[:length]


@pytest.mark.parametrize("page_size", [4096, 65536])
def test_threads_never_see_wrong_bytes(page_size: int) -> None:
    pc = PageCache(96 * page_size, page_size)
    errors: list[str] = []
    gets = [0] * THREADS
    deadline = time.monotonic() + TIME_CAP
    start = threading.Barrier(THREADS)
    table = {
        (f, p): expected_bytes(f, p, page_size)
        for f in range(FILES)
        for p in range(PAGES_PER_FILE)
    }

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        buf = bytearray(page_size)
        pinned: list[tuple[int, int]] = []
        start.wait()
        for i in range(OPS_PER_THREAD):
            if i >= MIN_OPS and i % 256 == 0 and time.monotonic() > deadline:
                break
            f = rng.randrange(FILES)
            p = min(int(rng.expovariate(1 / 24)), PAGES_PER_FILE - 1)
            op = rng.random()
            try:
                if op < 0.55:
                    gets[tid] += 1
                    n = pc.get_into(f, p, buf)
                    if n and bytes(buf[:n]) != table[f, p]:
                        errors.append(f"thread {tid}: wrong bytes for {(f, p)}")
                    if not n:
                        pc.put(f, p, table[f, p])
                elif op < 0.75:
                    hint = Hint.DONT_ADMIT if rng.random() < 0.1 else Hint.NORMAL
                    pc.put(f, p, table[f, p], hint=hint)
                elif op < 0.85:
                    pc.invalidate(f, p)
                elif op < 0.88:
                    first = rng.randrange(PAGES_PER_FILE)
                    pc.invalidate(f, first, end=first + rng.randrange(8))
                elif op < 0.885:
                    pc.invalidate(f)
                elif op < 0.94:
                    if len(pinned) < 4:
                        pc.put(f, p, table[f, p], hint=Hint.PIN)
                        pinned.append((f, p))
                elif pinned:
                    try:
                        pc.unpin(*pinned.pop(rng.randrange(len(pinned))))
                    except (OSError, ValueError):
                        pass  # another thread invalidated (and maybe re-put) it
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    errors.append(f"thread {tid}: {exc!r}")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"thread {tid}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    try:
        assert errors == []
        s = pc.stats()
        assert s["hits"] + s["misses"] == sum(gets)
        assert s["hits"] > 0 and s["evictions"] > 0
        assert s["pages_used"] <= s["capacity_pages"]
        assert s["pages_used"] == s["small_pages"] + s["main_pages"] + s["pinned_pages"]
        held = 0
        total = 0
        for key, data in table.items():
            got = pc.peek(*key)
            if got is not None:
                assert got == data, key
                held += 1
                total += len(got)
        assert held == s["pages_used"]
        assert total == s["bytes_used"]
        assert s["insertions"] - s["evictions"] - s["invalidations"] == held
    finally:
        pc.close()
