"""The durable catalog of the fast tier: the only module that runs SQL.

One sqlite database (WAL mode) in the cache directory records which source
file versions have cache files and which extents of them are present, each
with a CRC32 of its bytes. The fast tier loads it whole at mount and afterwards
only writes to it, in batches, from one task; so a lock serialises the rare
concurrent use (a control request beside a batch) and no query sits on the
read path.

Invariant, kept by the caller (`fusefs.tiers.fast`): an extent row is
inserted only after its bytes are durable in the cache file, and deleted
before the bytes are punched out. A crash can therefore lose cached data but
never make the catalog promise bytes that are not there; a torn or tampered
cache file is caught by the CRC.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Iterable

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id       INTEGER PRIMARY KEY,
    path     BLOB    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    etag     TEXT    NOT NULL DEFAULT '',
    UNIQUE (path, size, mtime_ns, etag)
);
CREATE TABLE IF NOT EXISTS extents (
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start   INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    crc     INTEGER NOT NULL,
    pinned  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_id, start)
);
CREATE TABLE IF NOT EXISTS pins (path BLOB PRIMARY KEY);
"""


class CatalogError(Exception):
    """The catalog is unusable (corrupt database, newer schema)."""


@dataclass(slots=True)
class FileRow:
    id: int
    path: bytes
    size: int
    mtime_ns: int
    etag: str


@dataclass(slots=True)
class ExtentRow:
    file_id: int
    start: int
    length: int
    crc: int
    pinned: bool


class Catalog:
    """The sqlite catalog at ``path``; every method is thread-safe and blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash; an OS crash may lose
            # the last commits, which only forgets cached data (never invents it).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: {exc}") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise CatalogError(f"{path}: written by a newer tierfs (schema {row[0]})")
        os.chmod(path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reads (mount time) --------------------------------------------------
    def files(self) -> list[FileRow]:
        with self._lock:
            return [FileRow(*r) for r in self._db.execute(
                "SELECT id, path, size, mtime_ns, etag FROM files")]

    def extents(self) -> list[ExtentRow]:
        with self._lock:
            return [ExtentRow(r[0], r[1], r[2], r[3], bool(r[4])) for r in self._db.execute(
                "SELECT file_id, start, length, crc, pinned FROM extents ORDER BY file_id, start")]

    def pins(self) -> list[bytes]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT path FROM pins")]

    # -- writes ----------------------------------------------------------------
    def add_file(self, path: bytes, size: int, mtime_ns: int, etag: str | None) -> int:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO files (path, size, mtime_ns, etag) VALUES (?, ?, ?, ?)",
                (path, size, mtime_ns, etag or ""))
            return int(self._db.execute(
                "SELECT id FROM files WHERE path=? AND size=? AND mtime_ns=? AND etag=?",
                (path, size, mtime_ns, etag or "")).fetchone()[0])

    def remove_files(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM files WHERE id=?", [(i,) for i in ids])
            self._db.execute("COMMIT")

    def apply(self, add: Iterable[ExtentRow], remove: Iterable[tuple[int, int]]) -> None:
        """Insert and delete extent rows in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM extents WHERE file_id=? AND start=?",
                                     list(remove))
                self._db.executemany(
                    "INSERT OR REPLACE INTO extents VALUES (?, ?, ?, ?, ?)",
                    [(e.file_id, e.start, e.length, e.crc, int(e.pinned)) for e in add])
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
