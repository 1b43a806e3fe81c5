"""The daemon's memory under load against its configured bounds (issue 16, "memory with bounds").

One tierfs mount of an S3 source (``rclone serve s3`` on 127.0.0.1 over the benchmark
dataset, `dataset.py`), default configuration except the bounds named on the command line,
and for ``--seconds`` (60):

* ``--streams`` (8) threads reading the shards front to back in 1 MiB reads, over and over;
* ``--randoms`` (8) threads reading 4-64 KiB at random offsets of the embedding table and of
  random small files;
* ``--writers`` (4) threads writing new files of 8-32 MiB in 1 MiB writes and closing them
  (write-back: spooled on the cache disk, uploaded in the background).

Every read is compared with the source file; every written file is compared with what
the store holds at the end (after ``tierfs umount``, which uploads what is pending). The
daemon's RSS is sampled every 0.25 s (``/proc/PID/status``: ``VmRSS``; ``VmHWM`` at the
end), and its gauges (`tierfs stats --json`) at the peak, and set against the sum of the
configured bounds: the DRAM tier, the stream read-ahead budget, the walk-ahead budget, the
upload budget, the FUSE request buffers and the interpreter's own size before any load
(the baseline). A peak above that sum is
memory no bound governs: the run prints it and exits 1.

Usage: ``python benchmarks/memory.py [--seconds 60] [--dram 512MiB] [--quick]``
(root: FUSE and drop_caches). Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import targets as T  # noqa: E402
from dataset import BUCKET, FULL, QUICK, ensure_dataset  # noqa: E402

from fusefs.config import CacheConfig, MountConfig, WriteConfig  # noqa: E402
from fusefs.units import parse_size  # noqa: E402

MiB = 1 << 20


def mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def daemon_pid(mnt: Path) -> int:
    """The tierfs daemon serving ``mnt`` (its argv names the mountpoint)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mnt).encode() in argv and any(b"fusefs.cli" in a or b"tierfs" in a for a in argv):
            return int(d)
    raise RuntimeError(f"no daemon found for {mnt}")


def stats(mnt: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "fusefs.cli", "stats", str(mnt), "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--randoms", type=int, default=8)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--dram", default="512MiB", help="[cache] dram of the mount")
    ap.add_argument("--quick", action="store_true", help="small dataset, 15 s")
    ap.add_argument("--dataset-dir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    args = ap.parse_args()
    spec = QUICK if args.quick else FULL  # run.py's: one dataset on disk serves both
    seconds = 15.0 if args.quick else args.seconds
    base = Path(args.dataset_dir or ("/var/tmp/tierfs-bench-data-quick" if args.quick
                                     else "/var/tmp/tierfs-bench-data"))
    ds = ensure_dataset(base, spec)
    work = Path(tempfile.mkdtemp(prefix="tierfs-bench-mem-"))
    failures: list[str] = []
    try:
        with T.S3Server(ds.s3root, work / "rclone.log", dir_cache_time="2s") as server:
            cache = work / "cache"
            mnt = work / "mnt"
            mnt.mkdir()
            cfg = work / "tierfs.toml"
            cfg.write_text("\n".join([
                "[cache]", f'dram = "{args.dram}"',
                "[source]", f'access_key = "{T.ACCESS_KEY}"', f'secret_key = "{T.SECRET_KEY}"',
                'region = "us-east-1"', 'read_timeout = "120s"']) + "\n")
            uri = f"s3://{BUCKET}?endpoint_override={server.endpoint}&scheme=http"
            log = work / "tierfs.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "fusefs.cli", "mount", "-f", uri, str(mnt), "--cache",
                 str(cache), "--config", str(cfg), "--log", str(log)],
                env=T.child_env(), stdout=subprocess.DEVNULL, stderr=open(work / "err", "wb"),
                start_new_session=True)
            try:
                deadline = time.monotonic() + 60
                while not T.is_mounted(mnt):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mount failed: {(work / 'err').read_text()}"
                                           f"{log.read_text() if log.exists() else ''}")
                    time.sleep(0.05)
                os.listdir(mnt)
                pid = daemon_pid(mnt)
                baseline = status_kib(pid, "VmRSS") * 1024
                result = load(ds, mnt, pid, seconds, args, failures)
                result.pop("snapshot")
                written = result.pop("written")
                subprocess.run(["fusermount3", "-u", str(mnt)], timeout=600, check=False)
                proc.wait(600)
            finally:
                if T.is_mounted(mnt):
                    T.force_unmount(mnt)
                if proc.poll() is None:
                    T.stop_process(proc)
            for rel, digest in written.items():  # uploaded at unmount: compare with the store
                p = ds.root / rel
                if not p.exists() or hashlib.sha256(p.read_bytes()).hexdigest() != digest:
                    failures.append(f"written file {rel} is not in the store as written")
                else:
                    p.unlink()
            shutil.rmtree(ds.root / "memload", ignore_errors=True)
            text = log.read_text(errors="replace") if log.exists() else ""
            if any(w in text for w in (" ERROR ", " CRITICAL ", "Traceback")):
                failures.append(f"the daemon logged errors (see {log})")
    finally:
        if not failures:
            shutil.rmtree(work, ignore_errors=True)
    cfg_bounds = bounds(parse_size(args.dram))
    governed = baseline + sum(cfg_bounds.values())
    rows = [("baseline RSS (mounted, idle)", baseline)] + [
        (f"bound: {k}", v) for k, v in cfg_bounds.items()] + [
        ("sum", governed), ("peak RSS (VmHWM)", result["hwm"]),
        ("peak RSS sampled", result["peak"])]
    print(f"\n{seconds:.0f} s: {args.streams} streams, {args.randoms} random readers, "
          f"{args.writers} writers on an S3 mount (dram {args.dram})")
    for name, v in rows:
        print(f"  {name:34s} {mib(v):>10s}")
    print(f"  reads {result['reads']:,} ({mib(result['read_bytes'])}), "
          f"files written {len(written)} ({mib(result['write_bytes'])})")
    print("  gauges near the end: " + ", ".join(f"{k} {mib(v)}"
                                               for k, v in result["gauges"].items()))
    over = result["hwm"] - governed
    if over > 0:
        failures.append(f"peak RSS {mib(result['hwm'])} is {mib(over)} above "
                        f"the configured bounds + baseline ({mib(governed)})")
    out = {"args": vars(args), "baseline": baseline, "bounds": cfg_bounds,
           "governed": governed, **result, "failures": failures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


def bounds(dram: int) -> dict[str, int]:
    """The bounds of what the daemon holds in memory: ``[cache] dram`` as configured,
    ``readahead_memory``, ``walk_memory``, ``[write] upload_memory`` and ``[mount]
    max_requests`` (1 MiB + 4 KiB of request buffer each) at their defaults (this
    benchmark leaves them). Kernel pushes count against the read-ahead bound."""
    c, w, m = CacheConfig(), WriteConfig(), MountConfig()
    return {"dram tier": dram, "stream read-ahead budget": c.readahead_memory,
            "walk-ahead budget": c.walk_memory, "upload budget": w.upload_memory,
            "FUSE request buffers": m.max_requests * (1024 + 4) * 1024}


def load(ds: Any, mnt: Path, pid: int, seconds: float, args: argparse.Namespace,
         failures: list[str]) -> dict[str, Any]:
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"reads": 0, "read_bytes": 0, "write_bytes": 0}
    written: dict[str, str] = {}
    shards = sorted(p.relative_to(ds.root) for p in (ds.root / "shards").iterdir())
    small = [Path(p) for p in ds.small_paths()]
    emb = Path("emb/embeddings.bin")

    def source(rel: Path, off: int, n: int) -> bytes:
        with open(ds.root / rel, "rb") as f:
            f.seek(off)
            return f.read(n)

    def check(rel: Path, off: int, got: bytes, n: int) -> None:
        want = source(rel, off, n)
        if got != want:
            with lock:
                failures.append(f"{rel} at {off}+{n}: bytes differ from the source")
            stop.set()

    def stream(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            rel = rng.choice(shards)
            with open(mnt / rel, "rb") as f:
                off = 0
                while not stop.is_set():
                    got = f.read(MiB)
                    if not got:
                        break
                    if rng.random() < 0.05:
                        check(rel, off, got, MiB)
                    off += len(got)
                    with lock:
                        counts["reads"] += 1
                        counts["read_bytes"] += len(got)

    def randoms(i: int) -> None:
        rng = random.Random(100 + i)
        size = (ds.root / emb).stat().st_size
        while not stop.is_set():
            rel = emb if rng.random() < 0.7 else rng.choice(small)
            n = rng.choice([4096, 16384, 65536])
            off = rng.randrange(0, max(1, (size if rel == emb else 4096) - n))
            with open(mnt / rel, "rb") as f:
                got = os.pread(f.fileno(), n, off)
            check(rel, off, got, n)
            with lock:
                counts["reads"] += 1
                counts["read_bytes"] += len(got)

    def writer(i: int) -> None:
        rng = random.Random(200 + i)
        (mnt / "memload").mkdir(exist_ok=True)
        k = 0
        while not stop.is_set():
            rel = f"memload/w{i}-{k:04d}.bin"
            k += 1
            h = hashlib.sha256()
            n = rng.randint(8, 32)
            with open(mnt / rel, "wb") as f:
                for _ in range(n):
                    block = rng.randbytes(MiB)
                    f.write(block)
                    h.update(block)
            with lock:
                written[rel] = h.hexdigest()
                counts["write_bytes"] += n * MiB

    threads = ([threading.Thread(target=stream, args=(i,)) for i in range(args.streams)]
               + [threading.Thread(target=randoms, args=(i,)) for i in range(args.randoms)]
               + [threading.Thread(target=writer, args=(i,)) for i in range(args.writers)])
    (mnt / "memload").mkdir(exist_ok=True)
    for t in threads:
        t.daemon = True
        t.start()
    peak, peak_at = 0, 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and not stop.is_set():
        rss = status_kib(pid, "VmRSS") * 1024
        if rss > peak:
            peak, peak_at = rss, time.monotonic() - t0
        time.sleep(0.25)
    snap = stats(mnt)  # gauges near the end, under load
    q = snap.get("queues", {})
    gauges = {"dram bytes": snap.get("dram", {}).get("bytes_used", 0),
              "stream buffers": q.get("stream_buffer_bytes", 0),
              "walk buffers": q.get("walk_buffer_bytes", 0),
              "kernel pushes": q.get("push_bytes_in_flight", 0),
              "uploads (peak)": snap.get("capacity", {}).get("upload_memory_peak", 0)}
    stop.set()
    for t in threads:
        t.join(300)
    return {**counts, "peak": peak, "peak_at_s": peak_at, "hwm": status_kib(pid, "VmHWM") * 1024,
            "gauges": gauges, "snapshot": snap, "written": written}


if __name__ == "__main__":
    sys.exit(main())
