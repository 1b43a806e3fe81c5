"""Requests to the object store: the only module that calls `pyarrow.fs`, botocore and urllib3.

`Store` owns the file system (or the factory that builds it in a thread), the
mapping of tier paths to keys, the retry loop around every request, the
request counters and the translation of pyarrow's answers into `Stat` records
and errnos. `resolve_source` turns a source URI into a file system (building
``s3://`` and ``gs://`` ones here, so that timeouts and retries are ours).

Keys and names
    A tier path ``a/b`` is the key ``<prefix>/a/b``. Names must be valid UTF-8
    (object keys are Unicode; anything else is ``EINVAL``), components at most
    255 bytes and the key below the bucket at most 1024 bytes (S3's limit;
    ``ENAMETOOLONG``); empty, ``.`` and ``..`` components are ``EINVAL``.

Failures
    Connection failures, throttling and 5xx answers are retried ``retries``
    times with jittered exponential backoff (``retry_base`` to ``retry_max``
    seconds); a store that still does not answer raises `TierUnavailable`
    (``EIO``) and logs one warning per ``warn_interval``.
    Not found is ``ENOENT``, denied is ``EACCES``, anything else ``EIO``.
    The error classification reads pyarrow's S3 and GCS (google-cloud-cpp)
    messages; other stores get ``ENOENT``/``EACCES`` where pyarrow raises the
    matching Python exception and ``EIO`` otherwise.

Bounds
    The S3 client's own ``connect_timeout`` and ``request_timeout`` (no byte
    for that long) end one attempt. On top, a stat or a ranged read (the
    requests a reader waits on, each one small) has a wall-clock bound,
    ``read_timeout``, retries and the wait for a worker thread included: at
    the bound the caller gets `TierUnavailable` and the pyarrow call, which no
    one can interrupt, is abandoned to finish in its thread (it still holds
    its ``max_threads`` token until then, so abandoned calls cannot pile up
    past the limiter). Other requests (listings, uploads, copies) may take
    long while they make progress, so they are not cut: no new attempt starts
    once ``retry_budget`` seconds have passed since the first, nor does their
    wait for a thread last longer.

Down mode
    A request that ends unanswered marks the store *down* (one warning, at
    most one per ``warn_interval`` if it flaps); the namespace then serves
    what the metadata cache last knew, expired or not (stale-if-error), every
    request but uploads and downloads (whose threads use the caller's
    descriptors, so must not outlive the call) is bounded by
    ``read_timeout``, and a background probe (a trio system task) asks the
    store every ``probe_interval`` seconds. The first request that gets an
    answer ends the mode (one log line). `requests` counts ``unavailable``
    (requests given up), ``timeouts`` (calls abandoned at the bound),
    ``outages``, ``probe`` and, from the namespace, ``stale_served``.

    pyarrow builds no new S3 client while any request is in flight (a lock
    every request holds shared): a tier builds its one client at start, so
    this only matters to code that builds several.

Namespace requests
    On ``s3://`` sources the requests that change the namespace (delete,
    delete many, directory marker) are sent with botocore, one request each:
    pyarrow's ``delete_file`` PUTs a marker for the parent directory after
    every delete, a side effect some S3 servers refuse (``rclone serve s3``
    answers 500 and then, under load, 404s the directory's other objects).
    Listings, uploads, copies and whole-object downloads stay with pyarrow.
    Other stores keep pyarrow for every request (``api`` is None).

Versioned reads
    On ``s3://`` sources (`versioned`) an open's version comes from a botocore
    HEAD with the ETag (`head_version`), and every ranged read is tied to it
    (`read_version`): a GET with ``If-Match`` whose answer's ETag and size are
    checked; another version is ``ESTALE`` (counted as ``changed``). Those GETs
    are `SignedGets`: signed with botocore's SigV4 signer, sent with urllib3, for
    about the CPU of pyarrow's ``read_at`` (botocore's ``get_object`` costs five
    times that; benchmarks/etag_reads.py). A small file fetched whole ahead of a
    walk is one GET tied to no version whose answer states it (`get_whole`): the
    HEAD and the GET an open and a read would cost, in one request. Other stores
    read with pyarrow's ``read_at`` (`open_input`, `read_at`), tied to no version.

Every pyarrow call runs in a worker thread under one `trio.CapacityLimiter`
(``max_threads``), so the event loop never waits on the network.

Upload memory
    pyarrow's S3 output stream uploads each 10 MiB part in the background and
    keeps a copy until the store answers, with no limit of its own: a file read
    from a local spool faster than the store takes it would sit in memory whole.
    The file data all uploads in flight hold together is bounded by
    ``upload_memory`` (`UploadMemory`): an upload that would pass it first waits
    for its own parts to reach the store (a flush), then for others to give
    memory back.
"""

from __future__ import annotations

import collections
import datetime
import email.utils
import errno
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

import botocore.exceptions as boto_errors
import pyarrow as pa
import pyarrow.fs as pafs
import trio
import urllib3

from ..capacity import Stat, TierUnavailable
from .options import Attributes, ObjectStoreOptions

log = logging.getLogger(__name__)

NAME_MAX = 255
KEY_MAX = 1024
CHUNK = 8 * 1024 * 1024  # copy unit of downloads and local copies
# pyarrow's S3 part size (arrow's kPartUploadSize, fixed since 14.0): written in whole
# parts, a flush leaves nothing of an upload buffered.
UPLOAD_PART = 10 * 1024 * 1024
_SINGLE_PUT = 64 * 1024 * 1024  # uploads with metadata: one PUT up to this size
_PART = 16 * 1024 * 1024  # then parts of at least this size

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
    # pyarrow names a 500 by its S3 error code, without the status (a CopyObject of
    # an object rclone serve s3 was still finishing answered so)
    "INTERNAL_FAILURE", "InternalError",
)

# Query keys of an s3:// URI and the option each sets.
_S3_QUERY = {
    "region": "region", "scheme": "scheme", "endpoint_override": "endpoint",
    "endpoint": "endpoint", "anonymous": "anonymous", "connect_timeout": "connect_timeout",
    "request_timeout": "request_timeout", "force_virtual_addressing": "force_virtual_addressing",
    "tls_ca_file_path": "tls_ca_file_path",
}

# GCS (google-cloud-cpp, through pyarrow): "google::cloud::Status(CODE: ..." with the
# HTTP status and the curl error, if any, in the message.
_GCS_STATUS = "google::cloud::Status("
_GCS_UNREACHABLE = ("CURL error", "DEADLINE_EXCEEDED")
_GCS_DENIED = ("PERMISSION_DENIED", "UNAUTHENTICATED", "http_status_code=401",
               "http_status_code=403")
_GCS_MISSING = ("Status(NOT_FOUND", "http_status_code=404")
_GCS_BUSY = ("Status(UNAVAILABLE", "Status(RESOURCE_EXHAUSTED", "Status(INTERNAL",
             "Status(ABORTED", "http_status_code=429", "http_status_code=5")

# Query keys of a gs:// URI and the option each sets.
_GCS_QUERY = {
    "endpoint_override": "endpoint", "endpoint": "endpoint", "scheme": "scheme",
    "anonymous": "anonymous", "retry_time_limit": "retry_time_limit", "project_id": "project_id",
}
# Connection options (`S3_OPTIONS`) a gs:// source takes as well.
_GCS_OPTIONS = frozenset({"endpoint", "scheme", "anonymous"})

FileSystemSpec: TypeAlias = pafs.FileSystem | Callable[[], pafs.FileSystem]
#: Builds the botocore S3 client of a source, given the region pyarrow resolved.
ApiFactory: TypeAlias = Callable[[str], Any]
#: Builds the `SignedGets` of a source, given the region pyarrow resolved.
ReadsFactory: TypeAlias = Callable[[str], "SignedGets"]

# botocore failures that mean the server did not answer (retry, then "down").
_BOTO_UNREACHABLE = (
    boto_errors.EndpointConnectionError, boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError, boto_errors.ConnectionClosedError,
)


class HttpAnswer(Exception):
    """An S3 answer to a `SignedGets` request that carries no data: its status, the
    error code of its body (``PreconditionFailed``, ``NoSuchKey``, ...) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}".rstrip(": "))
        self.status, self.code = status, code


_FAILURES = (OSError, pa.ArrowException, boto_errors.BotoCoreError, boto_errors.ClientError,
             HttpAnswer, urllib3.exceptions.HTTPError)


# -- paths and errors (shared by the whole package) ---------------------------
def show(path: bytes) -> str:
    """A tier path as logs and error messages print it."""
    return path.decode("utf-8", "backslashreplace") or "/"


def split(path: bytes) -> tuple[bytes, bytes]:
    """``(parent, name)`` of a tier path."""
    head, _, name = path.rpartition(b"/")
    return head, name


def under(path: bytes, top: bytes) -> bool:
    """Whether ``path`` is strictly below directory ``top``."""
    return path.startswith(top + b"/") if top else bool(path)


def err(code: int, message: str) -> OSError:
    return OSError(code, message)  # OSError picks the subclass (FileNotFoundError, ...)


def short(exc: BaseException) -> str:
    """The first line of a failure, without Python's ``[Errno N]`` prefix."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    raw = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = str(raw).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _classify_boto(exc: BaseException) -> tuple[str, int]:
    """Sort a botocore failure: ("retry"|"unreachable"|"fail", errno)."""
    if isinstance(exc, _BOTO_UNREACHABLE):
        return "unreachable", errno.EIO
    if isinstance(exc, boto_errors.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
            return "fail", errno.ENOENT
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return "fail", errno.EACCES
        if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return "retry", errno.EIO
        if code == "MetadataTooLarge":  # user metadata beyond the store's limit
            return "fail", errno.ENOSPC
        if code in ("KeyTooLongError", "InvalidObjectName"):
            return "fail", errno.ENAMETOOLONG if code == "KeyTooLongError" else errno.EINVAL
    return "fail", errno.EIO


def _classify_status(status: int, code: str) -> tuple[str, int]:
    """Sort an HTTP answer of S3 (a `SignedGets` GET)."""
    if status in (412, 416) or code in ("PreconditionFailed", "ETagChanged"):
        return "fail", errno.ESTALE  # the object is not the version asked for
    if status == 404:
        return "fail", errno.ENOENT
    if status == 403:
        return "fail", errno.EACCES
    if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
        return "retry", errno.EIO
    return "fail", errno.EIO


def _classify(exc: BaseException) -> tuple[str, int]:
    """Sort a pyarrow, botocore or urllib3 failure: ("retry"|"unreachable"|"fail", errno)."""
    if isinstance(exc, (boto_errors.BotoCoreError, boto_errors.ClientError)):
        return _classify_boto(exc)
    if isinstance(exc, HttpAnswer):
        return _classify_status(exc.status, exc.code)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        # No answer: refused, reset, timed out (urllib3 retries nothing: `Store._run` does).
        return "unreachable", errno.EIO
    if isinstance(exc, FileNotFoundError):
        return "fail", errno.ENOENT
    if isinstance(exc, pa.ArrowNotImplementedError):
        return "fail", errno.ENOTSUP
    if isinstance(exc, pa.ArrowInvalid):
        return "fail", errno.EINVAL
    msg = str(exc)
    if _GCS_STATUS in msg:
        return _classify_gcs(exc, msg)
    if any(s in msg for s in _UNREACHABLE):
        return "unreachable", errno.EIO
    if any(s in msg for s in _DENIED) or isinstance(exc, PermissionError):
        return "fail", errno.EACCES
    if any(s in msg for s in _MISSING):
        return "fail", errno.ENOENT
    if any(s in msg for s in _BUSY):
        return "retry", errno.EIO
    code = getattr(exc, "errno", None)
    return "fail", code if isinstance(code, int) and code > 0 else errno.EIO


def _classify_gcs(exc: BaseException, msg: str) -> tuple[str, int]:
    """`_classify` for GCS: a connection that failed or timed out (after the client's
    own ``retry_time_limit``) is unreachable; 401/403 denied; 404 missing; 429 and
    5xx answers are retried."""
    if any(s in msg for s in _GCS_UNREACHABLE):
        return "unreachable", errno.EIO
    if any(s in msg for s in _GCS_DENIED) or isinstance(exc, PermissionError):
        return "fail", errno.EACCES
    if any(s in msg for s in _GCS_MISSING):
        return "fail", errno.ENOENT
    if any(s in msg for s in _GCS_BUSY):
        return "retry", errno.EIO
    return "fail", errno.EIO


async def concurrently(jobs: list[tuple[Any, ...]]) -> None:
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


class _NoAnswer(Exception):
    """A call given up at its bound (see `Store._run`)."""

    def __init__(self, what: str, *, timed_out: bool) -> None:
        super().__init__(what)
        self.what = what
        self.timed_out = timed_out


_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def plain_etag(etag: Any) -> str:
    """An ETag as the store gave it, or "" where it gave none (rclone without a hash
    answers ``""``)."""
    text = str(etag or "").strip()
    return text if text.strip('"') else ""


class SignedGets:
    """Ranged GETs of one S3 endpoint tied to a version: signed with botocore's SigV4
    signer, sent with urllib3 (the HTTP library under botocore).

    A botocore ``get_object`` costs about 2.5 ms of CPU per call here, five times
    pyarrow's ``read_at`` (benchmarks/etag_reads.py). This sends the same request for
    about pyarrow's cost: the signature covers ``host``, ``x-amz-date`` and
    ``x-amz-content-sha256`` (and the session token), not ``Range`` or ``If-Match``,
    so one signature of a key serves every range of it for `SIGN_REUSE` seconds (as a
    presigned URL would; S3 accepts a request up to 15 minutes after its date).
    Thread-safe: calls run in `Store`'s worker threads.
    """

    #: Seconds one signature of a key is reused (credentials that rotate are read
    #: again at each new signature).
    SIGN_REUSE = 60.0
    _SIGNED_MAX = 4096

    def __init__(self, *, scheme: str, endpoint: str | None, region: str, virtual: bool,
                 credentials: Any, connect_timeout: float, request_timeout: float,
                 pool: int, ca_file: str | None) -> None:
        import botocore.auth

        self.region = region
        self._credentials = credentials  # botocore Credentials, or None: unsigned
        self._auth_class = botocore.auth.S3SigV4Auth
        self._scheme = scheme
        self._endpoint = endpoint
        self._virtual = virtual
        self._signed: dict[str, tuple[float, dict[str, str]]] = {}
        kwargs: dict[str, Any] = {}
        if scheme == "https":
            from botocore.httpsession import get_cert_path

            kwargs = {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file or get_cert_path(True)}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=request_timeout), **kwargs)

    def url(self, bucket: str, name: str) -> str:
        """The URL of object ``name`` of ``bucket`` (path style for a custom endpoint
        unless virtual addressing is forced; virtual hosts on AWS)."""
        path = quote(name, safe="/~")
        if self._endpoint is None:
            if "." in bucket:  # a dotted bucket does not match the TLS certificate
                return f"https://s3.{self.region}.amazonaws.com/{bucket}/{path}"
            return f"https://{bucket}.s3.{self.region}.amazonaws.com/{path}"
        if self._virtual:
            return f"{self._scheme}://{bucket}.{self._endpoint}/{path}"
        return f"{self._scheme}://{self._endpoint}/{bucket}/{path}"

    def _auth(self, url: str, method: str = "GET") -> dict[str, str]:
        if self._credentials is None:
            return {}
        now = time.monotonic()
        hit = self._signed.get(method + url)
        if hit is not None and now - hit[0] < self.SIGN_REUSE:
            return hit[1]
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method=method, url=url)
        self._auth_class(self._credentials.get_frozen_credentials(), "s3",
                         self.region).add_auth(req)
        headers = {k: str(v) for k, v in req.headers.items()}
        if len(self._signed) >= self._SIGNED_MAX:
            self._signed.clear()
        self._signed[method + url] = (now, headers)
        return headers

    def head(self, url: str) -> tuple[int, str, dict[str, str]]:
        """HEAD of the object at ``url``: its size, ETag ("" if none), and its other
        headers by lower-case name (``last-modified``, ``x-amz-meta-*``). Raises
        `HttpAnswer` (404: no such object) or a urllib3 error (no answer)."""
        r = self._pool.request("HEAD", url, headers=self._auth(url, "HEAD"),
                               preload_content=True, redirect=False)
        if r.status != 200:
            raise HttpAnswer(r.status, "NoSuchKey" if r.status == 404 else "", "")
        headers = {k.lower(): v for k, v in r.headers.items()}
        return int(headers.get("content-length") or 0), plain_etag(headers.get("etag")), headers

    def _get(self, url: str, first: int, last: int | None, *,
             etag: str | None = None) -> urllib3.BaseHTTPResponse:
        """A signed GET of bytes ``[first, last]`` of the object at ``url`` (the whole
        object when ``last`` is None), with ``If-Match`` when ``etag`` is given. Raises
        `HttpAnswer` for an answer other than 200/206 (`_check_status`) or a urllib3
        error (no answer). Every GET of this class goes through here."""
        headers = dict(self._auth(url))
        if last is not None:
            headers["Range"] = f"bytes={first}-{last}"
        if etag:
            headers["If-Match"] = etag
        r = self._pool.request("GET", url, headers=headers, preload_content=True,
                               redirect=False)
        _check_status(r.status, r.data)
        return r

    def fetch(self, url: str, limit: int) -> bytes:
        """The whole object at ``url`` (at most ``limit`` bytes are asked for)."""
        data: bytes = self._get(url, 0, max(limit, 1) - 1).data
        return data[:limit]

    def get(self, url: str, offset: int, size: int, *, etag: str | None, total: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of the object at ``url`` if it is still the
        version of ``etag`` (when given) and ``total`` bytes long.

        Sends ``If-Match`` and checks what the answer says it is (its ETag and the
        size in ``Content-Range``; servers that ignore ``If-Match``, such as
        ``rclone serve s3``, are caught there). Raises `HttpAnswer` (412 for a
        changed object) or a urllib3 error (no answer).
        """
        r = self._get(url, offset, offset + size - 1, etag=etag)
        data: bytes = r.data
        got = plain_etag(r.headers.get("ETag"))
        if etag and got and got != etag:
            raise HttpAnswer(412, "ETagChanged", f"the object's ETag is {got}, not {etag}")
        m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
        if m is not None:
            if m.group(3) != "*" and int(m.group(3)) != total:
                raise HttpAnswer(412, "ETagChanged",
                                 f"the object is {m.group(3)} bytes long, not {total}")
            if int(m.group(1)) != offset:
                raise HttpAnswer(502, "BadRange", f"asked for bytes from {offset}, got {m.group(0)}")
        elif r.status == 200:  # the whole object: the server ignored the range
            if len(data) != total:
                raise HttpAnswer(412, "ETagChanged",
                                 f"the object is {len(data)} bytes long, not {total}")
            data = data[offset:offset + size]
        return data[:size]

    def get_whole(self, url: str, size: int) -> tuple[bytes, str, dict[str, str]]:
        """The object at ``url`` as it is now, listed at ``size`` bytes: its bytes, its
        ETag and its other headers by lower-case name (``last-modified``,
        ``x-amz-meta-*``, as `head` gives them). One GET tied to no version: the answer
        says which version it is, so it does what an open's HEAD and a read do, in one
        request. Another size is an `HttpAnswer` 412 (the caller fetches nothing then)."""
        r = self._get(url, 0, size - 1 if size else None)
        data: bytes = r.data
        m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
        if m is not None:
            total = int(m.group(3)) if m.group(3) != "*" else -1
        else:
            total = len(data) if r.status == 200 else -1
        if total != size or len(data) < size:
            raise HttpAnswer(412, "ETagChanged", f"the object is {total} bytes long, not {size}")
        headers = {k.lower(): v for k, v in r.headers.items()}
        return data[:size], plain_etag(headers.get("etag")), headers


def _check_status(status: int, body: bytes) -> None:
    """Raise `HttpAnswer` for an S3 answer other than 200/206, with its error code."""
    if status not in (200, 206):
        code = _CODE.search(body)
        msg = _MESSAGE.search(body)
        raise HttpAnswer(status, code.group(1).decode(errors="replace") if code else "",
                         msg.group(1).decode(errors="replace") if msg else "")


def _metadata_text(md: Any, name: str) -> str:
    """The value of ``name`` in a pyarrow input file's metadata (keys and values may be
    bytes or str), or "" where it has none."""
    v = md.get(name, md.get(name.encode()))
    return v.decode() if isinstance(v, bytes) else str(v or "")


def _http_date_ns(value: str | None) -> int:
    """An HTTP date (``Last-Modified``) in whole seconds as ns; 0 if absent or unreadable."""
    if not value:
        return 0
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0


class UploadMemory:
    """The bytes of file data that the uploads in flight hold in memory together (see
    Upload memory in the module docstring). Thread-safe: uploads run in worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._cond = threading.Condition()
        #: The most held at once since the mount (`tierfs stats`: capacity.upload_memory_peak).
        self.peak = 0

    def share(self, settle: Callable[[], None] | None = None) -> UploadShare:
        """What one upload holds; ``settle`` waits until its parts are in the store."""
        return UploadShare(self, settle)


class UploadShare:
    """One upload's part of `UploadMemory`; `give_back` at its end, whatever the end."""

    def __init__(self, pool: UploadMemory, settle: Callable[[], None] | None) -> None:
        self._pool = pool
        self._settle = settle
        self.held = 0

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes (at most the whole limit), waiting as long as needed."""
        pool = self._pool
        n = min(n, pool.limit)
        while True:
            with pool._cond:
                if pool._free >= n:
                    pool._free -= n
                    self.held += n
                    pool.peak = max(pool.peak, pool.limit - pool._free)
                    return
                if not self.held or self._settle is None:
                    # Others hold it all, and each of them settles before it waits:
                    # memory comes back.
                    pool._cond.wait()
                    continue
            self._settle()  # outside the lock: it waits for the store
            self.give_back()

    def give_back(self, n: int | None = None) -> None:
        """Give ``n`` held bytes back (None: all of them)."""
        pool = self._pool
        n = self.held if n is None else min(n, self.held)
        with pool._cond:
            pool._free += n
            self.held -= n
            pool._cond.notify_all()


class Store:
    """One bucket or prefix of a `pyarrow.fs` file system, with retries and counters.

    Each request method takes the key (see `key`) and ``what``, the words a
    failure names, and counts itself in `requests` under its kind.
    """

    def __init__(
        self,
        fs: FileSystemSpec,
        root: str,
        *,
        description: str | None,
        endpoint: str | None,
        opts: ObjectStoreOptions,
        attrs: Attributes,
        clock: Callable[[], float],
        api: ApiFactory | None = None,
        reads: ReadsFactory | None = None,
    ) -> None:
        #: Builds the botocore client of namespace requests (S3 only; see the module docstring).
        self._api_factory = api
        self._api: Any = None
        #: Builds the `SignedGets` of versioned reads (S3 only; see the module docstring).
        self._reads_factory = reads
        self._reads: SignedGets | None = None
        if callable(fs) and not isinstance(fs, pafs.FileSystem):
            self._fs_factory: Callable[[], pafs.FileSystem] | None = fs
            self._fs: Any = None
        else:
            self._fs_factory = None
            self._fs = fs
        self.root = root.rstrip("/")
        self.description = description or root
        self.endpoint = endpoint or self.description
        self._opts = opts
        self._attrs = attrs
        self._clock = clock
        #: Bounds the worker threads that pyarrow calls (and snapshot I/O) run in.
        self.limiter = trio.CapacityLimiter(opts.max_threads)
        #: Bounds the file data that uploads hold in memory.
        self.upload_memory = UploadMemory(opts.upload_memory)
        # Calls that hold a `limiter` token themselves run under this one (trio's
        # default limiter would bound them a second time, by its own number).
        self._unlimited = trio.CapacityLimiter(math.inf)
        bucket, _, prefix = self.root.partition("/")
        self.bucket, self.prefix = bucket, prefix
        self._key_base = len(prefix.encode()) + 1 if prefix else 0
        self._warned_at = -1e18
        self._suppressed = 0
        self._down_since: float | None = None
        self._down_logged_at = -1e18
        self._mode_loud = True
        self._probing = False
        self._closed = False
        #: Requests sent to the store, by kind ("list", "stat", "get", "put", ...).
        self.requests: collections.Counter[str] = collections.Counter()
        #: key -> {ETag before: ETag after} of this mount's metadata-only copies (the
        #: bytes stayed the same): reads of opens made before follow the new ETag.
        self._same_bytes: dict[str, dict[str, str]] = {}

    @property
    def supports_meta(self) -> bool:
        """Whether objects can carry attributes in user metadata here (``s3://``: the
        requests are sent with botocore and `SignedGets`)."""
        return self._api_factory is not None and self._reads_factory is not None

    @property
    def type_name(self) -> str | None:
        """pyarrow's name of the file system ("s3", "gcs", "local", ...), once it exists."""
        return None if self._fs is None else str(self._fs.type_name)

    # -- start -------------------------------------------------------------
    async def connect(self) -> bool:
        """Build the file system (and the namespace client) if factories were given;
        returns whether the file system was built here."""
        built = False
        if self._fs is None:
            assert self._fs_factory is not None
            try:
                self._fs = await trio.to_thread.run_sync(self._fs_factory, limiter=self.limiter)
            except (pa.ArrowException, OSError) as exc:
                raise self._start_error(exc) from None
            built = True
        if self._api is None and self._api_factory is not None:
            region = str(getattr(self._fs, "region", "") or "us-east-1")
            try:
                self._api = await trio.to_thread.run_sync(self._api_factory, region,
                                                          limiter=self.limiter)
            except _FAILURES as exc:
                raise self._start_error(exc) from None
        if self._reads is None and self._reads_factory is not None:
            region = str(getattr(self._fs, "region", "") or "us-east-1")
            try:
                self._reads = await trio.to_thread.run_sync(self._reads_factory, region,
                                                            limiter=self.limiter)
            except _FAILURES as exc:
                raise self._start_error(exc) from None
        return built

    @property
    def sends_own_requests(self) -> bool:
        """Whether namespace requests go out one by one, with no library side effects."""
        return self._api is not None

    @property
    def versioned(self) -> bool:
        """Whether an open states its object's ETag (`head_version`) and its ranged
        reads are tied to it (`read_version`): ``s3://`` sources."""
        return self._api is not None and self._reads is not None and self._opts.etag_reads

    async def check_root(self) -> None:
        """Check that the bucket and the prefix (or the source directory) exist."""
        object_store = self._fs.type_name in ("s3", "gcs")
        checks = [(self.bucket, "bucket")] if object_store else []
        if not object_store or self.prefix:
            checks.append((self.root, "prefix" if object_store else "source directory"))
        for path, what in checks:
            try:
                info = await self._run(f"check {what}", self._fs.get_file_info, path, quiet=True,
                                       bounded=True)
            except OSError as exc:
                raise self._start_error(exc) from None
            if info.type == pafs.FileType.Directory:
                continue
            if what == "bucket":
                raise err(errno.ENOENT, f"bucket '{self.bucket}' does not exist at {self.endpoint}")
            if info.type == pafs.FileType.File:
                raise err(errno.ENOTDIR, f"{self.description} is an object, not a directory")
            raise err(errno.ENOENT, f"{self.description}: {what} '{path}' not found")

    def _start_error(self, exc: BaseException) -> OSError:
        if isinstance(exc, TierUnavailable):
            return TierUnavailable(f"cannot reach the object store at {self.endpoint} "
                                   f"({self.description}): {short(exc)}")
        code = exc.errno if isinstance(exc, OSError) and exc.errno else _classify(exc)[1]
        if code == errno.EACCES:
            where = ("GOOGLE_APPLICATION_CREDENTIALS, or anonymous=true" if self.type_name == "gcs"
                     else "access_key/secret_key or the AWS environment")
            return err(errno.EACCES, f"access denied to {self.description} at {self.endpoint}: "
                                     f"check the credentials ({where})")
        if code == errno.ENOENT:
            return err(errno.ENOENT, f"{self.description} not found at {self.endpoint}")
        return err(code, f"{self.description}: {short(exc)}")

    # -- plumbing ----------------------------------------------------------
    def key(self, path: bytes) -> str:
        """The store key of ``path``; raises for names a store cannot hold."""
        if not path:
            return self.root
        if len(path) + self._key_base > KEY_MAX:
            raise err(errno.ENAMETOOLONG, f"key longer than {KEY_MAX} bytes: {show(path)[:80]}...")
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise err(errno.EINVAL, f"name is not valid UTF-8: {path!r}") from None
        for comp in path.split(b"/"):
            if len(comp) > NAME_MAX:
                raise err(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes: {comp[:40]!r}...")
            if not comp or comp in (b".", b".."):
                raise err(errno.EINVAL, f"empty, '.' or '..' component in {show(path)!r}")
        if "\0" in text:
            raise err(errno.EINVAL, "NUL in name")
        return f"{self.root}/{text}" if self.root else text

    async def _run(self, what: str, fn: Callable[..., Any], *args: Any, quiet: bool = False,
                   bounded: bool = False, cuttable: bool = True) -> Any:
        """Call ``fn(*args)`` in a worker thread, retrying transient failures.

        ``bounded``: the whole call, retries included, ends at ``read_timeout``
        (see Bounds in the module docstring), as does every ``cuttable`` call
        while the store is down; otherwise no retry starts after
        ``retry_budget``, nor does the wait for a thread last longer. Calls
        that use the caller's descriptors are not ``cuttable``: their thread
        must not outlive the call. Raises `TierUnavailable` when the store did
        not answer, else `OSError` with the errno the failure maps to.
        """
        opts = self._opts
        bounded = bounded or (cuttable and self.down)
        deadline = trio.current_time() + (opts.read_timeout if bounded else opts.retry_budget)
        delay = opts.retry_base
        for attempt in range(opts.retries):
            try:
                if bounded:
                    result = await self._call_abandoning(fn, args, deadline)
                else:
                    result = await self._call(fn, args, deadline)
                self._up()
                return result
            except _NoAnswer as exc:
                if exc.timed_out:
                    self.requests["timeouts"] += 1
                limit = f"{opts.read_timeout:g} s (read_timeout)" if bounded else \
                    f"{opts.retry_budget:g} s (retry_budget)"
                raise self._unavailable(what, f"{exc.what} within {limit}", quiet) from None
            except _FAILURES as exc:
                kind, code = _classify(exc)
                pause = min(delay, opts.retry_max) * random.uniform(0.5, 1.0)
                if kind != "fail" and attempt + 1 < opts.retries and \
                        trio.current_time() + pause < deadline:
                    await trio.sleep(pause)
                    delay *= 2
                    continue
                if kind == "unreachable":
                    raise self._unavailable(what, short(exc), quiet) from None
                if kind == "retry" or code in (errno.ENOENT, errno.EACCES, errno.ESTALE):
                    self._up()  # it answered, if only with "busy" or "no"
                raise err(code, f"{self.description}: {what}: {short(exc)}") from None
        raise AssertionError("unreachable")

    async def _call_abandoning(self, fn: Callable[..., Any], args: tuple[Any, ...],
                               deadline: float) -> Any:
        """``fn(*args)`` in a thread, given up at ``deadline`` (the thread runs on, and
        keeps its limiter token until it ends: abandoned calls cannot pile up)."""
        with trio.move_on_at(deadline):
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter,
                                                 abandon_on_cancel=True)
        raise _NoAnswer("no answer", timed_out=True)

    async def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: float) -> Any:
        """``fn(*args)`` in a thread, waiting for a limiter token until ``deadline`` at most."""
        token = object()
        with trio.move_on_at(deadline) as waiting:
            await self.limiter.acquire_on_behalf_of(token)
        if waiting.cancelled_caught:
            raise _NoAnswer("no worker thread free (calls stuck on the store hold them all)",
                            timed_out=False)
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._unlimited)
        finally:
            self.limiter.release_on_behalf_of(token)

    def _unavailable(self, what: str, why: str, quiet: bool) -> TierUnavailable:
        """Count, log (rate-limited) and build the failure of a request the store did not answer."""
        self._warn(f"object store {self.endpoint} is not answering ({what}): {why}", quiet)
        if not quiet:  # a probe or the mount's first check: the caller decides
            self.requests["unavailable"] += 1
            self.mark_down(why)
        down = TierUnavailable(f"{self.description}: {what}: store not answering: {why}")
        down.reason = why  # type: ignore[attr-defined]
        return down

    def _warn(self, message: str, quiet: bool) -> None:
        """Log that the store is down, at most once per ``warn_interval``."""
        if quiet:
            return
        now = self._clock()
        if now - self._warned_at < self._opts.warn_interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar failures not logged)"
        self._warned_at, self._suppressed = now, 0
        log.warning("%s", message)

    # -- down mode ---------------------------------------------------------
    @property
    def down(self) -> bool:
        """Whether the last request the store should have answered went unanswered."""
        return self._down_since is not None

    def mark_down(self, why: str) -> None:
        """Enter down mode (see the module docstring): one warning, and a probe."""
        if self._down_since is not None:
            return
        self._down_since = trio.current_time()
        self.requests["outages"] += 1
        self._mode_log("object store %s is down (%s): serving cached listings and data until "
                       "it answers again; what no cache holds gets EIO", self.endpoint, why)
        if not self._probing and self._fs is not None:
            self._probing = True
            trio.lowlevel.spawn_system_task(self._probe, name="tierfs store probe")

    def _up(self) -> None:
        if self._down_since is None:
            return
        gone = trio.current_time() - self._down_since
        self._down_since = None
        self._mode_log("object store %s answers again after %.0f s: serving fresh listings",
                       self.endpoint, gone)

    def _mode_log(self, fmt: str, *args: Any) -> None:
        # A store that flaps must not flood the log: a "down" line at most once per
        # warn_interval (the "outages" counter counts them all), and its "back" line
        # at the same level, so the two pair up.
        if self.down:
            now = self._clock()
            self._mode_loud = now - self._down_logged_at >= self._opts.warn_interval
            if self._mode_loud:
                self._down_logged_at = now
        log.log(logging.WARNING if self._mode_loud else logging.DEBUG, fmt, *args)

    async def _probe(self) -> None:
        """While down, ask the store every ``probe_interval`` whether it is back."""
        try:
            while self._down_since is not None and not self._closed:
                await trio.sleep(self._opts.probe_interval)
                if self._down_since is None or self._closed:
                    break
                self.requests["probe"] += 1
                try:
                    await self._run("probe", self._fs.get_file_info, self.root, quiet=True,
                                    bounded=True)
                except OSError:
                    pass
        except Exception:  # a system task must not raise: that would end the daemon
            log.exception("probe of %s failed", self.endpoint)
        finally:
            self._probing = False

    def close(self) -> None:
        """Stop probing (the mount is going away)."""
        self._closed = True

    def _stat_of(self, info: Any) -> Stat | None:
        # pyarrow's FileInfo carries no ETag, so a version is size + mtime. Implicit
        # directories have no mtime, and rclone's listings now and then give the epoch:
        # take those as unknown and show the mount's start time.
        mtime = info.mtime_ns if info.mtime_ns else self._attrs.started_ns
        # Nor user metadata: where objects store attributes, these are stand-ins.
        if info.type == pafs.FileType.File:
            st = self._attrs.file(info.size or 0, mtime, known=False)
            st.mtime_known = bool(info.mtime_ns)
            return st
        if info.type == pafs.FileType.Directory:
            return self._attrs.dir(mtime, known=False)
        return None

    # -- metadata requests -------------------------------------------------
    async def head(self, key: str, what: str) -> Stat | None:
        """The object or directory at ``key``, or None if there is none ("stat")."""
        self.requests["stat"] += 1
        return self._stat_of(await self._run(what, self._fs.get_file_info, key, bounded=True))

    async def list_keys(
        self, key: str, what: str, *, recursive: bool = False
    ) -> list[tuple[str, Stat | None]]:
        """``(key, stat)`` of what lies below ``key`` ("list"); stat is None for other kinds of entry."""
        self.requests["list"] += 1
        if not recursive and self.type_name == "gcs":
            infos = await self._run(what, self._gcs_children, key)
            return [(info.path, self._stat_of(info)) for info in infos]
        sel = pafs.FileSelector(key, recursive=recursive, allow_not_found=True)
        infos = await self._run(what, self._fs.get_file_info, sel)
        return [(info.path, self._stat_of(info)) for info in infos]

    def _gcs_children(self, key: str) -> list[Any]:
        """GCS: the entries right below ``key``, directories without a marker included.

        pyarrow's non-recursive GCS listing returns the objects and the directory
        markers of a level, not the prefixes GCS answers beside them, so a directory
        that holds objects but has no marker (what gsutil, gcloud and most uploaders
        leave) would be missing. This lists the subtree (one paged listing of every
        key below ``key``) and derives the first level from it. Runs in a thread.
        """
        sel = pafs.FileSelector(key, recursive=True, allow_not_found=True)
        base = key.rstrip("/") + "/"
        out: dict[str, Any] = {}
        for info in self._fs.get_file_info(sel):
            if not info.path.startswith(base):
                continue
            name, deeper, _ = info.path[len(base):].partition("/")
            if not name:
                continue
            if deeper or info.type == pafs.FileType.Directory:
                if name not in out or out[name].type != pafs.FileType.Directory:
                    out[name] = pafs.FileInfo(base + name, pafs.FileType.Directory)
            elif name not in out:
                out[name] = info
        return list(out.values())

    async def stand_in_size(self, key: str) -> int | None:
        """Size of an object stored at exactly ``key`` (no slash), or None ("stat")."""
        def probe() -> int:
            with self._fs.open_input_file(key) as f:
                return int(f.size())
        self.requests["stat"] += 1
        try:
            return int(await self._run(f"check {key}", probe, bounded=True))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            if isinstance(exc, TierUnavailable):
                raise
            return None

    # -- namespace requests ------------------------------------------------
    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, name = key.partition("/")
        return bucket, name

    async def create_dir(self, key: str, what: str, meta: dict[str, str] | None = None) -> None:
        """Write the directory marker ``key/`` ("put"; pyarrow writes its parents' too),
        with the user metadata ``meta`` (botocore only)."""
        self.requests["put"] += 1
        if self._api is not None:
            bucket, name = self._bucket_key(key)
            extra = {"Metadata": meta} if meta else {}
            await self._run(what, lambda: self._api.put_object(Bucket=bucket, Key=name + "/",
                                                               Body=b"", **extra))
            return
        await self._run(what, self._fs.create_dir, key)

    async def dir_exists(self, key: str, what: str) -> bool:
        """Whether anything (a marker or an object) lies at or below ``key`` ("stat").

        For GCS, whose pyarrow deletes write no parent marker (its S3 ones do): see
        `Namespace._keep_parent`. On GCS one metadata GET and a one-key listing.
        """
        self.requests["stat"] += 1
        info = await self._run(what, self._fs.get_file_info, key)
        return bool(info.type != pafs.FileType.NotFound)

    async def delete_file(self, key: str, what: str) -> None:
        """Delete the object ``key`` ("delete"). With botocore, deleting a key that
        does not exist succeeds, as S3 answers it; pyarrow raises ENOENT."""
        self.requests["delete"] += 1
        if self._api is not None:
            bucket, name = self._bucket_key(key)
            await self._run(what, lambda: self._api.delete_object(Bucket=bucket, Key=name))
            return
        await self._run(what, self._fs.delete_file, key)

    async def delete_marker(self, key: str, what: str) -> None:
        """Delete the directory marker ``key/`` if there is one ("delete")."""
        if self._api is not None:
            await self.delete_file(key + "/", what)
            return
        self.requests["delete"] += 1
        try:
            info = await self._run(what, self._fs.get_file_info, key, bounded=True)
            if info.type == pafs.FileType.Directory:
                await self._run(what, self._fs.delete_dir, key)
        except FileNotFoundError:
            pass

    async def delete_dir(self, key: str, what: str) -> None:
        """Delete ``key`` and everything below it with pyarrow ("delete"; no botocore)."""
        self.requests["delete"] += 1
        await self._run(what, self._fs.delete_dir, key)

    async def delete_keys(self, keys: list[str], what: str) -> None:
        """Delete exactly ``keys`` ("delete", one per 1,000 keys with botocore).

        Every key the store reports as not deleted fails the call (``EIO``),
        so a partial delete is never reported as a success. Markers (keys that
        end in ``/``) go one request each, in the order given: ``rclone serve s3``
        refuses them in a batch, and removes a directory only once it is empty."""
        for key in [k for k in keys if k.endswith("/")]:
            if self._api is not None:
                await self.delete_file(key, what)
            else:
                await self.delete_marker(key[:-1], what)
        keys = [k for k in keys if not k.endswith("/")]
        if not keys:
            return
        if self._api is None:
            for key in keys:
                self.requests["delete"] += 1
                try:
                    await self._run(what, self._fs.delete_file, key)
                except FileNotFoundError:
                    pass
            return
        bucket = self._bucket_key(keys[0])[0]
        names = [self._bucket_key(k)[1] for k in keys]
        for i in range(0, len(names), 1000):
            batch = [{"Key": n} for n in names[i:i + 1000]]
            self.requests["delete"] += 1
            answer = await self._run(what, lambda b=batch: self._api.delete_objects(
                Bucket=bucket, Delete={"Objects": b, "Quiet": True}))
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise err(errno.EIO, f"{self.description}: {what}: {len(failed)} keys not deleted "
                                     f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')})")

    async def copy(self, src: str, dst: str, what: str) -> None:
        """Copy object ``src`` to ``dst`` in the store ("copy")."""
        self.requests["copy"] += 1
        await self._run(what, self._fs.copy_file, src, dst)

    # -- data requests -----------------------------------------------------
    async def open_input(self, key: str, what: str) -> tuple[Any, int]:
        """Open ``key`` for ranged reads (a HEAD, not counted): the file and its size."""
        f = await self._run(what, self._fs.open_input_file, key, bounded=True)
        return f, f.size()

    @property
    def pins_generation(self) -> bool:
        """Whether an input file's ranged reads are tied to the object generation it
        found when it was opened (pyarrow's GCS reads pass ``generation=``; a newer
        generation makes them fail with not-found): ``gs://`` sources."""
        return self._fs.type_name == "gcs"

    @staticmethod
    def input_version(f: Any) -> tuple[str, int]:
        """The generation and update time (ns, 0 if unknown) of a GCS input file, as
        its metadata states them; ("", 0) where it states none."""
        try:
            md = f.metadata()
        except (OSError, ValueError):
            return "", 0
        generation, updated = _metadata_text(md, "generation"), _metadata_text(md, "updated")
        try:
            ns = int(datetime.datetime.fromisoformat(updated.replace("Z", "+00:00"))
                     .timestamp()) * 1_000_000_000 if updated else 0
        except ValueError:
            ns = 0
        return (generation if generation not in ("", "0") else ""), ns

    async def read_at(self, f: Any, size: int, offset: int, what: str) -> bytes:
        """One ranged GET on a file from `open_input` ("get")."""
        self.requests["get"] += 1
        data: bytes = await self._run(what, f.read_at, size, offset, bounded=True)
        return data

    async def head_version(self, key: str, what: str) -> Stat | None:
        """The object at ``key`` with its ETag (a botocore HEAD, "stat"), or None if
        there is none. ``etag`` is "" where the store gives none. `versioned` only."""
        assert self._api is not None
        bucket, name = self._bucket_key(key)
        self.requests["stat"] += 1
        try:
            answer = await self._run(what, lambda: self._api.head_object(Bucket=bucket, Key=name),
                                     bounded=True)
        except FileNotFoundError:
            return None
        modified = answer.get("LastModified")
        mtime_ns = int(modified.timestamp()) * 1_000_000_000 if modified is not None else 0
        st = self._attrs.file(int(answer.get("ContentLength") or 0),
                              mtime_ns or self._attrs.started_ns, known=False)
        st.mtime_known = bool(mtime_ns)
        st.etag = plain_etag(answer.get("ETag"))
        return st

    async def read_version(self, key: str, etag: str | None, total: int, size: int,
                           offset: int, what: str) -> bytes:
        """One ranged GET of the version ``etag`` (``total`` bytes long) of ``key``
        ("get"; see `SignedGets.get`). Raises ``ESTALE`` when the store holds another
        version (counted as "changed"). `versioned` only."""
        reads = self._reads
        assert reads is not None
        bucket, name = self._bucket_key(key)
        url = reads.url(bucket, name)
        etag = self.current_etag(key, etag)
        self.requests["get"] += 1
        try:
            data: bytes = await self._run(
                what, lambda: reads.get(url, offset, size, etag=etag or None, total=total),
                bounded=True)
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                self.requests["changed"] += 1
            raise
        return data

    async def get_whole(self, key: str, size: int, what: str) -> tuple[Stat, bytes]:
        """The whole object at ``key``, listed at ``size`` bytes, in one GET ("get"; see
        `SignedGets.get_whole`): its `Stat` as `head_version` would give it, and its
        bytes. `versioned` only."""
        reads = self._reads
        assert reads is not None
        bucket, name = self._bucket_key(key)
        url = reads.url(bucket, name)
        self.requests["get"] += 1
        data, etag, headers = await self._run(what, lambda: reads.get_whole(url, size),
                                              bounded=True)
        return self._answer_stat(len(data), etag, headers, "file"), data

    async def upload(self, key: str, fd: int, what: str,
                     meta: dict[str, str] | None = None) -> None:
        """Write the whole content of local descriptor ``fd`` as object ``key`` ("put"),
        with the user metadata ``meta`` if given (botocore: pyarrow sends only a few
        standard headers; one PUT up to `_SINGLE_PUT` bytes, a multipart upload above)."""
        if meta is not None and self._api is not None:
            self.requests["put"] += 1
            try:
                await self._run(what, self._upload_with_meta, key, fd, meta, cuttable=False)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or "xattr" not in meta:
                    raise
                # The store's limit is below the one checked at setxattr: the bytes
                # matter more than the extended attributes.
                log.warning("%s: the store refuses the extended attributes of %s (%s): "
                            "uploaded without them", self.description, key, short(exc))
                meta = {k: v for k, v in meta.items() if k != "xattr"}
                self.requests["put"] += 1
                await self._run(what, self._upload_with_meta, key, fd, meta, cuttable=False)
            return

        def upload() -> None:
            with self._fs.open_output_stream(key) as out:
                mine = self.upload_memory.share(out.flush)
                try:
                    off = 0
                    while True:
                        mine.take(UPLOAD_PART)
                        chunk = os.pread(fd, UPLOAD_PART, off)
                        if not chunk:
                            mine.give_back(UPLOAD_PART)  # not needed: the end
                            break
                        out.write(chunk)
                        off += len(chunk)
                    out.close()  # waits for the last parts: only then is the memory back
                finally:
                    mine.give_back()

        self.requests["put"] += 1
        await self._run(what, upload, cuttable=False)

    def _upload_with_meta(self, key: str, fd: int, meta: dict[str, str]) -> None:
        """`upload` with user metadata, in a worker thread (a retry starts it again)."""
        bucket, name = self._bucket_key(key)
        size = os.fstat(fd).st_size
        mine = self.upload_memory.share()  # one part at a time: nothing to settle
        if size <= min(_SINGLE_PUT, self.upload_memory.limit):
            mine.take(size)
            try:
                body = os.pread(fd, size, 0) if size else b""
                self._api.put_object(Bucket=bucket, Key=name, Body=body, Metadata=meta)
            finally:
                mine.give_back()
            return
        part = max(_PART, -(-size // 9000))  # S3 allows 10,000 parts
        upload_id = self._api.create_multipart_upload(Bucket=bucket, Key=name,
                                                      Metadata=meta)["UploadId"]
        try:
            parts = []
            for n, off in enumerate(range(0, size, part), start=1):
                mine.take(part)
                try:
                    answer = self._api.upload_part(Bucket=bucket, Key=name, UploadId=upload_id,
                                                   PartNumber=n, Body=os.pread(fd, part, off))
                finally:
                    mine.give_back()
                parts.append({"PartNumber": n, "ETag": answer["ETag"]})
            self._api.complete_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id,
                                                MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self._api.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)
            except _FAILURES:
                pass  # the store's lifecycle rules clean up what is left
            raise

    # -- stored attributes (S3: user metadata) ------------------------------
    async def head_meta(self, key: str, what: str, *, kind: str = "file") -> Stat | None:
        """The object at ``key`` with its ETag and the attributes its user metadata
        stores (a signed HEAD, "stat"), or None if there is none. ``kind`` "dir":
        ``key`` is a directory marker (``dir/``). `supports_meta` only."""
        reads = self._reads
        assert reads is not None
        bucket, name = self._bucket_key(key)
        url = reads.url(bucket, name)
        self.requests["stat"] += 1
        try:
            size, etag, headers = await self._run(what, reads.head, url, bounded=True)
        except FileNotFoundError:
            return None
        return self._answer_stat(size, etag, headers, kind)

    def _answer_stat(self, size: int, etag: str, headers: dict[str, str], kind: str) -> Stat:
        """The `Stat` an S3 answer (HEAD or GET) states: size, Last-Modified, ETag, and
        with `stored_attributes` what its user metadata stores (a stored mtime is shown;
        the version keeps Last-Modified, as a listing gives it)."""
        mtime_ns = _http_date_ns(headers.get("last-modified"))
        base = (self._attrs.dir(mtime_ns or self._attrs.started_ns) if kind == "dir"
                else self._attrs.file(size, mtime_ns or self._attrs.started_ns))
        base.mtime_known = bool(mtime_ns)
        base.etag = etag
        if not self._attrs.stored:
            return base
        meta = {k[11:]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}
        st = self._attrs.from_meta(base, meta)
        st.etag, st.mtime_known = etag, base.mtime_known or "mtime" in meta
        return st

    async def set_meta(self, key: str, meta: dict[str, str], what: str) -> str:
        """Replace the user metadata of object ``key`` (CopyObject onto itself with
        ``MetadataDirective=REPLACE``, "copy"); returns the new ETag ("" if none).

        The bytes stay; the ETag may change (a multipart object's does on S3): the
        old one is remembered as naming the same bytes (`current_etag`)."""
        bucket, name = self._bucket_key(key)
        self.requests["copy"] += 1
        answer = await self._run(what, lambda: self._api.copy_object(
            Bucket=bucket, Key=name, CopySource={"Bucket": bucket, "Key": name},
            Metadata=meta, MetadataDirective="REPLACE"))
        return plain_etag((answer.get("CopyObjectResult") or {}).get("ETag"))

    def note_same_bytes(self, key: str, old: str | None, new: str | None) -> None:
        """Object ``key`` of ETag ``old`` is now ``new`` with the same bytes (this
        mount changed its metadata only)."""
        if not old or not new or old == new:
            return
        if len(self._same_bytes) >= 10_000:
            self._same_bytes.clear()  # bounded; at worst an old open reads ESTALE
        self._same_bytes.setdefault(key, {})[old] = new

    def current_etag(self, key: str, etag: str | None) -> str | None:
        """The ETag that names the bytes of ``etag`` now (see `note_same_bytes`)."""
        aliases = self._same_bytes.get(key)
        for _ in range(64):
            if not aliases or etag not in aliases:
                break
            etag = aliases[etag]
        return etag

    def forget_same_bytes(self, key: str) -> None:
        """``key`` was replaced or removed: old opens must not follow it any more."""
        self._same_bytes.pop(key, None)

    async def put_bytes(self, key: str, data: bytes, meta: dict[str, str], what: str) -> None:
        """Write object ``key`` holding ``data`` with user metadata ``meta`` (one botocore
        PutObject, "put"; a symlink). `supports_meta` only."""
        bucket, name = self._bucket_key(key)
        self.requests["put"] += 1
        await self._run(what, lambda: self._api.put_object(Bucket=bucket, Key=name, Body=data,
                                                           Metadata=meta))

    async def get_small(self, key: str, limit: int, what: str) -> bytes:
        """The first ``limit`` bytes of object ``key`` (a symlink's target; "get")."""
        reads = self._reads
        assert reads is not None
        bucket, name = self._bucket_key(key)
        url = reads.url(bucket, name)
        self.requests["get"] += 1
        data: bytes = await self._run(what, reads.fetch, url, limit, bounded=True)
        return data

    async def download(self, key: str, fd: int, what: str) -> int:
        """Copy object ``key`` into local descriptor ``fd``; returns its size ("get")."""
        def download() -> int:
            off = 0
            with self._fs.open_input_stream(key) as src:
                while chunk := src.read(CHUNK):
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
            os.ftruncate(fd, off)
            return off

        self.requests["get"] += 1
        size: int = await self._run(what, download, cuttable=False)
        return size


# -- sources ------------------------------------------------------------------
class Source(NamedTuple):
    """What `resolve_source` makes of a URI."""

    fs: FileSystemSpec
    root: str
    description: str
    endpoint: str | None
    kind: str | None
    api: ApiFactory | None = None
    reads: ReadsFactory | None = None


def resolve_source(uri: str, s3opts: dict[str, Any]) -> Source:
    """The file system (or its factory), root and names of a source URI.

    ``s3://`` and ``gs://`` URIs are built here (see `ObjectStoreTier.from_uri`); other
    schemes go to `pyarrow.fs.FileSystem.from_uri` as they are.

    Raises:
        ValueError: an unknown option or URI parameter, or a URI pyarrow refuses.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() == "s3":
        factory, api, reads, root, desc, endpoint = _s3_factory(parts, s3opts)
        return Source(factory, root, desc, endpoint, "s3", api, reads)
    if parts.scheme.lower() == "gs":
        factory, root, desc, endpoint = _gcs_factory(parts, s3opts)
        return Source(factory, root, desc, endpoint, "gcs")
    if s3opts:
        raise ValueError(f"options {', '.join(sorted(s3opts))} apply to s3:// sources only")
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValueError(f"cannot use source {uri}: {short(exc)}") from None
    return Source(fs, root, uri, None, None)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _s3_factory(
    parts: SplitResult, opts: dict[str, Any]
) -> tuple[Callable[[], pafs.FileSystem], ApiFactory, ReadsFactory, str, str, str]:
    """The S3 file system factory, namespace client factory, versioned reads factory,
    root, description and endpoint of an s3:// URI."""
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
        "connect_timeout": float(conf.pop("connect_timeout", 2.0)),
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

    def api(region_name: str) -> Any:
        # The same endpoint, credentials, timeouts and addressing as pyarrow's client;
        # one attempt per call (`Store._run` retries). Without credentials botocore
        # reads the standard AWS chain, as the AWS SDK under pyarrow does.
        import botocore.config
        import botocore.session
        from botocore import UNSIGNED

        session = botocore.session.get_session()
        config: dict[str, Any] = {
            "connect_timeout": kwargs["connect_timeout"],
            "read_timeout": kwargs["request_timeout"],
            "retries": {"total_max_attempts": 1},
            "max_pool_connections": 16,
            "s3": {"addressing_style": "virtual" if kwargs.get("force_virtual_addressing")
                   or not endpoint else "path"},
        }
        if kwargs.get("anonymous"):
            config["signature_version"] = UNSIGNED
        if os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION") == "when_required":
            config["request_checksum_calculation"] = "when_required"
        return session.create_client(
            "s3", region_name=region or region_name,
            endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
            aws_access_key_id=kwargs.get("access_key"),
            aws_secret_access_key=kwargs.get("secret_key"),
            aws_session_token=kwargs.get("session_token"),
            verify=kwargs.get("tls_ca_file_path") or None,
            config=botocore.config.Config(**config),
        )

    def reads(region_name: str) -> SignedGets:
        # The same endpoint, credentials (botocore's chain without explicit keys),
        # timeouts and addressing as `api`.
        import botocore.credentials
        import botocore.session

        creds: Any = None
        if not kwargs.get("anonymous"):
            if kwargs.get("access_key"):
                creds = botocore.credentials.Credentials(
                    kwargs["access_key"], kwargs["secret_key"], kwargs.get("session_token"))
            else:
                creds = botocore.session.get_session().get_credentials()
        return SignedGets(
            scheme=scheme, endpoint=endpoint, region=region or region_name,
            virtual=bool(kwargs.get("force_virtual_addressing")), credentials=creds,
            connect_timeout=kwargs["connect_timeout"], request_timeout=kwargs["request_timeout"],
            pool=32, ca_file=kwargs.get("tls_ca_file_path") or None)

    return factory, api, reads, root, desc, shown


def _gcs_factory(parts: SplitResult, opts: dict[str, Any]) -> tuple[Callable[[], pafs.FileSystem], str, str, str]:
    """Build the GCS file system factory, root, description and endpoint of a gs:// URI.

    ``gs://bucket/prefix?endpoint_override=HOST:PORT&scheme=http&anonymous=true``;
    credentials come from Google's standard resolution (``GOOGLE_APPLICATION_CREDENTIALS``)
    unless ``anonymous``. ``retry_time_limit`` (whole seconds, default 1) bounds the GCS
    client's own retries of one request: the tier retries itself.
    """
    if "@" in parts.netloc:
        raise ValueError(f"gs source {parts.scheme}://***@...: a gs:// URI carries no "
                         "credentials (use GOOGLE_APPLICATION_CREDENTIALS, or anonymous=true)")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"gs source {parts.geturl()} names no bucket")
    other = sorted(set(opts) - _GCS_OPTIONS)
    if other:
        raise ValueError(f"options {', '.join(other)} do not apply to gs:// sources "
                         f"(they take {', '.join(sorted(_GCS_OPTIONS))})")
    conf: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _GCS_QUERY:
            raise ValueError(f"unknown parameter '{name}' in gs URI; allowed: {', '.join(sorted(_GCS_QUERY))}")
        conf[_GCS_QUERY[name]] = value
    conf.update(opts)
    prefix = unquote(parts.path).strip("/")
    root = f"{bucket}/{prefix}" if prefix else bucket

    endpoint = conf.get("endpoint") or None
    scheme = conf.get("scheme") or None
    if endpoint and "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
    endpoint = endpoint.rstrip("/") if endpoint else None
    scheme = scheme or "https"
    if scheme not in ("http", "https"):
        raise ValueError(f"gs source: scheme must be http or https, not {scheme!r}")
    limit = float(conf.get("retry_time_limit", 1))
    if limit < 1 or limit != int(limit):
        raise ValueError("gs source: retry_time_limit is whole seconds, at least 1")
    kwargs: dict[str, Any] = {
        "anonymous": _bool(conf.get("anonymous", False)),
        "scheme": scheme,
        "retry_time_limit": datetime.timedelta(seconds=int(limit)),
    }
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if conf.get("project_id"):
        kwargs["project_id"] = conf["project_id"]
    shown = f"{scheme}://{endpoint}" if endpoint else "Google Cloud Storage"

    def factory() -> pafs.FileSystem:
        return pafs.GcsFileSystem(**kwargs)

    return factory, root, f"gs://{root}", shown
