"""Benchmark the C page cache against a plain-Python LRU doing the same work.

Not a test: it prints a table and writes ``benchmarks/results/pagecache.json``.

Workloads, each at 4 KiB and 64 KiB pages, with 1 and 2 threads sharing one
cache of ``--working-set`` bytes (default 64 MiB, above this machine's L3):

* ``hit``: ``get_into`` of a random cached page into the thread's buffer.
* ``hit-range``: ``get_range_into`` of 128 KiB of consecutive cached pages
  per call (a FUSE read's size), counted in pages.
* ``miss``: ``get_into`` that misses, then ``put`` of a new page, which
  evicts one; every key is new.

The Python LRU is an ``OrderedDict`` of ``bytes`` under a ``threading.Lock``
(it must be thread-safe too): a hit is lookup + ``move_to_end`` + one copy
into the caller's buffer; a miss is a failed lookup, a copy into a new
``bytes`` and an insert that pops the oldest page. Both sides copy each page
once. Each figure is the median of ``--repeats`` timed runs.

Then the same without Python: ``csrc/bench_pagecache.c`` (built with
``make -C csrc bench``) times hits and misses in C against a raw ``memcpy``
of the same random pages, 1 and 2 threads, to separate what the cache costs
from what the GIL costs.

Also reported: metadata bytes per cached page (arena excluded) from the C
struct sizes and as allocated by real caches, and the cost of a whole-file
invalidation on a full cache (``--inval-arena-mib``, default 1 GiB), for a
file with no page cached and for one with 16.

The machine is shared and noisy: before and after the runs, a probe times a
pure-Python spin in one and in two processes. Two-thread figures mean little
when that probe shows less than ~1.8x (someone else holds a core).

Usage: ``python benchmarks/bench_pagecache.py [--quick]``; the invalidation
timing alone: ``python benchmarks/bench_pagecache.py --invalidation-only
--inval-arena-mib 512,4096``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusefs.pagecache import PageCache  # noqa: E402

RANGE_BYTES = 128 * 1024
CHUNK = 64  # operations between clock reads


class PyLRU:
    """The baseline: a thread-safe LRU of bytes with the page cache's calls."""

    def __init__(self, capacity_pages: int) -> None:
        self._cap = capacity_pages
        self._od: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_into(self, file_id: int, page: int, buffer: bytearray) -> int:
        key = (file_id, page)
        with self._lock:
            data = self._od.get(key)
            if data is None:
                return 0
            self._od.move_to_end(key)
        n = len(data)
        buffer[:n] = data
        return n

    def put(self, file_id: int, page: int, data: bytes | bytearray) -> None:
        copy = bytes(data)
        with self._lock:
            self._od[(file_id, page)] = copy
            self._od.move_to_end((file_id, page))
            if len(self._od) > self._cap:
                self._od.popitem(last=False)


def fill(cache: PageCache | PyLRU, pages: int, page_size: int) -> None:
    """Load ``pages`` distinct pages of file 0 (distinct bytes for each)."""
    rng = random.Random(0)
    for p in range(pages):
        cache.put(0, p, rng.randbytes(page_size))


def run_threads(n_threads: int, body: Callable[[int, float], int], seconds: float) -> float:
    """Run body(thread_index, deadline) in n threads; return ops per second."""
    counts = [0] * n_threads
    barrier = threading.Barrier(n_threads + 1)

    def worker(i: int) -> None:
        barrier.wait()
        counts[i] = body(i, deadline)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed


def hit_body(cache: PageCache | PyLRU, pages: int, page_size: int) -> Callable[[int, float], int]:
    def body(i: int, deadline: float) -> int:
        order = list(range(pages))
        random.Random(i + 1).shuffle(order)
        chunks = [order[k : k + CHUNK] for k in range(0, len(order), CHUNK)]
        buf = bytearray(page_size)
        get_into = cache.get_into
        done = 0
        while True:
            for chunk in chunks:
                for p in chunk:
                    get_into(0, p, buf)
                done += len(chunk)
                if time.perf_counter() > deadline:
                    return done

    return body


def range_body(cache: PageCache, pages: int, page_size: int) -> Callable[[int, float], int]:
    per_call = max(1, RANGE_BYTES // page_size)

    def body(i: int, deadline: float) -> int:
        starts = list(range(0, pages - per_call + 1, per_call))
        random.Random(i + 1).shuffle(starts)
        buf = bytearray(per_call * page_size)
        get_range_into = cache.get_range_into
        done = 0
        while True:
            for k in range(0, len(starts), CHUNK):
                for first in starts[k : k + CHUNK]:
                    done += get_range_into(0, first, buf) // page_size
                if time.perf_counter() > deadline:
                    return done

    return body


def miss_body(cache: PageCache | PyLRU, page_size: int, next_page: list[int]) -> Callable[[int, float], int]:
    # A read buffer, as a fill from the next tier would be; bytes(bytes) would
    # not copy and would spare the LRU its one copy.
    data = bytearray(os.urandom(page_size))

    def body(i: int, deadline: float) -> int:
        buf = bytearray(page_size)
        get_into = cache.get_into
        put = cache.put
        file_id = 1 + i
        page = next_page[i]
        done = 0
        while True:
            for _ in range(CHUNK):
                if not get_into(file_id, page, buf):
                    put(file_id, page, data)
                page += 1
            done += CHUNK
            if time.perf_counter() > deadline:
                next_page[i] = page
                return done

    return body


def median_rate(make_body: Callable[[], Callable[[int, float], int]], threads: int, seconds: float, repeats: int) -> float:
    return statistics.median(run_threads(threads, make_body(), seconds) for _ in range(repeats))


def bench_page_size(page_size: int, working_set: int, seconds: float, repeats: int) -> list[dict]:
    pages = working_set // page_size
    rows: list[dict] = []
    pc = PageCache(pages * page_size, page_size)
    lru = PyLRU(pages)
    fill(pc, pages, page_size)
    fill(lru, pages, page_size)
    assert pc.stats()["pages_used"] == pages
    next_c = [0, 0]
    next_py = [0, 0]
    for threads in (1, 2):
        c_hit = median_rate(lambda: hit_body(pc, pages, page_size), threads, seconds, repeats)
        py_hit = median_rate(lambda: hit_body(lru, pages, page_size), threads, seconds, repeats)
        c_range = median_rate(lambda: range_body(pc, pages, page_size), threads, seconds, repeats)
        rows.append(_row("hit", page_size, threads, c_hit, py_hit))
        rows.append(_row("hit-range", page_size, threads, c_range, py_hit))
    # Misses last: they replace the hit working set.
    for threads in (1, 2):
        c_miss = median_rate(lambda: miss_body(pc, page_size, next_c), threads, seconds, repeats)
        py_miss = median_rate(lambda: miss_body(lru, page_size, next_py), threads, seconds, repeats)
        rows.append(_row("miss", page_size, threads, c_miss, py_miss))
    s = pc.stats()
    assert s["pages_used"] == pages and s["evictions"] > 0
    pc.close()
    return rows


def _row(workload: str, page_size: int, threads: int, c_rate: float, py_rate: float) -> dict:
    return {
        "workload": workload,
        "page_size": page_size,
        "threads": threads,
        "c_ops_per_s": round(c_rate),
        "py_lru_ops_per_s": round(py_rate),
        "c_mb_per_s": round(c_rate * page_size / 1e6),
        "ratio_vs_py_lru": round(c_rate / py_rate, 2),
    }


def add_scaling(rows: list[dict]) -> None:
    one = {(r["workload"], r["page_size"]): r for r in rows if r["threads"] == 1}
    for r in rows:
        base = one[(r["workload"], r["page_size"])]
        r["c_scaling_vs_1_thread"] = round(r["c_ops_per_s"] / base["c_ops_per_s"], 2)
        r["py_scaling_vs_1_thread"] = round(r["py_lru_ops_per_s"] / base["py_lru_ops_per_s"], 2)


def metadata_report() -> dict:
    per_page = PageCache.meta_bytes_per_page(0.9)
    measured = {}
    for pages, page_size in ((1024, 65536), (16384, 4096), (262144, 4096)):
        # The arena is allocated but never touched here, so it costs no RAM.
        with PageCache(pages * page_size, page_size) as pc:
            measured[f"{pages}x{page_size}"] = round(pc.meta_bytes() / pages, 2)
    return {
        "struct_sizes": PageCache.struct_sizes(),
        "bytes_per_page_from_structs": round(per_page, 2),
        "bytes_per_page_allocated": measured,
        "target": 78,
    }


INVAL_FILE_PAGES = 16  # pages per file in the invalidation benchmark


def invalidation_report(repeats: int, arena_bytes: int = 1 << 30) -> dict:
    """Time ``invalidate(file)`` on a full cache of 4 KiB pages.

    The arena is filled with files of ``INVAL_FILE_PAGES`` pages each (every
    page resident: filling an empty cache evicts nothing). Reported, as the
    median over ``repeats`` calls of one call each, timed from Python (the
    call itself costs ~0.2 us there):

    * ``empty_file_ms``: a file id with no page cached;
    * ``drop_file_ms``: a file with 16 pages cached, a different file each
      call (each call drops its 16 pages).
    """
    page_size = 4096
    pages = arena_bytes // page_size
    n_files = pages // INVAL_FILE_PAGES
    repeats = max(1, min(repeats, n_files))
    with PageCache(pages * page_size, page_size) as pc:
        data = b"x" * page_size
        for p in range(n_files * INVAL_FILE_PAGES):
            pc.put(p // INVAL_FILE_PAGES, p % INVAL_FILE_PAGES, data)
        assert pc.stats()["pages_used"] == n_files * INVAL_FILE_PAGES
        empty = []
        for _ in range(repeats):
            t = time.perf_counter()
            pc.invalidate(n_files + 999)  # no pages
            empty.append(time.perf_counter() - t)
        drop = []
        dropped = set()
        for f in range(repeats):
            t = time.perf_counter()
            dropped.add(pc.invalidate(f))
            drop.append(time.perf_counter() - t)
        assert dropped == {INVAL_FILE_PAGES}, dropped
    empty_s = statistics.median(empty)
    return {
        "arena_mib": arena_bytes >> 20,
        "pages": pages,
        "calls": repeats,
        "empty_file_ms": round(empty_s * 1e3, 4),
        "empty_file_ns_per_cached_page": round(empty_s / pages * 1e9, 3),
        "drop_file_pages": INVAL_FILE_PAGES,
        "drop_file_ms": round(statistics.median(drop) * 1e3, 4),
    }


def print_invalidation(rows: list[dict]) -> None:
    for r in rows:
        print(f"invalidate(file), {r['arena_mib']} MiB arena ({r['pages']} pages of 4 KiB), "
              f"median of {r['calls']}: file with 0 pages {r['empty_file_ms']} ms; "
              f"file with {r['drop_file_pages']} pages {r['drop_file_ms']} ms")


def _spin(seconds: float, out: multiprocessing.Queue) -> None:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        n += 1
    out.put(n)


def cpu_parallelism(seconds: float = 0.5) -> float:
    """Work done by two spinning processes over one: ~2.0 on an idle 2-core box."""
    ctx = multiprocessing.get_context("fork")
    totals = []
    for procs in (1, 2):
        q: multiprocessing.Queue = ctx.Queue()
        ps = [ctx.Process(target=_spin, args=(seconds, q)) for _ in range(procs)]
        for p in ps:
            p.start()
        totals.append(sum(q.get() for _ in ps))
        for p in ps:
            p.join()
    return round(totals[1] / totals[0], 2)


def c_level_report() -> dict | None:
    """Build and run csrc/bench_pagecache.c; None if there is no compiler."""
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        return None
    subprocess.run(["make", "-s", "-C", str(ROOT / "csrc"), "build/bench_pagecache"], check=True)
    out = subprocess.run(
        [str(ROOT / "csrc" / "build" / "bench_pagecache")], check=True, capture_output=True, text=True
    ).stdout
    data = json.loads(out)
    rates = {(r["page_size"], r["threads"], r["kind"]): r["ops_per_s"] for r in data["results"]}
    rows = []
    for (ps, threads, kind), rate in sorted(rates.items()):
        rows.append({
            "page_size": ps,
            "threads": threads,
            "kind": kind,
            "ops_per_s": round(rate),
            "scaling_vs_1_thread": round(rate / rates[(ps, 1, kind)], 2),
            "vs_raw_memcpy": round(rate / rates[(ps, threads, "raw_memcpy")], 2),
        })
    data["results"] = rows
    return data


def print_c_table(data: dict) -> None:
    print("C level, no Python (median of %d runs):" % data["rounds"])
    print(f"{'kind':<11} {'page':>6} {'thr':>3} {'ops/s':>11} {'2t/1t':>6} {'vs memcpy':>9}")
    for r in data["results"]:
        print(f"{r['kind']:<11} {r['page_size'] // 1024:>5}K {r['threads']:>3} {r['ops_per_s']:>11,} "
              f"{r['scaling_vs_1_thread']:>6.2f} {r['vs_raw_memcpy']:>9.2f}")


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'workload':<10} {'page':>6} {'thr':>3} {'C ops/s':>11} {'C MB/s':>8} "
        f"{'PyLRU ops/s':>12} {'C/PyLRU':>8} {'C 2t/1t':>8} {'Py 2t/1t':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['workload']:<10} {r['page_size'] // 1024:>5}K {r['threads']:>3} "
            f"{r['c_ops_per_s']:>11,} {r['c_mb_per_s']:>8,} {r['py_lru_ops_per_s']:>12,} "
            f"{r['ratio_vs_py_lru']:>8.2f} {r['c_scaling_vs_1_thread']:>8.2f} "
            f"{r['py_scaling_vs_1_thread']:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--working-set", type=int, default=64 << 20, help="bytes per cache")
    parser.add_argument("--seconds", type=float, default=0.6, help="per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument(
        "--inval-arena-mib", default="1024",
        help="comma-separated arena sizes (MiB, 4 KiB pages) for the invalidate(file) timing")
    parser.add_argument("--inval-repeats", type=int, default=101,
                        help="invalidate(file) calls timed per arena and case")
    parser.add_argument("--invalidation-only", action="store_true",
                        help="run only the invalidate(file) timing (prints, writes no JSON)")
    parser.add_argument(
        "--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "pagecache.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.working_set = 0.1, 1, 8 << 20
        args.inval_arena_mib, args.inval_repeats = "64", 11
    inval_arenas = [int(x) << 20 for x in args.inval_arena_mib.split(",") if x.strip()]
    if args.invalidation_only:
        print_invalidation([invalidation_report(args.inval_repeats, a) for a in inval_arenas])
        return

    probe_before = cpu_parallelism()
    rows: list[dict] = []
    for page_size in (4096, 65536):
        rows.extend(bench_page_size(page_size, args.working_set, args.seconds, args.repeats))
    add_scaling(rows)
    meta = metadata_report()
    inval = [invalidation_report(args.inval_repeats, a) for a in inval_arenas]
    c_level = None if args.quick else c_level_report()
    probe_after = cpu_parallelism()

    print(f"page cache vs Python LRU, working set {args.working_set >> 20} MiB, "
          f"median of {args.repeats} x {args.seconds}s, {os.cpu_count()} CPUs")
    print("hit-range rows count pages (128 KiB per call); their PyLRU column is the per-page LRU hit rate")
    print(f"CPU parallelism probe (2 procs / 1 proc): {probe_before} before, {probe_after} after"
          + ("" if min(probe_before, probe_after) >= 1.8 else
             "  <- a core was busy elsewhere: 2-thread figures are unreliable"))
    print_table(rows)
    print()
    if c_level is not None:
        print_c_table(c_level)
        print()
    print(f"metadata per page: {meta['bytes_per_page_from_structs']} B from struct sizes "
          f"{meta['struct_sizes']}; allocated: {meta['bytes_per_page_allocated']} (target <= 78)")
    print_invalidation(inval)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "cpu_parallelism_probe": {"before": probe_before, "after": probe_after},
        "params": {"working_set": args.working_set, "seconds": args.seconds,
                   "repeats": args.repeats, "range_bytes": RANGE_BYTES},
        "throughput": rows,
        "c_level": c_level,
        "metadata": meta,
        "invalidate_file": inval,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
