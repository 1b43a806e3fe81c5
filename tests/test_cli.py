"""`tierfs mount|umount|stats` as a user runs them: exit codes, messages, lifecycle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from mounting import Mounted, assert_clean_log, bad_lines, is_mounted, tierfs_cmd


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tierfs_cmd(*args), capture_output=True, text=True, timeout=60)


def running(pid: int) -> bool:
    """Alive and not a zombie (the daemon's parent may not reap it at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def mnt_dir(tmp_path: Any) -> str:
    p = os.path.join(tmp_path, "m")
    os.mkdir(p)
    return p


def test_missing_source(tmp_path: Any, mnt_dir: str) -> None:
    res = run("mount", os.path.join(tmp_path, "nope"), mnt_dir)
    assert res.returncode == 4
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_bad_mount_points(src: str, tmp_path: Any) -> None:
    res = run("mount", src, os.path.join(tmp_path, "nope"))
    assert res.returncode == 5 and "does not exist" in res.stderr
    f = os.path.join(tmp_path, "file")
    open(f, "w").close()
    res = run("mount", src, f)
    assert res.returncode == 5 and "not a directory" in res.stderr


def test_busy_mount_point(src: str, make_mount: Callable[..., Mounted]) -> None:
    with make_mount(src) as m:
        res = run("mount", src, m.mountpoint)
        assert res.returncode == 5 and "busy" in res.stderr


def test_bad_config_and_options(src: str, mnt_dir: str, tmp_path: Any) -> None:
    cfg = os.path.join(tmp_path, "c.toml")
    with open(cfg, "w") as f:
        f.write("[cache]\n\nsize = \"big\"\n")
    res = run("mount", src, mnt_dir, "--config", cfg)
    assert res.returncode == 3
    assert f"{cfg}:3: cache.size: not a size" in res.stderr
    with open(cfg, "w") as f:
        f.write('[policy]\nname = "nosuch"\n')
    res = run("mount", src, mnt_dir, "--config", cfg)
    assert res.returncode == 3 and "nosuch" in res.stderr and "workload_aware" in res.stderr
    res = run("mount", src, mnt_dir, "-o", "allow_other,frobnicate")
    assert res.returncode == 2 and "unknown mount option 'frobnicate'" in res.stderr
    res = run("mount", src, mnt_dir, "-o", "cache")
    assert res.returncode == 2 and "needs a value" in res.stderr
    assert not is_mounted(mnt_dir)


def test_daemon_mount_stats_umount(src: str, mnt_dir: str, tmp_path: Any) -> None:
    cache = os.path.join(tmp_path, "cache")
    with open(os.path.join(src, "x"), "w") as f:
        f.write("x")
    res = run("mount", src, mnt_dir, "--cache", cache)
    try:
        assert res.returncode == 0, res.stderr
        assert is_mounted(mnt_dir)
        assert os.stat(cache).st_mode & 0o777 == 0o700
        assert os.listdir(mnt_dir) == ["x"]
        st = run("stats", mnt_dir)
        assert st.returncode == 0 and src in st.stdout
        pid = int(run("stats", mnt_dir, "--json").stdout.split('"pid": ')[1].split(",")[0])
    finally:
        res = run("umount", mnt_dir)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mnt_dir)
    assert not running(pid)  # umount waited for the daemon
    res = run("umount", mnt_dir)
    assert res.returncode == 2 and "not mounted" in res.stderr
    res = run("stats", mnt_dir)
    assert res.returncode == 1 and "not a tierfs mount" in res.stderr
    # The daemon has no terminal: what went wrong is only in its log in the cache dir.
    assert_clean_log(os.path.join(cache, "tierfs.log"))
    assert "unmounted" in open(os.path.join(cache, "tierfs.log")).read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(src: str, mnt_dir: str, tmp_path: Any, sig: int) -> None:
    log = os.path.join(tmp_path, "log")
    errfile = os.path.join(tmp_path, "stderr")
    with open(errfile, "wb") as err:  # a file, not a pipe that nobody reads
        proc = subprocess.Popen(tierfs_cmd("mount", "-f", src, mnt_dir, "--cache",
                                           os.path.join(tmp_path, "c"), "--log", log),
                                stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt_dir):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(mnt_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt_dir):
            subprocess.run(["fusermount3", "-u", "-z", mnt_dir])
    with open(log) as f:
        text = f.read()
    assert "unmounted" in text
    assert_clean_log(log)
    with open(errfile) as f:
        assert bad_lines(f.read()) == []


def test_fstab_helper(src: str, mnt_dir: str, tmp_path: Any) -> None:
    cache = os.path.join(tmp_path, "c")
    code = ("import sys; from fusefs.cli import mount_helper; "
            f"sys.exit(mount_helper([{src!r}, {mnt_dir!r}, '-o', 'rw,cache={cache},nofail']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    try:
        assert res.returncode == 0, res.stderr
        assert is_mounted(mnt_dir)
    finally:
        run("umount", mnt_dir)
    assert not is_mounted(mnt_dir)
    assert_clean_log(os.path.join(cache, "tierfs.log"))


def test_mount_type_fuse_tierfs(src: str, mnt_dir: str, tmp_path: Any) -> None:
    """What `mount -t fuse.tierfs` and an fstab line run: mount.fuse3 calls
    `tierfs SRC MNT -o OPTS` through the shell; a non-empty mount point is warned about."""
    cache = os.path.join(tmp_path, "c")
    with open(os.path.join(src, "a"), "w") as f:
        f.write("from the source")
    with open(os.path.join(mnt_dir, "under"), "w") as f:
        f.write("hidden while mounted")
    bindir = os.path.dirname(sys.executable)  # the venv's bin, where `tierfs` is
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    assert shutil.which("tierfs", path=env["PATH"]), "the venv's tierfs is on PATH"
    res = subprocess.run(["mount.fuse3", src, mnt_dir, "-t", "tierfs", "-o",
                          f"rw,nofail,cache={cache}"], capture_output=True, text=True,
                         timeout=60, env=env)
    try:
        assert res.returncode == 0, res.stderr
        assert "is not empty" in res.stderr
        assert is_mounted(mnt_dir)
        with open(os.path.join(mnt_dir, "a")) as f:
            assert f.read() == "from the source"
    finally:
        run("umount", mnt_dir)
    assert not is_mounted(mnt_dir)
    assert os.listdir(mnt_dir) == ["under"]
    assert_clean_log(os.path.join(cache, "tierfs.log"))


def test_a_cache_directory_is_ours_alone(src: str, mnt_dir: str, tmp_path: Any) -> None:
    """--cache on a directory that is not a tierfs cache is refused, and nothing in it is
    deleted or chmodded; a second mount on a live cache is refused with a clear message."""
    other = os.path.join(tmp_path, "other")
    os.makedirs(os.path.join(other, "data"))
    for name in ("data/1", "data/notes", "photo.jpg"):
        with open(os.path.join(other, name), "w") as f:
            f.write(name)
    os.chmod(other, 0o755)
    res = run("mount", src, mnt_dir, "--cache", other)
    assert res.returncode == 2, res.stderr
    assert "is not a tierfs cache" in res.stderr and "Traceback" not in res.stderr
    assert sorted(os.listdir(other)) == ["data", "photo.jpg"]
    assert sorted(os.listdir(os.path.join(other, "data"))) == ["1", "notes"]
    assert os.stat(other).st_mode & 0o7777 == 0o755
    shared = os.path.join(tmp_path, "shared")  # empty, but anyone may write there
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    res = run("mount", src, mnt_dir, "--cache", shared)
    assert res.returncode == 2 and "can be written by other users" in res.stderr
    assert os.stat(shared).st_mode & 0o7777 == 0o1777 and os.listdir(shared) == []
    assert not is_mounted(mnt_dir)
    # An empty directory of ours is adopted (its mode kept); a second mount on it is refused.
    mine = os.path.join(tmp_path, "mine")
    os.mkdir(mine)
    os.chmod(mine, 0o750)
    res = run("mount", src, mnt_dir, "--cache", mine)
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.isfile(os.path.join(mine, "TIERFS-CACHE"))
        assert os.stat(mine).st_mode & 0o7777 == 0o750
        mnt2 = os.path.join(tmp_path, "m2")
        os.mkdir(mnt2)
        res2 = run("mount", src, mnt2, "--cache", mine)
        assert res2.returncode != 0 and "in use by another tierfs process" in res2.stderr
        assert not is_mounted(mnt2)
    finally:
        run("umount", mnt_dir)
    assert not is_mounted(mnt_dir)
    res = run("fsck", mine)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_cache_of_an_older_tierfs_is_adopted(src: str, mnt_dir: str, tmp_path: Any) -> None:
    """Caches written before the marker existed (catalog.db, data/, lock) keep working."""
    cache = os.path.join(tmp_path, "cache")
    res = run("mount", src, mnt_dir, "--cache", cache)
    assert res.returncode == 0, res.stderr
    run("umount", mnt_dir)
    os.unlink(os.path.join(cache, "TIERFS-CACHE"))
    res = run("mount", src, mnt_dir, "--cache", cache)
    assert res.returncode == 0, res.stderr
    run("umount", mnt_dir)
    assert os.path.isfile(os.path.join(cache, "TIERFS-CACHE"))
