"""A model-checked read path: hypothesis drives Operations + Engine + FastTier + DRAM + policy.

The state machine works as users do, on many files at once: it opens and closes, reads at
random and as streams, writes and truncates through the mount, changes, replaces and deletes
files behind the mount (another client), warms, evicts, pins and unpins, lets background
fills and commits finish, squeezes a small fast tier, remounts (a clean close and reopen of
the catalog, checked offline by fsck in between) and crashes (the process dies: nothing is
committed or closed, and fsck must then repair what the crash left).

Every read is compared byte for byte with a model of the source, for every handle opened
after the file's last change behind the mount (close-to-open); after each step the fast
tier's invariants hold (`FastTier.check`: extents, policy bookkeeping against the tier) and
the catalog agrees with memory (`FastTier.check_catalog`). The daemon's log must stay free
of errors (the conftest log check).

The engine runs in-process in a trio loop on a helper thread (`Portal`), so background
tasks (read-ahead, admissions, fills, the committer) live across steps as in a mount.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
import threading
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import pyfuse3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, invariant, rule,
                                 run_state_machine_as_test)
from s3server import S3Server

from fusefs.access import DramKey, FastKey
from fusefs.config import Config
from fusefs.engine import Engine
from fusefs.fsck import check_cache_dir
from fusefs.migrator import Migrator
from fusefs.operations import Operations
from fusefs.pagecache import PageCache
from fusefs.policies import get_policy
from fusefs.policies.base import Tier
from fusefs.stats import Stats
from fusefs.tiers.capacity import CapacityTier
from fusefs.tiers.fast import FastTier
from fusefs.tiers.objectstore import ObjectStoreTier
from fusefs.tiers.posix import PosixTier

CTX = pyfuse3.RequestContext()
KiB = 1024
CHUNK = 64 * KiB
NAMES = [f"d{i % 2}/f{i:02d}".encode() for i in range(5)]


class Portal:
    """A trio loop on a thread; steps run in it, background tasks live across steps."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(30)


class Instance:
    """One 'mount' in-process: capacity tier, fast tier, DRAM, policies, engine, ops."""

    def __init__(self, tier: CapacityTier, cache: str) -> None:
        self.tier = tier
        self.stats = Stats()
        policy_cls = get_policy("workload_aware")
        self.policy = policy_cls(12 * CHUNK, tier=Tier.FAST, object_size=CHUNK,
                                 fill_max=1 << 20, key_type=FastKey)
        self.dram_policy = policy_cls(256 * KiB, tier=Tier.DRAM, object_size=CHUNK,
                                      key_type=DramKey)
        self.fast = FastTier(cache, policy=self.policy, stats=self.stats, commit_interval=0.05)
        self.engine = Engine(self.tier, stats=self.stats, policy=self.policy,
                             dram_policy=self.dram_policy,
                             pagecache=PageCache(256 * KiB, 4096), fast=self.fast,
                             chunk_size=CHUNK, stream_budget=8 * CHUNK)
        self.ops = Operations(self.tier, self.engine)
        cfg = Config()
        self.migrator = Migrator(self.engine, self.tier, cfg)
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        await self.tier.start()
        await self.fast.open()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    async with trio.open_nursery() as n:
                        await n.start(self.engine.run)
                        await n.start(self.fast.run)
                        task_status.started()
                        await trio.sleep_forever()
            finally:
                self.done.set()

        await nursery.start(serve)

    async def stop(self, *, crash: bool = False) -> None:
        if crash:
            # The process dies: nothing more is committed, descriptors just go.
            f = self.fast
            f._pending.clear()
            f._removed.clear()
            f._new.clear()
            f._dropped.clear()
        assert self.scope is not None
        self.scope.cancel()
        await self.done.wait()
        if crash:
            f = self.fast
            for cf in list(f._files.values()):
                f._close_fd(cf)
            if f.catalog is not None:
                f.catalog.close()
                f.catalog = None
            os.close(f._lock_fd)
            f._lock_fd = -1
            self.engine.pagecache.close()  # type: ignore[union-attr]
        else:
            await self.engine.close()
            await self.fast.close()
        await self.tier.close()


async def _settle() -> None:
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        await trio.sleep(0.01)


class ReadPath(RuleBasedStateMachine):
    """Over a local source; `ReadPathS3` runs the same rules over the loopback S3 server."""

    handles = Bundle("handles")
    #: Writes and truncates through the mount (the S3 variant models reads only: its
    #: writes are spooled per handle until close, another contract).
    WRITES = True
    #: An open file whose source was deleted behind the mount reads ESTALE (object
    #: stores); a local source keeps it readable.
    STALE_ON_DELETE = False
    #: Changes behind the mount that keep size and mtime (an object store's version
    #: cannot see those without an ETag: a documented limit).
    SAME_SIZE_CHANGES = True
    #: A handle whose source changed behind it may read ESTALE (S3: its ranged reads
    #: are tied to the ETag seen at open).
    STALE_ON_CHANGE = False

    def make_tier(self) -> CapacityTier:
        return PosixTier(self.src)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="tierfs-sm-")
        self.src = self.source_dir()
        self.cache = os.path.join(self.tmp, "cache")
        os.makedirs(self.cache, mode=0o700)
        self.model: dict[bytes, bytes] = {}
        self.rng_bytes = 0
        for i, name in enumerate(NAMES[:4]):
            self._src_write(name, self._content(name, 1000 + i * 90 * KiB))
        self.portal = Portal()
        self.inst = self._start()
        # fh -> [path, writable, comparable, bytes a stale handle must read (or None)]
        self.open_fh: dict[int, list[Any]] = {}

    # -- helpers -----------------------------------------------------------------
    def source_dir(self) -> str:
        return os.path.join(self.tmp, "src")

    def _content(self, name: bytes, size: int) -> bytes:
        self.rng_bytes += 1
        seed = f"{name!r}:{self.rng_bytes}".encode()
        block = (seed * (4096 // len(seed) + 1))[:4096]
        return (block * (size // 4096 + 1))[:size]

    def _src_path(self, name: bytes) -> str:
        return os.path.join(self.src, os.fsdecode(name))

    def _src_write(self, name: bytes, data: bytes, *, keep_mtime: bool = False,
                   in_place: bool = False) -> None:
        path = self._src_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = os.stat(path) if keep_mtime and os.path.exists(path) else None
        if in_place and os.path.exists(path):
            with open(path, "r+b") as f:
                f.write(data)
                f.truncate(len(data))
        else:
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        if old is not None:
            os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # what cp -p does
        self.model[name] = data

    def _start(self) -> Instance:
        inst = Instance(self.make_tier(), self.cache)
        self.portal.run(inst.start, self.portal.nursery)
        return inst

    def _ino(self, name: bytes) -> int:
        async def walk() -> int:
            ino = pyfuse3.ROOT_INODE
            for part in name.split(b"/"):
                ino = (await self.inst.ops.lookup(ino, part, CTX)).st_ino
                if ino == 0:
                    raise FileNotFoundError(name)
            return ino
        return self.portal.run(walk)

    def _stale_handles_of(self, name: bytes, *, replaced: bool = False) -> None:
        """``name`` changed behind the mount. Its open handles are stale; a read-only one
        whose file was replaced or deleted (not rewritten in place) must still read the
        bytes it opened, or ESTALE where the source cannot serve them: never the new
        version's, never a mix (its caches are tied to the version it opened)."""
        for ent in self.open_fh.values():
            if ent[0] == name:
                if ent[2] and replaced and not ent[1]:
                    ent[3] = self.model.get(name)
                ent[2] = False  # opened before the change behind the mount

    def _close_all(self) -> None:
        for fh in list(self.open_fh):
            self.portal.run(self.inst.ops.release, fh)
        self.open_fh.clear()

    # -- rules ---------------------------------------------------------------------
    @rule(target=handles, name=st.sampled_from(NAMES), write=st.booleans())
    def open(self, name: bytes, write: bool) -> Any:
        if name not in self.model or len(self.open_fh) >= 12:
            return None  # hypothesis: a 'handle' that is None is skipped by rules
        write = write and self.WRITES
        ino = self._ino(name)
        flags = os.O_RDWR if write else os.O_RDONLY
        fi = self.portal.run(self.inst.ops.open, ino, flags, CTX)
        self.open_fh[fi.fh] = [name, write, True, None]
        return fi.fh

    @rule(fh=consumes(handles))
    def close(self, fh: Any) -> None:
        if fh is None or fh not in self.open_fh:
            return
        self.portal.run(self.inst.ops.release, fh)
        del self.open_fh[fh]

    def _check_read(self, fh: int, offset: int, size: int) -> None:
        name, _, comparable, old = self.open_fh[fh]
        try:
            got = self.portal.run(self.inst.ops.read, fh, offset, size)
        except pyfuse3.FUSEError as exc:
            # Only a handle whose object was deleted (or, on S3, changed) behind it may
            # fail, and as stale (local sources keep an open file readable).
            gone = name not in self.model and self.STALE_ON_DELETE
            assert not comparable and (gone or self.STALE_ON_CHANGE) \
                and exc.errno == errno.ESTALE, (name, exc.errno)
            return
        if comparable or old is not None:
            want = (self.model[name] if comparable else old)[offset:offset + size]
            assert got == want, (f"{name!r} at {offset}+{size}: {len(got)} bytes, "
                                 f"first difference at "
                                 f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}")

    @rule(fh=handles, where=st.sampled_from([0.0, 0.3, 0.6, 0.95]) | st.floats(0, 1.05),
          size=st.sampled_from([1, 4096, 5000, 65536, 131072]))
    def read_random(self, fh: Any, where: float, size: int) -> None:
        if fh is None or fh not in self.open_fh:
            return
        name = self.open_fh[fh][0]
        self._check_read(fh, int(where * len(self.model.get(name, b""))), size)

    @rule(name=st.sampled_from(NAMES))
    def reread(self, name: bytes) -> None:
        """What users do most: open, read the usual places and the whole, close."""
        if name not in self.model:
            return
        fh = self.open(name, False)
        if fh is None:
            return  # as many handles open as the machine allows
        size = len(self.model[name])
        for where in (0.0, 0.3, 0.6, 0.95):
            self._check_read(fh, int(where * size), 4096)
        for off in range(0, size + 1, 128 * KiB):
            self._check_read(fh, off, 128 * KiB)
        self.portal.run(self.inst.ops.release, fh)
        del self.open_fh[fh]

    @rule(fh=handles, start=st.integers(0, 3))
    def read_stream(self, fh: Any, start: int) -> None:
        if fh is None or fh not in self.open_fh:
            return
        name = self.open_fh[fh][0]
        size = len(self.model.get(name, b""))
        for off in range(start * CHUNK, size + 1, 128 * KiB):
            self._check_read(fh, off, 128 * KiB)

    @rule(fh=handles, where=st.floats(0, 1.1), n=st.integers(1, 70 * KiB))
    def write(self, fh: Any, where: float, n: int) -> None:
        if fh is None or fh not in self.open_fh:
            return
        name, writable, comparable, _ = self.open_fh[fh]
        if not writable or not comparable or not self.WRITES:
            return
        offset = int(where * len(self.model[name]))
        data = self._content(name, n)
        assert self.portal.run(self.inst.ops.write, fh, offset, data) == n
        old = self.model[name]
        new = old[:offset].ljust(offset, b"\0") + data + old[offset + n:]
        self.model[name] = new

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 300 * KiB))
    def truncate(self, name: bytes, size: int) -> None:
        if not self.WRITES or name not in self.model or \
                any(e[0] == name and not e[2] for e in self.open_fh.values()):
            return
        ino = self._ino(name)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        fields = SimpleNamespace(update_size=True, update_mode=False, update_uid=False,
                                 update_gid=False, update_atime=False, update_mtime=False)
        self.portal.run(self.inst.ops.setattr, ino, attr, fields, None, CTX)
        self.model[name] = self.model[name][:size].ljust(size, b"\0")

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 400 * KiB),
          how=st.sampled_from(["replace", "same_size_keep_mtime", "in_place_keep_mtime"]))
    def change_behind(self, name: bytes, size: int, how: str) -> None:
        old = self.model.get(name)
        if how != "replace":
            if old is None or not self.SAME_SIZE_CHANGES:
                return
            size = len(old)
        elif not self.SAME_SIZE_CHANGES and old is not None and size == len(old):
            size += 1
        stale_bytes = old
        self._src_write(name, self._content(name, size), keep_mtime=how != "replace",
                        in_place=how == "in_place_keep_mtime")
        if stale_bytes is not None:
            self.model[name], new = stale_bytes, self.model[name]
            # In place, a local file changes under its open descriptors too; an object
            # is replaced whole either way.
            self._stale_handles_of(name, replaced=how != "in_place_keep_mtime"
                                   or self.STALE_ON_CHANGE)
            self.model[name] = new
        else:
            self._stale_handles_of(name)

    @rule(name=st.sampled_from(NAMES))
    def delete_behind(self, name: bytes) -> None:
        if name not in self.model:
            return
        os.unlink(self._src_path(name))
        self._stale_handles_of(name, replaced=True)
        del self.model[name]

    @rule(name=st.sampled_from(NAMES), pin=st.booleans())
    def warm(self, name: bytes, pin: bool) -> None:
        if name not in self.model:
            return
        try:
            if pin:
                self.portal.run(self.inst.migrator.pin, name)
            else:
                self.portal.run(self.inst.migrator.warm, name)
        except OSError as exc:
            # The tier may be too small beside pinned data; the file changing is not
            # possible here (no concurrent writer in this step).
            assert exc.errno in (errno.ENOSPC,), exc

    @rule(name=st.sampled_from(NAMES), unpin=st.booleans())
    def evict(self, name: bytes, unpin: bool) -> None:
        if unpin:
            self.portal.run(self.inst.migrator.unpin, name)
        else:
            self.portal.run(self.inst.migrator.evict, name)

    @rule(name=st.sampled_from(NAMES))
    def kernel_forgets(self, name: bytes) -> None:
        """The kernel drops its inode (memory pressure, a long walk): the next lookup makes
        a new one, and DRAM pages must still be of the file's current bytes."""
        ino: int | None = pyfuse3.ROOT_INODE
        for part in name.split(b"/"):
            ino = self.inst.ops.inodes.find(ino, part) if ino is not None else None
        if ino is None or ino == pyfuse3.ROOT_INODE:
            return
        n = self.inst.ops.inodes.get(ino).lookups
        self.portal.run(self.inst.ops.forget, [(ino, n)])

    @rule()
    def settle(self) -> None:
        self.portal.run(_settle)
        self.portal.run(self.inst.fast.commit)

    @rule(crash=st.booleans())
    def remount(self, crash: bool) -> None:
        if not crash:
            self._close_all()
        self.open_fh.clear()
        self.portal.run(functools.partial(self.inst.stop, crash=crash))
        report = check_cache_dir(self.cache, repair=crash)
        if crash:
            again = check_cache_dir(self.cache)
            assert not again.errors, again.errors
        else:
            assert not report.errors, report.errors
        self.inst = self._start()

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def fast_tier_consistent(self) -> None:
        assert self.inst.fast.check() == []
        assert self.portal.run(self.inst.fast.check_catalog) == []

    @invariant()
    def dram_entries_consistent(self) -> None:
        dram = self.inst.engine.dram
        assert dram.check() == []
        gone = [ino for ino in dram.bound_inodes() if ino not in self.inst.ops.inodes]
        assert not gone, f"DRAM entries still bound to forgotten inodes {gone}"

    def teardown(self) -> None:
        try:
            self._close_all()
            self.portal.run(self.inst.stop)
            report = check_cache_dir(self.cache)
            assert not report.errors, report.errors
        finally:
            self.portal.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


SETTINGS = settings(
    max_examples=int(os.environ.get("TIERFS_SM_EXAMPLES", "25")), stateful_step_count=40,
    deadline=None, suppress_health_check=list(HealthCheck))
ReadPath.TestCase.settings = SETTINGS
test_read_path = ReadPath.TestCase


class ReadPathS3(ReadPath):
    """The read path over an object store (the loopback rclone S3 server with ETags,
    ``--etag-hash MD5``): sources changed behind the mount through the server's
    directory, metadata caches off, so close-to-open sees every change (each open asks
    the store). The ETag is part of the version: same-size changes that keep the mtime
    are seen too."""

    WRITES = False
    SAME_SIZE_CHANGES = True
    STALE_ON_DELETE = True
    STALE_ON_CHANGE = True
    server: S3Server | None = None

    def source_dir(self) -> str:
        assert self.server is not None
        return str(self.server.bucket_dir)

    def make_tier(self) -> CapacityTier:
        assert self.server is not None
        return ObjectStoreTier.from_uri(
            self.server.uri() + "&request_timeout=60", access_key=self.server.access_key,
            secret_key=self.server.secret_key, dir_markers=False, stat_ttl=0.0,
            negative_ttl=0.0, list_ttl=0.0)


@pytest.mark.s3
def test_read_path_s3(s3_md5: S3Server) -> None:
    ReadPathS3.server = s3_md5
    try:
        run_state_machine_as_test(ReadPathS3, settings=settings(
            SETTINGS, max_examples=max(3, SETTINGS.max_examples // 3)))
    finally:
        ReadPathS3.server = None
