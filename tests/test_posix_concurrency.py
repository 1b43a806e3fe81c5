"""Concurrent access through a mount from several threads and processes.

Nothing here waits for a fixed time: threads and processes are joined, and
what they saw is checked against what every outcome allows.
"""

from __future__ import annotations

import mmap
import os
import threading
import traceback
from typing import Any, Callable

from posix_util import Pair, pair, shared_mount  # noqa: F401  (fixtures)

REGION = 256 * 1024
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


def test_threads_write_distinct_regions_while_others_read(pair: Pair) -> None:
    path = f"{pair.mnt}/shared"
    # Every byte of region t is always in thread t's range: t*32 + round.
    with open(path, "wb") as f:
        for t in range(WRITERS):
            f.write(bytes([t * 32]) * REGION)
    done = threading.Event()

    def writer(t: int) -> Callable[[], None]:
        def run() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                for r in range(1, ROUNDS + 1):
                    chunk = 4096 + 1000 * t  # unaligned chunks cross pages
                    for off in range(0, REGION, chunk):
                        n = min(chunk, REGION - off)
                        os.pwrite(fd, bytes([t * 32 + r]) * n, t * REGION + off)
            finally:
                os.close(fd)
        return run

    def reader() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while not done.is_set():
                for t in range(WRITERS):
                    data = os.pread(fd, REGION, t * REGION)
                    assert len(data) == REGION
                    bad = set(data) - {t * 32 + r for r in range(ROUNDS + 1)}
                    assert not bad, f"region {t} holds bytes {sorted(bad)[:5]}"
        finally:
            os.close(fd)

    reader_errors: list[str] = []

    def guarded_reader() -> None:
        try:
            reader()
        except BaseException:
            reader_errors.append(traceback.format_exc())

    readers = [threading.Thread(target=guarded_reader) for _ in range(2)]
    for th in readers:
        th.start()
    try:
        _run_threads([writer(t) for t in range(WRITERS)])
    finally:
        done.set()
        for th in readers:
            th.join()
    assert not reader_errors, "\n".join(reader_errors)
    with open(path, "rb") as f:
        final = f.read()
    want = b"".join(bytes([t * 32 + ROUNDS]) * REGION for t in range(WRITERS))
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


def _worker(d: str, me: int) -> None:
    """Create, write, rename, link and unlink in the shared directory ``d``."""
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
            os.link(f"{d}/kept-{me}-{j}", f"{d}/link-{me}-{j}")
            assert os.stat(f"{d}/link-{me}-{j}").st_nlink == 2
            os.unlink(f"{d}/kept-{me}-{j}")
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
    pids = [_fork(_worker, d, me) for me in range(PROCS)]
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


def test_processes_read_while_one_truncates_and_rewrites(pair: Pair) -> None:
    path = f"{pair.mnt}/f"
    block = 8192

    def rewriter() -> None:
        fd = os.open(path, os.O_RDWR)
        for g in range(1, 60):
            os.ftruncate(fd, 0)
            for b in range(16):
                os.pwrite(fd, bytes([g]) * block, b * block)
        os.close(fd)

    def reader() -> None:
        fd = os.open(path, os.O_RDONLY)
        for _ in range(200):
            data = os.pread(fd, 16 * block, 0)
            assert len(data) <= 16 * block
            # a truncate may zero-fill or shorten, never show foreign bytes
            assert set(data) <= set(range(60)), set(data)
        os.close(fd)

    with open(path, "wb") as f:
        f.write(b"\0" * 16 * block)
    pids = [_fork(rewriter)] + [_fork(reader) for _ in range(3)]
    assert [os.waitpid(pid, 0)[1] for pid in pids] == [0] * 4
    assert open(path, "rb").read() == bytes([59]) * 16 * block
