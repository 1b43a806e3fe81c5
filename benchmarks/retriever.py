"""The RAG retriever workload (issue 14): an index searched at random, then 10 documents read by id.

Each query searches an IVF-like index and fetches the documents it found, as a retriever
in front of a language model does:

* **search**: ``--nprobe`` (4) "inverted lists" of the index file are scanned: each is a
  random run of 16-64 KiB of float32 vectors (dimension 128) at a random vector-aligned
  offset, read through ``mmap`` (the default, as FAISS reads an index opened with
  ``IO_FLAG_MMAP``) or ``pread`` (``--io pread``), and scored against the query vector;
* **fetch**: ``--docs-per-query`` (10) documents chosen at random among the dataset's
  documents (1-16 KiB each, in 100 directories) are opened by path, read to the end and
  closed, one after another.

The query latency is search + fetch. Every target runs the same query sequence (fixed
seed): a fresh mount with empty caches, then ``sync; echo 3 > /proc/sys/vm/drop_caches``
(for every target, ``direct`` included, so all start cold alike), then the queries
(**cold**), then the same queries again on the same mount (**warm**). No other warm-up.

Targets are those of targets.py with the options it gives them (tierfs: its defaults;
bindfs, mergerfs, s3fs: skipped as "not installed" when missing). The S3 targets read
``rclone serve s3`` over the same directory on 127.0.0.1.

Read amplification = bytes fetched from the capacity tier / bytes the queries read:

* S3 targets: what the S3 server wrote to its sockets (``wchar`` of its
  ``/proc/PID/io``: response bodies, listings included, and HTTP headers), the same
  count for every S3 client;
* ``tierfs`` (local source): from the mount's own counters (``tierfs stats --json``):
  ``read.bytes.capacity.{random,unknown}`` (page reads of the source) +
  ``readahead.bytes.capacity`` (stream chunks) + ``fill.bytes``;
* local peers and ``direct``: n/a (nothing between them and the disk counts it cheaply).

Usage: ``python benchmarks/retriever.py [--quick] [--queries N] [--docs N] [--targets a,b]
[--io mmap|pread] [--out FILE]``. Needs root (mounts, drop_caches). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import mmap
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset import BUCKET  # noqa: E402
from run import drop_caches  # noqa: E402
from targets import (ALL_TARGETS, RunContext, S3Server, cleanup_stale,  # noqa: E402
                     make_target)

KiB = 1 << 10
MiB = 1 << 20
DIM = 128
VEC = DIM * 4  # bytes per float32 vector
DIRS = 100
WORK_PREFIX = "tierfs-retriever-"


@dataclass(frozen=True)
class Spec:
    """What the dataset is built from (a rebuild happens when it changes)."""

    index_bytes: int
    docs: int
    doc_min: int = 1 * KiB
    doc_max: int = 16 * KiB
    dirs: int = DIRS
    seed: int = 14


@dataclass(frozen=True)
class Data:
    """A built dataset; ``root`` is what local targets read and the S3 bucket's contents."""

    spec: Spec
    base: Path

    @property
    def s3root(self) -> Path:
        return self.base / "s3root"

    @property
    def root(self) -> Path:
        return self.s3root / BUCKET

    index_path = "index/ivf.index"

    def doc_path(self, i: int) -> str:
        return f"docs/d{i % self.spec.dirs:02d}/doc{i:05d}.txt"


def ensure_data(base: Path, spec: Spec) -> Data:
    """Build the index and the documents under ``base`` unless they are there already."""
    import numpy as np

    data = Data(spec, base)
    manifest = base / "manifest.json"
    want = asdict(spec)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(manifest.read_text()) == want and data.root.is_dir():
            return data
    t0 = time.monotonic()
    print(f"building the retriever dataset in {base} ({spec.index_bytes / MiB:.0f} MiB index, "
          f"{spec.docs} documents)...", flush=True)
    manifest.unlink(missing_ok=True)
    if data.s3root.exists():
        import shutil
        shutil.rmtree(data.s3root)
    rng = np.random.default_rng(spec.seed)
    index = data.root / data.index_path
    index.parent.mkdir(parents=True)
    with open(index, "wb") as f:
        left = spec.index_bytes // VEC
        while left:
            n = min(left, 16384)
            rng.standard_normal((n, DIM), dtype=np.float32).tofile(f)
            left -= n
    sizes = rng.integers(spec.doc_min, spec.doc_max + 1, spec.docs)
    blob = rng.integers(32, 127, 2 * spec.doc_max, dtype=np.uint8).tobytes()  # printable text
    for d in range(spec.dirs):
        (data.root / f"docs/d{d:02d}").mkdir(parents=True)
    for i, size in enumerate(sizes):
        off = (i * 7919) % spec.doc_max
        head = f"doc {i}\n".encode()
        (data.root / data.doc_path(i)).write_bytes(head + blob[off:off + int(size) - len(head)])
    os.sync()
    manifest.write_text(json.dumps(want))
    print(f"  built in {time.monotonic() - t0:.1f} s", flush=True)
    return data


@dataclass(frozen=True)
class Query:
    vector_seed: int
    lists: tuple[tuple[int, int], ...]  # (first vector, vectors) per probed list
    docs: tuple[int, ...]


def make_queries(spec: Spec, n: int, nprobe: int, per_query: int, seed: int) -> list[Query]:
    import numpy as np

    rng = np.random.default_rng(seed)
    nvec = spec.index_bytes // VEC
    out = []
    for q in range(n):
        lists = []
        for _ in range(nprobe):
            count = int(rng.integers(16 * KiB // VEC, 64 * KiB // VEC + 1))
            lists.append((int(rng.integers(0, nvec - count)), count))
        docs = rng.choice(spec.docs, size=per_query, replace=False)
        out.append(Query(q, tuple(lists), tuple(int(d) for d in docs)))
    return out


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, int(q / 100.0 * len(sorted_values)))]


def run_pass(root: Path, data: Data, queries: list[Query], io: str) -> dict[str, Any]:
    """Run every query once through ``root``; per-query latencies and bytes read."""
    import numpy as np

    clock = time.perf_counter_ns
    fd = os.open(root / data.index_path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if io == "mmap" else None
        vecs = np.frombuffer(mm, dtype=np.float32).reshape(-1, DIM) if mm is not None else None
        total, search, fetch = [], [], []
        index_bytes = doc_bytes = 0
        t_pass = clock()
        for q in queries:
            qv = np.random.default_rng(q.vector_seed).standard_normal(DIM, dtype=np.float32)
            t0 = clock()
            best = -np.inf
            block = None
            for first, count in q.lists:
                if vecs is not None:
                    block = vecs[first:first + count]
                else:
                    raw = os.pread(fd, count * VEC, first * VEC)
                    block = np.frombuffer(raw, dtype=np.float32).reshape(-1, DIM)
                best = max(best, float((block @ qv).max()))  # touches every byte of the list
                index_bytes += count * VEC
            t1 = clock()
            for d in q.docs:
                dfd = os.open(root / data.doc_path(d), os.O_RDONLY)
                try:
                    while chunk := os.read(dfd, 64 * KiB):
                        doc_bytes += len(chunk)
                finally:
                    os.close(dfd)
            t2 = clock()
            total.append((t2 - t0) / 1e3)
            search.append((t1 - t0) / 1e3)
            fetch.append((t2 - t1) / 1e3)
        seconds = (clock() - t_pass) / 1e9
        block = vecs = None  # no view of the map may outlive it
        if mm is not None:
            mm.close()
    finally:
        os.close(fd)
    total.sort(), search.sort(), fetch.sort()
    return {
        "queries": len(queries), "seconds": seconds, "queries_per_s": len(queries) / seconds,
        "p50_us": pct(total, 50), "p99_us": pct(total, 99), "mean_us": sum(total) / len(total),
        "search_p50_us": pct(search, 50), "search_p99_us": pct(search, 99),
        "fetch_p50_us": pct(fetch, 50), "fetch_p99_us": pct(fetch, 99),
        "index_bytes": index_bytes, "doc_bytes": doc_bytes,
        "served_bytes": index_bytes + doc_bytes,
    }


def proc_io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def tierfs_counters(mnt: Path) -> dict[str, int]:
    """The mount's counters, as `tierfs stats --json` prints them."""
    from fusefs.control import call  # importable: run.py put the repository on sys.path

    return call(str(mnt), "stats")["stats"]["counters"]


def tierfs_fetched(delta: dict[str, int]) -> dict[str, int]:
    """Bytes from the capacity tier by the mount's counters (see the module docstring)."""
    served = sum(v for k, v in delta.items() if k.startswith("read.bytes.")
                 and k.count(".") == 3)
    paged = sum(delta.get(f"read.bytes.capacity.{label}", 0) for label in ("random", "unknown"))
    fetched = paged + delta.get("readahead.bytes.capacity", 0) + delta.get("fill.bytes", 0)
    return {"daemon_served_bytes": served, "capacity_bytes": fetched,
            "walk_fetched_files": delta.get("walk.fetched_files", 0),
            "remote_blocks": delta.get("read.remote_blocks", 0)}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def run_target(name: str, ctx: RunContext, data: Data, queries: list[Query], io: str,
               server_pid: int | None, notes: list[str]) -> dict[str, Any]:
    """Cold then warm pass on a fresh mount; one result dict per temperature."""
    target = make_target(name)
    why = target.missing()
    if why:
        return {"skipped": why.replace(" is not installed", ": not installed")}
    out: dict[str, Any] = {"source": target.source}
    with target.mounted(ctx) as root:
        for temp in ("cold", "warm"):
            if temp == "cold" and not drop_caches():
                note = "drop_caches not writable: cold = fresh caches only"
                if note not in notes:
                    notes.append(note)
            counters0 = tierfs_counters(root) if name.startswith("tierfs") else None
            io0 = proc_io(server_pid) if server_pid and target.source == "s3" else None
            res = run_pass(root, data, queries, io)
            res["loadavg_1m"] = os.getloadavg()[0]
            amp: dict[str, Any] = {}
            if counters0 is not None:
                delta = diff(tierfs_counters(root), counters0)
                amp["tierfs_stats"] = tierfs_fetched(delta)
                amp["tierfs_counters"] = delta
                if target.source == "local":
                    res["amplification"] = ratio(amp["tierfs_stats"]["capacity_bytes"],
                                                 res["served_bytes"])
                    res["amplification_from"] = "tierfs stats"
            if io0 is not None:
                d = diff(proc_io(server_pid), io0)
                amp["server_sent_bytes"] = d.get("wchar", 0)
                amp["server_read_bytes"] = d.get("rchar", 0)
                res["amplification"] = ratio(amp["server_sent_bytes"], res["served_bytes"])
                res["amplification_from"] = "S3 server"
            res.update(amp)
            out[temp] = res
            print(f"  {name:10s} {temp}: p50 {res['p50_us'] / 1e3:8.2f} ms  p99 "
                  f"{res['p99_us'] / 1e3:8.2f} ms  {res['seconds']:6.1f} s  amp "
                  f"{fmt(res.get('amplification'), 2)}  load {res['loadavg_1m']:.1f}", flush=True)
    return out


def fmt(v: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{suffix}"


CHECKS = [  # the goals: (target, temperature, metric, bound, against direct?)
    ("tierfs", "warm", "p50_us", 1.2, True), ("tierfs", "warm", "p99_us", 1.2, True),
    ("tierfs-s3", "warm", "p50_us", 1.2, True), ("tierfs-s3", "warm", "p99_us", 1.2, True),
    ("tierfs-s3", "cold", "p50_us", 3.0, True),
    ("tierfs", "cold", "amplification", 1.5, False),
    ("tierfs-s3", "cold", "amplification", 1.5, False),
]


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    direct = results.get("direct", {})
    for name, temp, metric, bound, vs_direct in CHECKS:
        if name not in results:
            continue
        v = results[name].get(temp, {}).get(metric)
        value = ratio(v, direct.get(temp, {}).get(metric)) if vs_direct else v
        out.append({"target": name, "temperature": temp, "metric": metric,
                    "vs": "direct" if vs_direct else None, "value": value, "bound": bound,
                    "met": None if value is None else value <= bound})
    return out


def table(results: dict[str, Any]) -> str:
    head = ["target", "source", "temp", "p50 ms", "p99 ms", "p50 vs direct", "p99 vs direct",
            "search p50 ms", "fetch p50 ms", "queries/s", "read amp."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    direct = results.get("direct", {})
    for name, r in results.items():
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or f"error: {r['error'][:120]}"
            lines.append(f"| {name} | | | {why} |" + " |" * (len(head) - 4))
            continue
        for temp in ("cold", "warm"):
            c = r.get(temp)
            if c is None:
                continue
            d = direct.get(temp, {})
            amp = c.get("amplification")
            amp_s = "n/a" if amp is None else f"{amp:.2f} ({c['amplification_from']})"
            lines.append("| " + " | ".join([
                name, r["source"], temp, fmt(c["p50_us"] / 1e3), fmt(c["p99_us"] / 1e3),
                fmt(ratio(c["p50_us"], d.get("p50_us")), 2, "x"),
                fmt(ratio(c["p99_us"], d.get("p99_us")), 2, "x"),
                fmt(c["search_p50_us"] / 1e3), fmt(c["fetch_p50_us"] / 1e3),
                fmt(c["queries_per_s"], 0), amp_s]) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="RAG retriever benchmark: index search + document fetch per query, cold "
                    "and warm, tierfs beside direct access and the peers of targets.py.")
    p.add_argument("--quick", action="store_true",
                   help="32 MiB index, 2,000 documents, 100 queries: a smoke run of a minute "
                        "or two")
    p.add_argument("--queries", type=int, default=None,
                   help="queries per pass (default 300, --quick 100); the same for every target")
    p.add_argument("--docs", type=int, default=None,
                   help="documents in the dataset (default 20000, --quick 2000)")
    p.add_argument("--index-mib", type=int, default=None,
                   help="index size in MiB (default 128, --quick 32)")
    p.add_argument("--docs-per-query", type=int, default=10, help="documents fetched per query")
    p.add_argument("--nprobe", type=int, default=4, help="index lists scanned per query")
    p.add_argument("--io", choices=("mmap", "pread"), default="mmap",
                   help="how the index is read (default mmap, as FAISS's IO_FLAG_MMAP)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--seed", type=int, default=1, help="seed of the query sequence")
    p.add_argument("--out", default=None, help="JSON results (default benchmarks/results/"
                                               "retriever.json, --quick retriever-quick.json)")
    p.add_argument("--dataset-dir", default=None,
                   help="where the dataset is built and kept between runs (default "
                        "/var/tmp/tierfs-retriever-data[-quick])")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad:
        parser.error(f"unknown target {', '.join(bad)}; choose from {', '.join(ALL_TARGETS)}")
    def pick(given: int | None, quick: int, full: int) -> int:
        return given if given is not None else quick if args.quick else full
    n_queries = pick(args.queries, 100, 300)
    n_docs = pick(args.docs, 2000, 20000)
    index_mib = pick(args.index_mib, 32, 128)
    if min(n_queries, index_mib, args.nprobe, args.docs_per_query) < 1 or n_docs < args.docs_per_query:
        parser.error("--queries, --nprobe, --index-mib and --docs-per-query must be >= 1, --docs >= "
                     "--docs-per-query")
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("numpy is needed (pip install numpy)", file=sys.stderr)
        return 2
    spec = Spec(index_bytes=index_mib * MiB, docs=n_docs)
    base = Path(args.dataset_dir or
                f"/var/tmp/tierfs-retriever-data{'-quick' if args.quick else ''}")
    out = Path(args.out or HERE / "results" /
               ("retriever-quick.json" if args.quick else "retriever.json"))

    def _term(signum: int, frame: object) -> None:  # unwind like Ctrl-C: everything unmounts
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)

    started = time.monotonic()
    for stale in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        for m in cleanup_stale(stale):
            print(f"unmounted a stale mount: {m}")
    data = ensure_data(base, spec)
    queries = make_queries(spec, n_queries, args.nprobe, args.docs_per_query, args.seed)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    notes: list[str] = []
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "nice": os.nice(0), "loadavg_start": os.getloadavg()},
        "dataset": {"dir": str(base), **asdict(spec), "dim": DIM},
        "workload": {"queries": n_queries, "docs_per_query": args.docs_per_query,
                     "nprobe": args.nprobe, "list_bytes": [16 * KiB, 64 * KiB], "io": args.io,
                     "seed": args.seed},
        "cold": "fresh mount with empty caches, then sync + drop_caches (every target, "
                "direct included); warm = the same queries again on the same mount",
        "notes": notes,
    }
    print(f"{n_queries} queries x ({args.nprobe} index lists via {args.io} + "
          f"{args.docs_per_query} documents); load average {os.getloadavg()[0]:.1f}", flush=True)
    ctx = RunContext(dataset=data, work=work)  # type: ignore[arg-type]  # .root is all it uses
    results: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            if any(make_target(t).source == "s3" for t in targets):
                ctx.s3 = stack.enter_context(S3Server(data.s3root, work / "rclone-serve.log"))
                print(f"S3 server (rclone serve s3) on {ctx.s3.endpoint}", flush=True)
            pid = ctx.s3.proc.pid if ctx.s3 is not None and ctx.s3.proc is not None else None
            for name in targets:
                try:
                    results[name] = run_target(name, ctx, data, queries, args.io, pid, notes)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one failing target must not end the run
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"  {name}: ERROR {results[name]['error'][:300]}", flush=True)
                if "skipped" in results[name]:
                    print(f"  {name:10s} {results[name]['skipped']}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: unmounted everything; partial results kept", file=sys.stderr)
        notes.append("interrupted")
    finally:
        for m in cleanup_stale(work):
            print(f"warning: had to force-unmount {m}", file=sys.stderr)
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    checks = evaluate(results)
    doc = {**meta, "results": results, "checks": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print()
    print(table(results))
    print()
    for c in checks:
        state = "n/a   " if c["met"] is None else ("met   " if c["met"] else "MISSED")
        what = f"{c['metric']} / direct" if c["vs"] else c["metric"]
        print(f"{state} {c['target']} {c['temperature']} {what} = {fmt(c['value'])} "
              f"(want <= {c['bound']:g})")
    print("cold = fresh mount + drop_caches for every target (direct too); warm = same "
          "queries again")
    for n in notes:
        print(f"note: {n}")
    print(f"\nresults: {out}  ({meta['elapsed_s']:.0f} s; logs: {work}; load average "
          f"{meta['machine']['loadavg_start'][0]:.1f} -> {meta['machine']['loadavg_end'][0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
