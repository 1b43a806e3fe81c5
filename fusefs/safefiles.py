"""Files tierfs writes for itself, and files of its own it reads back.

Owns the rules for tierfs's own files (logs, listing snapshots, traces, the
spool): they are created 0600 (directories 0700) by the mounting user, and
never through a name someone else could have prepared: a new file is made
under a random name in the destination directory (`tempfile.mkstemp`:
``O_CREAT | O_EXCL | O_NOFOLLOW``, 0600) and renamed over the destination, so
a symlink planted at the destination is replaced, never followed. Files read
back (listing snapshots, traces) are trusted only when they belong to the
current user and nobody else may write them (`trusted_path`).

Files the daemon creates in the *source* on behalf of a FUSE request are not
its own: they get the mode the request asked for (`fusefs.tiers.posix`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

__all__ = ["UntrustedFile", "create_private", "open_private_log", "process_umask",
           "trusted_path", "write_atomic"]


class UntrustedFile(OSError):
    """A file tierfs would read back is not safely the user's own."""


def _tmp_in(path: str) -> tuple[int, str]:
    d, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=d)


def create_private(path: str | os.PathLike[str]) -> int:
    """A new, empty 0600 file at ``path`` (replacing what is there); returns its descriptor.

    Made under a random name beside ``path`` and renamed over it: whatever was at
    ``path`` (a file, a planted symlink) is replaced, not opened.
    """
    path = os.fspath(path)
    fd, tmp = _tmp_in(path)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` whole or not at all: ``write(file)`` fills a private temporary
    file beside it, which is fsynced and renamed into place (and the rename fsynced)."""
    path = os.fspath(path)
    fd, tmp = _tmp_in(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself must survive a crash
    finally:
        os.close(dfd)


def check_trusted(fd: int, path: str, what: str) -> None:
    """Raise `UntrustedFile` unless the open file ``fd`` is a regular file of the
    current user that no one else may write."""
    st = os.fstat(fd)
    euid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(errno.EINVAL, f"{what} {path} is not a regular file")
    if st.st_uid != euid:
        raise UntrustedFile(errno.EPERM, f"{what} {path} belongs to uid {st.st_uid}, not to "
                                         f"you (uid {euid}): not trusted")
    if st.st_mode & 0o022:
        raise UntrustedFile(errno.EPERM, f"{what} {path} is writable by others (mode "
                                         f"{stat.S_IMODE(st.st_mode):04o}): not trusted "
                                         f"(chmod go-w it if it is yours)")


@contextlib.contextmanager
def trusted_path(path: str | os.PathLike[str], what: str) -> Iterator[str]:
    """Open ``path`` for reading, check it (`check_trusted`) and yield a path that names
    exactly the file checked (``/proc/self/fd/N``), for libraries that open by name.

    Raises:
        FileNotFoundError: there is no such file.
        UntrustedFile: it is not the user's own, or others may write it.
    """
    path = os.fspath(path)
    # O_NONBLOCK: a FIFO planted at the name must not hang the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        check_trusted(fd, path, what)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def open_private_log(path: str) -> int:
    """Open (append) or create a log file 0600; returns its descriptor.

    An existing regular file of ours that others may read is made 0600: a log
    names paths and errors of the mount.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def process_umask() -> int:
    """The process's umask, read without changing it (which would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o077)  # no /proc: the only other way to read it
    os.umask(old)
    return old
