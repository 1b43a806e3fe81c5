"""The TOML configuration: schema, validation and the frozen settings it yields.

The schema is the set of dataclasses below; each field's metadata says its
kind and documents it. The same schema validates a file (`load_config`),
supplies defaults, and generates the ``tierfs.toml(5)`` man page
(`fusefs.manpages`), so the documentation cannot drift from the code.

Validation is strict: an unknown table or key, a wrong type or an impossible
value is a `ConfigError` naming the file, the line, the key and what is
allowed. `tomllib` keeps no positions, so `_Locator` finds lines by a light
scan of the text (headers and ``key =`` lines), which is enough to point at
the offending line.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .units import parse_duration, parse_size


class ConfigError(Exception):
    """A configuration the mount cannot use; the message is for the user."""


def _opt(default: Any, kind: str, doc: str, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc, "choices": choices})


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: str | None = _opt(None, "path", "Fast-tier directory (local NVMe). Created 0700. "
                           "Default: a per-mount directory under /var/cache/tierfs (root) or "
                           "$XDG_CACHE_HOME/tierfs.")
    size: int = _opt(parse_size("10GiB"), "size", "Fast-tier size limit.")
    verify: bool = _opt(True, "bool",
                        "Check every fast-tier read against the CRC-32C of each 16 KiB "
                        "piece it touches; a damaged piece is dropped, logged and fetched "
                        "again from the source. false reads only the bytes asked for and "
                        "trusts them (the checksums are still kept; measured cost of true in "
                        "docs/reliability.md).")
    dram: int = _opt(parse_size("512MiB"), "size", "DRAM page cache size; 0 disables it.")
    page_size: int = _opt(parse_size("4KiB"), "size",
                          "DRAM page size: a power of two from 4KiB to 1MiB.")
    chunk_size: int = _opt(parse_size("1MiB"), "size", "Fast-tier allocation and fetch unit.")
    remote_block: int = _opt(parse_size("64KiB"), "size",
                             "Object stores: a random read that misses DRAM fetches the "
                             "aligned block of this size around it in one ranged GET and "
                             "offers all of its pages to the DRAM cache. A multiple of "
                             "page_size, at most chunk_size; page_size turns it off.")
    readahead_memory: int = _opt(parse_size("256MiB"), "size",
                                 "Bytes the read-ahead buffers of all streams, and the pages "
                                 "pushed into the kernel's cache, may hold together. A "
                                 "stream still gets the chunk it reads; 0 turns read-ahead "
                                 "off.")
    walk_memory: int = _opt(parse_size("64MiB"), "size",
                            "Object stores: bytes the small files fetched ahead of a "
                            "directory walk (files opened in name order, each close "
                            "after the last) may hold; 0 turns walk-ahead off. A "
                            "directory whose files fetched ahead go unread backs off.")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str = _opt("workload_aware", "str", "Tiering policy, by name (see tierfs-policies).")
    sequential_cutoff: int = _opt(parse_size("256KiB"), "size",
                                  "Run length after which a stream is classified sequential.")
    readahead_max: int = _opt(parse_size("64MiB"), "size",
                              "Largest read-ahead window of a sequential stream.")
    fill_random_max: int = _opt(parse_size("1GiB"), "size",
                                "Object stores: a file of at most this size (and at most half "
                                "the fast tier) that is read at random is fetched whole into "
                                "the fast tier in the background, in large ranged GETs at "
                                "throughput priority, as rclone's full VFS cache and s3fs do; "
                                "later misses are then local reads. 0 turns it off.")
    mrc: bool = _opt(True, "bool",
                     "Keep live miss-ratio curves of each tier: the random requests of a "
                     "spatial sample of the keys (at most 1/128 of them) replayed through "
                     "shadow LRU, S3-FIFO and ARC caches at 0.25x to 4x the tier's size, "
                     "shown by tierfs stats as mrc.<policy>@<multiple>x (miss ratio in "
                     "thousandths). Measured at 0.6% of the daemon's CPU; false turns them off.")


@dataclass(frozen=True, slots=True)
class MountConfig:
    consistency: str = _opt("close-to-open", "enum",
                            "When cached data is checked against the source: on every open "
                            "(close-to-open), or never (immutable: the dataset never changes).",
                            ("close-to-open", "immutable"))
    entry_timeout: float = _opt(1.0, "duration",
                                "How long the kernel may cache names (on an object store at "
                                "least as long as the metadata cache would answer the same: "
                                "the rest of stat_ttl/list_ttl).")
    attr_timeout: float = _opt(1.0, "duration",
                               "How long the kernel may cache attributes (on an object store "
                               "at least as long as the metadata cache would answer the "
                               "same).")
    negative_timeout: float = _opt(1.0, "duration",
                                   "How long the kernel may cache 'no such file'.")
    xattrs: str = _opt("auto", "enum",
                       "Extended attributes: on (every getxattr/listxattr/setxattr/"
                       "removexattr goes to the source), off (the kernel is told once that "
                       "there are none and stops asking: ls -l and writes cost no xattr "
                       "round trip; callers get 'Operation not supported'), or auto (on "
                       "where the source keeps them: a local directory, an s3:// source "
                       "with stored_attributes; off elsewhere).", ("auto", "on", "off"))
    allow_other: bool = _opt(False, "bool", "Let users other than the mounting one in.")
    kernel_readahead: int = _opt(parse_size("1MiB"), "size",
                                 "Read-ahead of the kernel on this mount (its FUSE requests "
                                 "grow to this size, up to 1 MiB); 0 keeps the kernel's default "
                                 "(128 KiB). Needs root.")
    max_requests: int = _opt(64, "int",
                             "FUSE requests the daemon handles at once, from 16 to 1024. Each "
                             "keeps a request buffer of up to 1 MiB (the largest write the "
                             "kernel sends), so this bounds that memory at about max_requests "
                             "MiB; the kernel queues further requests.")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    endpoint: str | None = _opt(None, "str", "Object-store endpoint override (host:port).")
    region: str | None = _opt(None, "str", "Object-store region.")
    access_key: str | None = _opt(None, "str", "Access key; default: the store's environment.")
    secret_key: str | None = _opt(None, "str", "Secret key; default: the store's environment.")
    stat_ttl: float = _opt(60.0, "duration", "Object-store attribute cache lifetime.")
    negative_ttl: float = _opt(5.0, "duration", "Object-store negative lookup cache lifetime.")
    list_ttl: float = _opt(60.0, "duration", "Object-store directory listing cache lifetime.")
    list_after: int = _opt(2, "int",
                           "Object stores: a lookup of a name in a directory whose listing is "
                           "not cached is a HEAD request; the list_after-th such lookup in one "
                           "directory (within its listing's lifetime) lists the directory "
                           "instead, and the listing answers every later lookup there. 1 lists "
                           "on the first lookup; 0 never lists for a lookup.")
    max_dir_rename_keys: int = _opt(1000, "int",
                                    "Largest directory (in keys) that rename may copy.")
    listing_snapshot: str | None = _opt(
        None, "path",
        "Object stores: a file (Parquet) the cached directory listings are saved to at "
        "unmount (and by 'tierfs snapshot') and loaded from at mount, so that a remount of a "
        "bucket with millions of keys does not list it again. Loaded listings answer for "
        "list_ttl (their attributes for stat_ttl) from the load, then are fetched again; "
        "the mount's own changes update them. A missing, unreadable or foreign file is "
        "ignored with a warning; a symbolic link is not followed. Default: with a fast tier, "
        "'listing.parquet' in the cache directory, saved at unmount and every 5 minutes "
        "when the listings changed, and loaded only for when the store does not answer "
        "(stale-if-error): the mount still lists the store as if nothing were cached.")
    connect_timeout: float | None = _opt(
        None, "duration",
        "Object stores (s3://): how long one connection attempt may take before it counts "
        "as failed and is retried. Default: the source URI's connect_timeout, else 2s.")
    request_timeout: float | None = _opt(
        None, "duration",
        "Object stores (s3://): a request that receives no byte for this long fails and is "
        "retried (the S3 client's own timeout; it also ends a call abandoned at "
        "read_timeout). Default: the source URI's request_timeout, else 10s.")
    read_timeout: float = _opt(
        15.0, "duration",
        "Object stores: the longest a stat (HEAD) or a ranged read of the store may take, "
        "retries and the wait for a worker thread included. Then the reader gets EIO (one "
        "rate-limited warning in the log; 'unavailable' and 'timeouts' in the [capacity] "
        "stats) while the call, which cannot be interrupted, finishes in its thread; "
        "read-ahead waits no longer for a chunk. While the store does not answer "
        "(stale-if-error), lookups and listings answer from what the mount last knew (after "
        "a remount: from the listing snapshot), files whose data the fast tier holds keep "
        "reading, new files are refused, the rest gets EIO; one warning when this starts "
        "and one when the store answers again ('down', 'stale_served' in the [capacity] "
        "stats).")
    retry_budget: float = _opt(
        30.0, "duration",
        "Object stores: requests that may take long while they make progress (listings, "
        "uploads, copies, deletes) are not cut while the store answers, but no retry of "
        "one starts after this long since its first attempt, nor does its wait for a "
        "worker thread last longer.")
    dir_markers: bool = _opt(True, "bool",
                             "Write 'dir/' marker objects so that empty directories persist. "
                             "Set false for servers that store a marker as a file and then "
                             "hide the directory (rclone serve s3): mkdir then makes the "
                             "directory in this mount only, until a file is written below it.")
    etag_reads: bool = _opt(True, "bool",
                            "S3: tie every ranged read of an open to the ETag the open saw "
                            "(If-Match, and the answer's ETag and size checked): an object "
                            "another client replaced while it is open answers ESTALE, never "
                            "bytes of two versions. false reads with pyarrow, tied to no "
                            "version (about 0.8-1.0x the read rate on loopback; "
                            "docs/objectstore.md).")
    stored_attributes: bool = _opt(
        False, "bool",
        "S3: keep each object's mode, owner and times in its metadata, as s3fs does "
        "(x-amz-meta-mode, -uid, -gid, -mtime, -atime, -ctime; the mtime as rclone reads "
        "it too): uploads store them, chmod/chown/utimes update them (one metadata-only "
        "copy of the object onto itself), stat reads them (one HEAD per object, at most "
        "once per stat_ttl; a listing sends them concurrently), and permission checks use "
        "them. Directories keep theirs in their marker (dir_markers; without markers in "
        "this mount only). Also enables extended attributes (x-amz-meta-xattr, s3fs's "
        "encoding; 2 KiB of metadata per object: E2BIG/ENOSPC beyond) and symbolic links, "
        "stored as s3fs stores them (an object holding the target, its mode saying "
        "S_IFLNK). Objects without the "
        "metadata show the configured modes and owner. false: no HEAD per object; modes "
        "and owners are the configured ones and chmod/chown/utimes are ignored.")


@dataclass(frozen=True, slots=True)
class WriteConfig:
    mode: str = _opt("writeback", "enum",
                     "Object stores: how writes reach the store. writeback: a writable open "
                     "keeps the file in a spool in the cache directory (writeback/), a close "
                     "makes it durable there and returns, and a background destager uploads "
                     "it once the last descriptor is closed (retrying while the store is "
                     "down; pending writes are uploaded at the next mount after a crash). "
                     "writethrough: every close uploads the file before it returns (a close "
                     "of an O_TRUNC descriptor in which nothing was written yet does not: "
                     "an existing object is never replaced by an empty one on the way). "
                     "Local sources always write in place.", ("writeback", "writethrough"))
    durability: str = _opt("fast", "enum",
                           "writeback: what fsync and close promise. fast: the bytes are "
                           "durable in the cache directory (they survive a crash of the daemon "
                           "or the machine; losing the cache disk before the upload loses "
                           "them). capacity: fsync and close return once the object store "
                           "holds the file (a failed upload is answered EIO and still "
                           "retried in the background).", ("fast", "capacity"))
    destage_defer: float = _opt(10.0, "duration",
                                "writeback: while the mount's writers write, one upload runs at "
                                "a time; a second one waits, once its file is closed, at most "
                                "this long for them to pause (0.25 s without a write): writers "
                                "come first, so a checkpoint burst shares less CPU and disk "
                                "with its own uploads. 0: two uploads at once, beside the "
                                "writers.")
    upload_memory: int = _opt(parse_size("64MiB"), "size",
                              "Object stores: bytes of file data all uploads in flight may "
                              "hold in memory together (pyarrow keeps each 10 MiB part until "
                              "the store has it). An upload that would pass it waits for its "
                              "own parts to reach the store first. At least 16MiB.")


@dataclass(frozen=True, slots=True)
class StatsConfig:
    prometheus: str | None = _opt(None, "str", "host:port to serve Prometheus metrics on.")
    trace: str | None = _opt(None, "path", "Write an access trace (Parquet) to this file.")
    path_limit: int = _opt(4096, "int",
                           "Files 'tierfs stats --by-path' keeps figures for (about 1KiB "
                           "each). Past it the lightest file tracked makes room "
                           "(space-saving), so the files read most stay; 0 keeps none.")


@dataclass(frozen=True, slots=True)
class Rule:
    path: str = _opt("**", "str", "Glob over paths in the mount: '*' and '?' stay within a "
                     "directory, '**' crosses directories, '[abc]' and '[!abc]' match one "
                     "character of (or not of) a set.")
    pin: bool = _opt(False, "bool", "Keep on the fast tier and warm at mount (needs "
                     "cache = true).")
    cls: str | None = _opt(None, "enum", "Force the access class.", ("stream", "random"))
    cache: bool = _opt(True, "bool", "Whether the caches may hold this data at all.")

    def matches(self, path: str) -> bool:
        return _glob_re(self.path).match(path) is not None


# Field names that differ from their TOML key (Python keywords).
_RENAMED = {"cls": "class"}

SECTIONS: dict[str, type] = {
    "cache": CacheConfig,
    "policy": PolicyConfig,
    "mount": MountConfig,
    "source": SourceConfig,
    "write": WriteConfig,
    "stats": StatsConfig,
}


@dataclass(frozen=True, slots=True)
class Config:
    cache: CacheConfig = CacheConfig()
    policy: PolicyConfig = PolicyConfig()
    mount: MountConfig = MountConfig()
    source: SourceConfig = SourceConfig()
    write: WriteConfig = WriteConfig()
    stats: StatsConfig = StatsConfig()
    rules: tuple[Rule, ...] = ()

    def rule_for(self, path: str) -> Rule | None:
        """The first rule matching ``path`` (relative to the mount), if any."""
        for rule in self.rules:
            if rule.matches(path):
                return rule
        return None


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def _glob_re(pattern: str) -> re.Pattern[str]:
    """Compile a glob where ``*`` stays within a directory and ``**`` crosses them."""
    rx = _GLOB_CACHE.get(pattern)
    if rx is None:
        out, i = [], 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[":
                j = i + 1
                if j < len(pattern) and pattern[j] == "!":
                    j += 1
                if j < len(pattern) and pattern[j] == "]":
                    j += 1  # a ']' first in a set is a member
                end = pattern.find("]", j)
                if end < 0:
                    raise ValueError(f"unclosed '[' at character {i + 1} of {pattern!r}; a "
                                     f"set is [abc] or [!abc] (a literal '[' is [[])")
                body = pattern[i + 1:end]
                neg = body.startswith("!")
                body = body[1:] if neg else body
                members = "".join("\\" + c if c in "\\^[&~|" else c for c in body)
                out.append(f"(?!/)[{'^' if neg else ''}{members}]")
                i = end + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        rx = _GLOB_CACHE[pattern] = re.compile("".join(out) + r"\Z")
    return rx


def toml_key(f: dataclasses.Field[Any]) -> str:
    return _RENAMED.get(f.name, f.name)


class _Locator:
    """Finds the line of a table or key in TOML text (best effort)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    _KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_\-]+)\s*=')

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, int, str], int] = {}
        table, index, counts = "", 0, {}
        for no, line in enumerate(text.splitlines(), 1):
            m = self._HEADER.match(line)
            if m:
                table = m.group(2).strip().strip('"')
                if m.group(1) == "[[":
                    counts[table] = counts.get(table, -1) + 1
                    index = counts[table]
                else:
                    index = 0
                self.lines.setdefault((table, index, ""), no)
                continue
            k = self._KEY.match(line)
            if k:
                self.lines.setdefault((table, index, k.group(1).strip('"')), no)

    def line(self, table: str, key: str = "", index: int = 0) -> int | None:
        return self.lines.get((table, index, key)) or self.lines.get((table, index, ""))


def _convert(kind: str, value: Any, choices: tuple[str, ...]) -> Any:
    if kind == "size":
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise ValueError("expected a size such as 4096 or \"4GiB\"")
        return parse_size(value)
    if kind == "duration":
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            raise ValueError("expected a duration such as 30 or \"500ms\"")
        return parse_duration(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError("expected a non-negative integer")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if kind == "enum" and value not in choices:
        raise ValueError(f"expected one of: {', '.join(choices)}")
    return value


def _build(cls: type, data: Any, where: str, table: str, index: int,
           loc: _Locator, fname: str) -> Any:
    def err(key: str, msg: str) -> ConfigError:
        line = loc.line(table, key, index)
        pos = f"{fname}:{line}" if line else fname
        return ConfigError(f"{pos}: {where}{'.' + key if key else ''}: {msg}")

    if not isinstance(data, dict):
        raise err("", "expected a table")
    fields = {toml_key(f): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            raise err(key, f"unknown key; allowed: {', '.join(sorted(fields))}")
        try:
            kwargs[f.name] = _convert(f.metadata["kind"], value, f.metadata["choices"])
        except ValueError as exc:
            raise err(key, str(exc)) from None
    try:
        obj = cls(**kwargs)
        _check(obj)
    except ValueError as exc:
        key, _, msg = str(exc).partition(": ")
        raise err(key if key in fields else "", msg or str(exc)) from None
    return obj


def _check(obj: Any) -> None:
    """Cross-field checks; raise ValueError("key: message")."""
    if isinstance(obj, CacheConfig):
        ps = obj.page_size
        if ps & (ps - 1) or not 4096 <= ps <= 1 << 20:
            raise ValueError("page_size: must be a power of two from 4KiB to 1MiB")
        if obj.chunk_size < ps or obj.chunk_size % ps:
            raise ValueError("chunk_size: must be a multiple of page_size")
        if obj.remote_block < ps or obj.remote_block % ps or obj.remote_block > obj.chunk_size:
            raise ValueError("remote_block: must be a multiple of page_size, at most chunk_size")
    if isinstance(obj, StatsConfig) and obj.prometheus is not None and \
            not re.fullmatch(r"[\w.\-\[\]:]*:\d{1,5}", obj.prometheus):
        raise ValueError("prometheus: expected host:port, e.g. \"127.0.0.1:9100\"")
    if isinstance(obj, CacheConfig) and obj.size < obj.chunk_size:
        raise ValueError("size: must be at least chunk_size "
                         f"({obj.chunk_size} bytes), e.g. \"10GiB\"")
    if isinstance(obj, MountConfig) and not 16 <= obj.max_requests <= 1024:
        raise ValueError("max_requests: must be from 16 to 1024")
    if isinstance(obj, WriteConfig) and obj.upload_memory < parse_size("16MiB"):
        raise ValueError("upload_memory: must be at least 16MiB (one upload part and the "
                         "buffer it is read into), e.g. \"64MiB\"")
    if isinstance(obj, PolicyConfig) and obj.sequential_cutoff <= 0:
        raise ValueError("sequential_cutoff: must be positive, e.g. \"256KiB\"")
    if isinstance(obj, Rule):
        if not obj.path:
            raise ValueError("path: must not be empty")
        try:
            _glob_re(obj.path)
        except (ValueError, re.error) as exc:
            raise ValueError(f"path: not a valid glob: {exc}") from None
        if obj.pin and not obj.cache:
            raise ValueError("pin: a pinned rule keeps its files in the fast tier; "
                             "cache = false forbids that (drop one of them)")


def parse_config(text: str, fname: str = "<config>", *, machine: bool = False) -> Config:
    """Validate TOML text into a `Config`; with ``machine``, also against this machine
    (a ``dram`` larger than its memory).

    Raises:
        ConfigError: the text is not valid TOML or not a valid configuration.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        msg = re.sub(r"\s*\(at line.*\)", "", str(exc))
        raise ConfigError(f"{fname}:{m.group(1) if m else '?'}: invalid TOML: {msg}") from None
    loc = _Locator(text)
    allowed = sorted([*SECTIONS, "rule"])
    parts: dict[str, Any] = {}
    for table, value in data.items():
        if table == "rule":
            if not isinstance(value, list):
                line = loc.line("rule")
                raise ConfigError(f"{fname}:{line}: rule: use [[rule]] tables")
            parts["rules"] = tuple(
                _build(Rule, item, f"rule[{i}]", "rule", i, loc, fname)
                for i, item in enumerate(value))
        elif table in SECTIONS:
            parts[table] = _build(SECTIONS[table], value, table, table, 0, loc, fname)
        else:
            line = loc.line(table) or loc.line("", table)
            raise ConfigError(f"{fname}:{line}: unknown table [{table}]; allowed: "
                              f"{', '.join(allowed)}")
    cfg = Config(**parts)
    if machine and "dram" in data.get("cache", {}):
        from .memory import MemoryDomain
        from .units import format_size

        have = MemoryDomain().bytes()
        if cfg.cache.dram > have:
            raise ConfigError(f"{fname}:{loc.line('cache', 'dram')}: cache.dram: "
                              f"{format_size(cfg.cache.dram)} is more than the memory of this "
                              f"machine (or cgroup), {format_size(have)}")
    return cfg


def load_config(path: str | None) -> Config:
    """Read and validate a config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    return parse_config(text, path, machine=True)


def with_overrides(cfg: Config, section: str, **values: Any) -> Config:
    """A copy of ``cfg`` with some keys of one section replaced (command-line options)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                      **values)})


__all__ = ["Config", "ConfigError", "Rule", "SECTIONS", "load_config", "parse_config",
           "with_overrides"]
