"""Helpers of the POSIX conformance suite (`tests/test_posix_*.py`).

The suite runs one operation on a plain directory and on a tierfs mount and
compares what each returned, so a test states *what Linux does* rather than
what we think it should do. Here: outcome capture (a value or an errno name),
the syscalls Python does not wrap (``renameat2``, ``utimensat`` with
``UTIME_OMIT``, ``rewinddir``), and running a snippet as another user.

The module-wide mount (`shared_mount`, through `pair`) is of a local directory and of
an S3 bucket (``rclone serve s3`` with stored attributes): each case runs on both. A
case that needs a mount of its own takes `own_mounts` (or `own`): mounts of new sources
of the same kind, so it runs on both too. What an object store cannot do is a documented
limit (`S3_LIMITS`), which a case asserts exactly through `Pair.limit`; everything else
must match the plain directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import pytest
from mounting import Mounted

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

NOBODY = 65534


def outcome(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)``, or the errno name it failed with (e.g. ``"ENOENT"``)."""
    try:
        return fn(*args, **kw)
    except OSError as exc:
        assert exc.errno is not None, exc
        return errno.errorcode[exc.errno]


def err(fn: Callable[..., Any], *args: Any, **kw: Any) -> str | None:
    """The errno name ``fn`` failed with, or None if it succeeded."""
    try:
        fn(*args, **kw)
    except OSError as exc:
        assert exc.errno is not None, exc
        return errno.errorcode[exc.errno]
    return None


def same_on_both(plain: str, mnt: str, fn: Callable[[str], Any], *,
                 fails: str | Iterable[str] = ()) -> Any:
    """Run ``fn(root)`` on the plain directory and the mount; assert equal outcomes.

    A failure (an errno name as the outcome) counts as agreement only if it is
    one the caller expects, named in ``fails``: the same unexpected failure on
    both sides (a broken helper, a missing fixture, an errno neither should
    give) fails the test instead of passing as "both agree". With ``fails``
    given, the operation must fail with one of those errnos.
    """
    expected = {fails} if isinstance(fails, str) else set(fails)
    want = outcome(fn, plain)
    got = outcome(fn, mnt)
    assert got == want, f"mount gave {got!r}, a plain directory gave {want!r}"
    if expected:
        assert got in expected, f"both gave {got!r}, expected a failure with {sorted(expected)}"
    else:
        assert not _is_errno_name(got), f"both failed with {got}, which the test does not expect"
    return got


def _is_errno_name(value: Any) -> bool:
    return isinstance(value, str) and value in errno.errorcode.values()


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def renameat2(old: str, new: str, flags: int, *, src_dir_fd: int = AT_FDCWD,
              dst_dir_fd: int = AT_FDCWD) -> None:
    _check(_libc.renameat2(src_dir_fd, os.fsencode(old), dst_dir_fd, os.fsencode(new), flags),
           "renameat2")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int], *,
              follow_symlinks: bool = True) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), ts, flags), "utimensat")


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


class DirStream:
    """A libc ``DIR *``: lets a test interleave readdir, rewinddir and changes."""

    def __init__(self, path: str) -> None:
        self._dir = _libc.opendir(os.fsencode(path))
        if not self._dir:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)

    def read(self, n: int | None = None) -> list[str]:
        """Up to ``n`` names (all remaining if None), without ``.`` and ``..``."""
        out: list[str] = []
        while n is None or len(out) < n:
            ctypes.set_errno(0)
            p = _libc.readdir(self._dir)
            if not p:
                _check(ctypes.get_errno(), "readdir")
                break
            name = os.fsdecode(ctypes.cast(p, ctypes.POINTER(_Dirent)).contents.d_name)
            if name not in (".", ".."):
                out.append(name)
        return out

    def rewind(self) -> None:
        _libc.rewinddir(self._dir)

    def close(self) -> None:
        if self._dir:
            _libc.closedir(self._dir)
            self._dir = None

    def __enter__(self) -> DirStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CHILD_PRELUDE = '''
import errno, json, os, sys
out = {}
def probe(key, fn, *a, **kw):
    try:
        r = fn(*a, **kw)
    except OSError as e:
        out[key] = errno.errorcode[e.errno]
    else:
        out[key] = r if isinstance(r, (int, str, list, bool, type(None))) else "ok"
'''


_python_for_others: list[str] = []


def unprivileged_python() -> str:
    """A Python that any user may run (the venv's may live under /root).

    The child snippets need only the standard library. Skips the test if the
    machine has none.
    """
    if not _python_for_others:
        for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
            try:
                ok = bool(exe) and subprocess.run(
                    [exe, "-I", "-c", "pass"], capture_output=True,  # type: ignore[list-item]
                    preexec_fn=lambda: os.setuid(NOBODY)).returncode == 0
            except PermissionError:
                ok = False
            if ok:
                _python_for_others.append(exe)  # type: ignore[arg-type]
                break
        else:
            pytest.skip("no Python interpreter that an unprivileged user may run")
    return _python_for_others[0]


def run_as(uid: int, code: str, *, gid: int | None = None, fds: Iterable[int] = (),
           groups: Iterable[int] = (), **values: Any) -> dict[str, Any]:
    """Run ``code`` in a fresh Python as ``uid``; return its ``out`` dict.

    The snippet sees ``probe(key, fn, *args)`` (records the result or the errno
    name under ``key``), ``out``, and every keyword of ``values`` as a global.
    Descriptors in ``fds`` are inherited, so the child can reach a mount
    through a directory descriptor even when the path to it is private.
    """
    gid = uid if gid is None else gid
    groups = list(groups)
    script = (_CHILD_PRELUDE
              + "".join(f"{k} = {v!r}\n" for k, v in values.items())
              + textwrap.dedent(code)
              + "\nprint(json.dumps(out))\n")

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    res = subprocess.run([unprivileged_python(), "-I", "-c", script], preexec_fn=drop,
                         pass_fds=tuple(fds), capture_output=True, text=True, timeout=120,
                         cwd="/")
    assert res.returncode == 0, f"child failed ({res.returncode}):\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def plain(tmp_path: "os.PathLike[str]") -> str:
    """A plain directory on the same file system as ``src``: the reference."""
    p = os.path.join(tmp_path, "plain")
    os.mkdir(p)
    return p


@dataclass(frozen=True)
class Pair:
    """One test's directories: a plain reference and its twin inside a mount.

    ``kind`` is the mount's source: ``"local"`` (a directory) or ``"s3"`` (a bucket of
    ``rclone serve s3`` with ``stored_attributes``). ``src`` is the twin in the source,
    on disk (for S3: in the bucket's directory).
    """

    plain: str
    mnt: str
    source_dir: str
    kind: str = "local"
    #: The S3 server (an `s3server.S3Server`) whose bucket is the source, if any.
    server: Any = None
    #: The mount point, when ``mnt`` is not a directory right below it.
    mountpoint: str = ""

    @property
    def src(self) -> str:
        """The twin in the source, once the source holds what the mount acknowledged.

        An S3 mount writes back: a closed file reaches the store after its close (the
        destager uploads it), so on S3 this first waits until nothing is pending."""
        if self.kind == "s3":
            wait_for_uploads(self.mountpoint or os.path.dirname(self.mnt))
        return self.source_dir

    def stored(self, name: str) -> Stored:
        """The mode, times and extended attributes the source holds for ``name`` (below
        ``src``): a local file's own, an S3 object's user metadata as another client
        (botocore) reads it, once the uploads are done."""
        if self.kind != "s3":
            path = os.path.join(self.src, name)
            st = os.lstat(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False)}
            return Stored(st.st_mode, st.st_mtime_ns, st.st_ctime_ns, xattrs, st.st_uid,
                          st.st_gid)
        import base64
        from urllib.parse import unquote

        from fusefs.tiers.objectstore.options import parse_time
        from s3server import api

        self.src  # noqa: B018  (waits for the uploads)
        bucket, key = os.path.relpath(os.path.join(self.source_dir, name),
                                      self.server.data_dir).split("/", 1)
        meta = {k.lower(): v for k, v in api(self.server).head_object(
            Bucket=bucket, Key=key)["Metadata"].items()}
        raw = json.loads(unquote(meta["xattr"])) if "xattr" in meta else {}
        return Stored(int(meta["mode"]), parse_time(meta.get("mtime")),
                      parse_time(meta.get("ctime")),
                      {k: base64.b64decode(v) for k, v in raw.items()},
                      int(meta.get("uid", -1)), int(meta.get("gid", -1)))

    def limit(self, op: str, on_s3: Any, on_local: Any = None) -> Any:
        """What the test expects of ``op`` here: on S3 ``on_s3``, what a documented
        limit of an object store gives (`S3_LIMITS`, docs/objectstore.md "The POSIX
        suite on S3"; an errno name must be the one documented), elsewhere
        ``on_local``."""
        assert op in S3_LIMITS, f"{op!r} is not a documented limit of S3 sources"
        if self.kind != "s3":
            return on_local
        if _is_errno_name(on_s3):
            assert S3_LIMITS[op] == on_s3, f"{op}: documented as {S3_LIMITS[op]}, not {on_s3}"
        return on_s3


class Stored(NamedTuple):
    """What a source holds for a file (`Pair.stored`)."""

    st_mode: int
    st_mtime_ns: int | None
    st_ctime_ns: int | None
    xattrs: dict[str, bytes]
    st_uid: int = 0
    st_gid: int = 0


#: What an S3 source gives where a local directory succeeds: what an object store cannot
#: hold or do (docs/objectstore.md, "The POSIX suite on S3"). A test that meets one says
#: so through `Pair.limit`, with the exact errno.
S3_LIMITS: dict[str, str] = {
    "link": "EPERM",          # one object per key: no second name for the same bytes
    "mknod fifo": "EPERM",    # no node types but files, directories and symlinks
    "mknod socket": "EPERM",
    "mknod device": "EPERM",
    # No atomic swap of two keys (a rename is a copy and a delete).
    "rename exchange": "EINVAL",
    # S3 keys are at most 1,024 bytes: the whole path below the bucket.
    "key over 1024 bytes": "ENAMETOOLONG",
    # No change notifications: what another client changes is seen once the cached
    # stat expires (stat_ttl).
    "another client's change": "the version this mount knew, until stat_ttl",
    # No key names a bucket's root (nor, without markers, a directory): its mode, owner
    # and times are kept in the mount that set them.
    "root attributes": "this mount only",
    # A bucket has no capacity or inode count: fixed large counts, as Mountpoint gives.
    "statfs": "2**50 blocks of 4 KiB, 2**40 files",
}


def wait_for_uploads(mountpoint: str, timeout: float = 120.0) -> None:
    """Wait until the mount's write-back holds nothing pending (every closed file is in
    the store); fails after ``timeout`` seconds (a loaded machine uploads slowly)."""
    from fusefs.control import call

    deadline = time.monotonic() + timeout
    while True:
        wb = call(mountpoint, "stats")["stats"]["writeback"]
        if not wb["pending_files"] and not wb["uploading"]:
            return
        assert time.monotonic() < deadline, f"uploads still pending after {timeout} s: {wb}"
        time.sleep(0.02)


class SharedMount(Mounted):
    """`Mounted` with the directory on disk behind its source (``source_dir``: the
    source itself, or the bucket of ``rclone serve s3``) and the source's ``kind``."""

    kind = "local"
    source_dir = ""
    server: Any = None


def _s3_config(server: Any, path: str) -> str:
    """A config of a mount of ``server``'s bucket as a user who wants POSIX behaviour
    writes one: ``stored_attributes = true``."""
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""\
            [source]
            access_key = "{server.access_key}"
            secret_key = "{server.secret_key}"
            dir_markers = false
            stored_attributes = true
            read_timeout = "120s"
            [mount]
            max_requests = 16
            """))
    return path


def _s3_shared_mount(base: str, request: pytest.FixtureRequest) -> SharedMount:
    """A mount of a new bucket of an ``rclone serve s3`` of this module (`_s3_config`)."""
    from s3server import S3Server

    # A directory cache of 1 ms: files made on disk in the bucket are seen at once. Not
    # 0 s: rclone 1.7x then spins a core for ever after each PUT with user metadata
    # (every upload with stored attributes), and answers slower with each of them.
    server = S3Server(Path(base) / "s3data", bucket="posix", dir_cache_time="1ms")
    server.start()
    request.addfinalizer(server.stop)
    config = _s3_config(server, os.path.join(base, "tierfs.toml"))
    m = SharedMount(server.uri() + "&request_timeout=60", os.path.join(base, "mnt"),
                    cache=os.path.join(base, "cache"), log=os.path.join(base, "tierfs.log"),
                    config=config)
    m.kind, m.server = "s3", server
    m.source_dir = str(server.bucket_dir)
    return m


@pytest.fixture(scope="module", params=["local", "s3"])
def shared_mount(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedMount]:
    """One mount for a whole module of small cases (a mount costs ~0.5 s), of a local
    directory and of an S3 bucket (``rclone serve s3``): every test on it runs on both.

    It runs with the fewest request handlers a config allows (``max_requests = 16``),
    so the concurrency cases show that a small pool queues requests, never deadlocks."""
    base = str(tmp_path_factory.mktemp(f"shared-{request.param}"))
    if request.param == "s3":
        m = _s3_shared_mount(base, request)
    else:
        src = os.path.join(base, "src")
        os.mkdir(src)
        config = os.path.join(base, "tierfs.toml")
        with open(config, "w") as f:
            f.write("[mount]\nmax_requests = 16\n")
        m = SharedMount(src, os.path.join(base, "mnt"), cache=os.path.join(base, "cache"),
                        log=os.path.join(base, "tierfs.log"), config=config)
        m.source_dir = src
    with m:
        yield m


_case = itertools.count()


@pytest.fixture
def pair(shared_mount: SharedMount, tmp_path: "os.PathLike[str]") -> Iterator[Pair]:
    """Fresh directories of this test on the shared mount and on a plain directory.

    Fails the test if the daemon logged an unexpected error while it ran.
    """
    name = f"case{next(_case)}"
    p = Pair(os.path.join(tmp_path, "plain"), os.path.join(shared_mount.mountpoint, name),
             os.path.join(shared_mount.source_dir, name), shared_mount.kind,
             shared_mount.server)
    os.mkdir(p.plain)
    os.mkdir(p.mnt)
    # Without markers a directory made through the mount lives in that mount until a
    # file is written below it: make it in the bucket too, so a test can write there.
    os.makedirs(p.source_dir, exist_ok=True)
    before = len(shared_mount.errors())
    yield p
    new = shared_mount.errors()[before:]
    assert not new, "the daemon logged unexpected errors:\n" + "\n".join(new)
    if p.kind == "s3":
        # rclone serve s3 lists a prefix by walking every key below it: a listing of
        # the bucket's top (each new case's lookup) would grow with every case left.
        shutil.rmtree(p.src, ignore_errors=True)


_own = itertools.count()


class OwnMounts:
    """Mounts of their own for the cases that need one (the mount's root, ``allow_other``,
    two mounts, counts of the whole mount), of the shared mount's kind: a new local
    directory, or a new bucket of the module's S3 server (the shared mount's, so no server
    starts; `_s3_config`; a new bucket, not a prefix: rclone shows no empty prefix). Each
    mount is unmounted, and its bucket removed, at the end of the test."""

    def __init__(self, shared: SharedMount, make_mount: Callable[..., Mounted],
                 tmp_path: str) -> None:
        self.kind, self.server = shared.kind, shared.server
        self._shared, self._make_mount, self._tmp = shared, make_mount, tmp_path
        self._made: list[str] = []

    def source(self) -> str:
        """A new, empty source: its directory on disk (for S3: the bucket's)."""
        n = next(_own)
        if self.kind == "s3":
            path = os.path.join(self.server.data_dir, f"own{n}")
            self._made.append(path)
        else:
            path = os.path.join(self._tmp, f"src{n}")
        os.mkdir(path)
        return path

    def mount(self, source_dir: str | None = None, **kw: Any) -> SharedMount:
        """A mount (not yet entered) of ``source_dir`` (default: a new `source`); keywords
        go to `Mounted`. Only a local source may be a directory of the caller's."""
        source_dir = source_dir or self.source()
        if self.kind == "s3":
            assert os.path.dirname(source_dir) == str(self.server.data_dir), source_dir
            bucket = os.path.basename(source_dir)
            kw.setdefault("config", _s3_config(
                self.server, os.path.join(self._tmp, f"tierfs-{bucket}.toml")))
            m = self._make_mount(self.server.uri(bucket=bucket) + "&request_timeout=60", **kw)
        else:
            m = self._make_mount(source_dir, **kw)
        m.kind, m.server, m.source_dir = self.kind, self.server, source_dir
        return m  # type: ignore[no-any-return]

    def pair(self, m: Mounted, plain: str) -> Pair:
        """A `Pair` of ``plain`` and the root of ``m`` (a mount of this factory)."""
        return Pair(plain, m.mountpoint, m.source_dir, self.kind,  # type: ignore[attr-defined]
                    self.server, mountpoint=m.mountpoint)

    def cleanup(self) -> None:
        for path in self._made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_mounts(shared_mount: SharedMount, make_mount: Callable[..., Mounted],
               tmp_path: "os.PathLike[str]") -> Iterator[OwnMounts]:
    """`OwnMounts` of the shared mount's kind (local, s3): a test taking it runs on
    both. Fails the test if the shared mount's daemon logged an unexpected error."""
    own = OwnMounts(shared_mount, make_mount, str(tmp_path))
    before = len(shared_mount.errors())
    yield own
    own.cleanup()
    new = shared_mount.errors()[before:]
    assert not new, "the daemon logged unexpected errors:\n" + "\n".join(new)


@pytest.fixture
def own(own_mounts: OwnMounts, tmp_path: "os.PathLike[str]") -> Iterator[Pair]:
    """A mount of a new source of each kind (`OwnMounts`) and a plain directory: a
    `Pair` whose ``mnt`` is the mount's root."""
    plain = os.path.join(tmp_path, "plain-own")
    os.mkdir(plain)
    with own_mounts.mount() as m:
        yield own_mounts.pair(m, plain)


@contextlib.contextmanager
def private_tmpfs(path: str, size: str = "64m") -> Iterator[str]:
    """A tmpfs of its own at ``path``: a source whose free space nobody else
    changes, so a test can assert exact ``f_bfree`` counts through a mount."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def open_dir_fd(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


__all__ = [
    "AT_FDCWD", "DirStream", "NOBODY", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "UTIME_NOW",
    "UTIME_OMIT", "OwnMounts", "Pair", "S3_LIMITS", "SharedMount", "err", "open_dir_fd",
    "outcome", "own", "own_mounts", "pair", "plain", "private_tmpfs", "renameat2", "run_as",
    "same_on_both", "shared_mount", "utimensat",
]
