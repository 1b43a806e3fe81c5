"""Real mounts for tests: start `tierfs mount -f` in a subprocess, always unmount.

`Mounted` is a context manager. It starts the daemon with ``python -m
fusefs.cli`` (so it works from a checkout and from an install), waits for the
mount to appear, and on exit unmounts, waits for the daemon, kills it and
aborts its FUSE connection if it hangs, then fails the test if the daemon
logged an error or a traceback that the test did not expect.

The daemon's stderr goes to a file next to its log (``<log>.stderr``), never
to a pipe: a pipe nobody reads loses what Python prints outside the log (an
uncaught exception in a thread, an unraisable exception, a warning) and, once
full, blocks the daemon. Both files are checked, also when the test body
itself failed (then both failures are reported). Daemonized mounts (the CLI
without ``-f``) log to ``<cache>/tierfs.log``: :func:`assert_clean_log`
checks such a file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Iterable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def errno_of(fn: Callable[[], object]) -> int | None:
    """The errno ``fn()`` raised, or None if it returned."""
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def resident_pages(fd: int, length: int) -> int:
    """Pages of the first ``length`` bytes of open file ``fd`` in the kernel's page cache.

    mincore(2) on a shared read-only mapping that is never touched: it reports the file's
    page cache, and mapping it reads nothing.
    """
    ps = mmap.PAGESIZE
    length = max(ps, (length + ps - 1) // ps * ps)
    addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    try:
        vec = (ctypes.c_ubyte * (length // ps))()
        if _libc.mincore(addr, length, vec) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return sum(b & 1 for b in vec)
    finally:
        _libc.munmap(addr, length)


def tierfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusefs.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    # From a checkout the package may not be installed; the repo root is importable
    # only if fusefs.policies resolves, which needs the install. Prefer the install.
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def force_unmount(path: str) -> None:
    """Last resort: abort every FUSE connection of ``path`` and detach it."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        dev = None
    if dev is not None:
        conn = f"/sys/fs/fuse/connections/{os.minor(dev)}/abort"
        if os.path.exists(conn):
            with open(conn, "w") as f:
                f.write("1")
    subprocess.run(["umount", "-l", path], capture_output=True)


BENIGN_RELEASE = r"ERROR pyfuse3: fuse_release\(\): fuse_reply_\* failed with No such file"

_BAD = re.compile(r"\bERROR\b|\bCRITICAL\b|Traceback")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def bad_lines(text: str, allowed: Iterable[str | re.Pattern[str]] = ()) -> list[str]:
    """Lines of a log (or of stderr) that report an error or a traceback not allowed."""
    pats = [re.compile(p) if isinstance(p, str) else p for p in (*allowed, BENIGN_RELEASE)]
    return [line for line in text.splitlines()
            if _BAD.search(line) and not any(p.search(line) for p in pats)]


def assert_clean_log(path: str, allowed: Iterable[str] = ()) -> None:
    """Fail if the log file of a (daemonized) mount holds an unexpected error.

    A missing log file fails too: the daemon always writes one.
    """
    assert os.path.exists(path), f"the daemon wrote no log at {path}"
    text = _read(path)
    bad = bad_lines(text, allowed)
    assert not bad, (f"the daemon logged unexpected errors in {path}:\n" + "\n".join(bad)
                     + "\n--- full log ---\n" + text)


class Mounted:
    """A live tierfs mount for the duration of a ``with`` block."""

    def __init__(self, source: str, mountpoint: str, *, cache: str, log: str,
                 config: str | None = None, options: Iterable[str] = (),
                 extra: Iterable[str] = (), allowed_errors: Iterable[str] = ()) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.cache = cache
        self.log = log
        self.config = config
        self.options = list(options)
        self.extra = list(extra)
        # pyfuse3 logs at ERROR when the kernel no longer waits for a reply;
        # for release (no result to deliver) that loses nothing.
        self.allowed = [re.compile(p) for p in (*allowed_errors, BENIGN_RELEASE)]
        self.stderr_path = log + ".stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def allow_error(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def __enter__(self) -> Mounted:
        os.makedirs(self.mountpoint, exist_ok=True)
        args = ["mount", "-f", self.source, self.mountpoint, "--cache", self.cache,
                "--log", self.log]
        if self.config:
            args += ["--config", self.config]
        for o in self.options:
            args += ["-o", o]
        args += self.extra
        # Appended to, so a remount of the same log keeps the first daemon's output.
        with open(self.stderr_path, "ab") as err_file:
            self.proc = subprocess.Popen(tierfs_cmd(*args), env=env(), stdout=subprocess.DEVNULL,
                                         stderr=err_file)
        deadline = time.monotonic() + 120  # a loaded 2-core machine starts Python slowly
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tierfs exited with {self.proc.returncode}: "
                                   f"{self.read_stderr()}{self.read_log()}")
            if time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"mount did not appear: {self.read_log()}")
            time.sleep(0.02)
        # The control socket comes up just before the kernel mount is visible.
        return self

    def read_log(self) -> str:
        return _read(self.log)

    def read_stderr(self) -> str:
        return _read(self.stderr_path)

    def _stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                force_unmount(self.mountpoint)
                proc.kill()
                proc.wait(timeout=10)
        if is_mounted(self.mountpoint):
            force_unmount(self.mountpoint)
        self.proc = None

    def unmount(self) -> None:
        """Unmount now (a test that wants to remount calls this)."""
        self._stop()

    def errors(self) -> list[str]:
        """Unexpected error and traceback lines of the log, then of the daemon's stderr.

        Only appended to while the daemon runs, so ``errors()[n:]`` are the new ones.
        """
        return (bad_lines(self.read_log(), self.allowed)
                + ["stderr: " + line for line in bad_lines(self.read_stderr(), self.allowed)])

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._stop()
        bad = self.errors()
        if bad:
            # Raised from the body's exception (if any): pytest reports both.
            raise AssertionError("the daemon logged unexpected errors:\n" + "\n".join(bad)
                                 + "\n--- full log ---\n" + self.read_log()
                                 + "\n--- stderr ---\n" + self.read_stderr()) from exc


def cleanup_stale(prefix: str) -> None:
    """Unmount anything left mounted below ``prefix`` (a previous crashed run)."""
    with open("/proc/self/mounts") as f:
        stale = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for path in stale:
        force_unmount(path)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


__all__ = ["Mounted", "assert_clean_log", "bad_lines", "cleanup_stale", "force_unmount", "have", "is_mounted", "tierfs_cmd"]
