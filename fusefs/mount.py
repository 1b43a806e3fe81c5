"""Wires one mount together and runs it until it is unmounted.

`serve` builds the capacity tier, the engine and the operations from a
validated `Config`, mounts with pyfuse3, runs the FUSE loop, the control
server and the signal handler in one nursery, and on the way out (unmount,
SIGTERM, SIGINT, an error) closes everything in reverse order. The caller (the
CLI) has already checked the arguments; what can still fail here (the source,
FUSE itself) is raised as `MountError` with a message and an exit code.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import signal
import stat
import sys
import tempfile
from contextlib import AsyncExitStack
from typing import Any, Callable

import pyfuse3
import trio

from .catalog import CatalogError
from .classifier import Classifier
from .config import Config, ConfigError
from .exits import (  # noqa: F401  (re-exported: documented in tierfs(1))
    EXIT_CONFIG, EXIT_FAILURE, EXIT_FUSE, EXIT_MOUNTPOINT, EXIT_OK, EXIT_SOURCE, EXIT_USAGE,
    MountError)
from .control import ControlServer
from . import prometheus
from .engine import Engine
from .migrator import Migrator, clean_path
from .operations import Operations, Timeouts
from .memory import limit_malloc_arenas
from .pagecache import PageCache
from .policies import get_policy
from .access import DramKey, FastKey, Override
from .policies.base import Tier
from .policies.mrc import MOUNT_MAX_RATE, ShadowMRC
from .pathstats import PathStats
from .stats import Stats
from .tiers import open_capacity
from .tiers.capacity import CapacityTier, TierUnavailable
from .tiers.fast import FastTier
from .trace import TraceRecorder

log = logging.getLogger(__name__)

#: The listing snapshot of a mount with a fast tier and no [source] listing_snapshot.
DEFAULT_SNAPSHOT = "listing.parquet"
#: How often a changed listing cache is saved to the snapshot while mounted, in seconds.
SNAPSHOT_INTERVAL = 300.0


def default_cache_dir(mountpoint: str) -> str:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    if os.geteuid() == 0:
        base = "/var/cache/tierfs"
    else:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                            os.path.expanduser("~/.cache"), "tierfs")
    return os.path.join(base, key)


#: The file that makes a directory a tierfs cache; tierfs writes into no other directory.
CACHE_MARKER = "TIERFS-CACHE"
_MARKER_TEXT = b"tierfs cache directory (format 1): managed by tierfs; see tierfs(8), fsck\n"
#: What caches of tierfs versions before the marker held (they are adopted).
_LEGACY_NAMES = frozenset({"catalog.db", "catalog.db-wal", "catalog.db-shm", "data", "lock",
                           "tierfs.log"})


def prepare_cache_dir(path: str) -> str:
    """Make ``path`` a tierfs cache directory, or check that it already is one.

    A new directory is created 0700 with the marker file. An existing directory is used
    only if it holds the marker (or is a cache of an older tierfs, which gets one), or is
    empty; anything else is refused, so a mistyped ``--cache`` never makes tierfs delete or
    chmod what it did not write. The mode of a directory tierfs did not create is never
    changed: one that other users can write to is refused instead.
    """
    path = os.path.abspath(path)
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise MountError(f"cache directory {path} is not a directory", EXIT_USAGE)
        if st.st_uid != os.geteuid():
            raise MountError(f"cache directory {path} belongs to uid {st.st_uid}, not to you",
                             EXIT_USAGE)
        if st.st_mode & 0o022:
            raise MountError(f"cache directory {path} can be written by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); give a directory of your own "
                             f"(tierfs creates a new one 0700)", EXIT_USAGE)
        names = set(os.listdir(path))
        if names and CACHE_MARKER not in names and not (
                "catalog.db" in names and names <= _LEGACY_NAMES):
            raise MountError(f"cache directory {path} is not empty and is not a tierfs cache "
                             f"(no {CACHE_MARKER} file); give a new or empty directory",
                             EXIT_USAGE)
        # A directory we cannot write (read-only file system, no permission) fails
        # here, with the reason, not later in the daemon.
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
        if CACHE_MARKER in names:
            return path
        fd = os.open(os.path.join(path, CACHE_MARKER),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _MARKER_TEXT)
        finally:
            os.close(fd)
    except OSError as exc:
        raise MountError(f"cache directory {path}: {exc.strerror}", EXIT_USAGE) from None
    return path


def source_options(cfg: Config) -> dict[str, Any]:
    """Options for object-store tiers from the [source] table."""
    s = cfg.source
    opts: dict[str, Any] = {
        "stat_ttl": s.stat_ttl,
        "negative_ttl": s.negative_ttl,
        "list_ttl": s.list_ttl,
        "list_after": s.list_after,
        "max_dir_rename_keys": s.max_dir_rename_keys,
        "dir_markers": s.dir_markers,
        "etag_reads": s.etag_reads,
        "stored_attributes": s.stored_attributes,
        "read_timeout": s.read_timeout,
        "retry_budget": s.retry_budget,
        "upload_memory": cfg.write.upload_memory,
    }
    for key in ("endpoint", "region", "access_key", "secret_key", "connect_timeout",
                "request_timeout"):
        if getattr(s, key) is not None:
            opts[key] = getattr(s, key)
    if cfg.cache.dir:
        # Write spools beside the cache (private, one mount per cache dir), not in /tmp.
        opts["spool_dir"] = os.path.join(cfg.cache.dir, "spool")
    return opts


def fuse_options(cfg: Config, mountpoint: str, source: str) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts.add("fsname=tierfs")
    opts.add("subtype=tierfs")
    if cfg.mount.allow_other:
        opts.add("allow_other")
    return opts


async def open_source(source: str, cfg: Config, snapshot: str | None = None) -> CapacityTier:
    """Build and start the capacity tier.

    A store that does not answer is served from its listing ``snapshot`` if one
    exists (stale-if-error from the start, one warning); without one the mount
    fails with `EXIT_SOURCE`.
    """
    try:
        tier = open_capacity(source, **source_options(cfg))
    except OSError as exc:
        raise MountError(f"source {source}: {exc.strerror or exc}", EXIT_SOURCE) from None
    except ValueError as exc:  # pyarrow's answer to a URI it cannot parse
        raise MountError(f"source {source}: {exc}", EXIT_SOURCE) from None
    try:
        await tier.start()
    except TierUnavailable as exc:
        why = exc.strerror or str(exc)
        if not (tier.supports_snapshots and snapshot and _regular_file(snapshot)):
            raise MountError(f"source {source}: {why}; no listing snapshot to serve from "
                             f"while it is down{f' (none at {snapshot})' if snapshot else ''}",
                             EXIT_SOURCE) from None
        try:
            await tier.start_offline(exc)
        except OSError:
            raise MountError(f"source {source}: {why}", EXIT_SOURCE) from None
        log.warning("source %s does not answer: mounting from the listing snapshot %s "
                    "and the fast tier", tier.description, snapshot)
    except OSError as exc:
        raise MountError(f"source {source}: {exc.strerror or exc}", EXIT_SOURCE) from None
    except ValueError as exc:
        raise MountError(f"source {source}: {exc}", EXIT_SOURCE) from None
    return tier


def _regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def snapshot_file(cfg: Config) -> tuple[str | None, bool]:
    """The listing snapshot of a mount, and whether the config named it.

    Without ``[source] listing_snapshot``, a mount with a fast tier keeps one in
    its cache directory (`DEFAULT_SNAPSHOT`): loaded only for when the store
    does not answer (stale-if-error), saved at unmount and now and then.
    """
    if cfg.source.listing_snapshot:
        return cfg.source.listing_snapshot, True
    if cfg.cache.dir and cfg.cache.size > 0:
        return os.path.join(cfg.cache.dir, DEFAULT_SNAPSHOT), False
    return None, False


async def serve(source: str, mountpoint: str, cfg: Config, *,
                ready: Callable[[], None] | None = None) -> None:
    """Mount ``source`` at ``mountpoint`` and serve until unmounted or signalled."""
    # What the daemon writes for itself (catalog, logs, snapshots, traces) is the
    # mounting user's alone; files made in the source get their requested mode
    # explicitly (tiers/posix.py), since the kernel applied the caller's umask already.
    os.umask(0o077)
    limit_malloc_arenas()  # before the worker threads: see fusefs/memory.py
    async with AsyncExitStack() as stack:
        snapshot, configured = snapshot_file(cfg)
        capacity = await open_source(source, cfg, snapshot)
        stack.push_async_callback(capacity.close)
        if not capacity.supports_snapshots:
            if configured:
                log.warning("listing_snapshot ignored: %s keeps no listing cache",
                            capacity.description)
            snapshot = None
        if snapshot:
            offline = bool(capacity.statistics().get("down"))
            # A snapshot the config names answers as a fresh listing; the default one
            # only for when the store does not answer.
            loaded = await load_listing_snapshot(capacity, snapshot, fresh=configured)
            if offline and not loaded:
                raise MountError(f"source {source} does not answer and the listing snapshot "
                                 f"{snapshot} cannot be used", EXIT_SOURCE)
            # Pushed after capacity.close, so it runs before it (and after the unmount).
            stack.push_async_callback(save_listing_snapshot, capacity, snapshot)
        stats = Stats()
        engine = build_engine(capacity, cfg, stats)
        stack.push_async_callback(engine.close)
        if engine.fast is not None:
            try:
                await engine.fast.open()
            except (OSError, CatalogError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise MountError(f"fast tier {cfg.cache.dir}: {why}", EXIT_USAGE) from None
            stack.push_async_callback(engine.fast.close)
        if capacity.supports_writeback and cfg.write.mode == "writeback" and cfg.cache.dir:
            # Before the mount serves: what a crash left pending is shown and queued.
            try:
                await capacity.start_writeback(
                    cfg.cache.dir, durability=cfg.write.durability, stats=stats,
                    take_lock=engine.fast is None, calm=engine.sched.wait_calm,
                    defer_max=cfg.write.destage_defer)
            except (OSError, CatalogError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise MountError(f"write-back in {cfg.cache.dir}: {why}", EXIT_USAGE) from None
            # Runs after the unmount and before the fast tier lets the cache lock go: a
            # second mount must not take over spools this one is still uploading.
            stack.push_async_callback(capacity.stop_writeback)
        m = cfg.mount
        immutable = m.consistency == "immutable"
        timeouts = Timeouts(
            entry=3600.0 if immutable else m.entry_timeout,
            attr=3600.0 if immutable else m.attr_timeout,
            negative=m.negative_timeout,
            immutable=immutable,
        )
        ops = Operations(capacity, engine, timeouts=timeouts,
                         override_for=overrides_from(cfg),
                         xattrs=capacity.has_xattrs if m.xattrs == "auto" else m.xattrs == "on",
                         forget_entry=_forget_entry)
        stats.sources["mount"] = lambda: {
            "source": capacity.description,
            "mountpoint": mountpoint,
            "pid": os.getpid(),
            "inodes": len(ops.inodes),
            "handles": len(ops.handles),
        }
        stats.sources["capacity"] = capacity.statistics
        if cfg.stats.prometheus:
            token = trio.lowlevel.current_trio_token()
            try:
                server = prometheus.serve(
                    cfg.stats.prometheus,
                    lambda: trio.from_thread.run_sync(stats.snapshot, trio_token=token))
            except OSError as exc:
                raise MountError(f"prometheus endpoint {cfg.stats.prometheus}: {exc.strerror}",
                                 EXIT_USAGE) from None
            stack.callback(server.shutdown)
        # Resolve everything that touches the mount point before mounting:
        # after init, a stat of it would ask this (not yet serving) process.
        control = ControlServer(mountpoint)
        try:
            pyfuse3.init(ops, mountpoint, fuse_options(cfg, mountpoint, source))
        except RuntimeError as exc:
            raise MountError(f"cannot mount at {mountpoint}: {exc} "
                             f"(is /dev/fuse available and fuse3 installed?)", EXIT_FUSE) from None
        unmounted = False

        def close_fuse() -> None:
            if not unmounted:
                pyfuse3.close(unmount=True)

        stack.callback(close_fuse)

        async def on_stats(req: dict[str, Any]) -> dict[str, Any]:
            return {"stats": stats.snapshot()}

        async def on_by_path(req: dict[str, Any]) -> dict[str, Any]:
            limit = req.get("limit", 20)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ValueError("limit must be a non-negative integer")
            return {"by_path": engine.paths.snapshot(limit, str(req.get("sort", "bytes")))}

        async def on_ping(req: dict[str, Any]) -> dict[str, Any]:
            return {"pid": os.getpid(), "source": capacity.description}

        async def on_snapshot(req: dict[str, Any]) -> dict[str, Any]:
            # Without a FILE, only the configured snapshot: the default one is for outages.
            target = req.get("path") or (snapshot if configured else None)
            if not target:
                raise OSError(errno.EINVAL, "no snapshot file: give one, or set "
                                            "[source] listing_snapshot")
            entries = await capacity.save_snapshot(os.path.abspath(target))
            return {"path": os.path.abspath(target), "entries": entries}

        control.register("stats", on_stats)
        control.register("by_path", on_by_path)
        control.register("ping", on_ping)
        control.register("snapshot", on_snapshot)
        if engine.fast is not None:
            fast = engine.fast

            async def on_fsck(req: dict[str, Any]) -> dict[str, Any]:
                from .fsck import check_live

                return {"report": (await check_live(fast)).to_dict()}

            control.register("fsck", on_fsck)
        migrator = Migrator(engine, capacity, cfg) if engine.fast is not None else None
        if migrator is not None:
            register_migrator(control, migrator)

        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            if engine.fast is not None:
                nursery.start_soon(engine.fast.run)
            await nursery.start(capacity.run_writeback)
            if migrator is not None:
                nursery.start_soon(migrator.warm_pins)
            if snapshot:
                nursery.start_soon(save_snapshots_periodically, capacity, snapshot)
            await nursery.start(control.serve)
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            if cfg.mount.kernel_readahead:
                nursery.start_soon(_tune_kernel, mountpoint, cfg.mount.kernel_readahead)
            log.info("mounted %s at %s", capacity.description, mountpoint)
            if ready is not None:
                ready()
            await pyfuse3.main(min_tasks=4, max_tasks=cfg.mount.max_requests)
            # main() returns when the kernel ends the session (fusermount -u).
            unmounted = True
            pyfuse3.close(unmount=False)
            nursery.cancel_scope.cancel()
    log.info("unmounted %s", mountpoint)


async def load_listing_snapshot(capacity: CapacityTier, path: str, *,
                                fresh: bool = True) -> bool:
    """Serve the listings saved at the last unmount; a bad or missing file only warns.

    Returns whether the file was loaded.
    """
    try:
        n = await capacity.load_snapshot(path, fresh=fresh)
    except FileNotFoundError:
        log.info("no listing snapshot at %s yet: listing the store as needed", path)
        return False
    except OSError as exc:
        log.warning("listing snapshot %s not used: %s", path, exc.strerror or exc)
        return False
    log.info("loaded %d entries from listing snapshot %s%s", n, path,
             "" if fresh else " (served only while the store does not answer)")
    return True


async def save_listing_snapshot(capacity: CapacityTier, path: str) -> None:
    try:
        n = await capacity.save_snapshot(path)
    except OSError as exc:
        log.warning("listing snapshot %s not saved: %s", path, exc.strerror or exc)
        return
    log.info("saved %d entries to listing snapshot %s", n, path)


async def save_snapshots_periodically(capacity: CapacityTier, path: str,
                                      interval: float = SNAPSHOT_INTERVAL) -> None:
    """Save the listing snapshot every ``interval`` seconds when the listings changed,
    so a crash (no unmount) still leaves a recent one for stale-if-error."""
    saved = capacity.snapshot_generation
    while True:
        await trio.sleep(interval)
        now = capacity.snapshot_generation
        if now != saved:
            saved = now
            await save_listing_snapshot(capacity, path)


def build_engine(capacity: CapacityTier, cfg: Config, stats: Stats) -> Engine:
    """The engine with the classifier, policy and DRAM tier the config asks for."""
    try:
        policy_cls = get_policy(cfg.policy.name)
    except LookupError as exc:
        raise ConfigError(f"policy.name: {exc}") from None
    # One instance per tier, each with its own key type: a key of one tier can
    # never reach the other's bookkeeping.
    policy = policy_cls(cfg.cache.size, tier=Tier.FAST, object_size=cfg.cache.chunk_size,
                        max_readahead=cfg.policy.readahead_max,
                        fill_max=cfg.policy.fill_random_max, key_type=FastKey)
    pagecache = None
    dram_policy = None
    if cfg.cache.dram >= cfg.cache.page_size:
        pagecache = PageCache(cfg.cache.dram, cfg.cache.page_size)
        # DRAM eviction belongs to the C cache; this instance only answers admission,
        # once per fetched block.
        dram_policy = policy_cls(cfg.cache.dram, tier=Tier.DRAM,
                                 object_size=max(cfg.cache.remote_block, cfg.cache.page_size),
                                 max_readahead=cfg.policy.readahead_max, key_type=DramKey)
    fast = None
    if cfg.cache.size > 0 and cfg.cache.dir:
        fast = FastTier(cfg.cache.dir, policy=policy, stats=stats, verify=cfg.cache.verify)
    # Live miss-ratio curves, fed by the engine with every random request that reaches a
    # tier (not by the policy, which sees the fast tier's hits and admissions only).
    mrc_dram = mrc_fast = None
    if cfg.policy.mrc:
        if pagecache is not None:
            mrc_dram = ShadowMRC(cfg.cache.dram // max(cfg.cache.remote_block, cfg.cache.page_size),
                                 max_rate=MOUNT_MAX_RATE)
        if fast is not None:
            mrc_fast = ShadowMRC(cfg.cache.size // cfg.cache.chunk_size, max_rate=MOUNT_MAX_RATE)
    trace = None
    if cfg.stats.trace:
        try:
            trace = TraceRecorder(cfg.stats.trace)
        except OSError as exc:  # e.g. its directory is not writable by us
            raise MountError(f"trace file {cfg.stats.trace}: {exc.strerror or exc}",
                             EXIT_USAGE) from None
    return Engine(capacity, stats=stats, trace=trace,
                  classifier=Classifier(sequential_cutoff=cfg.policy.sequential_cutoff),
                  policy=policy, dram_policy=dram_policy, pagecache=pagecache, fast=fast,
                  immutable=cfg.mount.consistency == "immutable",
                  chunk_size=cfg.cache.chunk_size, remote_block=cfg.cache.remote_block,
                  stream_budget=cfg.cache.readahead_memory, walk_budget=cfg.cache.walk_memory,
                  kernel_invalidate=pyfuse3.invalidate_inode,
                  kernel_push=pyfuse3.notify_store,
                  mrc_dram=mrc_dram, mrc_fast=mrc_fast,
                  paths=PathStats(cfg.stats.path_limit, [r.path for r in cfg.rules]))


def register_migrator(control: ControlServer, migrator: Migrator) -> None:
    """Control requests that move data: warm (and its progress), evict, pin, unpin (one
    path each)."""

    async def on_warm(req: dict[str, Any]) -> dict[str, Any]:
        job = req.get("job")
        parallel = req.get("parallel")
        if parallel is not None and (not isinstance(parallel, int) or not 1 <= parallel <= 256):
            raise OSError(errno.EINVAL, f"parallel must be 1 to 256, not {parallel!r}")
        return await migrator.warm(clean_path(req["path"]), pinned=False,
                                   job=str(job) if job else None, parallel=parallel)

    async def on_warm_progress(req: dict[str, Any]) -> dict[str, Any]:
        return migrator.progress(str(req["job"]))

    async def on_evict(req: dict[str, Any]) -> dict[str, Any]:
        return await migrator.evict(clean_path(req["path"]), unpin=bool(req.get("unpin")))

    async def on_pin(req: dict[str, Any]) -> dict[str, Any]:
        return await migrator.pin(clean_path(req["path"]))

    async def on_unpin(req: dict[str, Any]) -> dict[str, Any]:
        return await migrator.unpin(clean_path(req["path"]))

    async def on_cached(req: dict[str, Any]) -> dict[str, Any]:
        return migrator.cached(clean_path(req["path"]))

    control.register("warm", on_warm)
    control.register("warm_progress", on_warm_progress)
    control.register("cached", on_cached)
    control.register("evict", on_evict)
    control.register("pin", on_pin)
    control.register("unpin", on_unpin)


def overrides_from(cfg: Config) -> Callable[[bytes], tuple[int, Override] | None]:
    """Map a path in the mount to (index, override) of the first matching [[rule]]."""
    overrides = [Override(pin=r.pin, access_class=r.cls, cache=r.cache) for r in cfg.rules]

    def override_for(path: bytes) -> tuple[int, Override] | None:
        text = path.decode("utf-8", "surrogateescape")
        for i, rule in enumerate(cfg.rules):
            if rule.matches(text):
                return i, overrides[i]
        return None

    return override_for


def _mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the mount at ``mountpoint``, from /proc/self/mountinfo.

    Not from stat(): that would ask this process, which does not serve yet.
    """
    target = os.path.abspath(mountpoint)  # realpath would lstat the mount: a deadlock
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last match is the top of a stack of mounts
        fields = line.split()
        # mountinfo escapes space, tab, newline and backslash as \\ooo.
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if mnt == target:
            found = fields[2]
    return found


async def _forget_entry(parent: int, name: bytes) -> None:
    """Have the kernel drop its entry ``name`` in directory ``parent``; returns once it
    has. In a thread: the kernel takes the directory's lock, which a process waiting
    on another request of this mount may hold."""
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name)
    except OSError as exc:  # ENOENT: the kernel held no such entry
        log.debug("kernel entry %r in %d not dropped: %s", name, parent, exc)


def set_kernel_readahead(mountpoint: str, nbytes: int) -> None:
    """Set the kernel's read-ahead for this mount (its bdi), so that a
    sequential reader's requests reach the daemon in 1 MiB pieces instead of
    128 KiB: eight times fewer round trips through Python per byte."""
    dev = _mount_device(mountpoint)
    if dev is None:
        log.debug("kernel read-ahead: mount of %s not found", mountpoint)
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(max(nbytes // 1024, 4)))
    except OSError as exc:  # not root, or sysfs read-only: keep the default
        log.info("kernel read-ahead left at its default: %s", exc.strerror)


async def _tune_kernel(mountpoint: str, readahead: int) -> None:
    """Once the kernel has our INIT reply (which resets the read-ahead), set it."""
    try:
        # A stat of the mount returns only after INIT; in a thread, so the
        # event loop answers it meanwhile.
        await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except OSError as exc:
        log.info("kernel read-ahead left at its default: %s", exc.strerror)
        return
    set_kernel_readahead(mountpoint, readahead)


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            if sig == signal.SIGHUP:
                continue  # a daemon has no terminal to lose
            log.info("signal %s: unmounting", signal.Signals(sig).name)
            scope.cancel()
            return


def check_mountpoint(mountpoint: str, warnings: list[str] | None = None) -> str:
    """The resolved mount point, or a `MountError` saying why it cannot be used.

    A non-empty directory is allowed (as mount(8) allows it) with a warning on
    stderr, also appended to ``warnings`` for the daemon's log.
    """
    path = os.path.realpath(mountpoint)  # resolved now, before the mount hides it
    if not os.path.exists(path):
        raise MountError(f"mount point {path} does not exist", EXIT_MOUNTPOINT)
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory", EXIT_MOUNTPOINT)
    if os.path.ismount(path):
        raise MountError(f"mount point {path} is busy (something is mounted there)",
                         EXIT_MOUNTPOINT)
    if not os.access(path, os.W_OK) and os.geteuid() != 0:
        raise MountError(f"mount point {path} is not writable by you", EXIT_MOUNTPOINT)
    try:
        with os.scandir(path) as it:
            hidden = next(it, None) is not None
    except OSError:
        hidden = False
    if hidden:
        # As mount(8) does, but said: what is there is hidden until the unmount.
        text = f"mount point {path} is not empty: its contents are hidden while mounted"
        print(f"tierfs: warning: {text}", file=sys.stderr)
        if warnings is not None:
            warnings.append(text)
    return path


def check_fuse() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        code = "missing" if exc.errno == errno.ENOENT else exc.strerror
        raise MountError(f"FUSE is not available: /dev/fuse: {code} "
                         f"(load the fuse module; in a container pass --device /dev/fuse)",
                         EXIT_FUSE) from None
    os.close(fd)
