"""Data integrity under random operation sequences (in the spirit of fsx).

The same seeded sequence of reads, writes, appends, truncates, mmap reads and
writes, fsyncs, closes and reopens runs on files in a plain directory and on
a mount, with several descriptors per file; every read and every size must
match byte for byte, and so must the files in the source at the end.
"""

from __future__ import annotations

import mmap
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posix_util import Pair, pair, shared_mount  # noqa: F401  (fixtures)

FILES = 3
HANDLES = 3  # per file: read-write, read-only, append
MAX_SIZE = 1 << 20
PAGE = mmap.PAGESIZE


class Twin:
    """One file opened the same way in two directories."""

    def __init__(self, roots: tuple[str, str], name: str) -> None:
        self.paths = [os.path.join(r, name) for r in roots]
        for p in self.paths:
            open(p, "wb").close()
        self.fds: list[list[int]] = [[], []]
        for side in (0, 1):
            for _ in range(HANDLES):
                self.fds[side].append(-1)
            for h in range(HANDLES):
                self.reopen(side, h)

    def reopen(self, side: int, h: int) -> None:
        if self.fds[side][h] >= 0:
            os.close(self.fds[side][h])
        flags = (os.O_RDWR, os.O_RDONLY, os.O_WRONLY | os.O_APPEND)[h]
        self.fds[side][h] = os.open(self.paths[side], flags)

    def close(self) -> None:
        for side in (0, 1):
            for fd in self.fds[side]:
                os.close(fd)


def _data(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n) if rng.random() < 0.7 else bytes([rng.randrange(256)]) * n


def _size_hint(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.randrange(1, 64)
    if r < 0.8:
        return rng.randrange(1, 3 * PAGE)
    return rng.randrange(1, 200_000)


def _offset(rng: random.Random, size: int) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.randrange(0, max(size, 1)) // PAGE * PAGE  # page aligned
    if r < 0.9:
        return rng.randrange(0, size + PAGE)
    return rng.randrange(0, MAX_SIZE)


def _step(rng: random.Random, t: Twin, log: list[str]) -> None:
    size = os.fstat(t.fds[0][0]).st_size
    op = rng.choices(["pwrite", "pread", "append", "truncate", "seekwrite", "mmap_read",
                      "mmap_write", "fsync", "reopen"],
                     weights=[30, 30, 8, 8, 6, 6, 6, 2, 4])[0]
    log.append(f"{op} size={size}")
    if op == "pwrite":
        off, data = _offset(rng, size), _data(rng, _size_hint(rng))
        off = min(off, MAX_SIZE - len(data))
        for side in (0, 1):
            assert os.pwrite(t.fds[side][0], data, max(off, 0)) == len(data)
    elif op == "pread":
        off, n = _offset(rng, size), _size_hint(rng)
        h = rng.choice([0, 1])
        got = [os.pread(t.fds[side][h], n, off) for side in (0, 1)]
        assert got[1] == got[0], f"pread({n}, {off}) via handle {h}"
    elif op == "append":
        data = _data(rng, _size_hint(rng))
        if size + len(data) < MAX_SIZE:
            for side in (0, 1):
                os.write(t.fds[side][2], data)
    elif op == "truncate":
        new = rng.choice([0, rng.randrange(0, size + 1), rng.randrange(0, MAX_SIZE)])
        for side in (0, 1):
            os.ftruncate(t.fds[side][0], new)
    elif op == "seekwrite":
        off, data = _offset(rng, size), _data(rng, _size_hint(rng))
        off = max(0, min(off, MAX_SIZE - len(data)))
        for side in (0, 1):
            os.lseek(t.fds[side][0], off, os.SEEK_SET)
            assert os.write(t.fds[side][0], data) == len(data)
            assert os.read(t.fds[side][0], 100) == os.pread(t.fds[side][0], 100,
                                                            off + len(data))
    elif op == "mmap_read" and size > 0:
        off = rng.randrange(0, size) // PAGE * PAGE
        n = rng.randrange(1, size - off + 1)
        got = []
        for side in (0, 1):
            with mmap.mmap(t.fds[side][1], n, offset=off, prot=mmap.PROT_READ) as m:
                got.append(m[:])
        assert got[1] == got[0], f"mmap read ({n}, {off})"
    elif op == "mmap_write" and size > 0:
        off = rng.randrange(0, size) // PAGE * PAGE
        n = rng.randrange(1, min(size - off, 3 * PAGE) + 1)
        data = _data(rng, rng.randrange(1, n + 1))
        pos = rng.randrange(0, n - len(data) + 1)
        for side in (0, 1):
            with mmap.mmap(t.fds[side][0], n, offset=off, flags=mmap.MAP_SHARED) as m:
                m[pos:pos + len(data)] = data
                if rng.random() < 0.5:
                    m.flush()
    elif op == "fsync":
        for side in (0, 1):
            os.fsync(t.fds[side][rng.randrange(HANDLES)])
    elif op == "reopen":
        h = rng.randrange(HANDLES)
        for side in (0, 1):
            t.reopen(side, h)
    sizes = [os.fstat(t.fds[side][0]).st_size for side in (0, 1)]
    assert sizes[1] == sizes[0], "size"
    assert os.stat(t.paths[1]).st_size == sizes[0], "size by path"


def _run(p: Pair, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    twins = [Twin((p.plain, p.mnt), f"f{i}") for i in range(FILES)]
    log: list[str] = []
    try:
        for i in range(steps):
            t = rng.choice(twins)
            try:
                _step(rng, t, log)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}, step {i} on {t.paths[1]}: {exc}\n"
                                     + "\n".join(log[-10:])) from None
    finally:
        for t in twins:
            t.close()
    for i in range(FILES):
        want = open(f"{p.plain}/f{i}", "rb").read()
        assert open(f"{p.mnt}/f{i}", "rb").read() == want
        assert open(f"{p.src}/f{i}", "rb").read() == want


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_match_a_plain_file(pair: Pair, seed: int) -> None:
    _run(pair, seed, 2000)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["w", "t", "r"]), st.integers(0, 3 * PAGE),
                              st.integers(0, 2 * PAGE)), max_size=30))
def test_short_sequences_found_by_hypothesis(shared_mount: Any, tmp_path_factory: Any,
                                             ops: list[tuple[str, int, int]]) -> None:
    plain = tmp_path_factory.mktemp("hyp")
    mnt = os.path.join(shared_mount.mountpoint, os.path.basename(plain))
    os.makedirs(mnt, exist_ok=True)
    fds = [os.open(os.path.join(d, "f"), os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
           for d in (str(plain), mnt)]
    try:
        for i, (op, off, n) in enumerate(ops):
            for fd in fds:
                if op == "w":
                    os.pwrite(fd, bytes([i & 0xFF]) * n, off)
                elif op == "t":
                    os.ftruncate(fd, off)
            if op == "r":
                assert os.pread(fds[1], n, off) == os.pread(fds[0], n, off)
            assert os.fstat(fds[1]).st_size == os.fstat(fds[0]).st_size
        assert os.pread(fds[1], 1 << 20, 0) == os.pread(fds[0], 1 << 20, 0)
    finally:
        for fd in fds:
            os.close(fd)
