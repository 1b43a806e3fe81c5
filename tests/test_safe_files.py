"""Files tierfs writes for itself are private; files it reads back are checked first.

Real mounts started by the `tierfs` command under a umask of 0: whatever tierfs
creates for itself (cache directory, catalog and its -wal/-shm, lock, log, trace,
listing snapshot) must still be 0600/0700, while what a user creates through the
mount gets exactly the mode asked for. A symlink planted where a temporary file
used to go is not followed, and a snapshot or trace others could have written is
not trusted.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from mounting import Mounted, tierfs_cmd
from s3mounts import config as s3_config
from s3server import S3Server

from fusefs.trace import SCHEMA, write_trace

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def run(*args: str, umask: int | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(tierfs_cmd(*args), check=False, capture_output=True, text=True,
                          timeout=120, preexec_fn=pre, **kw)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_private(path: str | Path) -> None:
    st = os.lstat(path)
    want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
    assert stat.S_IMODE(st.st_mode) == want and st.st_uid == os.geteuid(), \
        f"{path}: mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}"


def test_own_files_are_private_and_requested_modes_exact(src: str, tmp_path: Path) -> None:
    with open(os.path.join(src, "data"), "wb") as f:
        f.write(os.urandom(256 << 10))
    mnt, cache = tmp_path / "m", tmp_path / "cache"
    mnt.mkdir()
    trace = tmp_path / "trace.parquet"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[stats]\ntrace = "{trace}"\n')
    res = run("mount", src, str(mnt), "--cache", str(cache), "--config", str(cfg), umask=0)
    assert res.returncode == 0, res.stderr
    try:
        for _ in range(2):  # twice: the second read is admitted to the fast tier
            assert len((mnt / "data").read_bytes()) == 256 << 10
        # Made through the mount by a caller whose umask is 0: exactly the modes asked
        # for, although the daemon's own umask is 077.
        old = os.umask(0)
        try:
            os.close(os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o666))
            os.mkdir(mnt / "d", 0o775)
            os.mkfifo(mnt / "p", 0o664)
        finally:
            os.umask(old)
        assert (mode(Path(src) / "f"), mode(Path(src) / "d"), mode(Path(src) / "p")) == \
            (0o666, 0o775, 0o664)
        during = sorted(p.name for p in cache.iterdir())
        for p in cache.rglob("*"):
            assert_private(p)
        assert "catalog.db-wal" in during
    finally:
        res = run("umount", str(mnt))
    assert res.returncode == 0, res.stderr
    assert_private(cache)
    for p in cache.rglob("*"):
        assert_private(p)
    assert_private(cache / "tierfs.log")
    assert_private(trace)


@root_only
def test_listing_snapshot_is_private_and_not_redirected(s3: S3Server, tmp_path: Path) -> None:
    (s3.bucket_dir / "d").mkdir()
    (s3.bucket_dir / "d" / "x").write_bytes(b"x")
    snap = tmp_path / "snap.parquet"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    cfg = s3_config(tmp_path, s3, source={"dir_markers": False,
                                          "listing_snapshot": str(snap)})

    def mount(n: int) -> Mounted:
        return Mounted(s3.uri() + "&request_timeout=60", str(tmp_path / "m"),
                       cache=str(tmp_path / "c"), log=str(tmp_path / f"log{n}"), config=cfg)

    with mount(1) as m:
        assert m.proc is not None
        assert os.listdir(Path(m.mountpoint) / "d") == ["x"]
        # The name the old code wrote through, and the snapshot's own name: symlinks
        # to a file of the user's. Neither may be written through.
        os.symlink(victim, f"{snap}.tmp.{m.proc.pid}")
        os.symlink(victim, snap)
        res = run("snapshot", m.mountpoint)
        assert res.returncode == 0, res.stderr
        assert victim.read_text() == "precious"
        assert not snap.is_symlink()
        assert_private(snap)
    assert victim.read_text() == "precious"
    assert_private(snap)

    # Read back only when it is ours and nobody else can write it.
    os.chmod(snap, 0o666)
    with mount(2) as m:
        os.listdir(m.mountpoint)
    assert "writable by others" in m.read_log() and "loaded" not in m.read_log()
    os.chmod(snap, 0o600)
    os.chown(snap, NOBODY, -1)
    with mount(3) as m:
        os.listdir(m.mountpoint)
    assert f"belongs to uid {NOBODY}" in m.read_log() and "loaded" not in m.read_log()
    os.chown(snap, os.geteuid(), -1)
    with mount(4) as m:
        os.listdir(m.mountpoint)
    # (each mount saved its own listing, of the root only, at unmount)
    assert "loaded 1 entries from listing snapshot" in m.read_log()


@root_only
def test_replay_refuses_a_trace_others_could_have_written(tmp_path: Path) -> None:
    trace = tmp_path / "t.parquet"
    write_trace(pa.table({"time": [0.0], "pid": [1], "file": ["a"], "file_id": [1],
                          "offset": [0], "size": [4096], "op": ["read"],
                          "label": ["random"]}).cast(SCHEMA), trace)
    assert_private(trace)  # written 0600
    args = ("replay", str(trace), "--cache-size", "1MiB", "--policy", "lru")
    assert run(*args).returncode == 0
    os.chmod(trace, 0o664)
    res = run(*args)
    assert res.returncode == 1 and "writable by others" in res.stderr
    assert "Traceback" not in res.stderr
    os.chmod(trace, 0o644)
    os.chown(trace, NOBODY, -1)
    res = run(*args)
    assert res.returncode == 1 and f"belongs to uid {NOBODY}" in res.stderr
