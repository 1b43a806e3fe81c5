"""The fault suite: faults injected on purpose around real mounts, every byte compared.

Each case builds a small dataset (shards and documents), mounts it, warms it, injects one
fault (the cache directory damaged while mounted or unmounted, the catalog deleted, garbled
or locked, the daemon killed with SIGKILL at a random moment, the source replaced behind
the mount in each way users replace files), then reads everything through the mount and
counts the bytes that differ from the source. The answer must always be: zero wrong bytes,
no EIO, and a cache that `tierfs fsck` finds clean (or repairs) afterwards.

``TIERFS_FAULT_ROUNDS`` (default 1) repeats each case with other seeds (the slow suite runs
many); ``TIERFS_FAULT_LOG`` names a JSON-lines file each round's outcome is appended to, from
which ``python tests/faults_report.py LOG`` writes docs/reliability.md.

Write-path faults (SIGKILL during write bursts, the store down during writes) are covered
by tests/test_writeback.py and the outage cases by tests/test_outages.py; their counts are
listed in the report with their own tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mounting import Mounted, force_unmount, is_mounted, tierfs_cmd

pytestmark = [pytest.mark.mount]

KiB = 1024
ROUNDS = int(os.environ.get("TIERFS_FAULT_ROUNDS", "1"))


def record(case: str, seed: int, **outcome: Any) -> None:
    path = os.environ.get("TIERFS_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"case": case, "seed": seed, **outcome}) + "\n")


def make_tree(root: str, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out: dict[str, bytes] = {}
    for i in range(5):
        out[f"shards/s{i}.tar"] = rng.randbytes(200 * KiB + rng.randrange(100 * KiB))
    for i in range(30):
        out[f"docs/d{i:02d}.txt"] = rng.randbytes(300 + rng.randrange(6000))
    for rel, data in out.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return out


def compare(mnt: str, files: dict[str, bytes], order: list[str]) -> tuple[int, list[str]]:
    """(bytes that differ from the source, files that could not be read)."""
    wrong = 0
    failed = []
    for rel in order:
        try:
            with open(os.path.join(mnt, rel), "rb") as f:
                got = f.read()
        except OSError as exc:
            failed.append(f"{rel}: {exc.strerror}")
            continue
        want = files[rel]
        wrong += abs(len(got) - len(want)) + sum(a != b for a, b in zip(got, want))
    return wrong, failed


def warm(mnt: str) -> None:
    subprocess.run(tierfs_cmd("warm", "-q", os.path.join(mnt, "shards"),
                              os.path.join(mnt, "docs")),
                   check=True, capture_output=True, timeout=300)


def fsck(cache: str, *extra: str) -> int:
    return subprocess.run(tierfs_cmd("fsck", cache, *extra), capture_output=True,
                          timeout=300, check=False).returncode


def data_files(cache: str) -> list[str]:
    d = os.path.join(cache, "data")
    return [os.path.join(d, n) for n in os.listdir(d) if n.isdigit()]


def corrupt(path: str) -> None:
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for off in range(100, size, 4 * KiB):
            b = os.pread(f.fileno(), 1, off)
            os.pwrite(f.fileno(), bytes([b[0] ^ 0x5A]), off)


def truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


CACHE_FAULTS: dict[str, Callable[[str], None]] = {
    "corrupted": lambda cache: [corrupt(p) for p in data_files(cache)] and None,
    "truncated": lambda cache: [truncate(p) for p in data_files(cache)] and None,
    "deleted": lambda cache: [os.unlink(p) for p in data_files(cache)] and None,
}


def _round(src: str, make_mount: Callable[..., Mounted], tmp: str, case: str,
           seed: int, inject: Callable[[str, Mounted | None], None], *,
           while_mounted: bool) -> None:
    shutil.rmtree(src)
    os.mkdir(src)
    files = make_tree(src, seed)
    names = sorted(files)
    cache = os.path.join(tmp, f"cache-{case}-{seed}")
    with make_mount(src, cache=cache) as m:
        warm(m.mountpoint)
        if while_mounted:
            inject(cache, m)
            wrong, failed = compare(m.mountpoint, files, random.Random(seed).sample(names,
                                                                                   len(names)))
    if not while_mounted:
        inject(cache, None)
    with make_mount(src, cache=cache) as m:
        wrong2, failed2 = compare(m.mountpoint, files, names[::-1])
    if while_mounted:
        wrong, failed = wrong + wrong2, failed + failed2
    else:
        wrong, failed = wrong2, failed2
    code = fsck(cache)
    record(case, seed, wrong_bytes=wrong, failed=len(failed), fsck=code, lost_bytes=0)
    assert wrong == 0 and failed == [], (case, wrong, failed)
    assert code == 0, f"{case}: fsck exit {code} after the remount"


@pytest.mark.parametrize("fault", sorted(CACHE_FAULTS))
@pytest.mark.parametrize("when", ["mounted", "unmounted"])
def test_cache_files_damaged(src: str, make_mount: Callable[..., Mounted], tmp_path: Any,
                             fault: str, when: str) -> None:
    for r in range(ROUNDS):
        _round(src, make_mount, str(tmp_path), f"cache files {fault} while {when}", 100 + r,
               lambda cache, m: CACHE_FAULTS[fault](cache), while_mounted=(when == "mounted"))


def _catalog_deleted(cache: str, m: Mounted | None) -> None:
    for name in os.listdir(cache):
        if name.startswith("catalog.db"):
            os.unlink(os.path.join(cache, name))


def _catalog_locked(cache: str, m: Mounted | None) -> None:
    """Another process holds the catalog's write lock for a while: the committer's
    updates wait (and are retried); reads go on."""
    db = sqlite3.connect(os.path.join(cache, "catalog.db"), timeout=30, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(3.0, lambda: (db.rollback(), db.close()))
    release.start()
    assert m is not None
    warm(m.mountpoint)  # more admissions to commit while the lock is held
    release.join()


def test_catalog_deleted_while_unmounted(src: str, make_mount: Callable[..., Mounted],
                                         tmp_path: Any) -> None:
    for r in range(ROUNDS):
        _round(src, make_mount, str(tmp_path), "catalog deleted while unmounted", 200 + r,
               _catalog_deleted, while_mounted=False)


def test_catalog_locked_while_mounted(src: str, make_mount: Callable[..., Mounted],
                                      tmp_path: Any) -> None:
    for r in range(ROUNDS):
        _round(src, make_mount, str(tmp_path), "catalog locked while mounted", 300 + r,
               _catalog_locked, while_mounted=True)


def test_catalog_garbled_is_refused_and_nothing_is_lost(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Any) -> None:
    """A catalog that is not a database: the mount refuses with a clear message (the cache
    is not guessed at), fsck says how to start afresh; the source is untouched."""
    files = make_tree(src, 400)
    cache = os.path.join(tmp_path, "cache")
    with make_mount(src, cache=cache) as m:
        warm(m.mountpoint)
    with open(os.path.join(cache, "catalog.db"), "r+b") as f:
        f.write(b"this is not an sqlite database" * 40)
    for name in ("catalog.db-wal", "catalog.db-shm"):
        if os.path.exists(os.path.join(cache, name)):
            os.unlink(os.path.join(cache, name))
    mnt = os.path.join(tmp_path, "m")
    os.mkdir(mnt)
    res = subprocess.run(tierfs_cmd("mount", src, mnt, "--cache", cache), capture_output=True,
                         text=True, timeout=60, check=False)
    try:
        assert res.returncode != 0 and "catalog" in res.stderr and "Traceback" not in res.stderr
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            force_unmount(mnt)
    assert fsck(cache) == 4
    assert all(open(os.path.join(src, rel), "rb").read() == data for rel, data in files.items())
    record("catalog garbled while unmounted", 400, wrong_bytes=0, failed=0, fsck=4,
           lost_bytes=0, outcome="mount refused with a message; fsck exit 4")


def test_sigkill_during_warm_and_reads(src: str, make_mount: Callable[..., Mounted],
                                       tmp_path: Any) -> None:
    """SIGKILL at a random moment while a warm and readers run; the next mount serves every
    byte right, and fsck --repair leaves a clean cache."""
    for r in range(ROUNDS):
        seed = 500 + r
        shutil.rmtree(src)
        os.mkdir(src)
        files = make_tree(src, seed)
        names = sorted(files)
        cache = os.path.join(tmp_path, f"cache-kill-{seed}")
        rng = random.Random(seed)
        m = make_mount(src, cache=cache)
        m.allow_error(".")  # a killed daemon's last lines are whatever they were
        with m:
            warmer = subprocess.Popen(tierfs_cmd("warm", "-q", os.path.join(m.mountpoint,
                                                                           "shards"),
                                                 os.path.join(m.mountpoint, "docs")),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader = threading.Thread(target=compare, args=(m.mountpoint, files, names),
                                      daemon=True)
            reader.start()
            time.sleep(rng.uniform(0.0, 1.5))
            assert m.proc is not None
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(timeout=30)
            warmer.wait(timeout=60)
            force_unmount(m.mountpoint)
            reader.join(timeout=60)
        repaired = fsck(cache, "--repair")
        with make_mount(src, cache=cache) as m2:
            wrong, failed = compare(m2.mountpoint, files, rng.sample(names, len(names)))
        code = fsck(cache)
        record("SIGKILL during warm and reads", seed, wrong_bytes=wrong, failed=len(failed),
               fsck=code, fsck_repair=repaired, lost_bytes=0)
        assert wrong == 0 and failed == [], (wrong, failed)
        assert repaired in (0, 1) and code == 0


def _replace(src: str, rel: str, new: bytes, how: str) -> None:
    p = os.path.join(src, rel)
    st = os.stat(p)
    if how == "in place, same size, mtime kept":
        with open(p, "r+b") as f:
            f.write(new)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how == "cp -p over it":
        tmp = os.path.join(os.path.dirname(p), ".new")
        with open(tmp, "wb") as f:
            f.write(new)
        subprocess.run(["cp", "-p", "--", tmp, p], check=True)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.unlink(tmp)
    elif how == "rsync -a style (new file renamed over, mtime kept)":
        tmp = p + ".tmp"
        with open(tmp, "wb") as f:
            f.write(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, p)
    elif how == "truncated and rewritten":
        with open(p, "wb") as f:
            f.write(new)
    elif how == "deleted and recreated":
        os.unlink(p)
        with open(p, "wb") as f:
            f.write(new)
    else:
        raise AssertionError(how)


REPLACEMENTS = ["in place, same size, mtime kept", "cp -p over it",
                "rsync -a style (new file renamed over, mtime kept)",
                "truncated and rewritten", "deleted and recreated"]


def test_source_replaced_behind_the_mount(src: str, make_mount: Callable[..., Mounted],
                                          tmp_path: Any) -> None:
    """Every way users replace a file, on warm cached files, with the mount live and
    across a remount: the new bytes are served (after the attribute timeout, 1 s)."""
    for r in range(ROUNDS):
        seed = 600 + r
        shutil.rmtree(src)
        os.mkdir(src)
        files = make_tree(src, seed)
        names = sorted(files)
        rng = random.Random(seed)
        cache = os.path.join(tmp_path, f"cache-src-{seed}")
        victims = rng.sample(names, len(REPLACEMENTS))
        with make_mount(src, cache=cache) as m:
            warm(m.mountpoint)
            assert compare(m.mountpoint, files, names) == (0, [])
            for rel, how in zip(victims, REPLACEMENTS):
                files[rel] = rng.randbytes(len(files[rel]) if "same size" in how or "cp -p" in how
                                           or "rsync" in how else rng.randrange(1, 300 * KiB))
                _replace(src, rel, files[rel], how)
            time.sleep(1.2)
            wrong, failed = compare(m.mountpoint, files, names[::-1])
        with make_mount(src, cache=cache) as m:
            wrong2, failed2 = compare(m.mountpoint, files, names)
        for how in REPLACEMENTS:
            record(f"source file replaced: {how}", seed, wrong_bytes=wrong + wrong2,
                   failed=len(failed) + len(failed2), fsck=fsck(cache), lost_bytes=0)
        assert (wrong, failed, wrong2, failed2) == (0, [], 0, [])
