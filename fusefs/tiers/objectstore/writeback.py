"""Write-back of an object store's files through the cache directory: spools, journal, destager.

`WriteBack` owns, for one mount:

* the spool directory ``<cache dir>/writeback/`` (0700): one spool file per writable open,
  named by its id (never reused: allocated above every id the journal or the directory
  has seen), created 0600 with ``O_CREAT | O_EXCL | O_NOFOLLOW``;
* the journal (`fusefs.catalog.Journal`, a table of the cache's catalog): one row per
  spool whose bytes an application was told are safe: (id, path, size, state, times);
* the *pending* spools by path: released (no descriptor open any more), not uploaded
  yet. `OpenFiles` shows the newest pending spool as the file (stat, listings, opens)
  until its upload is done;
* the destager: uploads ready spools, ``parallel`` (2) at a time, but only one while the
  mount's writers write (a second starts once they pause: ``quiet``, 0.25 s without a
  write to a spool, or at most ``defer_max`` (``[write] destage_defer``, 10 s) after its
  spool became ready), each after the engine's throughput rule (``calm``: wait while
  latency reads crowd the store), retrying failures with backoff for as long as the row
  exists (one WARNING when the store stops taking them, one INFO when it takes them
  again);
* recovery at mount and the drain at unmount.

Life of a spool (`Spool`): created by a writable open (empty for ``O_TRUNC`` or a new file,
else a copy of the newest pending spool or of the object); FLUSH (each close(2)) and
FSYNC fdatasync it and write its row (state ``open``); with ``durability = "capacity"``
they also upload it before returning; RELEASE (the last descriptor) makes the row
``ready`` (no commit if the row of the last flush already holds the spool's bytes:
recovery treats both states alike) and the spool pending; the destager uploads it, notes the new object in the
metadata cache, then deletes the row and the spool file (in that order: a crash in
between leaves a spool without a row, which is never uploaded again).

Decisions:

* A spool is durable before its row: fdatasync of the spool (and, once, of the
  directory that names it) precedes the row's commit, and the journal commits with
  ``synchronous=FULL``. A row's size is never larger than its spool unless the cache disk
  lost data; a shrinking truncate of a recorded spool rewrites the row first.
* Writers before uploads: an upload shares the CPU, the memory bandwidth and often the
  disk with the writers still writing (on a small machine also with the store's own
  server), and two of them slowed a checkpoint burst's writer several-fold
  (docs/architecture.md, "Write-back"). So while writes reach spools, one upload runs at
  a time; more start once no write has reached a spool for ``quiet`` seconds, or
  ``defer_max`` after their spool was ready: a writer that never pauses slows uploads, it
  cannot starve them. Not none at all: then a burst's uploads only begin after it, and
  the time until the store holds it grew by the whole writer's time. Uploads that
  someone waits on (``durability = "capacity"``, a directory rename, the unmount drain)
  never wait.
* Last close wins, as with uploads at close: a spool released after another of the same
  path supersedes it (the older one's row and file go once the newer row is committed);
  one upload per path at a time, always of the newest ready spool.
* unlink drops a path's spools and rows (after any upload in flight), never uploading
  them; a rename moves them (rows follow the new name) after any upload in flight; a
  directory rename first uploads what is pending below it (the store copies keys).
* A close of an ``O_TRUNC`` open before its first write (``dd of=`` and a shell's ``>``
  close a dup first) writes no row: a crash before the next close leaves the object as
  it was, never empty.
* Recovery: every row becomes a pending spool before the mount serves (in the order of
  its last update, so the last flush of a path wins) and is queued; the spool is uploaded
  as it is (bytes written after its last flush, never acknowledged, included). A row whose spool is
  missing or shorter than the row says is logged as an ERROR and kept, neither served
  nor uploaded (`tierfs fsck` reports it; nothing is deleted). Spool files without a row
  were written but never flushed: nothing was acknowledged, they are left alone (a
  WARNING).
* The journal remembers the source its rows are of (the catalog's ``meta`` table); a mount
  of another source on a cache directory with pending writes is refused: they are never
  uploaded anywhere but where they were written.
* Unmount closes writers that are still open (their spools become pending), then waits
  for the queue to drain, logging progress every 5 s; the first failed upload ends the
  wait, logging what stays pending for the next mount.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from ...catalog import Journal, JournalRow
from ...stats import Stats
from ...units import format_size
from ..capacity import Stat
from .store import show, under

if TYPE_CHECKING:
    from .file import OpenFiles

log = logging.getLogger(__name__)

#: Seconds between progress lines while an unmount drains the queue.
PROGRESS_EVERY = 5.0
#: An upload starts once no write has reached a spool for this long (seconds) ...
WRITERS_QUIET = 0.25
#: ... or this long after its spool became ready, whichever comes first.
DEFER_MAX = 10.0


@dataclass(eq=False)
class Spool:
    """The local copy of one writable open of ``path`` (named only under write-back)."""

    path: bytes
    fd: int = -1
    #: 0: unnamed (write-through: unlinked at once, never journaled).
    id: int = 0
    file: str = ""
    created_ns: int = 0
    mtime_ns: int = 0
    #: Its size once released (a released spool never changes).
    size: int = 0
    #: Bumped by every change of its bytes.
    gen: int = 0
    #: The generation its journal row stands for, and the one the store holds.
    synced_gen: int = -1
    uploaded_gen: int = -1
    #: Its journal row exists (or is being written) with this size.
    recorded: bool = False
    row_size: int = 0
    released: bool = False
    #: The row says "ready": it may be uploaded.
    ready: bool = False
    #: Unlinked, superseded or uploaded: never uploaded (again).
    gone: bool = False
    #: A destage task holds it (queued or uploading).
    queued: bool = False
    uploading: trio.Event | None = None
    #: Where objects store attributes: the mode (type bits included), uid and gid its
    #: upload stores (None: what the store holds for the path, else the configured
    #: ones). Not journaled: a write recovered after a crash takes the store's.
    owner: tuple[int, int, int] | None = None
    #: Its upload's extended attributes (``x-amz-meta-xattr``), with ``owner``.
    xattr: str | None = None
    #: The atime its upload stores (a utimes' since it was opened; 0: its mtime).
    atime_ns: int = 0
    #: Its last change of bytes or attributes, which its upload stores as the ctime
    #: (0: its mtime).
    ctime_ns: int = 0
    #: Open writable handles sharing it (`file.OpenFiles.open`); the last close releases it.
    handles: int = 1
    #: Serialises its journal writes (a row written late must not outlive a drop).
    jlock: trio.Lock = field(default_factory=trio.Lock)

    def current_size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd >= 0 else self.size

    @property
    def changed(self) -> bool:
        """Holds bytes the store may not have (written, truncated, or journaled)."""
        return self.gen > 0 or self.recorded


class WriteBack:
    """Durable write-back for one object-store tier (see the module docstring)."""

    def __init__(self, root: str, files: OpenFiles, *, durability: str = "fast",
                 stats: Stats | None = None,
                 calm: Callable[[], Awaitable[None]] | None = None,
                 parallel: int = 2, retry_max: float = 10.0,
                 quiet: float = WRITERS_QUIET, defer_max: float = DEFER_MAX) -> None:
        if durability not in ("fast", "capacity"):
            raise ValueError(f"durability must be 'fast' or 'capacity', not {durability!r}")
        self.root = root
        self.dir = os.path.join(root, "writeback")
        self.files = files
        self.durability = durability
        self.stats = stats if stats is not None else Stats()
        self._calm = calm
        self._slots = trio.CapacityLimiter(parallel)
        self._retry_max = retry_max
        self.quiet = quiet
        self.defer_max = defer_max
        #: trio time of the last write to a spool (`wrote`).
        self._last_write = float("-inf")
        #: Destager uploads in progress, and an event set whenever one ends.
        self._running = 0
        self._upload_ended = trio.Event()
        #: Released spools not uploaded yet, by path, in release order.
        self.pending: dict[bytes, list[Spool]] = {}
        #: Rows whose spool is missing or short: kept, never served or uploaded.
        self.damaged: list[JournalRow] = []
        self.journal: Journal | None = None
        self._next_id = 1
        self._dir_fd = -1
        self._lock_fd = -1
        self._wake = trio.Event()
        #: Paths no upload may start for (`hold_uploads`), with the number of holders.
        self._held: dict[bytes, int] = {}
        self._retry_at = 0.0
        self._backoff = 0.0
        self._failing = False
        self._draining = False
        self._drain_failed = False
        self.stats.sources["writeback"] = self.statistics

    # -- lifecycle -------------------------------------------------------------
    async def open(self, *, take_lock: bool = False, source: str | None = None) -> None:
        """Create the spool directory, open the journal and recover its rows (mount time).

        ``take_lock``: no fast tier holds the cache directory's lock; take it here.
        ``source``: what the rows are uploaded to; rows written for another source are
        refused (`OSError`), never uploaded to this one.
        """
        if take_lock:
            from ..fast import lock_cache_dir

            self._lock_fd = lock_cache_dir(self.root)
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            st = os.lstat(self.dir)
            if not stat_mod.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, f"{self.dir} is not a directory") from None
            # Spools are the user's data: a directory others can reach is refused, not
            # chmod'ed (tierfs never changes the mode of what it may not have created).
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise OSError(errno.EPERM, f"{self.dir} must be a directory of yours with "
                                           f"mode 0700 (it is {stat_mod.S_IMODE(st.st_mode):04o})")
        self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                               | os.O_CLOEXEC)
        self.journal = await trio.to_thread.run_sync(
            Journal, os.path.join(self.root, "catalog.db"))
        rows = await trio.to_thread.run_sync(self.journal.rows)
        if source is not None:
            theirs = await trio.to_thread.run_sync(self.journal.source)
            if rows and theirs is not None and theirs != source:
                await self.close()
                raise OSError(errno.EBUSY, f"the cache directory holds {len(rows)} pending "
                                           f"writes of {theirs}, not of {source}: mount "
                                           f"{theirs} with it to upload them, or use another "
                                           f"cache directory")
            if theirs != source:
                await trio.to_thread.run_sync(self.journal.set_source, source)
        names = await trio.to_thread.run_sync(os.listdir, self.dir)
        ids = {int(n) for n in names if n.isdigit()}
        self._next_id = max([0, *ids, *(r.id for r in rows)]) + 1
        superseded: list[Spool] = []
        for r in rows:  # oldest update first: the last flush of a path wins
            sp = self._recover(r)
            if sp is not None:
                superseded += self._add_pending(sp)
        orphans = sorted(ids - {r.id for r in rows})
        if orphans:
            log.warning("write-back: %d spool files in %s have no journal row (written, "
                        "never flushed: nothing was acknowledged); left alone: %s",
                        len(orphans), self.dir, ", ".join(map(str, orphans[:10])))
        for sp in superseded:
            await self._forget(sp)
        n, size = self.pending_totals()
        if n:
            log.info("write-back: %d pending writes (%s) from the last mount; uploading them",
                     n, format_size(size))
            self._wake.set()

    def _recover(self, r: JournalRow) -> Spool | None:
        name = os.path.join(self.dir, str(r.id))
        try:
            st = os.lstat(name)
            if not stat_mod.S_ISREG(st.st_mode):
                raise FileNotFoundError(name)
        except FileNotFoundError:
            log.error("write-back: the spool file %s of a pending write of %s (%d bytes) is "
                      "missing: that write cannot be uploaded; its journal row is kept "
                      "(tierfs fsck reports it)", name, show(r.path), r.size)
            self.damaged.append(r)
            return None
        if st.st_size < r.size:
            log.error("write-back: the spool file %s of a pending write of %s holds %d of "
                      "its %d bytes: it is not uploaded; the file and its journal row are "
                      "kept (tierfs fsck reports it)", name, show(r.path), st.st_size, r.size)
            self.damaged.append(r)
            return None
        return Spool(path=r.path, id=r.id, file=name, created_ns=r.created_ns,
                     mtime_ns=r.mtime_ns, size=st.st_size, gen=1, synced_gen=1,
                     recorded=True, row_size=r.size, released=True, ready=True)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The destager: starts an upload task for each path with a ready spool."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                now = trio.current_time()
                if self._retry_at > now:
                    await trio.sleep_until(self._retry_at)
                self._wake = trio.Event()
                for path, spools in list(self.pending.items()):
                    if any(s.queued for s in spools) or path in self._held:
                        continue  # one upload per path at a time; none while held
                    sp = spools[-1]
                    if sp.ready and not sp.gone:
                        sp.queued = True
                        nursery.start_soon(self._destage, sp)
                await self._wake.wait()

    async def drain(self) -> None:
        """Unmount: close the writers still open, then upload everything pending.

        Returns when the queue is empty, or after the first failed upload (what is left
        stays in the journal for the next mount).
        """
        await self.files.close_writers()
        n, size = self.pending_totals()
        if not n:
            return
        log.info("unmount: uploading %d pending writes (%s)", n, format_size(size))
        self._draining, self._drain_failed = True, False
        self._retry_at = 0.0
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            last = trio.current_time()
            while self.pending_totals()[0] and not self._drain_failed:
                await trio.sleep(0.05)
                if trio.current_time() - last >= PROGRESS_EVERY:
                    last = trio.current_time()
                    n, size = self.pending_totals()
                    log.info("unmount: %d pending writes (%s) left to upload", n,
                             format_size(size))
            nursery.cancel_scope.cancel()
        self._draining = False
        n, size = self.pending_totals()
        if n:
            log.warning("unmount: the object store did not take %d pending writes (%s); "
                        "they stay in %s and are uploaded at the next mount", n,
                        format_size(size), self.dir)
        else:
            log.info("unmount: every pending write is uploaded")

    async def close(self) -> None:
        if self.journal is not None:
            await trio.to_thread.run_sync(self.journal.close)
            self.journal = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- spools and the journal -------------------------------------------------
    def new_spool(self, path: bytes) -> Spool:
        """A new, empty, named spool file for a writable open of ``path``."""
        i = self._next_id
        self._next_id += 1
        name = os.path.join(self.dir, str(i))
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        now = time.time_ns()
        return Spool(path=path, fd=fd, id=i, file=name, created_ns=now, mtime_ns=now)

    def _row(self, sp: Spool, size: int, state: str) -> JournalRow:
        return JournalRow(sp.id, sp.path, size, state, sp.created_ns, sp.mtime_ns,
                          time.time_ns())

    async def record(self, sp: Spool, state: str = "open") -> None:
        """Make the spool's bytes durable, then write its row (FLUSH, FSYNC, RELEASE)."""
        assert self.journal is not None
        async with sp.jlock:
            if sp.gone:
                return
            gen = sp.gen
            size = sp.current_size()
            first = not sp.recorded
            fd, dir_fd = sp.fd, self._dir_fd

            def sync() -> None:
                if fd >= 0:
                    os.fdatasync(fd)
                if first:
                    os.fsync(dir_fd)  # the spool's name, before a row points at it

            await trio.to_thread.run_sync(sync)
            sp.recorded = True  # before the commit: a drop racing it deletes the row
            try:
                await trio.to_thread.run_sync(
                    lambda: self.journal.apply(put=[self._row(sp, size, state)]))  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise OSError(errno.EIO, f"write-back journal {self.journal.path}: {exc}") from None
            self.stats.add("writeback.journal_commits")
            if sp.gone:  # dropped while we wrote: the row must not outlive it
                await trio.to_thread.run_sync(lambda: self.journal.apply(delete=[sp.id]))  # type: ignore[union-attr]
                return
            sp.synced_gen, sp.row_size = gen, size
            if state == "ready":
                sp.ready = True

    async def shrink(self, sp: Spool, size: int) -> None:
        """Before a truncate below the recorded size: the row must not promise more."""
        if sp.recorded and size < sp.row_size and self.journal is not None:
            async with sp.jlock:
                if not sp.gone:
                    await trio.to_thread.run_sync(
                        lambda: self.journal.apply(  # type: ignore[union-attr]
                            put=[self._row(sp, size, "ready" if sp.ready else "open")]))
                    sp.row_size = size

    async def release(self, sp: Spool) -> None:
        """The last descriptor of a writable open is gone: the spool becomes pending."""
        sp.released = True
        uploaded = sp.uploaded_gen == sp.gen and not self.pending.get(sp.path)
        if sp.gone or not sp.changed or uploaded:
            # Nothing the store lacks (with an older write of the path still pending, an
            # upload of this one may have been overtaken by it: uploaded again, last).
            await self._forget(sp)
            return
        sp.size = sp.current_size()
        lst = self.pending.setdefault(sp.path, [])
        lst.append(sp)  # shown as the file from now on
        try:
            if sp.recorded and sp.synced_gen == sp.gen and sp.row_size == sp.size:
                # Its last flush's row already holds these bytes, and recovery uploads
                # an "open" row as it does a "ready" one: no second commit (a KV block
                # written, fsynced and closed costs one synchronous commit, not two).
                self.stats.add("writeback.release_commits_saved")
            else:
                await self.record(sp, "ready")
        except (OSError, sqlite3.Error) as exc:
            # Its last flush was journaled (or answered with an error): upload it anyway.
            log.warning("write-back: the release of %s was not journaled (%s); it is "
                        "uploaded all the same", show(sp.path), exc)
        finally:
            sp.ready = True
            if sp.fd >= 0:
                os.close(sp.fd)
                sp.fd = -1
        if sp.gone:
            return
        for old in self._add_pending(sp):
            await self._forget(old)
        self._wake.set()

    def _add_pending(self, sp: Spool) -> list[Spool]:
        """Make ``sp`` the newest pending spool of its path; returns those it supersedes."""
        lst = [s for s in self.pending.get(sp.path, []) if s is not sp]
        keep = [s for s in lst if s.queued]  # an upload in flight finishes first
        superseded = [s for s in lst if not s.queued]
        for s in superseded:
            s.gone = True
        self.pending[sp.path] = keep + [sp]
        return superseded

    async def _forget(self, sp: Spool) -> None:
        """Drop a spool: its row (if any), then its file. Shielded: never half done."""
        sp.gone = True
        with trio.CancelScope(shield=True):
            async with sp.jlock:
                if sp.recorded and self.journal is not None:
                    try:
                        await trio.to_thread.run_sync(
                            lambda: self.journal.apply(delete=[sp.id]))  # type: ignore[union-attr]
                    except Exception as exc:  # the file stays: a row must not lose it
                        log.warning("write-back: journal row of %s not deleted: %s",
                                    show(sp.path), exc)
                        return
                    sp.recorded = False
            if sp.fd >= 0 and sp.released:
                os.close(sp.fd)
                sp.fd = -1
            if sp.file:
                try:
                    os.unlink(sp.file)
                except FileNotFoundError:
                    pass

    def _remove_pending(self, sp: Spool) -> None:
        lst = self.pending.get(sp.path)
        if lst and sp in lst:
            lst.remove(sp)
            if not lst:
                del self.pending[sp.path]

    # -- destaging ------------------------------------------------------------------
    def wrote(self) -> None:
        """A write reached a spool (called for every write: keep it cheap)."""
        self._last_write = trio.current_time()

    async def turn(self, since: float) -> None:
        """Return when an upload ready since ``since`` may start: at once when no other
        upload runs or the unmount drains the queue; else once no write has reached a
        spool for `quiet` seconds, or at ``since`` + `defer_max`."""
        deadline = since + self.defer_max
        counted = False
        while not self._draining and self._running:
            until = min(self._last_write + self.quiet, deadline)
            if until <= trio.current_time():
                return
            if not counted:
                counted = True
                self.stats.add("writeback.deferred_to_writers")
            with trio.move_on_at(until):
                await self._upload_ended.wait()

    def _ended(self) -> None:
        """A destager upload ended: an upload waiting for its `turn` may start."""
        self._running -= 1
        self._upload_ended.set()
        self._upload_ended = trio.Event()

    async def _destage(self, sp: Spool) -> None:
        ready = trio.current_time()
        try:
            async with self._slots:
                if self._calm is not None and not self._draining:
                    await self._calm()
                await self.turn(ready)
                if sp.gone or not sp.ready or sp.path in self._held:
                    return
                self._running += 1  # no checkpoint since `turn` returned
                try:
                    await self._upload(sp)
                finally:
                    self._ended()
        except OSError as exc:
            self._failed(sp, exc)
        finally:
            sp.queued = False
            self._wake.set()

    async def _upload(self, sp: Spool) -> None:
        """Upload ``sp`` now; then its older siblings and itself are done."""
        sp.uploading = trio.Event()
        try:
            fd = os.open(sp.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                st = await self.files.put_object(sp.path, fd, spool=sp)
            finally:
                os.close(fd)
        finally:
            ev, sp.uploading = sp.uploading, None
            ev.set()
        self._uploaded(sp, st)
        with trio.CancelScope(shield=True):
            done = [sp]
            lst = self.pending.get(sp.path, [])
            if sp in lst:
                done = lst[:lst.index(sp) + 1]
            for s in done:
                self._remove_pending(s)
            for s in done:
                await self._forget(s)

    def _uploaded(self, sp: Spool, st: Stat) -> None:
        sp.uploaded_gen = sp.gen
        self.stats.add("writeback.uploaded_files")
        self.stats.add("writeback.uploaded_bytes", sp.size)
        if self._failing:
            self._failing = False
            log.info("write-back: the object store takes uploads again")
        self._backoff = 0.0
        self._retry_at = 0.0

    def _failed(self, sp: Spool, exc: OSError) -> None:
        self.stats.add("writeback.upload_failures")
        if self._draining:
            self._drain_failed = True
        n, size = self.pending_totals()
        if not self._failing:
            self._failing = True
            log.warning("write-back: upload of %s failed (%s); %d pending writes (%s) are "
                        "kept and retried", show(sp.path), exc.strerror or exc, n,
                        format_size(size))
        self._backoff = min(self._retry_max, max(1.0, 2 * self._backoff))
        self._retry_at = trio.current_time() + self._backoff

    def hold_uploads(self, path: bytes) -> None:
        """Start no upload of ``path`` until `release_uploads` (a rename moves its spools: an
        upload started meanwhile would still write the old key)."""
        self._held[path] = self._held.get(path, 0) + 1

    def release_uploads(self, path: bytes) -> None:
        n = self._held.pop(path, 1) - 1
        if n > 0:
            self._held[path] = n
        self._wake.set()

    async def wait_uploads(self, path: bytes) -> None:
        """Return once no upload of ``path`` is in flight."""
        while True:
            busy = [s.uploading for s in self.pending.get(path, []) if s.uploading is not None]
            if not busy:
                return
            await busy[0].wait()

    async def upload_now(self, path: bytes) -> None:
        """Make the store hold ``path``'s newest pending spool before returning."""
        while True:
            await self.wait_uploads(path)
            lst = self.pending.get(path)
            if not lst:
                return
            sp = lst[-1]
            if sp.queued and sp.uploading is None:
                await trio.sleep(0.01)  # a destage task about to start: let it
                continue
            await self._upload(sp)

    # -- namespace changes -----------------------------------------------------------
    async def unlinked(self, path: bytes) -> bool:
        """``path`` was removed: drop its pending spools (after an upload in flight)."""
        lst = self.pending.get(path, [])
        for sp in lst:
            sp.gone = True  # no new upload starts
        await self.wait_uploads(path)
        lst = self.pending.pop(path, [])
        for sp in lst:
            await self._forget(sp)
        return bool(lst)

    async def drop(self, sp: Spool) -> None:
        """A writer's spool whose name was removed: its row and file go now."""
        await self._forget(sp)

    async def moved(self, spools: list[Spool], new: bytes) -> None:
        """These spools (pending or open) are now of ``new``: their rows follow."""
        for sp in spools:
            sp.path = new
        for sp in spools:
            if not sp.recorded or self.journal is None:
                continue
            async with sp.jlock:
                if sp.gone:
                    continue
                row = self._row(sp, sp.row_size, "ready" if sp.ready else "open")
                await trio.to_thread.run_sync(lambda: self.journal.apply(put=[row]))  # type: ignore[union-attr]

    def move_pending(self, old: bytes, new: bytes) -> list[Spool]:
        """Re-key the pending spools of ``old`` as ``new``; returns them."""
        lst = self.pending.pop(old, [])
        if lst:
            self.pending.setdefault(new, []).extend(lst)
        return lst

    def paths_under(self, top: bytes) -> list[bytes]:
        return [p for p in self.pending if under(p, top)]

    # -- reporting ----------------------------------------------------------------------
    def pending_totals(self) -> tuple[int, int]:
        spools = [s for lst in self.pending.values() for s in lst if not s.gone]
        return len(spools), sum(s.size for s in spools)

    def statistics(self) -> dict[str, Any]:
        n, size = self.pending_totals()
        return {
            "durability": self.durability,
            "destage_defer_s": self.defer_max,
            "pending_files": n,
            "pending_bytes": size,
            "uploading": sum(1 for lst in self.pending.values() for s in lst if s.uploading is not None),
            "damaged_rows": len(self.damaged),
            "store_failing": self._failing,
            "retry_in_s": max(0.0, self._retry_at - trio.current_time())
            if self._retry_at else 0.0,
        }


__all__ = ["Spool", "WriteBack"]
