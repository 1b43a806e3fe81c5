"""Object-store outages through a real mount: bounded failures and stale-if-error.

The store is the loopback ``rclone serve s3`` of `s3server.S3Server`, frozen with
SIGSTOP (it accepts connections and never answers: what a hung server or a
black-holed network looks like) or stopped (connections refused). What must hold:

* a read the store cannot answer fails with EIO within ``read_timeout`` (plus
  generous slack: the CI machine is loaded), the daemon stays up and serves again
  once the store is back;
* cached data and the cached namespace keep being served meanwhile, also after a
  remount with the store down (the default listing snapshot in the cache directory);
* a mount with the store down and nothing to serve fails with a clear message and
  the source exit code.

The daemon must log no ERROR for any of this: an outage is a WARNING (checked by
`mounting.Mounted`).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import stat as stat_mod
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounting import Mounted, is_mounted, tierfs_cmd
from s3mounts import config
from s3server import S3Server
from test_s3_mount import errno_of, put, read_direct, stats, wait_for

pytestmark = [pytest.mark.s3, pytest.mark.mount]

KiB = 1024
MiB = 1024 * 1024
BOUND = 3.0  # read_timeout of these mounts, in seconds
SLACK = 30.0  # what a loaded 2-core CI machine may add to it


@contextmanager
def frozen(server: S3Server) -> Iterator[None]:
    """The server stops answering (SIGSTOP) and always resumes (SIGCONT)."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def timed_errno(fn: Callable[[], object]) -> tuple[int | None, float]:
    t0 = time.monotonic()
    code = errno_of(fn)
    return code, time.monotonic() - t0


def warm(path: str) -> None:
    res = subprocess.run(tierfs_cmd("warm", path), capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def stream(path: str) -> None:
    """Read a file front to back in 1 MiB reads (a stream, for the classifier)."""
    with open(path, "rb") as f:
        while f.read(MiB):
            pass


# -- (a) a frozen store: bounded EIO, cached data still served ---------------------
def test_frozen_store_reads_fail_within_the_bound_and_cached_data_is_served(
        restartable_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    server = restartable_s3
    rng = random.Random(16)
    hot = rng.randbytes(2 * MiB + 333)
    cold = rng.randbytes(MiB + 77)
    big = rng.randbytes(6 * MiB)
    put(server, "ds/hot.bin", hot)
    put(server, "ds/cold.bin", cold)
    put(server, "ds/big.bin", big)
    src = {"read_timeout": f"{BOUND}s", "stat_ttl": "1h", "list_ttl": "1h"}
    with mount_s3(server, source=src) as m:
        ds = os.path.join(m.mountpoint, "ds")
        assert sorted(os.listdir(ds)) == ["big.bin", "cold.bin", "hot.bin"]
        warm(os.path.join(ds, "hot.bin"))
        for name in ("cold.bin", "big.bin"):  # known names, data not cached
            os.stat(os.path.join(ds, name))
        with frozen(server):
            # A random read of uncached data: EIO within the bound, not the outage.
            code, took = timed_errno(lambda: read_direct(os.path.join(ds, "cold.bin"), 4096, 4096))
            assert code == errno.EIO and took < BOUND + SLACK, (code, took)
            # A stream over uncached data: EIO within its own bound too.
            code, took = timed_errno(lambda: stream(os.path.join(ds, "big.bin")))
            assert code == errno.EIO and took < BOUND + SLACK, (code, took)
            # Cached data and names keep being served, byte for byte.
            for _ in range(2):
                assert read_all(os.path.join(ds, "hot.bin")) == hot
            off = 1234 * 4096
            assert read_direct(os.path.join(ds, "hot.bin"), off, 8192) == hot[off:off + 8192]
            assert sorted(os.listdir(ds)) == ["big.bin", "cold.bin", "hot.bin"]
            assert is_mounted(m.mountpoint)
            snap = stats(m.mountpoint)
            assert snap["capacity"]["timeouts"] >= 1 and snap["capacity"]["unavailable"] >= 1
            assert snap["capacity"]["down"] == 1
            assert snap["counters"].get("errors.read.EIO", 0) >= 2
            assert snap["counters"].get("errors.eio.unavailable", 0) >= 2
        # The store answers again: the same mount serves what failed.
        wait_for(lambda: errno_of(lambda: read_direct(os.path.join(ds, "cold.bin"), 0, 4096))
                 is None, "the store to answer again", timeout=120)
        assert read_all(os.path.join(ds, "cold.bin")) == cold
        assert read_all(os.path.join(ds, "big.bin")) == big
        wait_for(lambda: stats(m.mountpoint)["capacity"]["down"] == 0, "the end of down mode")
        log = m.read_log()
        assert "is down" in log and "answers again" in log
        # Rate-limited: one outage, a handful of lines, not one per failed request.
        assert log.count("is not answering") <= 4, log


def _not_from_dram(mnt: str) -> dict[str, int]:
    return {k: v for k, v in stats(mnt)["counters"].items()
            if k.startswith("read.bytes.") and not k.startswith("read.bytes.dram.")}


def _kernel_forgets(path: str) -> None:
    """Make the kernel forget the file's inode (unused dentries and inodes dropped); the
    inode number a new lookup gets proves it did (the mount never reuses one)."""
    before = os.stat(path).st_ino
    for _ in range(20):
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        if os.stat(path).st_ino != before:
            return
        time.sleep(0.2)
    pytest.fail(f"the kernel kept inode {before} of {path} through 20 drop_caches")


def test_dram_copy_outlives_the_kernel_forgetting_the_inode_in_an_outage(
        restartable_s3: S3Server, mount_s3: Callable[..., Mounted]) -> None:
    """A file read at random sits in DRAM: the kernel forgets its inode (it does under
    memory pressure, after long walks), and every later read, also while the store hangs,
    is served from DRAM under the new inode (not the fast tier, not the store)."""
    server = restartable_s3
    data = random.Random(18).randbytes(MiB + 123)
    put(server, "emb/table.bin", data)
    src = {"read_timeout": f"{BOUND}s", "stat_ttl": "1h", "list_ttl": "1h"}
    # An embedding table: the user says it is read at random (the classifier's guess
    # about a scattered walk is not what this test is about).
    extra = ("[cache]\ndram = \"64MiB\"\n[policy]\nfill_random_max = 0\n"
             "[[rule]]\npath = \"emb/**\"\nclass = \"random\"\n")
    with mount_s3(server, source=src, extra=extra) as m:
        path = os.path.join(m.mountpoint, "emb", "table.bin")
        offsets = list(range(0, len(data), 64 * KiB))
        random.Random(19).shuffle(offsets)

        def read_everything() -> None:
            for off in offsets:  # O_DIRECT: each read reaches the daemon
                assert read_direct(path, off, 64 * KiB) == data[off:off + 64 * KiB], off

        read_everything()
        read_everything()  # admission may want a second sighting of a block
        _kernel_forgets(path)
        before = _not_from_dram(m.mountpoint)
        read_everything()
        _kernel_forgets(path)
        with frozen(server):
            read_everything()
            assert is_mounted(m.mountpoint)
        after = _not_from_dram(m.mountpoint)
        assert after == before, f"served from elsewhere than DRAM: {before} -> {after}"


# -- (b) a remount with the store down serves the warm cache -----------------------
def test_remount_with_the_store_down_serves_names_and_warm_data(
        restartable_s3: S3Server, mount_s3: Callable[..., Mounted], tmp_path: Path) -> None:
    """No listing_snapshot configured: the default one in the cache directory holds the
    names; the fast tier holds the data (keyed by path and version)."""
    server = restartable_s3
    rng = random.Random(17)
    files = {"idx/a.bin": rng.randbytes(300 * KiB), "idx/b.bin": rng.randbytes(MiB + 5),
             "idx/sub/c.bin": rng.randbytes(70 * KiB)}
    cold = rng.randbytes(100 * KiB)
    for rel, data in files.items():
        put(server, rel, data)
    put(server, "idx/cold.bin", cold)
    cache = str(tmp_path / "cache")
    src = {"read_timeout": f"{BOUND}s"}
    with mount_s3(server, source=src, cache=cache) as m:
        idx = os.path.join(m.mountpoint, "idx")
        assert sorted(os.listdir(idx)) == ["a.bin", "b.bin", "cold.bin", "sub"]
        assert os.listdir(os.path.join(idx, "sub")) == ["c.bin"]
        for rel in files:
            warm(os.path.join(m.mountpoint, rel))
        assert stats(m.mountpoint)["fast"]["bytes_used"] == sum(map(len, files.values()))
    snapshot = Path(cache) / "listing.parquet"
    st = os.lstat(snapshot)
    assert stat_mod.S_ISREG(st.st_mode) and stat_mod.S_IMODE(st.st_mode) == 0o600
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]
    # With the store up, the default snapshot answers nothing: a change behind the
    # mount is seen at once (the store is listed as if nothing were cached).
    put(server, "idx/new.bin", b"new")
    with mount_s3(server, source=src, cache=cache) as m:
        idx = os.path.join(m.mountpoint, "idx")
        assert sorted(os.listdir(idx)) == ["a.bin", "b.bin", "cold.bin", "new.bin", "sub"]
        assert stats(m.mountpoint)["capacity"]["list"] >= 1

    server.stop()
    try:
        with mount_s3(server, source=src, cache=cache) as m:
            idx = os.path.join(m.mountpoint, "idx")
            assert sorted(os.listdir(idx)) == ["a.bin", "b.bin", "cold.bin", "new.bin", "sub"]
            assert os.listdir(os.path.join(idx, "sub")) == ["c.bin"]
            for rel, data in files.items():
                p = os.path.join(m.mountpoint, rel)
                assert os.stat(p).st_size == len(data)
                assert read_all(p) == data, rel
            # Not cached: EIO at once (connections are refused), not a hang.
            code, took = timed_errno(lambda: read_all(os.path.join(idx, "cold.bin")))
            assert code == errno.EIO and took < BOUND + SLACK, (code, took)
            # A name the last listing lacks does not exist.
            assert errno_of(lambda: os.stat(os.path.join(idx, "nope"))) == errno.ENOENT
            snap = stats(m.mountpoint)
            assert snap["capacity"]["down"] == 1 and snap["capacity"]["stale_served"] > 0
            assert "mounting from the listing snapshot" in m.read_log()
            # The store comes back: the probe notices, and cold data is served.
            server.start()
            wait_for(lambda: stats(m.mountpoint)["capacity"]["down"] == 0,
                     "the probe to see the store again", timeout=120)
            assert read_all(os.path.join(idx, "cold.bin")) == cold
    finally:
        server.start()


# -- (c) the store down and nothing to serve: the mount fails clearly ---------------
def test_mount_with_the_store_down_and_no_snapshot_fails_clearly(
        restartable_s3: S3Server, tmp_path: Path) -> None:
    server = restartable_s3
    put(server, "x/y", b"y")
    cfg = config(tmp_path, server, source={"dir_markers": False, "read_timeout": f"{BOUND}s"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server.stop()
    try:
        t0 = time.monotonic()
        res = subprocess.run(
            tierfs_cmd("mount", "-f", server.uri(), str(mnt), "--cache", str(tmp_path / "c"),
                       "--config", cfg, "--log", str(tmp_path / "log")),
            capture_output=True, text=True, timeout=120, check=False)
        took = time.monotonic() - t0
    finally:
        server.start()
    assert res.returncode == 4, (res.returncode, res.stderr)  # EXIT_SOURCE
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tierfs: source s3://") and server.endpoint in lines[0]
    assert "no listing snapshot" in lines[0] and "Traceback" not in res.stderr
    assert took < 60, took
    assert not is_mounted(str(mnt))


# -- the default snapshot is saved now and then, when the listings changed ------------
def test_periodic_snapshot_saves_only_after_changes() -> None:
    import trio
    import trio.testing

    from fusefs.mount import save_snapshots_periodically

    class Tier:  # what save_snapshots_periodically uses of a CapacityTier
        def __init__(self) -> None:
            self.snapshot_generation = 0
            self.saved: list[str] = []

        async def save_snapshot(self, path: str) -> int:
            self.saved.append(path)
            return 0

    async def main() -> None:
        tier = Tier()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(save_snapshots_periodically, tier, "snap", 300.0)
            await trio.sleep(1000)
            assert tier.saved == []  # nothing changed: nothing written
            tier.snapshot_generation = 3
            await trio.sleep(301)
            assert tier.saved == ["snap"]
            await trio.sleep(1000)
            assert tier.saved == ["snap"]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
