#!/usr/bin/env python3
"""A ``pyarrow.dataset`` scan of a hive-partitioned Parquet dataset through a tierfs mount.

One command: ``python examples/parquet_scan.py`` writes a small sales-like dataset
partitioned by ``region=…/day=…`` into a temporary folder (``--source DIR`` to keep it, or
to reuse one written before: it is written only if the folder is empty or missing), mounts
it with ``tierfs mount`` (or uses ``--mount MNT``; ``--config FILE`` picks a preset such as
``examples/training.toml``), and scans it with a filter on the partition keys (pruning whole
directories) and on a column (``qty > 10``, pushed down to row groups), as an analytics or
feature job would.

Passes over the same scan:
  cold  right after the mount: the bytes come from the capacity tier
  warm  the kernel's page cache of the dataset's files is dropped first (posix_fadvise
        DONTNEED on each file), so tierfs's own tiers answer

Each pass's result is compared with the same scan of the source folder read directly (not
through the mount), row for row after sorting by ``id``; any difference, or a file the scan
cannot read, exits 1. It prints rows/s per pass and what each tier served
(``tierfs stats --json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

import _tierfs

REGIONS = ("eu", "us", "apac", "latam")
COLUMNS = ["id", "region", "day", "qty", "price", "sku"]


def scale(small: bool) -> dict[str, int]:
    if small:
        return {"days": 6, "rows_per_part": 4000}
    return {"days": 30, "rows_per_part": 200_000}


def write_dataset(root: str, days: int, rows_per_part: int) -> int:
    """Write ``region=R/day=D/part-0.parquet`` files; returns the number of rows."""
    import numpy as np

    rng = np.random.default_rng(11)
    tables = []
    next_id = 0
    for region in REGIONS:
        for day in range(1, days + 1):
            n = rows_per_part
            tables.append(pa.table({
                "id": pa.array(np.arange(next_id, next_id + n, dtype=np.int64)),
                "region": pa.array([region] * n),
                "day": pa.array(np.full(n, day, dtype=np.int32)),
                "qty": pa.array(rng.integers(0, 100, n, dtype=np.int32)),
                "price": pa.array(rng.random(n) * 100),
                "sku": pa.array([f"sku-{x:05d}" for x in rng.integers(0, 20000, n)]),
            }))
            next_id += n
    table = pa.concat_tables(tables)
    tmp = root + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    part = ds.partitioning(pa.schema([("region", pa.string()), ("day", pa.int32())]),
                           flavor="hive")
    ds.write_dataset(table, tmp, format="parquet", partitioning=part,
                     max_rows_per_group=16384, basename_template="part-{i}.parquet")
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    if os.path.isdir(root):
        os.rmdir(root)  # empty (checked by the caller)
    os.rename(tmp, root)  # whole or not at all
    return table.num_rows


def open_dataset(root: str) -> ds.Dataset:
    part = ds.partitioning(pa.schema([("region", pa.string()), ("day", pa.int32())]),
                           flavor="hive")
    return ds.dataset(root, format="parquet", partitioning=part)


def the_filter(days: int) -> pc.Expression:
    """Two regions, the second half of the days (partition pruning), qty > 10 (pushdown)."""
    return (ds.field("region").isin(["eu", "apac"]) & (ds.field("day") > days // 2)
            & (ds.field("qty") > 10))


def scan(root: str, days: int) -> tuple[pa.Table, list[str]]:
    """The filtered scan of ``root``, sorted by id, and the files it touched."""
    dataset = open_dataset(root)
    flt = the_filter(days)
    files = [f.path for f in dataset.get_fragments(filter=flt)]
    table = dataset.to_table(columns=COLUMNS, filter=flt)
    return table.sort_by("id"), files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="dataset folder (written here if empty or missing; "
                                     "default: a temporary folder)")
    ap.add_argument("--mount", help="an existing tierfs mount of --source (default: mount "
                                    "it here and unmount at the end)")
    ap.add_argument("--cache", help="cache directory when this script mounts (default: temp)")
    ap.add_argument("--config", help="tierfs configuration when this script mounts, e.g. "
                                     "examples/training.toml")
    ap.add_argument("--small", action="store_true", help="test scale (96,000 rows)")
    ap.add_argument("--prepare", action="store_true", help="only write the dataset")
    args = ap.parse_args()
    if args.mount and not args.source:
        ap.error("--mount needs --source (the folder it mounts) to verify against")
    _tierfs.exit_on_sigterm()
    tmp = None if args.source else tempfile.mkdtemp(prefix="tierfs-parquet-")
    source = os.path.abspath(args.source or os.path.join(tmp, "sales"))
    try:
        sc = scale(args.small)
        if not os.path.isdir(source) or not os.listdir(source):
            t = time.perf_counter()
            rows = write_dataset(source, sc["days"], sc["rows_per_part"])
            print(f"wrote {rows} rows in {len(REGIONS) * sc['days']} hive partitions "
                  f"(region=…/day=…) to {source} in {time.perf_counter() - t:.1f}s", flush=True)
        if args.prepare:
            return 0
        return run(args, source, sc["days"])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, source: str, days: int) -> int:
    bad = 0
    want, _ = scan(source, days)  # the truth: the source folder read directly
    config = os.path.abspath(args.config) if args.config else None
    with _tierfs.mounted(source, args.mount, args.cache, config) as mnt:
        files: list[str] = []
        last = _tierfs.stats(mnt)
        for name in ("cold", "warm"):
            if name == "warm":
                for path in files:
                    _tierfs.drop_kernel_cache(path)
                last = _tierfs.stats(mnt)  # the opens above are not the pass's
            before = last
            t = time.perf_counter()
            try:
                got, files = scan(mnt, days)
            except (OSError, pa.ArrowException) as exc:
                bad += 1
                print(f"MISMATCH {name}: the scan through the mount failed: {exc}",
                      file=sys.stderr)
                continue
            secs = time.perf_counter() - t
            after = last = _tierfs.stats(mnt)
            file_bytes = sum(os.path.getsize(p) for p in files)
            print(f"{name}: {got.num_rows} rows from {len(files)} files "
                  f"({_tierfs.size(file_bytes)}) in {secs * 1e3:.0f} ms: "
                  f"{got.num_rows / secs:,.0f} rows/s; what tierfs did:")
            print(_tierfs.describe(_tierfs.delta(before, after), file_bytes))
            print("  (Parquet reads footers and the column chunks it needs: \"the application "
                  "read\" is the size of the files scanned)")
            if not got.equals(want):
                bad += 1
                diff = "row count" if got.num_rows != want.num_rows else "values"
                print(f"MISMATCH {name}: the scan through the mount differs from the scan of "
                      f"the source ({diff}: {got.num_rows} rows, source {want.num_rows})",
                      file=sys.stderr)
        print(_tierfs.holdings(last))
    if bad:
        print(f"FAILED: {bad} scans differ from the source", file=sys.stderr)
        return 1
    print(f"verified: both scans ({want.num_rows} rows, columns {', '.join(COLUMNS)}) equal "
          f"the same scan of the source, row for row")
    return 0


if __name__ == "__main__":
    code = main()
    # Every file is closed and every mount unmounted here. Arrow's worker threads may
    # still be winding down when the interpreter finalizes, and its C++ runtime then
    # aborts the process ("terminate called without an active exception", SIGABRT; seen
    # once in a full test run beside stress-ng; apache/arrow#36980, #39862): leave
    # without running the finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
