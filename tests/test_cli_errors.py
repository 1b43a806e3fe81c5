"""Every bad input is one line on stderr and a documented exit code, never a traceback.

Real `tierfs` subprocesses against real mounts: a read-only cache directory,
impossible config values, `tierfs warm` on what cannot be warmed (and on a fast
tier too small for what it is given), a mount whose daemon was killed, spool
directories, and every subcommand (taken from the argparse parser, so a new one
is covered at once) with its output piped to ``head -1`` or to a closed pipe.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mounting import Mounted, force_unmount, is_mounted, tierfs_cmd
from s3mounts import config as s3_config
from s3server import S3Server

from fusefs.cli import build_parser
from fusefs.memory import MemoryDomain

# tierfs(1) EXIT STATUS, fsck's codes (as fsck(8)), 130 (interrupted), 141 (output pipe closed).
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 8, 130, 141}
MiB = 1 << 20


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tierfs_cmd(*args), check=False, capture_output=True, text=True,
                          timeout=120, **kw)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- a cache directory the daemon cannot write ---------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs")
@pytest.mark.parametrize("dir_mode", ["0700", "1777"])
def test_read_only_cache_dir_says_why(src: str, tmp_path: Path, dir_mode: str) -> None:
    ro, mnt = tmp_path / "ro", tmp_path / "m"
    ro.mkdir()
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"ro,size=1m,mode={dir_mode}", "tmpfs",
                    str(ro)], check=True)
    try:
        res = run("mount", src, str(mnt), "--cache", str(ro))
        assert res.returncode == 2
        if dir_mode == "1777":  # refused before it is even tried: others may write there
            assert one_line_error(res).startswith(f"tierfs: cache directory {ro} can be "
                                                  f"written by other users (mode 1777)")
        else:
            assert one_line_error(res) == f"tierfs: cache directory {ro}: Read-only file system"
        # A log file the daemon could not write is reported on the terminal too.
        res = run("mount", src, str(mnt), "--cache", str(tmp_path / "c"), "--log",
                  str(ro / "tierfs.log"))
        assert res.returncode == 2
        assert "Read-only file system" in one_line_error(res)
        assert "exited before mounting" not in res.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert not is_mounted(str(mnt))


# -- config values that used to be accepted, or to fail as "daemon failed" ----------
@pytest.mark.parametrize("text, where", [
    ('[[rule]]\npath = "["\n', "2: rule[0].path: not a valid glob: unclosed '['"),
    ("[cache]\nsize = 0\n", "2: cache.size: must be at least chunk_size"),
    ('[[rule]]\npath = "a/**"\npin = true\ncache = false\n', "3: rule[0].pin: a pinned rule"),
    ("[policy]\nsequential_cutoff = 0\n", "2: policy.sequential_cutoff: must be positive"),
    ('[cache]\ndram = "1PiB"\n', "2: cache.dram: 1PiB is more than the memory"),
])
def test_impossible_config_values_exit_3(src: str, tmp_path: Path, text: str, where: str) -> None:
    if "1PiB" in text and MemoryDomain().bytes() >= 1 << 50:
        pytest.skip("this machine has a petabyte of memory")
    cfg = write(tmp_path / "t.toml", text)
    mnt = tmp_path / "m"
    mnt.mkdir()
    res = run("mount", src, str(mnt), "--cache", str(tmp_path / "c"), "--config", cfg)
    assert res.returncode == 3, res.stderr
    assert one_line_error(res).startswith(f"tierfs: {cfg}:{where}")
    assert not is_mounted(str(mnt))


def test_unwritable_trace_file_is_a_one_line_error(src: str, tmp_path: Path) -> None:
    cfg = write(tmp_path / "t.toml", f'[stats]\ntrace = "{tmp_path}/no/such/dir/t.parquet"\n')
    mnt = tmp_path / "m"
    mnt.mkdir()
    res = run("mount", src, str(mnt), "--cache", str(tmp_path / "c"), "--config", cfg)
    assert res.returncode == 2, res.stderr
    assert one_line_error(res) == (f"tierfs: trace file {tmp_path}/no/such/dir/t.parquet: "
                                   f"No such file or directory")


def test_glob_sets_match_one_character() -> None:
    from fusefs.config import parse_config

    cfg = parse_config('[[rule]]\npath = "d/[ab]*.bin"\npin = true\n'
                       '[[rule]]\npath = "[!d]*"\ncache = false\n')
    assert cfg.rule_for("d/a1.bin") is cfg.rules[0]
    assert cfg.rule_for("d/c1.bin") is None
    assert cfg.rule_for("x") is cfg.rules[1] and cfg.rule_for("d") is None


# -- tierfs warm -----------------------------------------------------------------
def test_warm_says_what_the_fast_tier_kept(src: str, make_mount: Callable[..., Mounted],
                                           tmp_path: Path) -> None:
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(os.urandom(16 * MiB))
    os.mkdir(os.path.join(src, "d"))
    with open(os.path.join(src, "d", "small"), "wb") as f:
        f.write(b"s" * 1000)
    cfg = write(tmp_path / "t.toml", '[cache]\nsize = "4MiB"\n')
    with make_mount(src, config=cfg) as m:
        res = run("warm", f"{m.mountpoint}/big")
        assert res.returncode == 0, res.stderr
        line = res.stdout.strip()
        # 16 MiB went through a 4 MiB tier: it cannot have kept them.
        assert "cached (of 16MiB: the fast tier is too small to keep them all)" in line, line
        kept = line.split(": 1 file, ")[1].split(" cached")[0]
        assert kept != "16MiB" and kept.endswith("MiB") and float(kept[:-3]) <= 4, line
        res = run("warm", f"{m.mountpoint}/d")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"warm: {m.mountpoint}/d: 1 file, 1000B cached, 1000B copied now\n"
        res = run("warm", f"{m.mountpoint}/nope")
        assert res.returncode == 2
        assert one_line_error(res) == f"tierfs: {m.mountpoint}/nope: no such file or directory"
        # A file gone from the source (the kernel still knows the name): a plain reason.
        os.unlink(os.path.join(src, "d", "small"))
        from fusefs.control import ControlError, call

        with pytest.raises(ControlError, match=r"No such file or directory$") as info:
            call(m.mountpoint, "warm", path="d/small")
        assert info.value.errno == errno.ENOENT


def test_warm_skips_objects_gone_behind_the_mount(s3: S3Server, tmp_path: Path) -> None:
    for rel in ("d1/a", "d1/b", "d2/c"):
        (s3.bucket_dir / rel).parent.mkdir(exist_ok=True)
        (s3.bucket_dir / rel).write_bytes(b"x" * 1000)
    cfg = s3_config(tmp_path, s3, source={"dir_markers": False, "list_ttl": "1h",
                                         "stat_ttl": "1h"})
    with Mounted(s3.uri() + "&request_timeout=60", str(tmp_path / "m"),
                 cache=str(tmp_path / "c"), log=str(tmp_path / "log"), config=cfg) as m:
        # Listed, so the mount knows them; then gone behind its back.
        assert sorted(os.listdir(f"{m.mountpoint}/d1")) == ["a", "b"]
        assert os.listdir(f"{m.mountpoint}/d2") == ["c"]
        (s3.bucket_dir / "d1" / "a").unlink()
        (s3.bucket_dir / "d2" / "c").unlink()
        res = run("warm", f"{m.mountpoint}/d1")
        assert res.returncode == 0, res.stderr
        assert f"warm: {m.mountpoint}/d1: 1 file, 1000B cached" in res.stdout
        assert "; 1 vanished while warming" in res.stdout
        res = run("warm", f"{m.mountpoint}/d2/c")
        assert res.returncode == 2
        assert one_line_error(res) == (f"tierfs: {m.mountpoint}/d2/c: no such file in the "
                                       f"source (removed since the mount listed it)")


def test_commands_on_a_mount_whose_daemon_died(src: str, tmp_path: Path) -> None:
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"x")
    mnt = tmp_path / "m"
    mnt.mkdir()
    res = run("mount", src, str(mnt), "--cache", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    try:
        pid = json.loads(run("stats", str(mnt), "--json").stdout)["mount"]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for args in (("warm", f"{mnt}/f"), ("evict", str(mnt)), ("stats", str(mnt))):
            res = run(*args)
            assert res.returncode == 1, (args, res.stderr)
            msg = one_line_error(res)
            assert "daemon" in msg or "not a tierfs mount" in msg, msg
        # umount still sees (and removes) the dead mount.
        res = run("umount", str(mnt))
        assert res.returncode == 0, res.stderr
        assert not is_mounted(str(mnt))
    finally:
        if is_mounted(str(mnt)):
            force_unmount(str(mnt))


# -- spool directories -----------------------------------------------------------
def test_no_spool_directories_left_behind(tmp_path: Path) -> None:
    from s3server import S3Server

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with S3Server(tmp_path / "s3") as s3:
        cfg = write(tmp_path / "t.toml",
                    f'[source]\ndir_markers = false\naccess_key = "{s3.access_key}"\n'
                    f'secret_key = "{s3.secret_key}"\n')
        mnt, cache = tmp_path / "m", tmp_path / "c"
        mnt.mkdir()
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        for kill in (True, False):
            res = run("mount", s3.uri() + "&request_timeout=60", str(mnt), "--cache",
                      str(cache), "--config", cfg, env=env)
            assert res.returncode == 0, res.stderr
            try:
                with open(mnt / f"w{kill}", "wb") as f:  # a writer: it has a spool file
                    f.write(b"data")
                    f.flush()
                    pid = json.loads(run("stats", str(mnt), "--json").stdout)["mount"]["pid"]
                    if kill:
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                assert kill  # the close after the kill fails
            if kill:
                force_unmount(str(mnt))
            else:
                assert run("umount", str(mnt)).returncode == 0
            assert list(tmpdir.iterdir()) == []  # never in $TMPDIR: beside the cache
        assert not (cache / "spool").exists()  # the killed daemon's is gone too


# -- every subcommand, its output piped to head -1 or to a closed pipe ------------------
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def arguments(sub: argparse.ArgumentParser, values: dict[str, str]) -> list[str]:
    """Arguments for a subcommand: each positional from ``values`` by its dest, plus the
    required options (with a plausible value)."""
    args: list[str] = []
    for action in sub._actions:
        if action.option_strings:
            if action.required:
                args += [action.option_strings[-1], values.get(action.dest, "1MiB")]
            continue
        args.append(values.get(action.dest, values["default"]))
    return args


def piped(args: list[str], tmp_path: Path, *, closed: bool) -> tuple[int, str]:
    """Run tierfs with stdout into ``head -1`` (or into a pipe nobody reads: closed at once)."""
    err = tmp_path / "stderr"
    with open(err, "w") as e:
        if closed:
            r, w = os.pipe()
            os.close(r)
            try:
                rc = subprocess.run(tierfs_cmd(*args), check=False, stdout=w, stderr=e,
                                    timeout=120).returncode
            finally:
                os.close(w)
        else:
            head = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL)
            rc = subprocess.run(tierfs_cmd(*args), check=False, stdout=head.stdin, stderr=e,
                                timeout=120).returncode
            assert head.stdin is not None
            head.stdin.close()
            head.wait(timeout=30)
    return rc, err.read_text()


def test_every_subcommand_piped_never_a_traceback(src: str, make_mount: Callable[..., Mounted],
                                                  tmp_path: Path) -> None:
    import pyarrow as pa

    from fusefs.trace import SCHEMA, write_trace

    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"x" * 100_000)
    trace = tmp_path / "t.parquet"
    write_trace(pa.table({"time": [0.0, 1.0], "pid": [1, 1], "file": ["f", "f"],
                          "file_id": [1, 1], "offset": [0, 4096], "size": [4096, 4096],
                          "op": ["read", "read"], "label": ["random", "random"]})
                .cast(SCHEMA), trace)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_text("x")
    subs = subcommands()
    assert {"mount", "umount", "warm", "stats", "replay", "fsck"} <= set(subs)
    order = sorted(subs, key=lambda n: n == "umount")  # umount last: it ends the live mount
    seen: list[tuple[str, str, int]] = []

    def check(case: str, name: str, args: list[str]) -> None:
        # Bad arguments print nothing to stdout: one pipe is enough for them.
        for closed in (False,) if case == "bad args" else (False, True):
            rc, err = piped(args, tmp_path, closed=closed)
            seen.append((case, name, rc))
            assert "Traceback" not in err, (case, args, err)
            assert rc in DOCUMENTED, (case, args, rc, err)
            assert len(err.strip().splitlines()) <= 1 or "usage:" in err, (case, args, err)

    with make_mount(src) as m:
        live = {"default": m.mountpoint, "mountpoint": m.mountpoint, "source": src,
                "paths": f"{m.mountpoint}/f", "target": m.mountpoint, "trace": str(trace),
                "file": str(tmp_path / "snap.parquet"), "output": str(tmp_path / "report")}
        for name in order:
            check("live", name, [name, *arguments(subs[name], live)])
        check("live", "--help", ["--help"])
        check("live", "--version", ["--version"])
    absent = {"default": str(plain), "mountpoint": str(plain), "source": str(tmp_path / "no"),
              "paths": str(plain / "f"), "target": str(plain), "trace": str(plain / "f"),
              "file": str(plain / "snap"), "output": str(tmp_path / "report-none")}
    for name in order:
        check("no mount", name, [name, *arguments(subs[name], absent)])
        check("bad args", name, [name])
        check("bad args", name, [name, "--no-such-option", "x"])
    # The live stats and replay had something to print: a closed pipe ended them as SIGPIPE would.
    assert ("live", "stats", 141) in seen and ("live", "replay", 141) in seen
