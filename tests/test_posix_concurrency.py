"""Concurrent access through a mount from several threads and processes.

Nothing here waits for a fixed time: threads and processes are joined, and
what they saw is checked against what every outcome allows.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time
import traceback
from typing import Any, Callable

from posix_util import Pair, err, pair, shared_mount  # noqa: F401  (fixtures)

WRITERS = 4
ROUNDS = 12


def _run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[str] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException:
                errors.append(traceback.format_exc())
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(errors)


# Regions are not page-aligned: neighbouring writers share the pages at their borders.
REGION = 64 * 1024 + 1000
READERS = 2
MIN_READS = 50


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def test_threads_write_distinct_regions_while_others_read(pair: Pair) -> None:
    """Every read of a region shows only versions that may be there, never a stale one.

    Writer ``t`` writes each version ``r`` of its region (every byte ``t*32 + r``)
    with one pwrite, announcing ``started[t] = r`` before and ``completed[t] = r``
    after. A read that began after version ``lo`` completed and ended before
    version ``hi`` started may show only versions ``lo..hi`` (bytes of two
    versions at once only if a write overlapped it: Linux does not make a read
    atomic against a concurrent write). A read no write overlapped (``hi == lo``,
    or taken under the writer's lock) must be exactly version ``lo``, whole.
    Writers wait, after each version, for every reader to make two passes, so
    readers run all through the writing; each reader asserts how often it ran.
    """
    path = f"{pair.mnt}/shared"
    with open(path, "wb") as f:
        for t in range(WRITERS):
            f.write(bytes([t * 32]) * REGION)
    started = [0] * WRITERS
    completed = [0] * WRITERS
    locks = [threading.Lock() for _ in range(WRITERS)]
    passes = [0] * READERS
    stats = [{"reads": 0, "quiet": 0, "locked": 0, "overlapped": 0} for _ in range(READERS)]
    done = threading.Event()
    failed = threading.Event()

    def version(t: int, r: int) -> bytes:
        return bytes([t * 32 + r]) * REGION

    def writer(t: int) -> Callable[[], None]:
        def run() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                for r in range(1, ROUNDS + 1):
                    with locks[t]:
                        started[t] = r
                        assert os.pwrite(fd, version(t, r), t * REGION) == REGION
                        completed[t] = r
                    marks = list(passes)
                    _wait_for(lambda: failed.is_set()
                              or all(p >= m + 2 for p, m in zip(passes, marks)),
                              "readers to catch up")
            finally:
                os.close(fd)
        return run

    def reader(i: int) -> Callable[[], None]:
        def run() -> None:
            st = stats[i]
            fd = os.open(path, os.O_RDONLY)
            try:
                while not done.is_set() or st["reads"] < MIN_READS:
                    for t in range(WRITERS):
                        if st["reads"] % 5 == 0:
                            with locks[t]:  # no write in flight: exactly the last version
                                data = os.pread(fd, REGION, t * REGION)
                                assert data == version(t, completed[t]), \
                                    f"region {t}: {sorted(set(data))[:8]} under the lock, " \
                                    f"want only {completed[t]}"
                            st["locked"] += 1
                        else:
                            lo = completed[t]
                            data = os.pread(fd, REGION, t * REGION)
                            hi = started[t]
                            assert len(data) == REGION
                            if hi == lo:
                                assert data == version(t, lo), \
                                    f"region {t}: {sorted(set(data))[:8]}, want only {lo}"
                                st["quiet"] += 1
                            else:
                                allowed = {t * 32 + r for r in range(lo, hi + 1)}
                                bad = set(data) - allowed
                                assert not bad, f"region {t} holds {sorted(bad)[:5]}, " \
                                    f"want versions {lo}..{hi} (older ones are stale)"
                                st["overlapped"] += 1
                        st["reads"] += 1
                    passes[i] += 1
            except BaseException:
                failed.set()
                raise
            finally:
                os.close(fd)
        return run

    reader_errors: list[str] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException:
                reader_errors.append(traceback.format_exc())
        return run

    readers = [threading.Thread(target=guarded(reader(i))) for i in range(READERS)]
    for th in readers:
        th.start()
    try:
        _run_threads([writer(t) for t in range(WRITERS)])
    finally:
        done.set()
        for th in readers:
            th.join()
    assert not reader_errors, "\n".join(reader_errors)
    for st in stats:
        # every reader made two passes per version of every writer, and checked
        # whole versions both under the lock and without it
        assert st["reads"] >= 2 * ROUNDS * WRITERS and st["locked"] >= ROUNDS, st
    assert sum(st["quiet"] for st in stats) >= ROUNDS, stats
    with open(path, "rb") as f:
        final = f.read()
    want = b"".join(version(t, ROUNDS) for t in range(WRITERS))
    assert final == want
    assert open(f"{pair.src}/shared", "rb").read() == want


def test_threads_share_one_descriptor(pair: Pair) -> None:
    path = f"{pair.mnt}/f"
    open(path, "wb").close()
    fd = os.open(path, os.O_RDWR)
    try:
        def writer(t: int) -> Callable[[], None]:
            def run() -> None:
                for i in range(200):
                    off = (i * WRITERS + t) * 100
                    os.pwrite(fd, bytes([t + 1]) * 100, off)
                    assert os.pread(fd, 100, off) == bytes([t + 1]) * 100
            return run
        _run_threads([writer(t) for t in range(WRITERS)])
        data = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    assert len(data) == 200 * WRITERS * 100
    for i in range(200 * WRITERS):
        assert data[i * 100:(i + 1) * 100] == bytes([i % WRITERS + 1]) * 100


def test_mmap_writer_and_descriptor_readers_in_threads(pair: Pair) -> None:
    size = 64 * mmap.PAGESIZE
    path = f"{pair.mnt}/m"
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED) as m:
            def page_writer(first: int) -> Callable[[], None]:
                def run() -> None:
                    for p in range(first, 64, 4):
                        m[p * mmap.PAGESIZE:(p + 1) * mmap.PAGESIZE] = \
                            bytes([p + 1]) * mmap.PAGESIZE
                return run
            _run_threads([page_writer(i) for i in range(4)])
            m.flush()
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        data = f.read()
    for p in range(64):
        assert data[p * mmap.PAGESIZE:(p + 1) * mmap.PAGESIZE] == \
            bytes([p + 1]) * mmap.PAGESIZE, p


# -- several processes in one directory ----------------------------------------------------


PROCS = 4
ITERS = 150
STABLE = 50


def _worker(d: str, me: int, link_refusal: str | None = None) -> None:
    """Create, write, rename, link (``link_refusal``: the errno link gives here, if it
    is refused) and unlink in the shared directory ``d``."""
    for j in range(ITERS):
        tmp = f"{d}/tmp-{me}-{j}"
        payload = f"{me}:{j}:".encode() * (1 + j % 50)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.close(fd)
        if j % 3 == 0:
            # atomic replace of a name every process fights over
            os.rename(tmp, f"{d}/shared-{j % 5}")
        elif j % 3 == 1:
            os.rename(tmp, f"{d}/kept-{me}-{j}")
            if link_refusal is None:
                os.link(f"{d}/kept-{me}-{j}", f"{d}/link-{me}-{j}")
                assert os.stat(f"{d}/link-{me}-{j}").st_nlink == 2
                os.unlink(f"{d}/kept-{me}-{j}")
            else:  # S3: no hard links (a documented refusal); the name moves instead
                assert err(os.link, f"{d}/kept-{me}-{j}", f"{d}/link-{me}-{j}") == link_refusal
                os.rename(f"{d}/kept-{me}-{j}", f"{d}/link-{me}-{j}")
            assert os.stat(f"{d}/link-{me}-{j}").st_nlink == 1
        else:
            os.mkdir(f"{d}/dir-{me}-{j}")
            os.rename(tmp, f"{d}/dir-{me}-{j}/inner")
            os.unlink(f"{d}/dir-{me}-{j}/inner")
            os.rmdir(f"{d}/dir-{me}-{j}")
        # everyone else's stable files are listed exactly once, whatever happens
        if j % 25 == 0:
            names = os.listdir(d)
            assert len(names) == len(set(names))
            assert {f"stable-{k}" for k in range(STABLE)} <= set(names)


def _fork(fn: Callable[..., None], *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def test_processes_create_rename_unlink_in_one_directory(pair: Pair) -> None:
    d = pair.mnt
    for k in range(STABLE):
        with open(f"{d}/stable-{k}", "wb") as f:
            f.write(b"stable %d" % k)
    link_refusal = pair.limit("link", "EPERM", None)
    pids = [_fork(_worker, d, me, link_refusal) for me in range(PROCS)]
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    assert codes == [0] * PROCS
    want = {f"stable-{k}" for k in range(STABLE)}
    want |= {f"shared-{j % 5}" for j in range(0, ITERS, 3)}
    want |= {f"link-{me}-{j}" for me in range(PROCS) for j in range(1, ITERS, 3)}
    assert set(os.listdir(d)) == want
    assert set(os.listdir(pair.src)) == want
    # each shared name holds one writer's complete payload
    for s in range(5):
        data = open(f"{d}/shared-{s}", "rb").read()
        me, j = map(int, data.split(b":")[:2])
        assert data == f"{me}:{j}:".encode() * (1 + j % 50) and j % 5 == s
    for me in range(PROCS):
        for j in range(1, ITERS, 3):
            st = os.stat(f"{d}/link-{me}-{j}")
            assert st.st_nlink == 1 and st.st_size == len(f"{me}:{j}:") * (1 + j % 50)


GENS = 40
BLOCKS = 16


def test_processes_read_while_one_truncates_and_rewrites(pair: Pair, tmp_path: Any) -> None:
    """Readers in other processes see no stale generation and no foreign bytes.

    The rewriter makes generation ``g`` (``BLOCKS`` blocks of byte ``g``) by
    truncating to 0 and writing the blocks in order, publishing ``started = g``
    before and ``completed = g`` after in shared memory. A read that began after
    generation ``lo`` completed and ended before ``hi`` started may show bytes of
    ``lo..hi`` only (and zeros, shorter data, only if a truncate overlapped it);
    a read nothing overlapped (``hi == lo``, or taken under the rewriter's lock)
    must be generation ``lo``, whole. The rewriter waits after each generation
    for every reader to make two reads, so the readers run all through it.
    """
    path = f"{pair.mnt}/f"
    block = 8192
    lockfile = os.path.join(tmp_path, "lock")  # on a local file system, not the mount
    open(lockfile, "w").close()
    # shared counters: [started, completed, done, reads of reader 0..2, locked reads 0..2]
    shared = mmap.mmap(-1, 8 * 16)
    counters = memoryview(shared).cast("q")
    readers = 3

    def whole(g: int) -> bytes:
        return bytes([g]) * BLOCKS * block

    def rewriter() -> None:
        fd = os.open(path, os.O_RDWR)
        lk = os.open(lockfile, os.O_RDWR)
        for g in range(1, GENS + 1):
            fcntl.flock(lk, fcntl.LOCK_EX)
            counters[0] = g
            os.ftruncate(fd, 0)
            for b in range(BLOCKS):
                os.pwrite(fd, bytes([g]) * block, b * block)
            counters[1] = g
            fcntl.flock(lk, fcntl.LOCK_UN)
            marks = [counters[3 + i] for i in range(readers)]
            deadline = time.monotonic() + 60
            while any(counters[3 + i] < m + 2 for i, m in enumerate(marks)):
                assert time.monotonic() < deadline, "readers did not catch up"
                time.sleep(0.0005)
        counters[2] = 1
        os.close(fd)
        os.close(lk)

    def reader(i: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        lk = os.open(lockfile, os.O_RDWR)
        n = 0
        while not counters[2] or n < MIN_READS:
            if n % 4 == 0:
                fcntl.flock(lk, fcntl.LOCK_SH)
                data = os.pread(fd, BLOCKS * block, 0)
                g = counters[1]
                fcntl.flock(lk, fcntl.LOCK_UN)
                assert data == whole(g), (g, len(data), sorted(set(data)))
                counters[6 + i] += 1
            else:
                lo = counters[1]
                data = os.pread(fd, BLOCKS * block, 0)
                hi = counters[0]
                if hi == lo:
                    assert data == whole(lo), (lo, len(data), sorted(set(data)))
                else:
                    assert len(data) <= BLOCKS * block
                    bad = set(data) - {0, *range(lo, hi + 1)}
                    assert not bad, f"bytes {sorted(bad)} outside generations {lo}..{hi}"
            n += 1
            counters[3 + i] = n
        os.close(fd)
        os.close(lk)

    with open(path, "wb") as f:
        f.write(whole(0))
    pids = [_fork(reader, i) for i in range(readers)] + [_fork(rewriter)]
    assert [os.waitpid(pid, 0)[1] for pid in pids] == [0] * (readers + 1)
    for i in range(readers):
        assert counters[3 + i] >= 2 * GENS and counters[6 + i] >= GENS // 2, list(counters)
    assert open(path, "rb").read() == whole(GENS)
    del counters
    shared.close()


def test_more_callers_than_request_handlers(pair: Pair) -> None:
    """64 threads at once against a mount with 16 request handlers (`shared_mount`):
    the kernel queues what the daemon cannot take yet, and every caller gets its bytes
    and its errno."""
    n = 64
    for k in range(n):
        with open(f"{pair.src}/f{k}", "wb") as f:
            f.write(bytes([k]) * (100_000 + k))
    barrier = threading.Barrier(n)

    def caller(k: int) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            for _ in range(5):
                with open(f"{pair.mnt}/f{k}", "rb") as f:
                    assert f.read() == bytes([k]) * (100_000 + k)
                assert os.stat(f"{pair.mnt}/f{k}").st_size == 100_000 + k
                try:
                    os.stat(f"{pair.mnt}/missing-{k}")
                    raise AssertionError("a missing name was found")
                except FileNotFoundError:
                    pass
                with open(f"{pair.mnt}/w{k}", "wb") as f:
                    f.write(b"%d" % k * 1000)
        return run

    _run_threads([caller(k) for k in range(n)])
    for k in range(n):
        assert open(f"{pair.src}/w{k}", "rb").read() == b"%d" % k * 1000
