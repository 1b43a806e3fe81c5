"""The capacity tier over an object store (S3, GCS, HDFS, ...) through `pyarrow.fs`.

`ObjectStoreTier` serves a bucket (or a prefix in it) as a directory tree. It
owns the translation of tier paths into store keys, the metadata cache, the
retry loop around every store request, and the write-back of whole objects.
Every pyarrow call runs in a worker thread under one `trio.CapacityLimiter`, so
the event loop never waits on the network.

Keys and names
    A tier path ``a/b`` is the key ``<prefix>/a/b``. Names must be valid UTF-8
    (object keys are Unicode; anything else is ``EINVAL``), components at most
    255 bytes and the key below the bucket at most 1024 bytes (S3's limit;
    ``ENAMETOOLONG``); empty, ``.`` and ``..`` components are ``EINVAL``.

Directories
    A directory is a key prefix, or a directory marker object (``dir/``, what
    `pyarrow.fs.FileSystem.create_dir` writes). With ``dir_markers=True`` (the
    default, right for S3, MinIO, Ceph and GCS) ``mkdir`` writes a marker, and
    pyarrow writes one for a directory whose last object is deleted, so empty
    directories persist as on a local disk. Some S3 servers map keys onto a
    file system and cannot hold a marker next to a folder of the same name
    (``rclone serve s3`` over a local disk stores ``dir/`` as an empty *file*
    ``dir``): use ``dir_markers=False`` there. Then ``mkdir`` creates the
    directory in this mount only (it becomes real in the store when a file is
    written below it, and is gone after a remount if it stays empty), and the
    zero-byte stand-ins such a server leaves behind after pyarrow's parent
    markers are deleted again. In marker mode the first ``mkdir`` checks for
    that behaviour and switches to ``dir_markers=False`` with one warning.

Metadata cache
    Positive stats live ``stat_ttl`` seconds, failed lookups ``negative_ttl``,
    directory listings ``list_ttl``. A listing also answers ``stat`` for every
    child (``ls -l`` costs one paged listing, not one request per file) and is
    authoritative for names it lacks. A lookup that misses in a directory
    with no listing is a HEAD; the ``list_after``-th such miss in one
    directory lists it instead (one LIST answers every later lookup there, as
    rclone's directory cache does; a directory probed once, such as one of
    millions of keys, is never listed for it). The mount's own writes update the entry
    and its parent's listing in place. `save_snapshot` / `load_snapshot` keep
    the listings across a remount (see there). ``clock`` is injectable.

Reads
    `ObjectFile.pread` is one ranged GET (``RandomAccessFile.read_at`` on one
    input file per open handle, opened lazily: a HEAD, then GETs);
    `ObjectFile.pread_many` issues its ranges concurrently.

Writes (until writes go through the fast tier)
    A handle opened for writing keeps the whole object in an unnamed spool
    file in ``spool_dir`` (created 0700): empty after ``O_TRUNC`` or create,
    otherwise downloaded first. ``flush``/``fsync`` upload it as one object
    when dirty (pyarrow uses multipart for large ones). Concurrent writers of
    one key: the last upload wins. `put_object` / `get_object_into` are the
    seam the fast tier's destager will use.

Namespace operations
    ``rename`` of a file is copy + delete (not atomic); of a directory, copy +
    delete of every key below it, refused with ``EXDEV`` above
    ``max_dir_rename_keys`` keys (``mv`` then falls back to copying).
    ``RENAME_NOREPLACE`` is checked before copying (a race with another client
    is possible); ``RENAME_EXCHANGE`` is ``EINVAL``. ``mknod`` of anything but
    a regular file, ``symlink`` and ``link`` are ``EPERM`` (the errno POSIX
    gives for a file system without that kind of node). Objects have no mode,
    owner or times of their own: ``setattr`` of those is accepted and ignored
    (what ``cp -p``, ``rsync -a`` and ``tar`` need), or ``EPERM`` with
    ``strict_setattr=True``; ``setattr(size=...)`` rewrites the object.

Failures
    Connection failures, throttling and 5xx answers are retried ``retries``
    times with jittered exponential backoff (``retry_base`` to ``retry_max``
    seconds); a store that still does not answer raises `TierUnavailable`
    (``EIO``) and logs one warning per ``warn_interval``. Nothing is
    remembered: the next request tries again, so the tier recovers by itself.
    Not found is ``ENOENT``, denied is ``EACCES``, anything else ``EIO``.
    The error classification reads pyarrow's S3 messages; other stores get
    ``ENOENT``/``EACCES`` where pyarrow raises the matching Python exception
    and ``EIO`` otherwise.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import random
import stat as stat_mod
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import trio

from ..capacity import CapacityFile, CapacityTier, Stat, StatFs, TierUnavailable

log = logging.getLogger(__name__)

NAME_MAX = 255
KEY_MAX = 1024
_CHUNK = 8 * 1024 * 1024  # upload/download copy unit
_THREAD_IO = 256 * 1024  # spool I/O at least this large goes to a thread
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_SNAPSHOT_FORMAT = b"1"

# Fragments of pyarrow's S3 error messages (the AWS SDK error name or HTTP status).
_UNREACHABLE = (
    "NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
    "Couldn't resolve", "Timeout was reached", "Connection reset", "connect failed",
)
_DENIED = (
    "ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "AccessDenied",
    "HTTP status 403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
)
_MISSING = ("NO_SUCH_KEY", "NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND", "HTTP status 404", "NoSuchKey")
_BUSY = (
    "SLOW_DOWN", "SlowDown", "THROTTL", "Throttl", "SERVICE_UNAVAILABLE", "HTTP status 500",
    "HTTP status 502", "HTTP status 503", "HTTP status 504", "REQUEST_TIME_TOO_SKEWED",
)

# Options of the connection (handled by `from_uri`) and query keys of an s3:// URI.
_S3_OPTIONS = frozenset({
    "access_key", "secret_key", "session_token", "region", "endpoint", "scheme",
    "anonymous", "connect_timeout", "request_timeout", "sdk_max_attempts",
    "force_virtual_addressing", "tls_ca_file_path", "request_checksums",
})
_S3_QUERY = {
    "region": "region", "scheme": "scheme", "endpoint_override": "endpoint",
    "endpoint": "endpoint", "anonymous": "anonymous", "connect_timeout": "connect_timeout",
    "request_timeout": "request_timeout", "force_virtual_addressing": "force_virtual_addressing",
    "tls_ca_file_path": "tls_ca_file_path",
}


@dataclass(frozen=True, slots=True)
class ObjectStoreOptions:
    """Tier options (see the module docstring); the config layer passes them by name."""

    max_threads: int = 16
    stat_ttl: float = 60.0
    negative_ttl: float = 5.0
    list_ttl: float = 60.0
    list_after: int = 2
    snapshot_ttl: float | None = None
    file_mode: int = 0o644
    dir_mode: int = 0o755
    uid: int | None = None
    gid: int | None = None
    spool_dir: str | None = None
    max_dir_rename_keys: int = 1000
    retries: int = 3
    retry_base: float = 0.05
    retry_max: float = 0.4
    dir_markers: bool = True
    strict_setattr: bool = False
    warn_interval: float = 30.0

    @classmethod
    def make(cls, options: dict[str, Any]) -> ObjectStoreOptions:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"unknown object-store option(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed | _S3_OPTIONS))}"
            )
        opts = cls(**options)
        if opts.max_threads < 1 or opts.retries < 1:
            raise ValueError("max_threads and retries must be at least 1")
        if min(opts.stat_ttl, opts.negative_ttl, opts.list_ttl) < 0:
            raise ValueError("cache TTLs must not be negative")
        return opts


class _Listing:
    """One cached directory listing: child name -> Stat, with its two deadlines."""

    __slots__ = ("entries", "list_expires", "stat_expires")

    def __init__(self, entries: dict[bytes, Stat], list_expires: float, stat_expires: float) -> None:
        self.entries = entries
        self.list_expires = list_expires  # until then, a name it lacks does not exist
        self.stat_expires = stat_expires  # until then, its Stats answer stat()


def _split(path: bytes) -> tuple[bytes, bytes]:
    head, _, name = path.rpartition(b"/")
    return head, name


def _under(path: bytes, top: bytes) -> bool:
    """Whether ``path`` is strictly below directory ``top``."""
    return path.startswith(top + b"/") if top else bool(path)


def _short(exc: BaseException) -> str:
    """The first line of a failure, without Python's ``[Errno N]`` prefix."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    raw = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = str(raw).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _classify(exc: BaseException) -> tuple[str, int]:
    """Sort a pyarrow failure: ("retry"|"unreachable"|"fail", errno)."""
    if isinstance(exc, FileNotFoundError):
        return "fail", errno.ENOENT
    if isinstance(exc, pa.ArrowNotImplementedError):
        return "fail", errno.ENOTSUP
    if isinstance(exc, pa.ArrowInvalid):
        return "fail", errno.EINVAL
    msg = str(exc)
    if any(s in msg for s in _UNREACHABLE):
        return "unreachable", errno.EIO
    if any(s in msg for s in _DENIED) or isinstance(exc, PermissionError):
        return "fail", errno.EACCES
    if any(s in msg for s in _MISSING):
        return "fail", errno.ENOENT
    if any(s in msg for s in _BUSY):
        return "retry", errno.EIO
    err = getattr(exc, "errno", None)
    return "fail", err if isinstance(err, int) and err > 0 else errno.EIO


def _err(code: int, message: str) -> OSError:
    return OSError(code, message)  # OSError picks the subclass (FileNotFoundError, ...)


class ObjectFile(CapacityFile):
    """An open object: ranged GETs for reading, a local spool for writing.

    A read-only handle holds one pyarrow input file, opened on first use. A
    writable handle holds the whole object in an unnamed spool file; reads on
    it come from the spool. ``_lock`` serialises spool changes with uploads.
    """

    def __init__(self, tier: ObjectStoreTier, path: bytes, *, writable: bool, st: Stat) -> None:
        self._tier = tier
        self.path = path
        self.writable = writable
        self._stat = st
        self._input: Any = None  # pyarrow RandomAccessFile
        self._input_size = 0
        self._input_lock = trio.Lock()
        self._lock = trio.Lock()
        self._fd = -1
        self._dirty = False
        self._unlinked = False
        self._closed = False
        self._reads = 0  # ranged GETs in flight: the input file outlives close() until they end
        self._mtime_ns = st.st_mtime_ns

    # -- reading -----------------------------------------------------------
    async def _open_input(self) -> Any:
        async with self._input_lock:
            if self._closed:
                raise _err(errno.EBADF, "file is closed")
            if self._input is None:
                key = self._tier._key(self.path)
                f = await self._tier._run(f"open {self._tier._show(self.path)}",
                                          self._tier._fs.open_input_file, key)
                self._input, self._input_size = f, f.size()
            return self._input

    async def _read_remote(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset < 0:
            if offset < 0:
                raise _err(errno.EINVAL, "negative read offset")
            return b""
        self._reads += 1
        try:
            f = await self._open_input()
            if offset >= self._input_size:
                return b""
            size = min(size, self._input_size - offset)
            self._tier.requests["get"] += 1
            return await self._tier._run(f"read {self._tier._show(self.path)}", f.read_at,
                                         size, offset)
        finally:
            self._reads -= 1
            if self._closed and not self._reads:
                self._close_input()

    def _close_input(self) -> None:
        # Background read-ahead may still be reading when the handle is released:
        # closing the input under a read in a worker thread would pull it away
        # mid-request, so the last read closes it instead.
        if self._input is not None and not self._reads:
            self._input.close()
            self._input = None

    async def pread(self, offset: int, size: int) -> bytes:
        if self._closed:
            raise _err(errno.EBADF, "file is closed")
        if self._fd >= 0:
            if size >= _THREAD_IO:
                return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)
            return os.pread(self._fd, size, offset)
        return await self._read_remote(offset, size)

    async def pread_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read several ``(offset, size)`` ranges, as concurrent ranged GETs."""
        if self._fd >= 0 or len(ranges) <= 1:
            return [await self.pread(off, size) for off, size in ranges]
        if self._closed:
            raise _err(errno.EBADF, "file is closed")
        await self._open_input()
        out: list[bytes] = [b""] * len(ranges)

        async def one(i: int, off: int, size: int) -> None:
            out[i] = await self._read_remote(off, size)

        await _concurrently([(one, i, off, size) for i, (off, size) in enumerate(ranges)])
        return out

    # -- writing -----------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise _err(errno.EBADF, "file is closed")
        if self._fd < 0:
            raise _err(errno.EBADF, "file is not open for writing")

    async def pwrite(self, offset: int, data: bytes) -> int:
        self._check_writable()
        async with self._lock:
            if len(data) >= _THREAD_IO:
                n = await trio.to_thread.run_sync(os.pwrite, self._fd, data, offset)
            else:
                n = os.pwrite(self._fd, data, offset)
            self._dirty = True
            self._mtime_ns = time.time_ns()
            return n

    async def truncate(self, size: int) -> None:
        self._check_writable()
        async with self._lock:
            os.ftruncate(self._fd, size)
            self._dirty = True
            self._mtime_ns = time.time_ns()

    def _spool_stat(self) -> Stat:
        return self._tier._file_stat(os.fstat(self._fd).st_size, self._mtime_ns)

    async def fstat(self) -> Stat:
        if self._fd >= 0:
            return self._spool_stat()
        if self._input is not None and self._input_size != self._stat.st_size:
            return self._tier._file_stat(self._input_size, self._stat.st_mtime_ns)
        return self._stat

    async def flush(self) -> None:
        if self._fd < 0 or not self._dirty or self._unlinked:
            return
        async with self._lock:
            if not self._dirty or self._unlinked:
                return  # re-check: another flush uploaded while we waited
            self._dirty = False
            try:
                self._stat = await self._tier.put_object(self.path, self._fd)
            except BaseException:
                self._dirty = True
                raise
            self._mtime_ns = self._stat.st_mtime_ns

    async def fsync(self, datasync: bool) -> None:
        await self.flush()

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._dirty and not self._unlinked:
                try:
                    await self.flush()
                except OSError as exc:
                    log.error("%s: data written but never uploaded is lost: %s",
                              self._tier._show(self.path), exc)
        finally:
            self._closed = True
            self._tier._forget_writer(self)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._close_input()

    def fileno(self) -> int | None:
        return None  # the spool is not the object: the engine must go through pread


class ObjectStoreTier(CapacityTier):
    """A bucket or prefix of an object store, served through `pyarrow.fs`."""

    supports_links = False
    supports_snapshots = True
    remote = True  # every read is a ranged GET: a round trip costs more than 64 KiB

    def __init__(
        self,
        fs: pafs.FileSystem | Callable[[], pafs.FileSystem],
        root: str,
        *,
        description: str | None = None,
        endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        """Serve ``root`` (``bucket/prefix`` for S3/GCS, a path otherwise) of ``fs``.

        Args:
            fs: the file system, or a factory called in a thread by `start`
                (so slow set-up such as region look-up stays off the loop).
            root: the source root inside ``fs``, without trailing slash.
            description: how logs and errors name the source.
            endpoint: the address errors name when the store is unreachable.
            clock: the time source for cache TTLs.
            **options: see `ObjectStoreOptions`.
        """
        self.opts = ObjectStoreOptions.make(options)
        if callable(fs) and not isinstance(fs, pafs.FileSystem):
            self._fs_factory: Callable[[], pafs.FileSystem] | None = fs
            self._fs: Any = None
        else:
            self._fs_factory = None
            self._fs = fs
        self._root = root.rstrip("/")
        self._description = description or root
        self._endpoint = endpoint or self._description
        self._clock = clock
        self._limiter = trio.CapacityLimiter(self.opts.max_threads)
        self._uid = os.getuid() if self.opts.uid is None else self.opts.uid
        self._gid = os.getgid() if self.opts.gid is None else self.opts.gid
        self._markers = self.opts.dir_markers
        self._markers_checked = False
        bucket, _, prefix = self._root.partition("/")
        self._bucket, self._prefix = bucket, prefix
        self._key_base = len(prefix.encode()) + 1 if prefix else 0
        self._started_ns = time.time_ns()
        self._root_stat = self._dir_stat(self._started_ns)
        self._stats: dict[bytes, tuple[float, Stat]] = {}
        self._negative: dict[bytes, float] = {}
        # Lookups that missed per unlisted directory, and listings in flight
        # (concurrent lookups in one directory share one LIST).
        self._misses: dict[bytes, int] = {}
        self._listing: dict[bytes, trio.Event] = {}
        self._sweep_at = 4096
        self._lists: dict[bytes, _Listing] = {}
        self._local_dirs: dict[bytes, Stat] = {}
        self._writers: dict[bytes, list[ObjectFile]] = {}
        self._spool_dir: str | None = None
        self._own_spool = False
        self._warned_at = -1e18
        self._suppressed = 0
        #: Requests sent to the store, by kind ("list", "stat", "get", "put", ...).
        self.requests: collections.Counter[str] = collections.Counter()
        self.kind = "objectstore" if self._fs is None else self._fs.type_name

    # -- construction ------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> ObjectStoreTier:
        """Open a source URI that `pyarrow.fs.FileSystem.from_uri` understands.

        ``s3://[ACCESS:SECRET@]bucket/prefix?endpoint_override=HOST:PORT&scheme=http``
        is built here so that timeouts and retries are ours; the options
        ``access_key``, ``secret_key``, ``session_token``, ``region``,
        ``endpoint`` (``[http[s]://]host:port``), ``scheme``, ``anonymous``,
        ``connect_timeout`` (s, default 1), ``request_timeout`` (s without a
        byte from the server, default 10), ``sdk_max_attempts`` (the AWS SDK's
        own tries, default 1: the tier retries), ``force_virtual_addressing``,
        ``tls_ca_file_path`` and ``request_checksums`` override the URI.
        Without credentials, pyarrow reads the standard AWS environment and
        files. Other schemes (``gs://``, ``hdfs://``, ``file://``) go to
        `pyarrow.fs.FileSystem.from_uri` as they are.

        With a custom endpoint and ``request_checksums="auto"`` (the default),
        ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` is set in the process
        environment unless it is already set: the AWS SDK otherwise sends
        uploads as ``aws-chunked`` with trailing checksums, which many
        S3-compatible servers (rclone, older MinIO and Ceph) refuse.

        Raises:
            ValueError: an unknown option or URI parameter.
        """
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        s3opts = {k: options.pop(k) for k in list(options) if k in _S3_OPTIONS}
        ObjectStoreOptions.make({k: v for k, v in options.items() if k != "clock"})  # fail early
        if scheme == "s3":
            factory, root, desc, endpoint = _s3_factory(parts, s3opts)
            tier = cls(factory, root, description=desc, endpoint=endpoint, **options)
            tier.kind = "s3"
            return tier
        if s3opts:
            raise ValueError(f"options {', '.join(sorted(s3opts))} apply to s3:// sources only")
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ValueError(f"cannot use source {uri}: {_short(exc)}") from None
        return cls(fs, root, description=uri, **options)

    @property
    def description(self) -> str:
        return self._description

    @property
    def list_requests(self) -> int:
        """Listing requests sent so far (each may be several pages)."""
        return self.requests["list"]

    def statistics(self) -> dict[str, int]:
        return dict(self.requests)

    async def start(self) -> None:
        if self._fs is None:
            assert self._fs_factory is not None
            try:
                self._fs = await trio.to_thread.run_sync(self._fs_factory, limiter=self._limiter)
            except (pa.ArrowException, OSError) as exc:
                raise self._start_error(exc) from None
            self.kind = self._fs.type_name
        if self.opts.spool_dir:
            self._setup_spool()  # a bad spool directory should fail the mount, not a write
        object_store = self._fs.type_name in ("s3", "gcs")
        checks = [(self._bucket, "bucket")] if object_store else []
        if not object_store or self._prefix:
            checks.append((self._root, "prefix" if object_store else "source directory"))
        for path, what in checks:
            try:
                info = await self._run(f"check {what}", self._fs.get_file_info, path, quiet=True)
            except OSError as exc:
                raise self._start_error(exc) from None
            if info.type == pafs.FileType.Directory:
                continue
            if what == "bucket":
                raise _err(errno.ENOENT, f"bucket '{self._bucket}' does not exist at {self._endpoint}")
            if info.type == pafs.FileType.File:
                raise _err(errno.ENOTDIR, f"{self._description} is an object, not a directory")
            raise _err(errno.ENOENT, f"{self._description}: {what} '{path}' not found")
        self._root_stat = self._dir_stat(time.time_ns())

    def _start_error(self, exc: BaseException) -> OSError:
        if isinstance(exc, TierUnavailable):
            return TierUnavailable(f"cannot reach the object store at {self._endpoint} "
                                   f"({self._description}): {_short(exc)}")
        code = exc.errno if isinstance(exc, OSError) and exc.errno else _classify(exc)[1]
        if code == errno.EACCES:
            return _err(errno.EACCES, f"access denied to {self._description} at {self._endpoint}: "
                                      "check the credentials (access_key/secret_key or the AWS environment)")
        if code == errno.ENOENT:
            return _err(errno.ENOENT, f"{self._description} not found at {self._endpoint}")
        return _err(code, f"{self._description}: {_short(exc)}")

    def _setup_spool(self) -> None:
        if self._spool_dir is not None:
            return
        if self.opts.spool_dir:
            os.makedirs(self.opts.spool_dir, mode=0o700, exist_ok=True)
            os.chmod(self.opts.spool_dir, 0o700)
            self._spool_dir = self.opts.spool_dir
        else:
            self._spool_dir = tempfile.mkdtemp(prefix="tierfs-spool-")  # 0700
            self._own_spool = True

    async def close(self) -> None:
        for writers in list(self._writers.values()):
            for w in list(writers):
                await w.close()
        if self._own_spool and self._spool_dir:
            try:
                os.rmdir(self._spool_dir)
            except OSError:
                pass
            self._spool_dir = None

    # -- plumbing ----------------------------------------------------------
    def _show(self, path: bytes) -> str:
        return path.decode("utf-8", "backslashreplace") or "/"

    def _key(self, path: bytes) -> str:
        """The store key of ``path``; raises for names a store cannot hold."""
        if not path:
            return self._root
        if len(path) + self._key_base > KEY_MAX:
            raise _err(errno.ENAMETOOLONG, f"key longer than {KEY_MAX} bytes: {self._show(path)[:80]}...")
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(errno.EINVAL, f"name is not valid UTF-8: {path!r}") from None
        for comp in path.split(b"/"):
            if len(comp) > NAME_MAX:
                raise _err(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes: {comp[:40]!r}...")
            if not comp or comp in (b".", b".."):
                raise _err(errno.EINVAL, f"empty, '.' or '..' component in {self._show(path)!r}")
        if "\0" in text:
            raise _err(errno.EINVAL, "NUL in name")
        return f"{self._root}/{text}" if self._root else text

    async def _run(self, what: str, fn: Callable[..., Any], *args: Any, quiet: bool = False) -> Any:
        """Call ``fn(*args)`` in a worker thread, retrying transient failures.

        Raises `TierUnavailable` when the store did not answer after
        ``retries`` tries, else `OSError` with the errno the failure maps to.
        """
        delay = self.opts.retry_base
        for attempt in range(self.opts.retries):
            try:
                return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
            except (OSError, pa.ArrowException) as exc:
                kind, code = _classify(exc)
                if kind != "fail" and attempt + 1 < self.opts.retries:
                    await trio.sleep(min(delay, self.opts.retry_max) * random.uniform(0.5, 1.0))
                    delay *= 2
                    continue
                if kind == "unreachable":
                    self._warn(f"object store {self._endpoint} is not answering ({what}): {_short(exc)}",
                               quiet)
                    down = TierUnavailable(f"{self._description}: {what}: store not answering: "
                                           f"{_short(exc)}")
                    down.reason = _short(exc)  # type: ignore[attr-defined]
                    raise down from None
                raise _err(code, f"{self._description}: {what}: {_short(exc)}") from None
        raise AssertionError("unreachable")

    def _warn(self, message: str, quiet: bool) -> None:
        """Log that the store is down, at most once per ``warn_interval``."""
        if quiet:
            return
        now = self._clock()
        if now - self._warned_at < self.opts.warn_interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar failures not logged)"
        self._warned_at, self._suppressed = now, 0
        log.warning("%s", message)

    def _file_stat(self, size: int, mtime_ns: int) -> Stat:
        # Whole seconds: a LIST reports milliseconds, a HEAD (Last-Modified)
        # only seconds. One object must show one mtime, and one cache version,
        # whichever request described it.
        mtime_ns -= mtime_ns % 1_000_000_000
        return Stat(
            st_mode=stat_mod.S_IFREG | self.opts.file_mode, st_size=size, st_nlink=1,
            st_uid=self._uid, st_gid=self._gid, st_blocks=(size + 511) // 512,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
        )

    def _dir_stat(self, mtime_ns: int) -> Stat:
        return Stat(
            st_mode=stat_mod.S_IFDIR | self.opts.dir_mode, st_size=0, st_nlink=2,
            st_uid=self._uid, st_gid=self._gid,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
        )

    def _from_info(self, info: Any) -> Stat | None:
        # pyarrow's FileInfo carries no ETag, so a version is size + mtime. Implicit
        # directories have no mtime, and rclone's listings now and then give the epoch:
        # take those as unknown and show the mount's start time.
        mtime = info.mtime_ns if info.mtime_ns else self._started_ns
        if info.type == pafs.FileType.File:
            return self._file_stat(info.size or 0, mtime)
        if info.type == pafs.FileType.Directory:
            return self._dir_stat(mtime)
        return None

    # -- cache -------------------------------------------------------------
    def _note_object(self, path: bytes, st: Stat) -> None:
        """``path`` now exists as ``st`` (after the mount's own change)."""
        self._stats[path] = (self._clock() + self.opts.stat_ttl, st)
        self._negative.pop(path, None)
        parent, name = _split(path)
        listing = self._lists.get(parent)
        if listing is not None:
            listing.entries[name] = st

    def _note_gone(self, path: bytes, *, tree: bool = True) -> None:
        """``path`` (and, if ``tree``, everything below it) no longer exists."""
        self._stats.pop(path, None)
        self._local_dirs.pop(path, None)
        self._lists.pop(path, None)
        self._negative[path] = self._clock() + self.opts.negative_ttl
        parent, name = _split(path)
        listing = self._lists.get(parent)
        if listing is not None:
            listing.entries.pop(name, None)
        if not tree:
            return
        for table in (self._stats, self._negative, self._lists, self._local_dirs):
            for p in [p for p in table if _under(p, path)]:
                del table[p]

    def _sweep(self) -> None:
        """Drop expired single-object entries once the tables have doubled since the last sweep."""
        size = len(self._stats) + len(self._negative)
        if size < self._sweep_at:
            return
        now = self._clock()
        self._stats = {p: e for p, e in self._stats.items() if e[0] > now}
        self._negative = {p: t for p, t in self._negative.items() if t > now}
        self._sweep_at = max(4096, 2 * (len(self._stats) + len(self._negative)))

    def invalidate(self, path: bytes | None = None) -> None:
        """Drop cached metadata of ``path`` (and its listing), or all of it."""
        if path is None:
            self._stats.clear()
            self._negative.clear()
            self._lists.clear()
            return
        self._stats.pop(path, None)
        self._negative.pop(path, None)
        self._lists.pop(path, None)

    def _writer_stat(self, path: bytes) -> Stat | None:
        writers = self._writers.get(path)
        return writers[-1]._spool_stat() if writers else None

    def _forget_writer(self, f: ObjectFile) -> None:
        writers = self._writers.get(f.path)
        if writers and f in writers:
            writers.remove(f)
            if not writers:
                del self._writers[f.path]

    # -- metadata ----------------------------------------------------------
    async def stat(self, path: bytes) -> Stat:
        if not path:
            return self._root_stat
        key = self._key(path)
        st = self._writer_stat(path) or self._local_dirs.get(path)
        if st is not None:
            return st
        now = self._clock()
        hit = self._stats.get(path)
        if hit is not None and hit[0] > now:
            return hit[1]
        neg = self._negative.get(path)
        if neg is not None and neg > now:
            raise _err(errno.ENOENT, f"{self._show(path)}: no such object")
        own = self._lists.get(path)
        if own is not None and own.stat_expires > now:
            # Its own listing is known (e.g. from a snapshot whose parent was
            # never listed): only a directory has one.
            return self._dir_stat(0)
        parent, name = _split(path)
        listing = self._lists.get(parent)
        if listing is None or listing.list_expires <= now:
            listing = await self._list_for_lookup(parent)
        if listing is not None and listing.list_expires > now:
            st = listing.entries.get(name)
            if st is None:
                raise _err(errno.ENOENT, f"{self._show(path)}: no such object")
            if listing.stat_expires > now:
                return st
        self.requests["stat"] += 1
        info = await self._run(f"stat {self._show(path)}", self._fs.get_file_info, key)
        st = self._from_info(info)
        self._sweep()
        if st is None:
            self._negative[path] = self._clock() + self.opts.negative_ttl
            raise _err(errno.ENOENT, f"{self._show(path)}: no such object")
        self._stats[path] = (self._clock() + self.opts.stat_ttl, st)
        return st

    def cached_listing(self, path: bytes) -> dict[bytes, Stat] | None:
        listing = self._lists.get(path)
        if listing is None or listing.stat_expires <= self._clock():
            return None
        return listing.entries

    async def _list_for_lookup(self, parent: bytes) -> _Listing | None:
        """The listing of ``parent`` if this lookup should list it (see the module docstring)."""
        ev = self._listing.get(parent)
        if ev is not None:
            await ev.wait()  # another lookup is listing it
            return self._lists.get(parent)
        if self.opts.list_after <= 0:
            return None
        n = self._misses.get(parent, 0) + 1
        if n < self.opts.list_after:
            if len(self._misses) >= 10_000:
                self._misses.clear()  # bounded; at worst a directory lists later
            self._misses[parent] = n
            return None
        self._misses.pop(parent, None)
        ev = self._listing[parent] = trio.Event()
        try:
            await self.listdir(parent)
        except OSError:
            return None  # not a directory, or the store failed: the HEAD decides
        finally:
            del self._listing[parent]
            ev.set()
        self.requests["lookup_lists"] += 1
        return self._lists.get(parent)

    async def _list_store(self, path: bytes, *, recursive: bool = False) -> list[Any]:
        key = self._key(path)
        self.requests["list"] += 1
        sel = pafs.FileSelector(key, recursive=recursive, allow_not_found=True)
        return await self._run(f"list {self._show(path)}", self._fs.get_file_info, sel)

    async def listdir(self, path: bytes) -> list[tuple[bytes, Stat]]:
        key = self._key(path)
        now = self._clock()
        listing = self._lists.get(path)
        if listing is None or listing.list_expires <= now:
            infos = await self._list_store(path)
            if not infos and path:
                # An empty answer: an empty directory, or nothing at all.
                if not (await self.stat(path)).is_dir:
                    raise _err(errno.ENOTDIR, f"{self._show(path)}: not a directory")
            elif path and path in self._stats and not self._stats[path][1].is_dir:
                self._stats.pop(path)  # was a file, now a prefix
            cut = len(key) + 1 if key else 0
            entries: dict[bytes, Stat] = {}
            for info in infos:
                name = info.path[cut:]
                st = self._from_info(info)
                if not name or "/" in name or st is None:
                    continue
                bname = name.encode("utf-8")
                if bname in entries and not st.is_dir:
                    continue  # a key that is both an object and a prefix: the directory wins
                entries[bname] = st
            now = self._clock()
            listing = _Listing(entries, now + self.opts.list_ttl, now + self.opts.stat_ttl)
            self._lists[path] = listing
            for name in entries:
                self._negative.pop(path + b"/" + name if path else name, None)
        out = dict(listing.entries)
        for p, st in self._local_dirs.items():
            parent, name = _split(p)
            if parent == path:
                out.setdefault(name, st)
        for p in self._writers:
            parent, name = _split(p)
            if parent == path:
                out[name] = self._writer_stat(p)  # type: ignore[assignment]
        return list(out.items())

    async def readlink(self, path: bytes) -> bytes:
        await self.stat(path)
        raise _err(errno.EINVAL, f"{self._show(path)}: not a symbolic link (object stores have none)")

    async def setattr(
        self,
        path: bytes,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: Any = None,
        mtime_ns: Any = None,
        file: CapacityFile | None = None,
    ) -> Stat:
        cur = await self.stat(path)
        if self.opts.strict_setattr:
            changes = (
                (mode is not None and stat_mod.S_IMODE(mode) != stat_mod.S_IMODE(cur.st_mode))
                or (uid is not None and uid != cur.st_uid)
                or (gid is not None and gid != cur.st_gid)
                or atime_ns is not None or mtime_ns is not None
            )
            if changes:
                raise _err(errno.EPERM, f"{self._show(path)}: objects have no mode, owner or times to change")
        if size is not None:
            if cur.is_dir:
                raise _err(errno.EISDIR, f"{self._show(path)}: is a directory")
            target = file if isinstance(file, ObjectFile) and file.writable else None
            if target is None and self._writers.get(path):
                target = self._writers[path][-1]
            if target is not None:
                await target.truncate(size)
            else:
                f = await self.open(path, os.O_WRONLY | (os.O_TRUNC if size == 0 else 0))
                try:
                    await f.truncate(size)
                    await f.flush()
                finally:
                    await f.close()
        return await self.stat(path)

    async def statfs(self) -> StatFs:
        # A store has no capacity to report: large fixed numbers, as mountpoint-s3 does.
        blocks = 1 << 50
        files = 1 << 40
        return StatFs(4096, 4096, blocks, blocks, blocks, files, files, files, NAME_MAX)

    # -- namespace ---------------------------------------------------------
    async def _require_dir(self, path: bytes) -> None:
        if path and not (await self.stat(path)).is_dir:
            raise _err(errno.ENOTDIR, f"{self._show(path)}: not a directory")

    async def _absent(self, path: bytes) -> None:
        try:
            await self.stat(path)
        except FileNotFoundError:
            return
        raise _err(errno.EEXIST, f"{self._show(path)}: already exists")

    async def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> Stat:
        if not path:
            raise _err(errno.EEXIST, "the root exists")
        key = self._key(path)
        await self._require_dir(_split(path)[0])
        await self._absent(path)
        st = self._dir_stat(time.time_ns())
        if self._markers:
            self.requests["put"] += 1
            await self._run(f"mkdir {self._show(path)}", self._create_dir, key)
            if not self._markers_checked:
                await self._check_markers(path, key)
        if self._markers:
            self._note_object(path, st)
        else:
            self._negative.pop(path, None)
            self._local_dirs[path] = st
        return st

    def _create_dir(self, key: str) -> None:
        self._fs.create_dir(key, recursive=True)

    async def _check_markers(self, path: bytes, key: str) -> None:
        """After the first marker: does the store keep it, or turn it into a plain object?"""
        self._markers_checked = True
        if self._fs.type_name != "s3":
            return
        if await self._stand_in_size(key) != 0:
            return
        log.warning("%s stores directory markers as plain objects (rclone serve s3 does): "
                    "switching to dir_markers=false, new empty directories live in this mount only",
                    self._description)
        self._markers = False
        await self._remove_stand_ins(path)

    async def _stand_in_size(self, key: str) -> int | None:
        """Size of an object stored at exactly ``key`` (no slash), or None."""
        def probe() -> int:
            with self._fs.open_input_file(key) as f:
                return f.size()
        self.requests["stat"] += 1
        try:
            return await self._run(f"check {key}", probe)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            if isinstance(exc, TierUnavailable):
                raise
            return None

    async def _remove_stand_ins(self, path: bytes) -> None:
        """Without markers: remove the zero-byte objects left where directories were.

        pyarrow writes a marker ``d/`` when the last object below ``d`` is deleted;
        a store that maps keys onto files keeps it as an empty file ``d``, which
        would hide the directory. Delete it (one level up may follow), and keep
        the directory in this mount, as a local one.
        """
        p: bytes | None = path
        while p is not None:
            if not p and not self._prefix:
                return  # a bucket needs no marker
            key = self._key(p)
            if await self._stand_in_size(key) != 0:
                return
            self.requests["delete"] += 1
            await self._delete_key(p, key)
            if p:
                self._local_dirs.setdefault(p, self._dir_stat(time.time_ns()))
                self._stats.pop(p, None)
                p = _split(p)[0]
            else:
                p = None

    async def _delete_key(self, path: bytes, key: str) -> None:
        """Delete object ``key``; tolerate pyarrow failing to write a parent marker after it."""
        try:
            await self._run(f"delete {self._show(path)}", self._fs.delete_file, key)
        except TierUnavailable:
            raise
        except FileNotFoundError:
            raise
        except OSError:
            if self._markers or await self._stand_in_size(key) is not None:
                raise
            # Deleted; only the parent marker that pyarrow adds failed: not wanted here.

    async def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> Stat:
        if not stat_mod.S_ISREG(mode):
            raise _err(errno.EPERM, "object stores hold only regular files and directories")
        f, _ = await self.create(path, os.O_WRONLY, mode, uid, gid)
        try:
            await f.flush()
        finally:
            await f.close()
        return await self.stat(path)

    async def symlink(self, path: bytes, target: bytes, uid: int, gid: int) -> Stat:
        self._key(path)
        raise _err(errno.EPERM, "object stores have no symbolic links")

    async def link(self, path: bytes, new_path: bytes) -> Stat:
        self._key(new_path)
        raise _err(errno.EPERM, "object stores have no hard links")

    async def unlink(self, path: bytes) -> None:
        key = self._key(path)
        st = await self.stat(path)
        if st.is_dir:
            raise _err(errno.EISDIR, f"{self._show(path)}: is a directory")
        pending = self._writers.pop(path, [])
        for w in pending:
            w._unlinked = True  # its data dies with the name, as on a disk
        self.requests["delete"] += 1
        try:
            await self._delete_key(path, key)
        except FileNotFoundError:
            if not pending:
                self._note_gone(path, tree=False)
                raise
        self._note_gone(path, tree=False)
        if not self._markers:
            await self._remove_stand_ins(_split(path)[0])

    async def rmdir(self, path: bytes) -> None:
        if not path:
            raise _err(errno.EBUSY, "cannot remove the root")
        key = self._key(path)
        if not (await self.stat(path)).is_dir:
            raise _err(errno.ENOTDIR, f"{self._show(path)}: not a directory")
        await self._require_empty(path)
        if path not in self._local_dirs and self._markers:
            self.requests["delete"] += 1
            try:
                await self._run(f"rmdir {self._show(path)}", self._fs.delete_dir, key)
            except FileNotFoundError:
                pass  # no marker: the directory was only implied
        self._note_gone(path)
        if not self._markers:
            await self._remove_stand_ins(_split(path)[0])

    async def _require_empty(self, path: bytes) -> None:
        busy = any(_under(p, path) for p in self._writers) or any(_under(p, path) for p in self._local_dirs)
        if not busy:
            busy = bool(await self._list_store(path))
        if busy:
            raise _err(errno.ENOTEMPTY, f"{self._show(path)}: directory not empty")

    async def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        if flags & _RENAME_EXCHANGE:
            raise _err(errno.EINVAL, "RENAME_EXCHANGE is not possible on an object store")
        if flags & ~_RENAME_NOREPLACE:
            raise _err(errno.EINVAL, f"unsupported rename flags {flags:#x}")
        if not old or not new:
            raise _err(errno.EBUSY, "cannot rename the root")
        okey, nkey = self._key(old), self._key(new)
        src = await self.stat(old)
        if old == new:
            return
        if _under(new, old):
            raise _err(errno.EINVAL, f"cannot move {self._show(old)} into itself")
        await self._require_dir(_split(new)[0])
        try:
            dst: Stat | None = await self.stat(new)
        except FileNotFoundError:
            dst = None
        if dst is not None:
            if flags & _RENAME_NOREPLACE:
                raise _err(errno.EEXIST, f"{self._show(new)}: already exists")
            if src.is_dir and not dst.is_dir:
                raise _err(errno.ENOTDIR, f"{self._show(new)}: not a directory")
            if not src.is_dir and dst.is_dir:
                raise _err(errno.EISDIR, f"{self._show(new)}: is a directory")
            if dst.is_dir:
                await self.rmdir(new)
        if src.is_dir:
            await self._rename_dir(old, new, okey, nkey, src)
        else:
            await self._rename_file(old, new, okey, nkey)

    async def _rename_file(self, old: bytes, new: bytes, okey: str, nkey: str) -> None:
        for w in list(self._writers.get(old, [])):
            await w.flush()  # the object must exist before it can be copied
        self.requests["copy"] += 1
        await self._run(f"rename {self._show(old)}", self._fs.copy_file, okey, nkey)
        self.requests["delete"] += 1
        try:
            await self._delete_key(old, okey)
        except FileNotFoundError:
            pass
        writers = self._writers.pop(old, [])
        for w in writers:
            w.path = new  # an open descriptor follows its file
        if writers:
            self._writers.setdefault(new, []).extend(writers)
        self._note_gone(old, tree=False)
        self._stats.pop(new, None)
        self._negative.pop(new, None)
        self.requests["stat"] += 1
        info = await self._run(f"stat {self._show(new)}", self._fs.get_file_info, nkey)
        st = self._from_info(info)
        if st is not None:
            self._note_object(new, st)
        if not self._markers:
            await self._remove_stand_ins(_split(old)[0])

    async def _rename_dir(self, old: bytes, new: bytes, okey: str, nkey: str, src: Stat) -> None:
        for p in [p for p in self._writers if _under(p, old)]:
            for w in self._writers[p]:
                await w.flush()
        infos = await self._list_store(old, recursive=True)
        limit = self.opts.max_dir_rename_keys
        if len(infos) > limit:
            raise _err(errno.EXDEV, f"{self._show(old)} holds more than {limit} keys; an object store "
                                    "renames a directory key by key (raise max_dir_rename_keys, or copy)")
        cut = len(okey)
        files = [i.path for i in infos if i.type == pafs.FileType.File]
        dirs = [i.path for i in infos if i.type == pafs.FileType.Directory]

        async def copy(src_key: str) -> None:
            self.requests["copy"] += 1
            await self._run(f"rename {src_key}", self._fs.copy_file, src_key, nkey + src_key[cut:])

        if self._markers:  # first, so that stores with real directories have the parents
            for d in [okey, *dirs]:
                self.requests["put"] += 1
                await self._run(f"mkdir {nkey + d[cut:]}", self._create_dir, nkey + d[cut:])
        await _concurrently([(copy, k) for k in files])
        if infos or (self._markers and old not in self._local_dirs):
            self.requests["delete"] += 1
            try:
                await self._run(f"delete {self._show(old)}", self._fs.delete_dir, okey)
            except FileNotFoundError:
                pass
            except OSError:
                if self._markers or await self._list_store(old):
                    raise
        # Move what lives in this mount only (local directories, open writers).
        moved_local = {new + p[len(old):]: st for p, st in self._local_dirs.items() if p == old or _under(p, old)}
        moved_writers = {p: ws for p, ws in self._writers.items() if _under(p, old)}
        self._note_gone(old)
        for p, ws in moved_writers.items():
            del self._writers[p]
            np = new + p[len(old):]
            for w in ws:
                w.path = np
            self._writers[np] = ws
        self._negative.pop(new, None)
        self._stats.pop(new, None)
        self._lists.pop(new, None)
        if self._markers or infos:
            self._note_object(new, self._dir_stat(src.st_mtime_ns))
        if not self._markers:
            self._local_dirs.update(moved_local)
            if not infos:
                self._local_dirs[new] = self._dir_stat(src.st_mtime_ns)
            # Empty directories below ``old`` that the store knew of are not carried over
            # here: a store without markers cannot hold them.
            await self._remove_stand_ins(_split(old)[0])

    # -- data --------------------------------------------------------------
    def _new_spool(self) -> int:
        self._setup_spool()
        fd, name = tempfile.mkstemp(prefix="spool-", dir=self._spool_dir)
        os.unlink(name)  # unnamed: nothing is left behind if the daemon dies
        return fd

    async def open(self, path: bytes, flags: int) -> ObjectFile:
        self._key(path)
        st = await self.stat(path)
        if st.is_dir:
            raise _err(errno.EISDIR, f"{self._show(path)}: is a directory")
        acc = flags & os.O_ACCMODE
        if acc == os.O_RDONLY and not flags & os.O_TRUNC:
            return ObjectFile(self, path, writable=False, st=st)
        f = ObjectFile(self, path, writable=True, st=st)
        f._fd = self._new_spool()
        try:
            if flags & os.O_TRUNC:
                f._dirty = True
                f._mtime_ns = time.time_ns()
            elif self._writers.get(path):
                # Another handle holds newer data than the store: start from its spool.
                src = self._writers[path][-1]._fd
                await trio.to_thread.run_sync(_copy_fd, src, f._fd)
            else:
                await self.get_object_into(path, f._fd)
        except BaseException:
            os.close(f._fd)
            f._fd = -1
            raise
        self._writers.setdefault(path, []).append(f)
        return f

    async def create(
        self, path: bytes, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[ObjectFile, Stat]:
        self._key(path)
        await self._require_dir(_split(path)[0])
        await self._absent(path)
        now = time.time_ns()
        f = ObjectFile(self, path, writable=True, st=self._file_stat(0, now))
        f._fd = self._new_spool()
        f._dirty = True  # an empty object is uploaded on flush even if nothing is written
        self._negative.pop(path, None)
        self._writers.setdefault(path, []).append(f)
        return f, f._spool_stat()

    # -- whole-object transfer (the seam for the fast tier's destager) ----
    async def put_object(self, path: bytes, fd: int) -> Stat:
        """Upload the whole content of local descriptor ``fd`` as object ``path``."""
        key = self._key(path)

        def upload() -> None:
            with self._fs.open_output_stream(key) as out:
                off = 0
                while chunk := os.pread(fd, _CHUNK, off):
                    out.write(chunk)
                    off += len(chunk)

        self.requests["put"] += 1
        await self._run(f"upload {self._show(path)}", upload)
        self.requests["stat"] += 1
        info = await self._run(f"stat {self._show(path)}", self._fs.get_file_info, key)
        st = self._from_info(info) or self._file_stat(os.fstat(fd).st_size, time.time_ns())
        self._note_object(path, st)
        return st

    async def get_object_into(self, path: bytes, fd: int) -> int:
        """Download object ``path`` into local descriptor ``fd``; returns its size."""
        key = self._key(path)

        def download() -> int:
            off = 0
            with self._fs.open_input_stream(key) as src:
                while chunk := src.read(_CHUNK):
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
            os.ftruncate(fd, off)
            return off

        self.requests["get"] += 1
        return await self._run(f"download {self._show(path)}", download)

    # -- listing snapshots -------------------------------------------------
    async def save_snapshot(self, path: str | os.PathLike[str]) -> int:
        """Write every cached directory listing to a Parquet file; returns the entries written.

        Rows are ``(dir, name, is_dir, size, mtime_ns)``, plus one row with a
        null name per listed directory (so empty directories are kept). The
        file's metadata names the source root; it is written to a temporary
        name, fsynced and renamed into place.
        """
        lists = [(d, list(lst.entries.items())) for d, lst in self._lists.items()]
        root = self._root
        return await trio.to_thread.run_sync(_write_snapshot, os.fspath(path), root, lists,
                                             limiter=self._limiter)

    async def load_snapshot(self, path: str | os.PathLike[str]) -> int:
        """Load listings saved by `save_snapshot`, so a remount need not re-list the store.

        Loaded listings count as fresh for ``snapshot_ttl`` seconds from now
        (default: ``list_ttl``, and ``stat_ttl`` for the attributes in them);
        after that they are fetched again as usual. The mount's own writes
        update them like any cached listing. A snapshot of another source is
        refused (``EINVAL``); a missing file raises `FileNotFoundError`.

        Returns:
            The number of entries loaded.
        """
        tables = await trio.to_thread.run_sync(_read_snapshot, os.fspath(path), self._root,
                                               self._file_stat, self._dir_stat, limiter=self._limiter)
        now = self._clock()
        ttl = self.opts.snapshot_ttl
        list_exp = now + (self.opts.list_ttl if ttl is None else ttl)
        stat_exp = now + (self.opts.stat_ttl if ttl is None else ttl)
        count = 0
        for d, entries in tables.items():
            self._lists[d] = _Listing(entries, list_exp, stat_exp)
            count += len(entries)
        return count


async def _concurrently(jobs: list[tuple[Any, ...]]) -> None:
    """Run ``fn(*args)`` for every ``(fn, *args)`` at once; re-raise a failure as itself."""
    try:
        async with trio.open_nursery() as nursery:
            for fn, *args in jobs:
                nursery.start_soon(fn, *args)
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        stack: list[BaseException] = [group]
        while stack:
            exc = stack.pop()
            if isinstance(exc, BaseExceptionGroup):
                stack.extend(exc.exceptions)
            else:
                leaves.append(exc)
        if leaves and all(isinstance(e, OSError) for e in leaves):
            raise leaves[-1] from None
        raise


def _copy_fd(src: int, dst: int) -> None:
    off = 0
    while chunk := os.pread(src, _CHUNK, off):
        os.pwrite(dst, chunk, off)
        off += len(chunk)
    os.ftruncate(dst, off)


def _write_snapshot(path: str, root: str, lists: list[tuple[bytes, list[tuple[bytes, Stat]]]]) -> int:
    import pyarrow.parquet as pq

    dirs: list[bytes] = []
    names: list[bytes | None] = []
    is_dir: list[bool] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    count = 0
    for d, entries in lists:
        dirs.append(d)
        names.append(None)
        is_dir.append(True)
        sizes.append(0)
        mtimes.append(0)
        for name, st in entries:
            dirs.append(d)
            names.append(name)
            is_dir.append(st.is_dir)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            count += 1
    table = pa.table(
        {
            "dir": pa.array(dirs, pa.binary()),
            "name": pa.array(names, pa.binary()),
            "is_dir": pa.array(is_dir, pa.bool_()),
            "size": pa.array(sizes, pa.int64()),
            "mtime_ns": pa.array(mtimes, pa.int64()),
        }
    ).replace_schema_metadata({b"tierfs.snapshot": _SNAPSHOT_FORMAT, b"tierfs.root": root.encode()})
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself must survive a crash
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return count


def _read_snapshot(
    path: str,
    root: str,
    file_stat: Callable[[int, int], Stat],
    dir_stat: Callable[[int], Stat],
) -> dict[bytes, dict[bytes, Stat]]:
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise _err(errno.ENOENT, f"listing snapshot {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _err(errno.EINVAL, f"{path}: not a tierfs listing snapshot: {_short(exc)}") from None
    meta = table.schema.metadata or {}
    if meta.get(b"tierfs.snapshot") != _SNAPSHOT_FORMAT:
        raise _err(errno.EINVAL, f"{path}: not a tierfs listing snapshot (format {meta.get(b'tierfs.snapshot')!r})")
    saved_root = meta.get(b"tierfs.root", b"").decode()
    if saved_root != root:
        raise _err(errno.EINVAL, f"{path}: snapshot of '{saved_root}', not of '{root}'")
    out: dict[bytes, dict[bytes, Stat]] = {}
    cols = [table.column(c).to_pylist() for c in ("dir", "name", "is_dir", "size", "mtime_ns")]
    for d, name, isdir, size, mtime in zip(*cols):
        entries = out.setdefault(d, {})
        if name is not None:
            entries[name] = dir_stat(mtime) if isdir else file_stat(size, mtime)
    return out


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _s3_factory(parts: Any, opts: dict[str, Any]) -> tuple[Callable[[], pafs.FileSystem], str, str, str]:
    """Build the S3 file system factory, root, description and endpoint of an s3:// URI."""
    netloc = parts.netloc
    conf: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        access, _, secret = userinfo.partition(":")
        conf["access_key"], conf["secret_key"] = unquote(access), unquote(secret)
    bucket = netloc
    if not bucket:
        raise ValueError(f"s3 source {parts.geturl()} names no bucket")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _S3_QUERY:
            raise ValueError(f"unknown parameter '{name}' in s3 URI; allowed: {', '.join(sorted(_S3_QUERY))}")
        conf[_S3_QUERY[name]] = value
    conf.update(opts)
    prefix = unquote(parts.path).strip("/")
    root = f"{bucket}/{prefix}" if prefix else bucket

    endpoint = conf.pop("endpoint", None)
    scheme = conf.pop("scheme", None)
    if endpoint and "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
    endpoint = endpoint.rstrip("/") if endpoint else None
    scheme = scheme or "https"
    region = conf.pop("region", None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and endpoint:
        region = "us-east-1"  # what S3-compatible servers expect when they ignore regions
    checksums = conf.pop("request_checksums", "auto")
    kwargs: dict[str, Any] = {
        "scheme": scheme,
        "connect_timeout": float(conf.pop("connect_timeout", 1.0)),
        "request_timeout": float(conf.pop("request_timeout", 10.0)),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=int(conf.pop("sdk_max_attempts", 1))),
    }
    for name in ("access_key", "secret_key", "session_token", "tls_ca_file_path"):
        if conf.get(name):
            kwargs[name] = conf.pop(name)
        conf.pop(name, None)
    for name in ("anonymous", "force_virtual_addressing"):
        if name in conf:
            kwargs[name] = _bool(conf.pop(name))
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if ("access_key" in kwargs) != ("secret_key" in kwargs):
        raise ValueError("access_key and secret_key go together")
    shown = f"{scheme}://{endpoint}" if endpoint else "AWS S3"
    desc = f"s3://{root}"

    def factory() -> pafs.FileSystem:
        if checksums != "auto" and checksums:
            os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = str(checksums)
        elif endpoint and "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
            os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
        reg = region or pafs.resolve_s3_region(bucket)
        return pafs.S3FileSystem(region=reg, **kwargs)

    return factory, root, desc, shown
