"""Options of the object-store tier and the attributes they give objects.

Owns `ObjectStoreOptions` (the tier's settings, validated by name; the config
layer passes them as keyword arguments), `S3_OPTIONS` (the names that describe
the connection, handled by `store.resolve_source`) and `Attributes`, which turns
an object's size and mtime, or a directory's mtime, into a `Stat`. Objects have
no mode, owner or times of their own: every file shows ``file_mode``, every
directory ``dir_mode``, and all of them the configured (or the daemon's) owner.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass, fields
from typing import Any

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
        if min(opts.stat_ttl, opts.negative_ttl, opts.list_ttl) < 0:
            raise ValueError("cache TTLs must not be negative")
        if min(opts.read_timeout, opts.retry_budget, opts.probe_interval) <= 0:
            raise ValueError("read_timeout, retry_budget and probe_interval must be positive")
        return opts


class Attributes:
    """Builds the `Stat` of an object or a directory from what a store reports."""

    def __init__(self, opts: ObjectStoreOptions, started_ns: int) -> None:
        self._file_mode = opts.file_mode
        self._dir_mode = opts.dir_mode
        self.uid = os.getuid() if opts.uid is None else opts.uid
        self.gid = os.getgid() if opts.gid is None else opts.gid
        #: When the tier was created: the mtime of directories the store gives none.
        self.started_ns = started_ns

    def file(self, size: int, mtime_ns: int) -> Stat:
        # Whole seconds: a LIST reports milliseconds, a HEAD (Last-Modified)
        # only seconds. One object must show one mtime, and one cache version,
        # whichever request described it.
        mtime_ns -= mtime_ns % 1_000_000_000
        return Stat(
            st_mode=stat_mod.S_IFREG | self._file_mode, st_size=size, st_nlink=1,
            st_uid=self.uid, st_gid=self.gid, st_blocks=(size + 511) // 512,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
        )

    def dir(self, mtime_ns: int) -> Stat:
        return Stat(
            st_mode=stat_mod.S_IFDIR | self._dir_mode, st_size=0, st_nlink=2,
            st_uid=self.uid, st_gid=self.gid,
            st_atime_ns=mtime_ns, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
        )
