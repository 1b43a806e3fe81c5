"""Real mounts, used the way users use them: many files, warm, remount, another order,
another client changing the source, several reader processes. Every byte is compared with
the source; the mount fixture fails the test on any ERROR or traceback in the daemon's log.

Assertions are about behaviour: bytes, errors, and which tier served (after a warm, nothing
comes from the capacity tier), never about exact request counts.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from mounting import Mounted, resident_pages, tierfs_cmd
from s3server import S3Server
from test_s3_mount import put
from test_tiering import counter, stats

pytestmark = [pytest.mark.mount]

KiB = 1024
MiB = 1024 * KiB


def make_tree(root: str, *, shards: int = 24, shard_size: int = 300 * KiB,
              docs: int = 300) -> dict[str, bytes]:
    """A small training + RAG dataset: tar-like shards and many small documents."""
    rng = random.Random(11)
    out: dict[str, bytes] = {}
    for i in range(shards):
        out[f"shards/s{i:03d}.tar"] = rng.randbytes(shard_size + i * 1000)
    for i in range(docs):
        out[f"docs/{i % 7}/d{i:04d}.txt"] = rng.randbytes(500 + (i * 37) % 6000)
    for rel, data in out.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return out


def read_all(mnt: str, files: dict[str, bytes], order: list[str]) -> list[str]:
    """Read every file in ``order``; return those whose bytes differ (or that fail)."""
    bad = []
    for rel in order:
        try:
            with open(os.path.join(mnt, rel), "rb") as f:
                got = f.read()
        except OSError as exc:
            bad.append(f"{rel}: {exc}")
            continue
        if got != files[rel]:
            bad.append(f"{rel}: {len(got)} bytes, differ")
    return bad


def warm(mnt: str, *paths: str) -> None:
    subprocess.run(tierfs_cmd("warm", "-q", *[os.path.join(mnt, p) for p in paths]),
                   check=True, capture_output=True, timeout=300)


def test_warm_then_read_everything_then_remount_in_other_orders(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    files = make_tree(src)
    names = sorted(files)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, cache=cache) as m:
        warm(m.mountpoint, "shards", "docs")
        assert read_all(m.mountpoint, files, names) == []
        assert counter(stats(m.mountpoint), "read.bytes.capacity") == 0, \
            "after a warm of everything, nothing should come from the source"
    for order in (names[::-1], random.Random(3).sample(names, len(names))):
        with make_mount(src, cache=cache) as m:
            assert read_all(m.mountpoint, files, order) == []
            snap = stats(m.mountpoint)
            assert counter(snap, "read.bytes.capacity") == 0, "the warm cache survives"
            assert counter(snap, "errors.total") == 0


def test_a_changed_source_file_leaves_the_others_intact(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    files = make_tree(src, shards=8, docs=40)
    names = sorted(files)
    with make_mount(src, cache=os.path.join(tmp_path, "cache")) as m:
        warm(m.mountpoint, "shards", "docs")
        assert read_all(m.mountpoint, files, names) == []
        # Another client touches one file and rewrites another in place (same size,
        # mtime put back, as `cp -p` leaves it).
        os.utime(os.path.join(src, names[0]))
        victim = names[1]
        p = os.path.join(src, victim)
        st = os.stat(p)
        files[victim] = random.Random(5).randbytes(len(files[victim]))
        with open(p, "r+b") as f:
            f.write(files[victim])
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        time.sleep(1.2)  # the attribute timeout (1 s): close-to-open sees the new version
        assert read_all(m.mountpoint, files, names[::-1]) == []
        assert counter(stats(m.mountpoint), "errors.total") == 0


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(256 * KiB), b""):
            h.update(block)
    return h.hexdigest()


def test_multiprocess_loader_over_shards_after_warm(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    """A DataLoader-style epoch: worker processes each take shards in a shuffled order."""
    files = make_tree(src, shards=32, docs=0)
    shards = sorted(files)
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    with make_mount(src, cache=os.path.join(tmp_path, "cache")) as m:
        warm(m.mountpoint, "shards")
        for epoch in range(2):
            order = random.Random(epoch).sample(shards, len(shards))
            with concurrent.futures.ProcessPoolExecutor(4) as pool:
                got = dict(zip(order, pool.map(
                    _digest, [os.path.join(m.mountpoint, rel) for rel in order])))
            assert got == want
        assert counter(stats(m.mountpoint), "errors.total") == 0


def test_warm_pin_evict_over_many_small_documents(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    files = make_tree(src, shards=0, docs=600)
    names = sorted(files)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, cache=cache) as m:
        subprocess.run(tierfs_cmd("pin", os.path.join(m.mountpoint, "docs")), check=True,
                       capture_output=True, timeout=300)
        assert read_all(m.mountpoint, files, random.Random(1).sample(names, len(names))) == []
        subprocess.run(tierfs_cmd("evict", os.path.join(m.mountpoint, "docs/3")), check=True,
                       capture_output=True, timeout=300)
        assert read_all(m.mountpoint, files, names) == []
    # offline check of what the mounts left
    res = subprocess.run(tierfs_cmd("fsck", cache), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_evict_tells_an_immutable_mount_that_a_file_changed(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    """An immutable mount keeps the kernel's pages across opens without asking the source;
    `tierfs evict` is how its user says a file changed. It must drop every copy, the
    kernel's page cache included, before it answers: then the next read is the new file."""
    size = 256 * KiB
    old = random.Random(1).randbytes(size)
    new = random.Random(2).randbytes(size)
    p = Path(src, "idx", "table.bin")
    p.parent.mkdir()
    p.write_bytes(old)
    cfg = tmp_path / "immutable.toml"
    cfg.write_text('[mount]\nconsistency = "immutable"\n')
    with make_mount(src, config=str(cfg)) as m:
        path = os.path.join(m.mountpoint, "idx", "table.bin")
        with open(path, "rb") as f:
            assert f.read() == old
            assert resident_pages(f.fileno(), size) > 0, "the kernel did not cache the file"
        # Replaced at the source: same size, same mtime (what `cp -p` and `rsync -a` give).
        st = p.stat()
        tmp = p.with_name("table.new")
        tmp.write_bytes(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, p)
        out = subprocess.run(tierfs_cmd("evict", os.path.join(m.mountpoint, "idx")),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(path, "rb") as f:
            assert resident_pages(f.fileno(), size) == 0, "evict left the kernel's pages"
            assert f.read() == new
        with open(path, "rb") as f:  # and again, now from the caches
            assert f.read() == new


def _damage_cache_files(cache: str) -> int:
    """Flip one byte in every 4 KiB of every fast-tier data file; returns files damaged."""
    data = os.path.join(cache, "data")
    n = 0
    for name in os.listdir(data):
        with open(os.path.join(data, name), "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            for off in range(0, size, 4 * KiB):
                b = os.pread(f.fileno(), 1, off + 100)
                if b:
                    os.pwrite(f.fileno(), bytes([b[0] ^ 0xFF]), off + 100)
        n += 1
    return n


def test_cache_files_damaged_while_mounted_are_never_served(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    files = make_tree(src, shards=6, docs=60)
    names = sorted(files)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, cache=cache) as m:
        warm(m.mountpoint, "shards", "docs")
        assert _damage_cache_files(cache) > 0
        assert read_all(m.mountpoint, files, names) == []
        snap = stats(m.mountpoint)
        assert counter(snap, "fast.corrupt_extents") > 0, "the damage was not even seen"
        assert counter(snap, "errors.total") == 0
        res = subprocess.run(tierfs_cmd("fsck", m.mountpoint), capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "checksum mismatch" in m.read_log()  # a WARNING, one per damaged extent
    res = subprocess.run(tierfs_cmd("fsck", cache), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.s3
def test_random_reads_over_many_s3_files_then_remount_reversed(
        s3: S3Server, mount_s3: Callable[..., Mounted], tmp_path: Path) -> None:
    rng = random.Random(7)
    files = {f"emb/part{i:02d}.bin": rng.randbytes(1 * MiB + i * 4096) for i in range(12)}
    for rel, data in files.items():
        put(s3, rel, data)
    names = sorted(files)
    cache = str(tmp_path / "cache")

    def random_pass(mnt: str, order: list[str], seed: int) -> list[str]:
        bad = []
        r = random.Random(seed)
        for rel in order:
            with open(os.path.join(mnt, rel), "rb") as f:
                for _ in range(24):
                    off = r.randrange(0, len(files[rel]) - 4096) // 4096 * 4096
                    f.seek(off)
                    try:
                        got = f.read(4096)
                    except OSError as exc:
                        bad.append(f"{rel}@{off}: {exc}")
                        break
                    if got != files[rel][off:off + 4096]:
                        bad.append(f"{rel}@{off}: differs")
        return bad

    with mount_s3(s3, cache=cache) as m:
        assert random_pass(m.mountpoint, names, 1) == []
        assert counter(stats(m.mountpoint), "errors.total") == 0
    with mount_s3(s3, cache=cache) as m:
        assert random_pass(m.mountpoint, names[::-1], 2) == []
        assert read_all(m.mountpoint, files, names[::-1]) == []
        assert counter(stats(m.mountpoint), "errors.total") == 0


@pytest.mark.s3
def test_warm_then_read_an_s3_source_after_remount(
        s3: S3Server, mount_s3: Callable[..., Mounted], tmp_path: Path) -> None:
    rng = random.Random(9)
    files = {f"shards/s{i:02d}.tar": rng.randbytes(700 * KiB + i * 999) for i in range(16)}
    for rel, data in files.items():
        put(s3, rel, data)
    names = sorted(files)
    cache = str(tmp_path / "cache")
    with mount_s3(s3, cache=cache) as m:
        warm(m.mountpoint, "shards")
        assert read_all(m.mountpoint, files, names) == []
        assert counter(stats(m.mountpoint), "read.bytes.capacity") == 0
    with mount_s3(s3, cache=cache) as m:
        assert read_all(m.mountpoint, files, names[::-1]) == []
        snap = stats(m.mountpoint)
        assert counter(snap, "read.bytes.capacity") == 0, "the warm cache survives"
        assert counter(snap, "errors.total") == 0
