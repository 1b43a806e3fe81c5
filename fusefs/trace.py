"""Access traces as Parquet: the schema, a buffered writer and readers.

This module owns the on-disk form of an access trace, so that a trace recorded by a mount
(or made by :mod:`fusefs.tracegen`) can be replayed through any policy offline
(:mod:`fusefs.replay`). One row per FUSE read or write request:

========  =========  =============================================================
column    type       meaning
========  =========  =============================================================
time      float64    seconds (monotonic clock of the recorder; only differences matter)
pid       int32      process that issued the request
file      string     path of the file inside the mount
file_id   uint64     stable id of the file (inode or catalog id)
offset    uint64     byte offset of the request
size      uint32     bytes requested
op        string     ``"read"`` or ``"write"``
label     string     the recorder's label: ``"sequential"``, ``"random"``, ``"unknown"``
                     (a generated trace puts the ground truth here)
========  =========  =============================================================

A mount's recorder also writes optional columns after these (`EXTRA_FIELDS`; traces
recorded before they existed, and generated ones, lack them and read as null):

========  =========  =============================================================
tier      string     tiers that served the read's bytes, ``+``-joined and sorted
                     (``"dram"``, ``"fast"``, ``"ahead"``, ``"capacity"``,
                     ``"capacity+dram"``); empty for writes and for a read of zero bytes
latency   float64    seconds the daemon took to answer the request
dram_bytes   uint64  bytes the DRAM tier held when the row was recorded
fast_bytes   uint64  bytes the fast tier held
fast_pinned  uint64  bytes of those the fast tier held pinned
========  =========  =============================================================

The three occupancy columns are set on one row a second at most (the first request
after a second has passed; null on the others and for a tier the mount lacks): a
recorder adds no work per request for them, and an idle mount records no samples.

`read_trace` and `iter_batches` return the eight core columns only (what replay needs);
`read_trace_extended` adds the optional ones.

``docs/replay.md`` documents the same schema for users.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import trio

from .safefiles import create_private, trusted_path

__all__ = ["COLUMNS", "EXTRA_FIELDS", "RECORDED_SCHEMA", "SCHEMA", "TraceRow", "TraceWriter", "iter_batches",
           "read_trace", "read_trace_extended", "write_trace"]

SCHEMA = pa.schema(
    [
        pa.field("time", pa.float64(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("file_id", pa.uint64(), nullable=False),
        pa.field("offset", pa.uint64(), nullable=False),
        pa.field("size", pa.uint32(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
    ],
    metadata={b"tierfs.trace.version": b"1"},
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

EXTRA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("tier", pa.string(), nullable=True),
    pa.field("latency", pa.float64(), nullable=True),
    pa.field("dram_bytes", pa.uint64(), nullable=True),
    pa.field("fast_bytes", pa.uint64(), nullable=True),
    pa.field("fast_pinned", pa.uint64(), nullable=True),
)
"""Optional columns a mount's recorder appends after `COLUMNS` (null when absent)."""
RECORDED_SCHEMA = pa.schema(list(SCHEMA) + list(EXTRA_FIELDS), metadata=SCHEMA.metadata)
"""The schema a mount's recorder writes: `SCHEMA` then `EXTRA_FIELDS`."""

TraceRow = tuple[float, int, str, int, int, int, str, str]
"""One request in column order: time, pid, file, file_id, offset, size, op, label."""
RecordedRow = tuple[Any, ...]
"""A recorder's row: a `TraceRow`, then tier and latency, and maybe the occupancy columns
(`EXTRA_FIELDS`; missing trailing values are null)."""


class TraceWriter:
    """Appends requests to a Parquet trace, one row group per ``row_group_size`` rows.

    Rows are buffered column by column and written when the buffer is full, on
    :meth:`flush` and on :meth:`close`; the file is complete only after :meth:`close` (or
    leaving the ``with`` block).

    Args:
        path: The Parquet file to create, 0600 (replaced if it exists, never
            written through a symlink: see `fusefs.safefiles.create_private`).
        row_group_size: Rows per row group (and per flush).
        compression: Parquet compression codec.
        schema: `SCHEMA` (default) or `RECORDED_SCHEMA` (the optional columns too; rows
            and tables without them get nulls).
    """

    def __init__(self, path: str | os.PathLike[str], *, row_group_size: int = 65536, compression: str = "zstd",
                 schema: pa.Schema = SCHEMA) -> None:
        if row_group_size <= 0:
            raise ValueError("row_group_size must be positive")
        self._path = os.fspath(path)
        self._row_group_size = row_group_size
        if schema not in (SCHEMA, RECORDED_SCHEMA):
            raise ValueError("schema must be SCHEMA or RECORDED_SCHEMA")
        self._schema = schema
        self._file = os.fdopen(create_private(self._path), "wb")
        try:
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
                self._file, schema, compression=compression)
        except BaseException:
            self._file.close()
            raise
        self._cols: list[list[object]] = [[] for _ in schema]
        self._rows = 0

    @property
    def rows_written(self) -> int:
        """Rows accepted so far (buffered ones included)."""
        return self._rows

    def write(
        self,
        *,
        time: float,
        pid: int,
        file: str,
        file_id: int,
        offset: int,
        size: int,
        op: str = "read",
        label: str = "unknown",
    ) -> None:
        """Append one request."""
        self.write_row((time, pid, file, file_id, offset, size, op, label))

    def write_row(self, row: TraceRow | RecordedRow) -> None:
        """Append one request given in column order (the cheap path for recorders)."""
        if self._writer is None:
            raise ValueError("trace writer is closed")
        cols = self._cols
        for i, value in enumerate(row[:len(cols)]):
            cols[i].append(value)
        for i in range(len(row), len(cols)):
            cols[i].append(None)
        self._rows += 1
        if len(cols[0]) >= self._row_group_size:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Append a whole table with the trace schema (buffered rows are flushed first)."""
        if self._writer is None:
            raise ValueError("trace writer is closed")
        self.flush()
        table = _conform(table, self._schema)
        self._writer.write_table(table, row_group_size=self._row_group_size)
        self._rows += table.num_rows

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if self._writer is None or not self._cols[0]:
            return
        arrays = [pa.array(col, type=field.type) for col, field in zip(self._cols, self._schema)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        self._cols = [[] for _ in self._schema]

    def close(self) -> None:
        """Flush and finish the file; idempotent."""
        if self._writer is None:
            return
        try:
            self.flush()
            self._writer.close()
        finally:
            self._writer = None
            self._file.close()  # pyarrow does not close a file object it was given

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: optional ones missing become nulls."""
    for field in schema:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(table.num_rows, type=field.type))
    return table.select(schema.names).cast(schema)


def write_trace(table: pa.Table, path: str | os.PathLike[str], *, row_group_size: int = 65536) -> None:
    """Write a whole trace table (e.g. from :mod:`fusefs.tracegen`) to ``path``."""
    with TraceWriter(path, row_group_size=row_group_size) as writer:
        writer.write_table(table)


def read_trace(path: str | os.PathLike[str]) -> pa.Table:
    """Read a whole trace, checking and casting it to the trace schema.

    Raises:
        ValueError: If a column of the schema is missing.
        UntrustedFile: If the file is not the user's own, or others may write it.
    """
    with trusted_path(path, "trace") as checked:
        table = pq.read_table(checked)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{os.fspath(path)} is not a tierfs trace: missing columns {', '.join(missing)}")
    return table.select(list(COLUMNS)).cast(SCHEMA)


def read_trace_extended(path: str | os.PathLike[str]) -> pa.Table:
    """Read a whole trace with `RECORDED_SCHEMA`: the optional columns are null if absent.

    Raises:
        ValueError: If a core column is missing.
        UntrustedFile: As `read_trace`.
    """
    with trusted_path(path, "trace") as checked:
        table = pq.read_table(checked)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{os.fspath(path)} is not a tierfs trace: missing columns {', '.join(missing)}")
    return _conform(table, RECORDED_SCHEMA)


def iter_batches(source: str | os.PathLike[str] | pa.Table, *, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream a trace (a path or a table) as record batches, without loading it whole."""
    if isinstance(source, pa.Table):
        yield from source.select(list(COLUMNS)).cast(SCHEMA).to_batches(max_chunksize=batch_size)
        return
    with trusted_path(source, "trace") as checked:
        pf = pq.ParquetFile(checked)
        missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{os.fspath(source)} is not a tierfs trace: missing columns {', '.join(missing)}")
        for batch in pf.iter_batches(batch_size=batch_size, columns=list(COLUMNS)):
            yield pa.RecordBatch.from_arrays(
                [batch.column(i).cast(field.type) for i, field in enumerate(SCHEMA)], schema=SCHEMA
            )


class TraceRecorder:
    """Records a mount's requests into a `TraceWriter` without blocking the event loop.

    `record` only appends to a list (the request path stays O(1)); every
    ``batch`` rows the list is handed to a worker thread that writes one row
    group. One batch is written at a time; if the disk falls behind, rows are
    dropped and counted rather than letting memory grow.
    """

    def __init__(self, path: str | os.PathLike[str], *, batch: int = 65536) -> None:
        self._writer = TraceWriter(path, row_group_size=batch, schema=RECORDED_SCHEMA)
        self._batch = batch
        self._rows: list[TraceRow | RecordedRow] = []
        self._busy = False
        self.dropped = 0

    def record(self, row: TraceRow | RecordedRow) -> bool:
        """Buffer one row; True when a full batch is ready for `flush_batch`."""
        if len(self._rows) >= 2 * self._batch:
            self.dropped += 1
            return False
        self._rows.append(row)
        return len(self._rows) >= self._batch and not self._busy

    async def flush_batch(self) -> None:
        """Write the buffered rows in a worker thread."""
        if self._busy or not self._rows:
            return
        rows, self._rows = self._rows, []
        self._busy = True
        try:
            width = len(RECORDED_SCHEMA)
            cols = list(zip(*(r + (None,) * (width - len(r)) for r in rows)))
            table = pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, RECORDED_SCHEMA)], schema=RECORDED_SCHEMA)
            await trio.to_thread.run_sync(self._writer.write_table, table)
        finally:
            self._busy = False

    async def close(self) -> None:
        await self.flush_batch()
        await trio.to_thread.run_sync(self._writer.close)
