"""Commands that agree, and the conventions of a mounted filesystem, on real mounts.

`tierfs warm|evict|pin|unpin` print one line per path in one style (``COMMAND: PATH:
N files, SIZE ...``, sizes from `format_size`); warm refuses what a ``cache = false``
rule keeps out of the caches, reports only what the fast tier holds, copies many files
at once and shows progress on a terminal; evict keeps pinned files unless ``--unpin``.
Then the conventions: `mount -t fuse.tierfs` through the real mount(8) and mount.fuse3,
an fstab line through ``mount -T``, the argument form of /sbin/mount.fuse.tierfs, the
systemd unit in examples/, man pages installed by a real ``pip install``, and --help.
"""

from __future__ import annotations

import configparser
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mounting import REPO, Mounted, assert_clean_log, force_unmount, is_mounted, tierfs_cmd
from s3mounts import config as s3_config
from s3server import S3Server

from fusefs.cli import build_parser
from fusefs.control import call
from fusefs.manpages import PAGES

KiB = 1024
LINE = re.compile(r"^(warm|evict|pin|unpin): (\S+): (\d+) files?, (\d+(?:\.\d)?(?:B|KiB|MiB|GiB)) ")


def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tierfs_cmd(*args), capture_output=True, text=True, timeout=600, **kw)


def tree(root: str, dirs: dict[str, int], size: int = 4 * KiB) -> dict[str, bytes]:
    out = {}
    for d, n in dirs.items():
        os.makedirs(os.path.join(root, d), exist_ok=True)
        for i in range(n):
            data = os.urandom(size)
            with open(os.path.join(root, d, f"f{i:04d}"), "wb") as f:
                f.write(data)
            out[f"{d}/f{i:04d}"] = data
    return out


def fast(mnt: str) -> dict[str, Any]:
    return call(mnt, "stats")["stats"]["fast"]


# -- warm ------------------------------------------------------------------------------
def test_warm_refuses_what_a_rule_keeps_out_of_the_caches(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    tree(src, {"data": 5, "logs": 3})
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[rule]]\npath = "logs/**"\ncache = false\n')
    with make_mount(src, config=str(cfg)) as m:
        res = run("warm", m.mountpoint)
        assert res.returncode == 0, res.stderr  # some of it could be warmed
        assert res.stdout == f"warm: {m.mountpoint}: 5 files, 20KiB cached, 20KiB copied now\n"
        assert res.stderr == (f"tierfs: warm: {m.mountpoint}: 3 files (12KiB) not warmed: "
                              f"rule 'logs/**' says cache = false\n")
        assert call(m.mountpoint, "cached", path="logs")["bytes"] == 0
        assert call(m.mountpoint, "cached", path="data")["bytes"] == 20 * KiB
        # Nothing under the path may be cached: nothing warmed, and a failure.
        res = run("warm", f"{m.mountpoint}/logs", f"{m.mountpoint}/logs/f0001")
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stdout.splitlines() == [f"warm: {m.mountpoint}/logs: 0 files, 0B cached, "
                                           f"0B copied now",
                                           f"warm: {m.mountpoint}/logs/f0001: 0 files, 0B "
                                           f"cached, 0B copied now"]
        assert "1 file (4KiB) not warmed: rule 'logs/**' says cache = false" in res.stderr
        assert call(m.mountpoint, "cached", path="logs")["bytes"] == 0
        # pin goes through the same copy: it refuses the same files.
        res = run("pin", m.mountpoint)
        assert res.returncode == 0, res.stderr
        assert res.stderr == (f"tierfs: pin: {m.mountpoint}: 3 files (12KiB) not pinned: "
                              f"rule 'logs/**' says cache = false\n")
        assert call(m.mountpoint, "cached", path="logs")["bytes"] == 0


def test_many_small_files_are_copied_in_parallel_local_and_s3(
        src: str, make_mount: Callable[..., Mounted], s3: S3Server, tmp_path: Path) -> None:
    files = tree(src, {f"d{i}": 60 for i in range(5)})
    tree(str(s3.bucket_dir), {f"d{i}": 60 for i in range(5)})
    cfg = s3_config(tmp_path, s3, source={"dir_markers": False})
    with make_mount(src) as local, Mounted(s3.uri(), str(tmp_path / "ms"),
                                           cache=str(tmp_path / "cs"),
                                           log=str(tmp_path / "ls"), config=cfg) as remote:
        for m in (local, remote):
            res = call(m.mountpoint, "warm", path="", timeout=600)
            assert res["files"] == 300 and res["kept"] == res["total"] == 300 * 4 * KiB, res
            # More than one file in flight at once: the copies overlap.
            assert res["parallel_peak"] > 1, res
            assert call(m.mountpoint, "cached", path="")["bytes"] == 300 * 4 * KiB
            before = call(m.mountpoint, "stats")["stats"]["counters"]
            for rel in list(files)[::37]:
                with open(os.path.join(m.mountpoint, rel), "rb") as f:
                    f.read()
            after = call(m.mountpoint, "stats")["stats"]["counters"]
            cap = [k for k in after if k.startswith("read.bytes.capacity")]
            assert sum(after[k] - before.get(k, 0) for k in cap) == 0, "all from the caches"
            # A second warm copies nothing and still reports what is cached.
            res = run("warm", "-q", m.mountpoint)
            assert res.stdout == (f"warm: {m.mountpoint}: 300 files, 1200KiB cached, "
                                  f"0B copied now\n"), res.stdout + res.stderr


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with stderr on a pseudo-terminal; (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_warm_shows_progress_on_a_terminal_only(
        src: str, make_mount: Callable[..., Mounted]) -> None:
    tree(src, {"a": 40, "b": 40})
    with make_mount(src) as m:
        code, term = _on_a_terminal(tierfs_cmd("warm", f"{m.mountpoint}/a"))
        assert code == 0
        assert f"warm: {m.mountpoint}/a: 40/40 files, 160KiB of 160KiB (100.0%)" in term, term
        code, term = _on_a_terminal(tierfs_cmd("warm", "-q", f"{m.mountpoint}/b"))
        assert code == 0 and term == "", term
        res = run("warm", f"{m.mountpoint}/b")  # not a terminal: no progress
        assert res.stderr == "" and res.stdout.startswith(f"warm: {m.mountpoint}/b: 40 files")


# -- evict, pin, unpin ------------------------------------------------------------------
def test_evict_keeps_pins_unless_unpin_and_every_command_speaks_alike(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    tree(src, {"idx": 4, "docs": 6}, size=8 * KiB)
    cache = str(tmp_path / "cache")
    with make_mount(src, cache=cache) as m:
        mnt = m.mountpoint
        lines = []
        for args in (("pin", f"{mnt}/idx"), ("warm", f"{mnt}/docs"), ("evict", mnt)):
            res = run(*args)
            assert res.returncode == 0, res.stderr
            lines.append(res.stdout.strip())
        assert lines[0] == f"pin: {mnt}/idx: 4 files, 32KiB cached and pinned, 32KiB copied now"
        assert lines[1] == f"warm: {mnt}/docs: 6 files, 48KiB cached, 48KiB copied now"
        assert lines[2] == (f"evict: {mnt}: 6 files, 48KiB dropped; 4 files kept, 32KiB "
                            f"pinned (tierfs pin idx): 'tierfs evict --unpin' drops them too")
        assert fast(mnt)["pinned_bytes"] == 32 * KiB
        assert call(mnt, "cached", path="idx")["bytes"] == 32 * KiB
        assert call(mnt, "cached", path="docs")["bytes"] == 0
    # --unpin, and unpin, on a new cache.
    with make_mount(src, cache=str(tmp_path / "cache2")) as m:
        mnt = m.mountpoint
        assert run("pin", f"{mnt}/idx").returncode == 0
        res = run("evict", f"{mnt}/idx")
        assert res.stdout.startswith(f"evict: {mnt}/idx: 0 files, 0B dropped; 4 files kept")
        res = run("evict", "--unpin", f"{mnt}/idx")
        assert res.returncode == 0, res.stderr
        assert res.stdout == (f"evict: {mnt}/idx: 4 files, 32KiB dropped, 4 files unpinned "
                              f"first\n")
        assert fast(mnt)["pinned_bytes"] == 0
        assert call(mnt, "cached", path="idx")["bytes"] == 0
        assert run("pin", f"{mnt}/idx").returncode == 0
        res = run("unpin", f"{mnt}/idx")
        assert res.stdout == (f"unpin: {mnt}/idx: 4 files, 32KiB unpinned (still cached, "
                              f"now evictable)\n")
        for line in (*lines, res.stdout):
            assert LINE.match(line), line
    with make_mount(src, cache=str(tmp_path / "cache3")) as m:
        mnt = m.mountpoint
        # After evict (no --unpin) and a remount, the pin is still there and warmed.
        assert run("pin", f"{mnt}/idx").returncode == 0
        assert run("evict", mnt).returncode == 0
        m.unmount()
        with make_mount(src, cache=str(tmp_path / "cache3"), mountpoint=mnt) as m2:
            deadline = time.monotonic() + 60
            while call(m2.mountpoint, "cached", path="idx")["bytes"] < 32 * KiB:
                assert time.monotonic() < deadline, "the pin was not warmed at mount"
                time.sleep(0.1)
            assert fast(m2.mountpoint)["pinned_bytes"] == 32 * KiB


def test_evict_of_a_rule_pinned_path_says_the_rule_holds_it(
        src: str, make_mount: Callable[..., Mounted], tmp_path: Path) -> None:
    tree(src, {"index": 2})
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[rule]]\npath = "index/**"\npin = true\n')
    with make_mount(src, config=str(cfg)) as m:
        deadline = time.monotonic() + 60
        while call(m.mountpoint, "cached", path="index")["bytes"] < 8 * KiB:
            assert time.monotonic() < deadline, "the pinned rule was not warmed at mount"
            time.sleep(0.1)
        res = run("evict", "--unpin", f"{m.mountpoint}/index")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().endswith(
            "2 files kept, 8KiB pinned (rule 'index/**'): change the rule to let them go")
        assert call(m.mountpoint, "cached", path="index")["bytes"] == 8 * KiB


# -- mount(8), fstab, mount.fuse.tierfs, systemd ---------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) of a FUSE type needs root")


def _mount_env() -> dict[str, str]:
    """A plain root environment: mount(8) gives its helpers a standard PATH anyway (which
    is why `tierfs` must be installed where that PATH looks)."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _link(path: str, target: str, made: list[str]) -> None:
    """Link ``path`` to ``target`` as `make install` does, unless another tierfs is
    installed there (then skip: a test must not replace it)."""
    if os.path.lexists(path):
        if os.path.realpath(path) != os.path.realpath(target):
            pytest.skip(f"{path} belongs to another tierfs install")
        return
    os.symlink(target, path)
    made.append(path)


@pytest.fixture
def installed() -> Any:
    """This environment's `tierfs` and `mount.tierfs` where mount(8) looks, as `make
    install` puts them (/usr/local/bin/tierfs, /sbin/mount.fuse.tierfs); removed after.
    Yields a function that installs one of the two."""
    bindir = os.path.dirname(sys.executable)
    made: list[str] = []
    links = {"tierfs": ("/usr/local/bin/tierfs", os.path.join(bindir, "tierfs")),
             "helper": ("/sbin/mount.fuse.tierfs", os.path.join(bindir, "mount.tierfs"))}
    for _, target in links.values():
        if not os.path.exists(target):
            pytest.skip(f"{target} is not installed")

    def install(which: str) -> None:
        _link(*links[which], made)

    try:
        yield install
    finally:
        for path in made:
            os.unlink(path)


def _umount(mnt: str) -> None:
    if is_mounted(mnt):
        subprocess.run(["umount", mnt], capture_output=True, timeout=120)
    if is_mounted(mnt):
        force_unmount(mnt)


def _wait_daemon_gone(cache: str) -> None:
    """The daemon holds the cache lock until it exits; wait for the unmount to finish it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        res = subprocess.run(["fuser", "-s", cache], capture_output=True)
        if res.returncode != 0:
            return
        time.sleep(0.1)


@needs_root
@pytest.mark.skipif(shutil.which("mount.fuse3") is None and not os.path.exists("/sbin/mount.fuse"),
                    reason="fuse3's mount helper is not installed")
def test_mount_t_fuse_tierfs_and_an_fstab_line_through_mount8(
        src: str, tmp_path: Path, installed: Callable[[str], None]) -> None:
    """mount(8) runs mount.fuse3, which runs `tierfs SRC MNT -o OPTS` with /bin/sh and
    a standard PATH (tierfs in /usr/local/bin); with /sbin/mount.fuse.tierfs it runs that
    instead. Both for real, the second from an fstab file (mount -T)."""
    installed("tierfs")
    with open(os.path.join(src, "a"), "w") as f:
        f.write("from the source")
    mnt = tmp_path / "m"
    mnt.mkdir()
    (mnt / "under").write_text("hidden while mounted")
    cache = str(tmp_path / "c")
    res = subprocess.run(["mount", "-t", "fuse.tierfs", src, str(mnt), "-o",
                          f"cache={cache},nofail,_netdev,x-systemd.device-timeout=10s"],
                         capture_output=True, text=True, timeout=120, env=_mount_env())
    try:
        assert res.returncode == 0, res.stderr
        assert f"tierfs: warning: mount point {mnt} is not empty" in res.stderr
        assert is_mounted(str(mnt))
        assert (mnt / "a").read_text() == "from the source"
    finally:
        _umount(str(mnt))
    _wait_daemon_gone(cache)
    log = os.path.join(cache, "tierfs.log")
    text = Path(log).read_text()
    assert re.search(rf"WARNING fusefs: mount point {mnt} is not empty", text), text
    assert_clean_log(log)
    assert os.listdir(mnt) == ["under"]
    # The same through a fstab file: mount -T FILE MOUNTPOINT.
    cache2 = str(tmp_path / "c2")
    fstab = tmp_path / "fstab"
    installed("helper")
    fstab.write_text(f"# tierfs test\n{src}  {mnt}  fuse.tierfs  "
                     f"defaults,cache={cache2},nofail  0  0\n")
    res = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True,
                         text=True, timeout=120, env=_mount_env())
    try:
        assert res.returncode == 0, res.stderr
        assert (mnt / "a").read_text() == "from the source"
        # tierfs's own commands work on it.
        out = run("warm", str(mnt / "a"))
        assert out.stdout == f"warm: {mnt}/a: 1 file, 15B cached, 15B copied now\n"
    finally:
        _umount(str(mnt))
    _wait_daemon_gone(cache2)
    assert_clean_log(os.path.join(cache2, "tierfs.log"))


@needs_root
def test_mount_fuse_tierfs_helper_form(src: str, tmp_path: Path) -> None:
    """/sbin/mount.fuse.tierfs (a link to mount.tierfs) gets `SRC MNT -o OPTS -t fuse.tierfs`
    from mount(8); run the installed `mount.tierfs` script with exactly that."""
    helper = os.path.join(os.path.dirname(sys.executable), "mount.tierfs")
    if not os.path.exists(helper):
        pytest.skip("mount.tierfs is not installed in this environment")
    (Path(src) / "a").write_text("x")
    mnt = tmp_path / "m"
    mnt.mkdir()
    cache = str(tmp_path / "c")
    res = subprocess.run([helper, src, str(mnt), "-o", f"rw,cache={cache},nofail", "-t",
                          "fuse.tierfs"], capture_output=True, text=True, timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        assert (mnt / "a").read_text() == "x"
    finally:
        _umount(str(mnt))
    _wait_daemon_gone(cache)
    assert_clean_log(os.path.join(cache, "tierfs.log"))


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(os.path.join(REPO, "examples", "systemd", "mnt-data.mount"))
    return unit


def _man_tree(tmp_path: Path) -> str:
    """The repository's man pages laid out as man(1) wants them (man1/, man5/, man8/)."""
    root = tmp_path / "man"
    for name in PAGES:
        section = root / f"man{name.rsplit('.', 1)[1]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(REPO, "man", name), section / name)
    return str(root)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_example_is_valid(tmp_path: Path) -> None:
    env = dict(os.environ, MANPATH=_man_tree(tmp_path))
    res = subprocess.run(["systemd-analyze", "verify",
                          os.path.join(REPO, "examples", "systemd", "mnt-data.mount")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    unit = _unit()
    assert unit["Mount"]["Type"] == "fuse.tierfs"
    assert unit["Mount"]["Where"] == "/mnt/data"  # matches the file name, as systemd wants
    page = Path(REPO, "man", "mount.tierfs.8").read_text()
    assert "mnt\\-data.mount" in page and "Type=fuse.tierfs" in page


@needs_root
def test_systemd_unit_example_mounts_as_systemd_would(
        src: str, tmp_path: Path, installed: Callable[[str], None]) -> None:
    """systemd runs `mount What Where -t Type -o Options` for a .mount unit at boot and
    umount(8) at shutdown: do both with the example's options (paths made local)."""
    installed("tierfs")
    (Path(src) / "a").write_text("unit")
    m = _unit()["Mount"]
    cache, cfg = str(tmp_path / "cache"), tmp_path / "tierfs.toml"
    cfg.write_text("[cache]\nsize = \"64MiB\"\n")
    opts = m["Options"].replace("/var/cache/tierfs/data", cache).replace(
        "/etc/tierfs/tierfs.toml", str(cfg))
    assert opts != m["Options"] and "/var/" not in opts and "/etc/" not in opts
    mnt = tmp_path / "data"
    mnt.mkdir()
    res = subprocess.run(["mount", src, str(mnt), "-t", m["Type"], "-o", opts],
                         capture_output=True, text=True, timeout=120, env=_mount_env())
    try:
        assert res.returncode == 0, res.stderr
        assert (mnt / "a").read_text() == "unit"
    finally:
        _umount(str(mnt))
    _wait_daemon_gone(cache)
    text = Path(cache, "tierfs.log").read_text()
    assert "unmounted" in text  # the daemon finished its shutdown work
    assert_clean_log(os.path.join(cache, "tierfs.log"))


# -- man pages, --help, make ------------------------------------------------------------------
def test_man_pages_have_examples_and_describe_every_positional_argument() -> None:
    for name, fn in PAGES.items():
        assert ".SH EXAMPLES" in fn(), name
    page = PAGES["tierfs.1"]()
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        cmd, sub = action
        for a in sub._actions:
            if not a.option_strings and a.dest != "help":
                assert a.help, f"tierfs {cmd} {a.metavar or a.dest}: no description"
                assert a.help.replace("-", "\\-").replace("'", "\\(aq")[:40] in page, (cmd, a.dest)
    assert "mount.tierfs(8)" in PAGES["tierfs.toml.5"]()


def test_stats_and_umount_help_say_what_they_do() -> None:
    for cmd, words in (("stats", "bytes served by tier"), ("umount", "uploads the writes")):
        res = run(cmd, "--help")
        assert res.returncode == 0
        body = res.stdout.split("positional arguments")[0]
        assert words in " ".join(body.split()), res.stdout
        assert "where the tierfs mount is" in res.stdout


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_pip_install_puts_the_man_pages_where_man_finds_them(tmp_path: Path) -> None:
    """A real `pip install` of the checkout into a prefix: man tierfs, man tierfs.toml and
    man mount.tierfs find the installed pages (man(1) maps PREFIX/bin on PATH to
    PREFIX/share/man), and each renders with its EXAMPLES."""
    prefix = tmp_path / "prefix"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                          "--no-build-isolation", "--prefix", str(prefix), REPO],
                         capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(os.environ, PATH=f"{prefix}/bin:/usr/bin:/bin", MANWIDTH="80")
    env.pop("MANPATH", None)
    for topic, section in (("tierfs", "1"), ("tierfs.toml", "5"), ("mount.tierfs", "8")):
        where = subprocess.run(["man", "-w", topic], capture_output=True, text=True,
                               env=env, timeout=60)
        assert where.stdout.strip() == f"{prefix}/share/man/man{section}/{topic}.{section}", \
            where.stdout + where.stderr
        text = subprocess.run(["man", "-P", "cat", topic], capture_output=True, text=True,
                              env=env, timeout=60).stdout
        assert "EXAMPLES" in text, topic


def test_make_and_ci_wait_for_the_apt_lock() -> None:
    for rel in ("Makefile", ".ci/run"):
        text = Path(REPO, rel).read_text()
        calls = re.findall(r"apt-get\b[^\n;&|]*", text)
        for c in calls:
            if "apt-get" in c and any(w in c for w in ("install", "update")):
                assert "DPkg::Lock::Timeout=" in c, (rel, c)
    assert re.findall(r"apt-get -o DPkg::Lock::Timeout=\d+ (?:update|install)",
                      Path(REPO, "Makefile").read_text())


def test_the_toml_example_of_the_man_page_is_a_valid_config(tmp_path: Path) -> None:
    from fusefs.config import load_config
    from fusefs.manpages import _TOML_EXAMPLE

    path = tmp_path / "corpus.toml"
    path.write_text(_TOML_EXAMPLE)
    path.chmod(0o600)
    cfg = load_config(str(path))
    assert cfg.rule_for("index/ivf.faiss").pin and not cfg.rule_for("logs/a").cache
