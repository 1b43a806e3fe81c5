"""Options of the object-store tier and the attributes they give objects.

Owns `ObjectStoreOptions` (the tier's settings, validated by name; the config
layer passes them as keyword arguments), `S3_OPTIONS` (the names that describe
the connection, handled by `store.resolve_source`) and `Attributes`, which turns
an object's size and mtime, or a directory's mtime, into a `Stat`, and reads
and writes the attributes an object stores in its metadata.

Without ``stored_attributes`` (or on stores other than ``s3://``) objects have
no mode, owner or times of their own: every file shows ``file_mode``, every
directory ``dir_mode``, and all of them the configured (or the daemon's) owner.
With it, the user metadata of an object (a directory: of its marker ``dir/``)
carries them in s3fs's convention, which rclone shares for the mtime:

    x-amz-meta-mode   st_mode in decimal, file type bits included (S_IFLNK: a symlink)
    x-amz-meta-uid    decimal
    x-amz-meta-gid    decimal
    x-amz-meta-mtime  seconds since the epoch, "SEC" or "SEC.NNNNNNNNN" (rclone
                      reads it as a float; s3fs as seconds and nanoseconds)
    x-amz-meta-atime, x-amz-meta-ctime   the same format (s3fs)

    x-amz-meta-xattr  extended attributes: URL-encoded JSON of name -> base64 value (s3fs)

A missing or unreadable value falls back to the configured one (the mtime: to
the store's Last-Modified), so objects other tools wrote show as before. S3 keeps
at most `META_LIMIT` bytes of user metadata per object (names and values).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat as stat_mod
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import quote, unquote

from ..capacity import Stat

# Options of the connection (handled by `ObjectStoreTier.from_uri`).
S3_OPTIONS = frozenset({
    "access_key", "secret_key", "session_token", "region", "endpoint", "scheme",
    "anonymous", "connect_timeout", "request_timeout", "sdk_max_attempts",
    "force_virtual_addressing", "tls_ca_file_path", "request_checksums",
})


@dataclass(frozen=True, slots=True)
class ObjectStoreOptions:
    """Tier options (see the package docstring); the config layer passes them by name."""

    max_threads: int = 16
    #: Bytes of file data all uploads in flight may hold in memory (see `store`).
    upload_memory: int = 64 * 1024 * 1024
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
    #: Wall-clock bound of one stat or ranged read, retries included (see `store`).
    read_timeout: float = 15.0
    #: No new attempt of any other request starts after this long (see `store`).
    retry_budget: float = 30.0
    #: While the store is down, how often a background probe asks it whether it is back.
    probe_interval: float = 5.0
    #: S3: tie every ranged read of an open to the ETag seen at open (see `file`);
    #: False reads with pyarrow's ``read_at``, tied to no version (faster, may mix).
    etag_reads: bool = True
    #: S3: mode, owner, times and extended attributes stored in each object's metadata
    #: (s3fs's keys), read with a HEAD per object, written by uploads and by
    #: chmod/chown/utimes/setxattr (a metadata-only copy); symbolic links as objects
    #: (see `namespace`).
    stored_attributes: bool = False

    @classmethod
    def make(cls, options: dict[str, Any]) -> ObjectStoreOptions:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"unknown object-store option(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed | S3_OPTIONS))}"
            )
        opts = cls(**options)
        if opts.max_threads < 1 or opts.retries < 1:
            raise ValueError("max_threads and retries must be at least 1")
        if opts.upload_memory < MIN_UPLOAD_MEMORY:
            raise ValueError("upload_memory must be at least 16MiB (one upload part "
                             "and the buffer it is read into)")
        if min(opts.stat_ttl, opts.negative_ttl, opts.list_ttl) < 0:
            raise ValueError("cache TTLs must not be negative")
        if min(opts.read_timeout, opts.retry_budget, opts.probe_interval) <= 0:
            raise ValueError("read_timeout, retry_budget and probe_interval must be positive")
        return opts


#: The least ``upload_memory``: one part of a botocore upload (16 MiB).
MIN_UPLOAD_MEMORY = 16 * 1024 * 1024

#: The user metadata keys of stored attributes (botocore's ``Metadata`` names; on
#: the wire ``x-amz-meta-<name>``).
META_KEYS = ("mode", "uid", "gid", "mtime", "atime", "ctime", "xattr")
#: What may hold a stored attribute's value (at most 20 digits, an optional fraction).
_MAX_ID = 2**32 - 1


#: S3's limit of user metadata per object: the UTF-8 bytes of every name and value.
META_LIMIT = 2048


def decode_xattrs(blob: str | None) -> dict[str, bytes]:
    """The extended attributes of an ``x-amz-meta-xattr`` value ({} if none or unreadable)."""
    if not blob:
        return {}
    try:
        raw = json.loads(unquote(blob))
        if not isinstance(raw, dict):
            return {}
        return {str(k): base64.b64decode(str(v), validate=True) for k, v in raw.items()}
    except (ValueError, TypeError, binascii.Error):
        return {}


def encode_xattrs(xattrs: dict[str, bytes]) -> str | None:
    """s3fs's ``x-amz-meta-xattr`` value of ``xattrs`` (None for none)."""
    if not xattrs:
        return None
    doc = {k: base64.b64encode(v).decode() for k, v in sorted(xattrs.items())}
    return quote(json.dumps(doc, separators=(",", ":")), safe="")


def meta_size(meta: dict[str, str]) -> int:
    """The bytes counted against `META_LIMIT`: every name (with its ``x-amz-meta-``
    prefix, as some servers count it) and value."""
    return sum(len(k.encode()) + 11 + len(v.encode()) for k, v in meta.items())


def format_time(ns: int) -> str:
    """``SEC`` or ``SEC.NNNNNNNNN``: a float for rclone, seconds + nanoseconds for s3fs."""
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}" if not frac else f"{sec}.{frac:09d}"


def parse_time(text: str | None) -> int | None:
    """Nanoseconds of a stored time (``SEC[.FRACTION]``), or None if unreadable."""
    if not text:
        return None
    sec, dot, frac = text.strip().partition(".")
    if not sec.lstrip("-").isdigit() or len(sec) > 15 or (dot and not frac.isdigit()):
        return None
    ns = int(sec) * 1_000_000_000
    if frac:
        ns += int(frac[:9].ljust(9, "0")) * (-1 if sec.startswith("-") else 1)
    return ns


def _parse_int(text: str | None, limit: int) -> int | None:
    if not text or not text.strip().isdigit() or len(text.strip()) > 20:
        return None
    value = int(text)
    return value if value <= limit else None


class Attributes:
    """Builds the `Stat` of an object or a directory from what a store reports."""

    def __init__(self, opts: ObjectStoreOptions, started_ns: int) -> None:
        self._file_mode = opts.file_mode
        self._dir_mode = opts.dir_mode
        self.uid = os.getuid() if opts.uid is None else opts.uid
        self.gid = os.getgid() if opts.gid is None else opts.gid
        #: When the tier was created: the mtime of directories the store gives none.
        self.started_ns = started_ns
        #: Whether objects store their attributes (``stored_attributes`` on a store that
        #: can: set by the tier once it knows the store).
        self.stored = False

    def file(self, size: int, mtime_ns: int, *, known: bool = True) -> Stat:
        # Whole seconds: a LIST reports milliseconds, a HEAD (Last-Modified)
        # only seconds. One object must show one mtime, and one cache version,
        # whichever request described it.
        # ``mtime_ns`` is the store's time (Last-Modified): it stays the version's
        # (`Stat.modified_ns`) when stored attributes show another mtime.
        mtime_ns -= mtime_ns % 1_000_000_000
        return Stat(
            st_mode=stat_mod.S_IFREG | self._file_mode, st_size=size, st_nlink=1,
            st_uid=self.uid, st_gid=self.gid, st_blocks=(size + 511) // 512,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
            attrs_known=known, modified_ns=mtime_ns,
        )

    def dir(self, mtime_ns: int, *, known: bool = True) -> Stat:
        return Stat(
            st_mode=stat_mod.S_IFDIR | self._dir_mode, st_size=0, st_nlink=2,
            st_uid=self.uid, st_gid=self.gid,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
            attrs_known=known,
        )

    def with_owner(self, st: Stat, mode: int, uid: int, gid: int) -> Stat:
        """``st`` showing ``mode`` (its permission bits; the type stays ``st``'s, but a
        symlink's) and owner ``uid``:``gid``."""
        kind = stat_mod.S_IFMT(mode) if stat_mod.S_ISLNK(mode) else stat_mod.S_IFMT(st.st_mode)
        out = replace(st, st_mode=kind | stat_mod.S_IMODE(mode), st_uid=uid, st_gid=gid,
                      attrs_known=True)
        if stat_mod.S_ISLNK(mode):
            out.st_nlink = 1
        return out

    def from_meta(self, st: Stat, meta: dict[str, str]) -> Stat:
        """``st`` (size, Last-Modified, ETag from a HEAD) with the attributes ``meta``
        (user metadata, names without ``x-amz-meta-``) stores; what it lacks or holds
        unreadable keeps ``st``'s value. The version stays ``st``'s: a stored mtime is
        shown, not compared (`Stat.modified_ns`)."""
        mode = _parse_int(meta.get("mode"), 0o177777)
        uid = _parse_int(meta.get("uid"), _MAX_ID)
        gid = _parse_int(meta.get("gid"), _MAX_ID)
        if mode is None or not (stat_mod.S_IMODE(mode) or stat_mod.S_IFMT(mode)):
            mode = st.st_mode
        elif stat_mod.S_ISLNK(mode) and not st.is_reg:
            mode = stat_mod.S_IFMT(st.st_mode) | stat_mod.S_IMODE(mode)  # a marker is no link
        out = self.with_owner(st, mode, st.st_uid if uid is None else uid,
                              st.st_gid if gid is None else gid)
        mtime = parse_time(meta.get("mtime"))
        if mtime is not None:
            out.st_mtime_ns = mtime
            out.st_atime_ns = out.st_ctime_ns = mtime
        out.xattr = meta.get("xattr") or None
        atime, ctime = parse_time(meta.get("atime")), parse_time(meta.get("ctime"))
        if atime is not None:
            out.st_atime_ns = atime
        if ctime is not None:
            out.st_ctime_ns = ctime
        return out

    @staticmethod
    def to_meta(st: Stat) -> dict[str, str]:
        """The user metadata that stores ``st``'s mode, owner and times."""
        meta = {
            "mode": str(st.st_mode), "uid": str(st.st_uid), "gid": str(st.st_gid),
            "mtime": format_time(st.st_mtime_ns), "atime": format_time(st.st_atime_ns),
            "ctime": format_time(st.st_ctime_ns),
        }
        if st.xattr:
            meta["xattr"] = st.xattr
        return meta
