"""`tierfs stats --by-path`, `tierfs stats --watch` and tier occupancy in traces and
reports, on real mounts."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow.compute as pc
import pytest

from fusefs.pathstats import PathStats
from fusefs.trace import read_trace_extended
from mounting import Mounted, env, tierfs_cmd
from s3server import S3Server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tierfs_cmd("stats", *args), capture_output=True, text=True,
                          timeout=120, env=env())


def _by_path(mnt: str, *extra: str) -> dict[str, Any]:
    res = _stats("--json", "--by-path", "--top", "100", *extra, mnt)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _random_pages(path: str, pages: list[int]) -> None:
    """Read 4 KiB pages in the given order, each past the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for p in pages:
            os.posix_fadvise(fd, p * 4096, 4096, os.POSIX_FADV_DONTNEED)
            assert len(os.pread(fd, 4096, p * 4096)) == 4096
    finally:
        os.close(fd)


def test_by_path_names_files_with_class_and_serving_tier(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    rnd = random.Random(3)
    for name, size in (("stream.bin", 4 << 20), ("table.bin", 1 << 20), ("warm.bin", 256 << 10)):
        with open(os.path.join(src, name), "wb") as f:
            f.write(rnd.randbytes(size))
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[rule]]\npath = "stream*"\n')
    with make_mount(src, config=str(cfg)) as m:
        mnt = m.mountpoint
        with open(os.path.join(mnt, "stream.bin"), "rb", buffering=0) as f:
            while f.read(128 << 10):
                pass
        _random_pages(os.path.join(mnt, "table.bin"), rnd.sample(range(256), 200))
        res = subprocess.run(tierfs_cmd("warm", "-q", os.path.join(mnt, "warm.bin")),
                             capture_output=True, text=True, timeout=120, env=env())
        assert res.returncode == 0, res.stderr
        # Every page once, in random order: none can come from DRAM or the source.
        _random_pages(os.path.join(mnt, "warm.bin"), rnd.sample(range(64), 64))

        got = _by_path(mnt)
        files = {p["path"]: p for p in got["paths"]}
        assert set(files) == {"stream.bin", "table.bin", "warm.bin"}
        assert files["stream.bin"]["class"] == "sequential"
        assert files["stream.bin"]["bytes"] >= 4 << 20
        assert files["table.bin"]["class"] == "random"
        assert files["table.bin"]["tiers"]["capacity"] > 0
        warm = files["warm.bin"]
        assert warm["tiers"]["capacity"] == 0 and warm["tiers"]["fast"] > 0, warm
        assert warm["hit_ratio"] == 1.0
        assert all(p["opens"] >= 1 and p["errors"] == 0 for p in files.values())
        # Ordered by bytes read: the stream first.
        assert got["paths"][0]["path"] == "stream.bin"
        rules = {r["rule"]: r for r in got["rules"]}
        assert rules["rule 0 'stream*'"]["bytes"] == files["stream.bin"]["bytes"]
        assert rules["(no rule)"]["bytes"] == (files["table.bin"]["bytes"]
                                               + files["warm.bin"]["bytes"])
        # --sort misses: the files with the most bytes from the source first.
        by_miss = _by_path(mnt, "--sort", "misses")["paths"]
        assert by_miss[-1]["path"] == "warm.bin"

        human = _stats("--by-path", mnt)
        assert human.returncode == 0, human.stderr
        lines = {line.split()[0]: line for line in human.stdout.splitlines() if line.strip()}
        assert "sequential" in lines["stream.bin"] and "random" in lines["table.bin"]
        assert "rule 0 'stream*'" in human.stdout and "(no rule)" in human.stdout
        # The main view says what the kernel's page cache may have answered.
        assert "with the kernel's cached pages kept" in _stats(mnt).stdout


def test_by_path_on_s3_after_a_warm(s3: S3Server, make_mount: Callable[..., Mounted],  # noqa: F811
                                    tmp_path: Path) -> None:
    """On an object store: a file read at random is fetched from the store; a warmed one
    is served by the fast tier (and DRAM, which its 64 KiB blocks fill), never the store."""
    rnd = random.Random(9)
    for name in ("table.bin", "index.bin"):
        (s3.bucket_dir / name).write_bytes(rnd.randbytes(512 << 10))
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[source]\naccess_key = "{s3.access_key}"\n'
                   f'secret_key = "{s3.secret_key}"\n')
    with make_mount(s3.uri(), config=str(cfg)) as m:
        mnt = m.mountpoint
        res = subprocess.run(tierfs_cmd("warm", "-q", os.path.join(mnt, "index.bin")),
                             capture_output=True, text=True, timeout=120, env=env())
        assert res.returncode == 0, res.stderr
        _random_pages(os.path.join(mnt, "table.bin"), rnd.sample(range(128), 40))
        _random_pages(os.path.join(mnt, "index.bin"), rnd.sample(range(128), 128))
        files = {p["path"]: p for p in _by_path(mnt)["paths"]}
        assert files["table.bin"]["class"] == "random"
        assert files["table.bin"]["tiers"]["capacity"] > 0
        index = files["index.bin"]
        assert index["tiers"]["capacity"] == 0 and index["tiers"]["fast"] > 0, index
        assert index["hit_ratio"] == 1.0 and index["errors"] == 0


def test_by_path_bound_keeps_the_heavy_files(src: str, make_mount: Callable[..., Mounted],
                                             tmp_path: Path) -> None:
    heavy = [f"heavy{i}.bin" for i in range(3)]
    light = [f"light{i:03d}.bin" for i in range(40)]
    for name in heavy:
        with open(os.path.join(src, name), "wb") as f:
            f.write(os.urandom(1 << 20))
    for name in light:
        with open(os.path.join(src, name), "wb") as f:
            f.write(os.urandom(4096))
    cfg = tmp_path / "t.toml"
    cfg.write_text("[stats]\npath_limit = 8\n")
    with make_mount(src, config=str(cfg)) as m:
        for name in heavy + light:
            with open(os.path.join(m.mountpoint, name), "rb") as f:
                assert f.read()
        got = _by_path(m.mountpoint)
        assert got["limit"] == 8 and got["tracked"] <= 8 and len(got["paths"]) <= 8
        assert got["evicted"] >= len(heavy) + len(light) - 8
        assert {p["path"] for p in got["paths"][:3]} == set(heavy)
        assert all(p["bytes"] >= 1 << 20 for p in got["paths"][:3])
        # The rule totals stay exact whatever the table let go.
        (total,) = got["rules"]
        assert total["bytes"] >= 3 * (1 << 20) + 40 * 4096
        human = _stats("--by-path", "--top", "50", m.mountpoint).stdout
        rows = [line for line in human.splitlines() if line.startswith(("heavy", "light"))]
        assert 3 <= len(rows) <= 8, human


def test_path_stats_space_saving_bound() -> None:
    """A million-file walk cannot grow the table; the heavy paths stay, exact."""
    ps = PathStats(limit=64)
    heavy = [f"h{i}".encode() for i in range(5)]
    for i in range(100_000):
        f = ps.enter(f"walk/{i}".encode(), None)
        assert f is not None
        f.add("capacity", "random", 1)
        if i % 1000 == 0:
            for h in heavy:
                g = ps.enter(h, None)
                assert g is not None
                g.add("dram", "random", 100)
    assert len(ps) <= 64
    top = ps.top(5)
    assert {t["path"] for t in top} == {h.decode() for h in heavy}
    # Entered before the table filled: never let go, so counted exactly.
    assert all(t["bytes"] == 100 * 100 and t["uncounted_max"] == 0 for t in top)
    (rule,) = ps.rules()
    assert rule["bytes"] == 100_000 + 5 * 100 * 100
    assert PathStats(limit=0).enter(b"x", None) is None


def test_path_stats_follow_renames() -> None:
    """A renamed file (or directory) keeps its figures under its new name; a file the
    rename replaced is no longer listed, and its table slot is not counted twice."""
    ps = PathStats(limit=4)
    for name, n in ((b"a", 10), (b"d/x", 20), (b"d/y", 30), (b"b", 0)):
        f = ps.enter(name, None)
        assert f is not None
        f.add("fast", "random", n)  # b reads nothing: its stale slot is the smallest
    ps.renamed(b"d", b"e")
    ps.renamed(b"a", b"b")  # replaces b
    got = {t["path"]: t["bytes"] for t in ps.top(10)}
    assert got == {"b": 10, "e/x": 20, "e/y": 30}
    # the table is not full (3 of 4): a new path enters without letting one go
    g = ps.enter(b"c", None)
    assert g is not None and len(ps) == 4 and ps.evicted == 0
    g.add("fast", "random", 1)
    # full now: the smallest goes, and the replaced file's stale slot is never chosen
    assert ps.enter(b"z", None) is not None
    assert {t["path"] for t in ps.top(10)} == {"b", "e/x", "e/y", "z"}


def test_by_path_follows_a_rename(src: str, make_mount: Callable[..., Mounted]) -> None:
    with open(os.path.join(src, "old.bin"), "wb") as f:
        f.write(os.urandom(256 << 10))
    with make_mount(src) as m:
        with open(os.path.join(m.mountpoint, "old.bin"), "rb") as f:
            assert len(f.read()) == 256 << 10
        os.rename(os.path.join(m.mountpoint, "old.bin"), os.path.join(m.mountpoint, "new.bin"))
        files = {p["path"]: p for p in _by_path(m.mountpoint)["paths"]}
        assert set(files) == {"new.bin"} and files["new.bin"]["bytes"] == 256 << 10
        # A local source's capacity tier has no figures: no empty section is printed.
        out = _stats(m.mountpoint)
        assert out.returncode == 0 and "[capacity]" not in out.stdout, out.stdout[-500:]


def _drain(fd: int, until: Callable[[bytes], bool], deadline: float) -> bytes:
    out = b""
    while not until(out):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting; output so far:\n{out.decode(errors='replace')}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def test_watch_on_a_terminal_until_ctrl_c(src: str, make_mount: Callable[..., Mounted]) -> None:
    pytest.importorskip("rich")
    with open(os.path.join(src, "f.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with make_mount(src) as m:
        with open(os.path.join(m.mountpoint, "f.bin"), "rb") as f:
            f.read()
        master, slave = pty.openpty()
        e = {**env(), "COLUMNS": "140", "LINES": "60", "TERM": "xterm-256color"}
        proc = subprocess.Popen(tierfs_cmd("stats", "--watch", "--interval", "0.3",
                                           m.mountpoint),
                                stdin=slave, stdout=slave, stderr=slave, env=e)
        os.close(slave)
        try:
            out = _drain(master, lambda b: b"sample 2" in b, time.monotonic() + 120)
            assert b"sample 1" in out and b"read MiB/s by serving tier" in out
            assert b"\x1b[" in out  # drawn for a terminal
            proc.send_signal(signal.SIGINT)
            # Read on while it stops: the view writes its last frame as it stops, and a
            # terminal nobody reads fills up and blocks that write for good (what a
            # run beside stress-ng met: no exit within 60 s).
            rest = _drain(master, lambda b: proc.poll() is not None, time.monotonic() + 60)
            assert proc.wait(timeout=10) == 0
            rest += _drain(master, lambda b: False, time.monotonic() + 5)
            assert b"Traceback" not in out + rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


def test_watch_piped_prints_blocks_and_ends_when_the_mount_goes(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    pytest.importorskip("rich")
    with open(os.path.join(src, "f.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with make_mount(src) as m:
        with open(os.path.join(m.mountpoint, "f.bin"), "rb") as f:
            f.read()
        res = _stats("--watch", "--interval", "0.1", "--count", "2", m.mountpoint)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("\n--- ") + res.stdout.startswith("--- ") == 2
        assert "sample 1" in res.stdout and "sample 2" in res.stdout
        assert "\x1b[" not in res.stdout
        assert "f.bin" in res.stdout  # the busiest file since the mount

        bad = _stats("--watch", "--json", m.mountpoint)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

        out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(tierfs_cmd("stats", "--watch", "--interval", "0.2",
                                               m.mountpoint), stdout=out, stderr=err, env=env())
        try:
            deadline = time.monotonic() + 120
            while b"sample 1" not in out_path.read_bytes():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            m.unmount()
            assert proc.wait(timeout=120) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = err_path.read_text().strip().splitlines()
        assert len(lines) == 1 and "the mount went away" in lines[0], lines


def test_report_draws_tier_occupancy(src: str, make_mount: Callable[..., Mounted],
                                     tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rnd = random.Random(5)
    with open(os.path.join(src, "table.bin"), "wb") as f:
        f.write(rnd.randbytes(2 << 20))
    trace = tmp_path / "trace.parquet"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[stats]\ntrace = "{trace}"\n')
    with make_mount(src, config=str(cfg)) as m:
        # Reads go on past the sampling interval (1 s), so a later sample sees what the
        # first reads put into DRAM, however slowly this machine runs them.
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            _random_pages(os.path.join(m.mountpoint, "table.bin"), rnd.sample(range(512), 32))
    t = read_trace_extended(trace)
    samples = t.filter(pc.is_valid(t["dram_bytes"]))
    assert samples.num_rows >= 2
    assert max(samples["dram_bytes"].to_pylist()) > 0
    assert all(v is not None for v in samples["fast_bytes"].to_pylist())

    out = tmp_path / "report"
    res = subprocess.run(tierfs_cmd("report", str(trace), "-o", str(out), "--policy", "lru"),
                         capture_output=True, text=True, timeout=600, env=env())
    assert res.returncode == 0, res.stderr
    png = out / "occupancy.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 15_000
    page = (out / "index.html").read_text()
    assert "Tier occupancy over time" in page and "src='occupancy.png'" in page
    data = json.loads((out / "report.json").read_text())
    assert data["summary"]["occupancy"]["dram_bytes"]["max"] > 0


@pytest.mark.allow_log_errors("disk gone")
def test_by_path_counts_failed_reads(src: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read the capacity tier fails is an error of its file and of its rule."""
    import errno

    import pyfuse3
    import trio

    from fusefs.engine import Engine
    from fusefs.operations import Operations
    from fusefs.stats import Stats
    from fusefs.tiers.posix import PosixTier

    data = os.urandom(64 << 10)
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(data)
    ctx = pyfuse3.RequestContext()

    async def main() -> None:
        tier = PosixTier(src)
        await tier.start()
        try:
            ops = Operations(tier, Engine(tier, stats=Stats()))
            e = await ops.lookup(pyfuse3.ROOT_INODE, b"f", ctx)
            fi = await ops.open(e.st_ino, os.O_RDONLY, ctx)
            assert await ops.read(fi.fh, 0, 4096) == data[:4096]

            async def broken(*args: Any) -> bytes:
                raise OSError(errno.EIO, "disk gone")
            monkeypatch.setattr(type(ops.handles.file(fi.fh).file), "pread", broken)
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await ops.read(fi.fh, 32 << 10, 4096)  # not in DRAM: the tier is asked
            assert exc.value.errno == errno.EIO
            (row,) = ops.engine.paths.top(5)
            assert row["path"] == "f" and row["errors"] == 1 and row["requests"] == 2
            assert row["bytes"] == 4096
            (rule,) = ops.engine.paths.rules()
            assert rule["errors"] == 1
            await ops.release(fi.fh)
        finally:
            await tier.close()

    trio.run(main)
