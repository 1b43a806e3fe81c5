"""The tiers in a real mount: what gets admitted where, and that nothing stale is served.

Reads that must reach the daemon (not the kernel's page cache) use O_DIRECT,
which FUSE passes through as direct I/O; everything else reads the ordinary way.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import subprocess
import threading
import time
from typing import Any, Callable

import pytest

from mounting import Mounted, is_mounted, tierfs_cmd

MiB = 1 << 20


def stats(mnt: str) -> dict[str, Any]:
    out = subprocess.run(tierfs_cmd("stats", mnt, "--json"), capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def counter(snap: dict[str, Any], name: str) -> int:
    """A counter, or the sum of its sub-counters (read.bytes.fast = all classes)."""
    c = snap["counters"]
    return int(c.get(name, 0)) + sum(v for k, v in c.items() if k.startswith(name + "."))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_random(path: str, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def read_direct(path: str, offset: int, size: int) -> bytes:
    """A read that bypasses the kernel's page cache (aligned buffer, O_DIRECT)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, size)
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def write_config(tmp_path: Any, text: str) -> str:
    path = os.path.join(tmp_path, "tierfs.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_stream_beside_random_reader(src: str, make_mount: Callable[..., Mounted]) -> None:
    index = write_random(os.path.join(src, "index", "emb.f32"), 2 * MiB, 1)
    shards = [write_random(os.path.join(src, "shards", f"s{i}.tar"), 8 * MiB, 10 + i)
              for i in range(2)]
    with make_mount(src) as m:
        errors: list[str] = []

        def loader() -> None:
            for i, want in enumerate(shards):
                with open(os.path.join(m.mountpoint, "shards", f"s{i}.tar"), "rb") as f:
                    got = b"".join(iter(lambda: f.read(MiB), b""))
                if got != want:
                    errors.append(f"shard {i} differs")

        def retriever() -> None:
            rng = random.Random(3)
            path = os.path.join(m.mountpoint, "index", "emb.f32")
            for _ in range(400):
                off = rng.randrange(0, 2 * MiB // 4096) * 4096
                if read_direct(path, off, 4096) != index[off:off + 4096]:
                    errors.append(f"index row at {off} differs")
                    return

        threads = [threading.Thread(target=loader), threading.Thread(target=retriever)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        snap = stats(m.mountpoint)
        assert counter(snap, "read.class.sequential") > 0
        assert counter(snap, "read.class.random") > 0
        # The hot random set is in DRAM; no stream data was admitted there.
        assert counter(snap, "dram.admitted_bytes.random") > 0
        assert counter(snap, "dram.admitted_bytes.sequential") == 0
        assert snap["dram"]["bytes_used"] <= 2 * MiB + counter(
            snap, "dram.admitted_bytes.unknown")
        # First pass: nothing goes to the fast tier (random data waits for a re-use).
        assert snap["fast"]["bytes_used"] == 0


def test_a_stream_fetches_each_byte_once(src: str, mnt: str) -> None:
    """Read-ahead chunks are aligned, whatever offset the stream starts at."""
    want = write_random(os.path.join(src, "shard"), 16 * MiB, 7)
    with open(os.path.join(mnt, "shard"), "rb") as f:
        f.seek(131072)  # where the kernel's second request lands after a first 128 KiB
        got = b"".join(iter(lambda: f.read(MiB), b""))
    assert got == want[131072:]
    snap = stats(mnt)
    assert counter(snap, "read.class.sequential") > 0
    assert 0 < counter(snap, "readahead.bytes.capacity") <= len(want)


def test_dram_hits_and_writes_never_serve_stale(src: str, mnt: str) -> None:
    data = bytearray(write_random(os.path.join(src, "f"), 64 * 1024, 2))
    path = os.path.join(mnt, "f")
    assert read_direct(path, 8192, 4096) == data[8192:12288]
    assert read_direct(path, 8192, 4096) == data[8192:12288]
    snap = stats(mnt)
    assert snap["dram"]["hits"] >= 1
    with open(path, "r+b") as f:
        f.seek(8192 + 100)
        f.write(b"new bytes")
    data[8192 + 100:8192 + 109] = b"new bytes"
    assert read_direct(path, 8192, 4096) == data[8192:12288]
    os.truncate(path, 10000)
    assert read_direct(path, 8192, 4096) == data[8192:10000]


def test_source_changed_behind_the_mount(src: str, make_mount: Callable[..., Mounted],
                                         tmp_path: Any) -> None:
    cfg = write_config(tmp_path, "[mount]\nattr_timeout = 0\nentry_timeout = 0\n")
    path_src = os.path.join(src, "f")
    write_random(path_src, 2 * MiB, 3)
    with make_mount(src, config=cfg) as m:
        path = os.path.join(m.mountpoint, "f")
        subprocess.run(tierfs_cmd("warm", path), check=True, capture_output=True)
        with open(path, "rb") as f:
            f.read()
        new = write_random(path_src, 2 * MiB, 4)
        os.utime(path_src, ns=(time.time_ns(), time.time_ns() + 10**9))
        with open(path, "rb") as f:
            assert f.read() == new
        assert read_direct(path, 4096, 4096) == new[4096:8192]
        assert counter(stats(m.mountpoint), "fast.stale_versions") >= 1


def test_second_epoch_of_a_stream_is_admitted(src: str, make_mount: Callable[..., Mounted],
                                              tmp_path: Any) -> None:
    cfg = write_config(tmp_path, '[[rule]]\npath = "shards/*"\nclass = "stream"\n')
    want = write_random(os.path.join(src, "shards", "s.tar"), 6 * MiB, 5)
    with make_mount(src, config=cfg) as m:
        path = os.path.join(m.mountpoint, "shards", "s.tar")
        for epoch in range(3):
            with open(path, "rb") as f:
                assert b"".join(iter(lambda: f.read(MiB), b"")) == want
            used = stats(m.mountpoint)["fast"]["bytes_used"]
            if epoch == 0:
                assert used == 0, "a first pass must not be admitted"
        wait_for(lambda: stats(m.mountpoint)["fast"]["bytes_used"] == len(want),
                 "the whole shard in the fast tier")
        snap = stats(m.mountpoint)
        assert snap["policy"]["whole_file_admitted"] > 0


def test_pins_warm_at_mount_and_survive_remount(src: str, make_mount: Callable[..., Mounted],
                                                tmp_path: Any) -> None:
    cfg = write_config(tmp_path, '[[rule]]\npath = "index/**"\npin = true\n')
    want = write_random(os.path.join(src, "index", "a", "emb.f32"), 3 * MiB, 6)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, config=cfg, cache=cache) as m:
        wait_for(lambda: stats(m.mountpoint)["fast"]["pinned_bytes"] == len(want),
                 "pinned index warmed")
    p = os.path.join(src, "index", "a", "emb.f32")
    with make_mount(src, config=cfg, cache=cache) as m:
        # The second mount serves the pinned bytes from the fast tier, not the source.
        with open(os.path.join(m.mountpoint, "index", "a", "emb.f32"), "rb") as f:
            assert f.read() == want
        snap = stats(m.mountpoint)
        assert counter(snap, "read.bytes.capacity") == 0
        assert counter(snap, "read.bytes.fast") >= len(want)
    # New bytes of the same size under the old mtime (what `cp -p` and `rsync -a`
    # leave): the cached copy is of another version and must not be served.
    st = os.stat(p)
    new = write_random(p + ".new", len(want), 7)
    os.utime(p + ".new", ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(p, "r+b") as f:
        f.write(new)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.unlink(p + ".new")
    with make_mount(src, config=cfg, cache=cache) as m:
        with open(os.path.join(m.mountpoint, "index", "a", "emb.f32"), "rb") as f:
            assert f.read() == new


def test_corrupted_cache_file_is_refetched(src: str, make_mount: Callable[..., Mounted],
                                           tmp_path: Any) -> None:
    want = write_random(os.path.join(src, "f"), 3 * MiB, 7)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, cache=cache) as m:
        subprocess.run(tierfs_cmd("warm", os.path.join(m.mountpoint, "f")), check=True,
                       capture_output=True)
        # The precondition: every byte is in the fast tier before the unmount.
        assert stats(m.mountpoint)["fast"]["bytes_used"] == len(want)
    data_files = os.listdir(os.path.join(cache, "data"))
    assert len(data_files) == 1
    with open(os.path.join(cache, "data", data_files[0]), "r+b") as f:
        f.seek(MiB + 5)
        f.write(b"garbage")
    with make_mount(src, cache=cache) as m:
        m.allow_error("checksum mismatch")  # a WARNING, but be explicit
        with open(os.path.join(m.mountpoint, "f"), "rb") as f:
            assert f.read() == want
        snap = stats(m.mountpoint)
        assert counter(snap, "fast.corrupt_extents") == 1
        assert counter(snap, "read.bytes.capacity") > 0


def test_evict_and_unpin(src: str, mnt: str) -> None:
    want = write_random(os.path.join(src, "d", "f"), 2 * MiB, 8)
    d = os.path.join(mnt, "d")
    subprocess.run(tierfs_cmd("pin", d), check=True, capture_output=True)
    snap = stats(mnt)
    assert snap["fast"]["pinned_bytes"] == len(want)
    subprocess.run(tierfs_cmd("unpin", d), check=True, capture_output=True)
    assert stats(mnt)["fast"]["pinned_bytes"] == 0
    out = subprocess.run(tierfs_cmd("evict", d), check=True, capture_output=True, text=True)
    assert out.stdout == f"evict: {d}: 1 file, 2MiB dropped\n"
    assert stats(mnt)["fast"]["bytes_used"] == 0
    with open(os.path.join(d, "f"), "rb") as f:
        assert f.read() == want
    res = subprocess.run(tierfs_cmd("warm", "/tmp"), capture_output=True, text=True)
    assert res.returncode == 2 and "not inside a tierfs mount" in res.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Any) -> Any:
    path = os.path.join(tmp_path, "small")
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", path],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        assert not is_mounted(path)


def test_full_cache_disk_does_not_fail_reads(src: str, make_mount: Callable[..., Mounted],
                                             small_tmpfs: str, tmp_path: Any) -> None:
    want = write_random(os.path.join(src, "big"), 6 * MiB, 9)
    cfg = write_config(tmp_path, '[cache]\nsize = "64MiB"\n')
    with make_mount(src, config=cfg, cache=os.path.join(small_tmpfs, "c")) as m:
        path = os.path.join(m.mountpoint, "big")
        res = subprocess.run(tierfs_cmd("warm", path), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        with open(path, "rb") as f:
            assert f.read() == want
        for off in range(0, 6 * MiB, MiB):
            assert read_direct(path, off, 4096) == want[off:off + 4096]
        snap = stats(m.mountpoint)
        assert counter(snap, "fast.enospc") >= 1


def test_kernel_readahead_makes_big_requests(src: str, mnt: str) -> None:
    """[mount] kernel_readahead (default 1 MiB) reaches the kernel: a streaming
    reader's requests arrive far bigger than the kernel's 128 KiB default."""
    want = write_random(os.path.join(src, "shard"), 16 * MiB, 8)
    with open("/proc/self/mountinfo") as f:
        dev = [line.split()[2] for line in f if line.split()[4] == mnt][-1]
    ra = f"/sys/class/bdi/{dev}/read_ahead_kb"
    wait_for(lambda: open(ra).read().strip() == "1024", "kernel read-ahead set")
    with open(os.path.join(mnt, "shard"), "rb") as f:
        got = b"".join(iter(lambda: f.read(MiB), b""))
    assert got == want
    # 16 MiB in 128 KiB requests would be 128 of them.
    assert counter(stats(mnt), "read.requests") <= 48


def test_dram_hit_at_eof_is_not_padded(src: str, mnt: str) -> None:
    """A DRAM hit that ends in the file's short last page returns only bytes of the file."""
    data = write_random(os.path.join(src, "f"), 2 * 4096 + 57, 4)
    path = os.path.join(mnt, "f")
    assert read_direct(path, 4096, 8192) == data[4096:]  # pages 1-2 enter DRAM, 2 is short
    assert stats(mnt)["dram"]["hits"] == 0
    for off in (8192 - 100, 8192, 8192 + 56, 4096 + 1):
        assert read_direct(path, off, 4096) == data[off:off + 4096], off
    assert stats(mnt)["dram"]["hits"] >= 1


def test_random_faults_on_an_mmap_are_classified_random(
        src: str, make_mount: Callable[..., Mounted]) -> None:
    """An index searched through mmap (FAISS, an embedding table): the kernel turns each
    random fault into a read-around window of the mount's read-ahead; those are random
    reads, not streams, and they must not start stream read-ahead from the source."""
    data = random.Random(5).randbytes(32 * MiB)
    with open(os.path.join(src, "index.bin"), "wb") as f:
        f.write(data)
    with make_mount(src) as m:
        rng = random.Random(6)
        with open(os.path.join(m.mountpoint, "index.bin"), "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                for _ in range(300):
                    off = rng.randrange(len(data) - 64)
                    assert mm[off:off + 64] == data[off:off + 64]
            finally:
                mm.close()
        snap = stats(m.mountpoint)
        rnd = counter(snap, "read.class.random")
        seq = counter(snap, "read.class.sequential")
        assert rnd >= 2 * max(seq, 1), (rnd, seq)
        # Labelled as streams, the faults made the engine read ahead 3.5x the file.
        assert counter(snap, "readahead.bytes.capacity") <= len(data) * 3 // 2, \
            "random faults started stream read-ahead"
