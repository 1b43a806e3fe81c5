#!/usr/bin/env python3
"""A KV-cache block store on a tierfs mount: blocks written once, read back at random by id.

An LLM server that offloads attention KV blocks keeps each block in a file named by its id
and reads blocks back when a prefix is reused. One command: ``python examples/kv_cache.py``
mounts a temporary folder with ``tierfs mount`` (``--source DIR`` to keep it, ``--mount MNT``
to use an existing mount of it, ``--config FILE`` for a preset such as
``examples/serving.toml``), then:

  write   N blocks of 64 KiB, one file per block (``blocks/012/00012345.kv``), each written
          once through the mount (``--reuse`` skips this and reads blocks an earlier run,
          or ``--prepare``, wrote)
  read    passes of random reads by id from several threads (open, read the block, close),
          each pass after dropping the kernel's page cache of the blocks (posix_fadvise
          DONTNEED), so that tierfs's own tiers answer: ``first`` right after the writes,
          ``repeat`` a second time over the same ids

Block ``i``'s bytes are a pure function of ``i`` (a seeded generator), so every block read
is checked byte for byte (sha256) against what was written; after the writes, the source
folder (read directly, not through the mount) must hold the same bytes too. Any difference
exits 1. It prints write MiB/s, read p50/p99 per pass and what each tier served
(``tierfs stats --json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time

import _tierfs

BLOCK = 64 * 1024
SEED = 20240


def scale(small: bool) -> dict[str, int]:
    if small:
        return {"blocks": 256, "threads": 4, "reads": 1024}
    return {"blocks": 16384, "threads": 16, "reads": 65536}


def block_path(root: str, i: int) -> str:
    """Blocks by id, 1,000 to a folder: ``blocks/012/00012345.kv``."""
    return os.path.join(root, "blocks", f"{i // 1000:03d}", f"{i:08d}.kv")


def block_bytes(i: int) -> bytes:
    """Block ``i``'s content: 64 KiB from a generator seeded by the id."""
    return random.Random(SEED * 1_000_003 + i).randbytes(BLOCK)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def write_blocks(root: str, n: int) -> float:
    """Write blocks 0..n-1 under ``root`` (a mount); returns the seconds it took."""
    t = time.perf_counter()
    for i in range(n):
        path = block_path(root, i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(block_bytes(i))
    return time.perf_counter() - t


def read_pass(mnt: str, ids: list[int], threads: int,
              want: dict[int, bytes]) -> tuple[list[float], list[str]]:
    """Read ``ids`` through the mount from ``threads`` threads; latencies and mismatches."""
    def worker(part: list[int]) -> tuple[list[float], list[str]]:
        lat, bad = [], []
        for i in part:
            t = time.perf_counter()
            try:
                with open(block_path(mnt, i), "rb") as f:
                    data = f.read()
            except OSError as exc:
                bad.append(f"block {i}: {exc}")
                continue
            lat.append(time.perf_counter() - t)
            if len(data) != BLOCK:
                bad.append(f"block {i}: {len(data)} bytes, wrote {BLOCK}")
            elif digest(data) != want[i]:
                first = next(k for k, (a, b) in enumerate(zip(data, block_bytes(i))) if a != b)
                bad.append(f"block {i}: differs from what was written at byte {first}")
        return lat, bad

    parts = [ids[k::threads] for k in range(threads)]
    lat: list[float] = []
    bad: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for part_lat, part_bad in pool.map(worker, parts):
            lat += part_lat
            bad += part_bad
    return lat, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="folder the block store lives in (default: temporary)")
    ap.add_argument("--mount", help="an existing tierfs mount of --source (default: mount "
                                    "it here and unmount at the end)")
    ap.add_argument("--cache", help="cache directory when this script mounts (default: temp)")
    ap.add_argument("--config", help="tierfs configuration when this script mounts, e.g. "
                                     "examples/serving.toml")
    ap.add_argument("--small", action="store_true", help="test scale (256 blocks, 4 threads)")
    ap.add_argument("--blocks", type=int, help="blocks to write (default: by scale)")
    ap.add_argument("--threads", type=int, help="reader threads (default: by scale)")
    ap.add_argument("--reads", type=int, help="random reads per pass (default: by scale)")
    ap.add_argument("--prepare", action="store_true",
                    help="only write the blocks (through the mount) and check the source")
    ap.add_argument("--reuse", action="store_true",
                    help="do not write: read the blocks an earlier run wrote")
    args = ap.parse_args()
    if args.mount and not args.source:
        ap.error("--mount needs --source (the folder it mounts)")
    if args.prepare and args.reuse:
        ap.error("--prepare and --reuse exclude each other")
    sc = scale(args.small)
    n = args.blocks or sc["blocks"]
    threads = args.threads or sc["threads"]
    reads = args.reads or sc["reads"]
    if n <= 0 or threads <= 0 or reads <= 0:
        ap.error("--blocks, --threads and --reads must be positive")
    _tierfs.exit_on_sigterm()
    tmp = None if args.source else tempfile.mkdtemp(prefix="tierfs-kv-")
    source = os.path.abspath(args.source or os.path.join(tmp, "store"))
    os.makedirs(source, exist_ok=True)
    try:
        return run(args, source, n, threads, reads)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, source: str, n: int, threads: int, reads: int) -> int:
    bad: list[str] = []
    want = {i: digest(block_bytes(i)) for i in range(n)}
    config = os.path.abspath(args.config) if args.config else None
    with _tierfs.mounted(source, args.mount, args.cache, config) as mnt:
        if not args.reuse:
            before = _tierfs.stats(mnt)
            secs = write_blocks(mnt, n)
            after = _tierfs.stats(mnt)
            d = _tierfs.delta(before, after)
            print(f"write: {n} blocks of {BLOCK // 1024} KiB through the mount in "
                  f"{secs:.2f}s: {n * BLOCK / 2**20 / secs:.1f} MiB/s ({d.get('write.requests', 0)} "
                  f"write requests, {_tierfs.size(d.get('write.bytes', 0))} written)")
            # The source folder, read directly, holds what was written through the mount.
            for i in range(n):
                try:
                    with open(block_path(source, i), "rb") as f:
                        if digest(f.read()) != want[i]:
                            bad.append(f"source block {i} differs from what was written")
                except OSError as exc:
                    bad.append(f"source block {i}: {exc}")
            if args.prepare:
                for line in bad:
                    print(f"MISMATCH write: {line}", file=sys.stderr)
                return report(bad, n, 0)
        rng = random.Random(SEED)
        ids = [rng.randrange(n) for _ in range(reads)]
        last = _tierfs.stats(mnt)
        for name in ("first", "repeat"):
            for i in sorted(set(ids)):
                _tierfs.drop_kernel_cache(block_path(mnt, i))
            before = _tierfs.stats(mnt)  # the drops' opens are not the pass's
            t = time.perf_counter()
            lat, pass_bad = read_pass(mnt, ids, threads, want)
            secs = time.perf_counter() - t
            after = last = _tierfs.stats(mnt)
            for line in pass_bad:
                print(f"MISMATCH {name}: {line}", file=sys.stderr)
            bad += pass_bad
            if lat:
                print(f"{name}: {len(lat)} random block reads ({len(set(ids))} distinct) from "
                      f"{threads} threads in {secs:.2f}s: p50 {_tierfs.percentile(lat, 50) * 1e3:.2f} ms, "
                      f"p99 {_tierfs.percentile(lat, 99) * 1e3:.2f} ms, "
                      f"{len(lat) * BLOCK / 2**20 / secs:.1f} MiB/s; what tierfs did:")
                print(_tierfs.describe(_tierfs.delta(before, after), len(lat) * BLOCK))
        print(_tierfs.holdings(last))
    return report(bad, n, 2 * reads)


def report(bad: list[str], n: int, reads: int) -> int:
    if bad:
        print(f"FAILED: {len(bad)} blocks differ from what was written", file=sys.stderr)
        return 1
    what = f"{n} blocks in the source" + (f" and {reads} block reads" if reads else "")
    print(f"verified: {what} match what was written, byte for byte (sha256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
