"""The durable catalog of the fast tier: the only module that runs SQL.

One sqlite database (WAL mode) in the cache directory records the fast tier's cache
entries (one per cached source file *version*, named by an id that is also the name of its
data file) and which extents of each are present, each with the CRC-32C of every 16 KiB
piece of its bytes (`fusefs.checksums`). The fast
tier loads it whole at mount and afterwards only writes to it, in batches, from its
committer, always in a worker thread: no query runs on the event loop.

Invariant, kept by the caller (`fusefs.tiers.fast`): an extent row is inserted only after
its bytes are durable in the data file, and deleted before the bytes are punched out; an
entry's row is deleted before its data file is unlinked. A crash can therefore lose cached
data but never make the catalog promise bytes that are not there; a torn or tampered data
file is caught by the checksums.

Schema 2 dropped schema 1's uniqueness of (path, version): entries are identified by their
id alone, so a new entry of a path can be recorded while an older one of the same version
is still waiting for its removal. Schema 3 (this version) replaced one CRC32 per extent,
which could only be checked by reading the whole extent, with per-piece CRC-32Cs, checked
on every read. Older catalogs are migrated; a schema 2 catalog's entries and extents are
dropped in the migration (pins are kept): its checksums cannot check pieces, and the
cache refetches what is read again. Schema 4 (this version) added ``pending_writes``, the
write-back journal (`Journal`): one row per spool file in ``<cache dir>/writeback/`` whose
bytes an application was told are safe but the object store does not hold yet. The
migration from 3 only adds the table.

The journal has its own connection (``synchronous=FULL``: a committed row survives a
crash of the machine, not only of the process, since it stands for acknowledged writes);
the write-back module (`fusefs.tiers.objectstore.writeback`) keeps its invariant: a row is
written only after its spool's bytes were fdatasync'ed, and deleted before its spool file
is unlinked.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from dataclasses import dataclass
from typing import Iterable

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id       INTEGER PRIMARY KEY,
    path     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    etag     TEXT    NOT NULL DEFAULT '',
    ident    TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS extents (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start   INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    crcs    BLOB    NOT NULL,
    pinned  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_id, start)
);
CREATE TABLE IF NOT EXISTS pins (path BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS pending_writes (
    id         INTEGER PRIMARY KEY,
    path       BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    created_ns INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
"""

_MIGRATE_1_TO_2 = """
CREATE TABLE files_v2 (
    id       INTEGER PRIMARY KEY,
    path     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    etag     TEXT    NOT NULL DEFAULT '',
    ident    TEXT    NOT NULL DEFAULT ''
);
INSERT INTO files_v2 (id, path, size, mtime_ns, etag) SELECT id, path, size, mtime_ns, etag FROM files;
DROP TABLE files;
ALTER TABLE files_v2 RENAME TO files;
"""

# Whole-extent CRC32s cannot check a piece: the cached entries go (their data files are
# removed as unnamed leftovers when the fast tier opens), the pins stay.
_MIGRATE_2_TO_3 = """
DROP TABLE extents;
DELETE FROM files;
"""


class CatalogError(Exception):
    """The catalog is unusable (corrupt database, newer schema)."""


@dataclass(slots=True)
class FileRow:
    """One cache entry: a source file version and the id naming its data file."""

    id: int
    path: bytes
    size: int
    mtime_ns: int
    etag: str
    ident: str = ""


@dataclass(slots=True)
class ExtentRow:
    file_id: int
    start: int
    length: int
    #: `fusefs.checksums.block_crcs` of the extent's bytes.
    crcs: bytes
    pinned: bool


def _make_private(fd: int) -> None:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.fchmod(fd, 0o600)


class Catalog:
    """The sqlite catalog at ``path``; every method is thread-safe and blocking."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: The schema this catalog had before it was opened, if it was migrated.
        self.migrated_from: int | None = None
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None or int(row[0]) != SCHEMA_VERSION:
                    raise CatalogError(f"{path}: schema {row[0] if row else '?'}, "
                                       f"this tierfs reads {SCHEMA_VERSION} (mount once to migrate)")
                return
            # sqlite creates -wal and -shm with the database's mode: it must be
            # 0600 before sqlite opens it (and so must those of an older mount).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _make_private(fd)
            finally:
                os.close(fd)
            for extra in ("-wal", "-shm"):
                try:
                    fd = os.open(path + extra, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    _make_private(fd)
                finally:
                    os.close(fd)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash; an OS crash may lose
            # the last commits, which only forgets cached data (never invents it).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta "
                             "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise CatalogError(f"{path}: written by a newer tierfs (schema {row[0]})")
            if row is not None and int(row[0]) < SCHEMA_VERSION:
                self.migrated_from = int(row[0])
            if row is not None and int(row[0]) == 1:
                # foreign_keys is still off here: dropping the old table must not
                # cascade into the extents.
                self._db.executescript("BEGIN;" + _MIGRATE_1_TO_2 +
                                       "UPDATE meta SET value='2' WHERE key='schema'; COMMIT;")
                row = ("2",)
            if row is not None and int(row[0]) == 2:
                self._db.executescript("BEGIN;" + _MIGRATE_2_TO_3 +
                                       "UPDATE meta SET value='3' WHERE key='schema'; COMMIT;")
            self._db.execute("PRAGMA foreign_keys=ON")
            # Creates what is missing: everything in a new catalog, the journal in a
            # schema 3 one (the 3 -> 4 migration adds a table and loses nothing).
            self._db.executescript(_SCHEMA)
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                self._db.execute("UPDATE meta SET value=? WHERE key='schema'",
                                 (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reads (mount time, fsck) ---------------------------------------------
    def files(self) -> list[FileRow]:
        with self._lock:
            return [FileRow(*r) for r in self._db.execute(
                "SELECT id, path, size, mtime_ns, etag, ident FROM files")]

    def extents(self) -> list[ExtentRow]:
        with self._lock:
            return [ExtentRow(r[0], r[1], r[2], r[3], bool(r[4])) for r in self._db.execute(
                "SELECT file_id, start, length, crcs, pinned FROM extents ORDER BY file_id, start")]

    def pins(self) -> list[bytes]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM pins")]

    def max_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM files").fetchone()
            return int(row[0] or 0)

    # -- writes ------------------------------------------------------------------
    def apply(self, *, drop_files: Iterable[int] = (), new_files: Iterable[FileRow] = (),
              remove: Iterable[tuple[int, int]] = (), add: Iterable[ExtentRow] = ()) -> None:
        """One transaction: drop entries (with their extents), record new entries,
        delete and insert extent rows, in that order."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM files WHERE id=?", [(i,) for i in drop_files])
                self._db.executemany(
                    "INSERT OR REPLACE INTO files (id, path, size, mtime_ns, etag, ident) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(f.id, f.path, f.size, f.mtime_ns, f.etag, f.ident) for f in new_files])
                self._db.executemany("DELETE FROM extents WHERE file_id=? AND start=?",
                                     list(remove))
                self._db.executemany(
                    "INSERT OR REPLACE INTO extents VALUES (?, ?, ?, ?, ?)",
                    [(e.file_id, e.start, e.length, e.crcs, int(e.pinned)) for e in add])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_pin(self, path: bytes, pinned: bool) -> None:
        with self._lock:
            if pinned:
                self._db.execute("INSERT OR IGNORE INTO pins VALUES (?)", (path,))
            else:
                self._db.execute("DELETE FROM pins WHERE path=?", (path,))


@dataclass(slots=True)
class JournalRow:
    """One pending write: spool file ``<cache dir>/writeback/<id>``, to become object ``path``.

    ``state`` is ``"open"`` (flushed by a descriptor that is still open) or ``"ready"``
    (released: waiting for its upload); ``size`` is the spool's size when the row was
    written (the spool is never shorter unless it was damaged).
    """

    id: int
    path: bytes
    size: int
    state: str
    created_ns: int
    mtime_ns: int
    updated_ns: int


class Journal:
    """The write-back journal in the catalog database at ``path``; blocking, thread-safe.

    Its own sqlite connection, with ``synchronous=FULL``: a commit here acknowledges an
    application's write.
    """

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
            else:
                Catalog(path).close()  # creates or migrates the schema
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                           timeout=30.0)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def rows(self) -> list[JournalRow]:
        """Every row, oldest update first."""
        with self._lock:
            try:
                return [JournalRow(*r) for r in self._db.execute(
                    "SELECT id, path, size, state, created_ns, mtime_ns, updated_ns "
                    "FROM pending_writes ORDER BY updated_ns, id")]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # an older catalog (read-only): no journal yet
                raise

    def source(self) -> str | None:
        """The source the rows are of (set while rows exist), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key='writeback_source'").fetchone()
            return row[0] if row else None

    def set_source(self, source: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('writeback_source', ?)",
                             (source,))

    def apply(self, *, put: Iterable[JournalRow] = (), delete: Iterable[int] = ()) -> None:
        """One transaction: write (insert or replace) rows, then delete rows by id."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO pending_writes "
                    "(id, path, size, state, created_ns, mtime_ns, updated_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.path, r.size, r.state, r.created_ns, r.mtime_ns, r.updated_ns)
                     for r in put])
                self._db.executemany("DELETE FROM pending_writes WHERE id=?",
                                     [(i,) for i in delete])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
