"""A random reader's tail latency while another process opens thousands of distinct files.

Every first open of a file used to invalidate the inode in the C page cache by scanning the
whole arena on the event loop (0.75 ms at 512 MiB), so a process opening many files pushed
up the latency of everyone else's reads. This measures it as users meet it, on one mount of a
local source with the default config:

* a random reader: fio, 4 KiB ``randread`` with O_DIRECT (every read reaches the daemon),
  over a 128 MiB index file, for ``--seconds``;
* alone, then beside an opener process that stats, opens, reads and closes ``--files``
  distinct small files (in 100 directories), over and over until fio ends.

Usage (root, fio installed)::

    python benchmarks/open_storm.py [--tierfs .venv/bin/tierfs] [--out results/open_storm.json]

Run it once per build to compare (e.g. the previous commit's venv with ``--tierfs``). Prints
one table row per phase and writes JSON. The index is read once through the mount before
timing so both phases see the same cached state (DRAM holds it); that is the same for every
build compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB

OPENER = r"""
import os, sys, time
root, n, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
opens = 0
while time.time() < stop:
    for i in range(n):
        p = os.path.join(root, "files", f"d{i % 100:02d}", f"f{i:05d}")
        os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
        opens += 1
        if time.time() >= stop:
            break
print(opens)
"""


def make_source(src: str, files: int, index_mib: int) -> None:
    for i in range(files):
        d = os.path.join(src, "files", f"d{i % 100:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(1024))
    with open(os.path.join(src, "index.bin"), "wb") as f:
        for _ in range(index_mib):
            f.write(os.urandom(MiB))


def fio(path: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["fio", "--name=rand", f"--filename={path}", "--rw=randread", "--bs=4k",
         "--direct=1", "--ioengine=psync", f"--runtime={seconds}", "--time_based",
         "--randrepeat=0", "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    job = json.loads(out)["jobs"][0]["read"]
    pct = job["clat_ns"]["percentile"]
    return {"iops": job["iops"], "p50_us": pct["50.000000"] / 1e3,
            "p99_us": pct["99.000000"] / 1e3, "p999_us": pct["99.900000"] / 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tierfs", default=os.path.join(os.path.dirname(sys.executable), "tierfs"))
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--index-mib", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--label", default="tierfs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tierfs-openstorm-")
    src, mnt, cache = (os.path.join(work, x) for x in ("src", "mnt", "cache"))
    os.makedirs(mnt)
    results: dict[str, object] = {"label": args.label, "files": args.files,
                                  "index_mib": args.index_mib, "seconds": args.seconds}
    try:
        make_source(src, args.files, args.index_mib)
        subprocess.run([args.tierfs, "mount", src, mnt, "--cache", cache], check=True,
                       timeout=60)
        try:
            index = os.path.join(mnt, "index.bin")
            with open(index, "rb") as f:  # same cached state for every build compared
                while f.read(MiB):
                    pass
            results["alone"] = fio(index, args.seconds)
            stop = time.time() + args.seconds + 2
            opener = subprocess.Popen([sys.executable, "-c", OPENER, mnt, str(args.files),
                                       str(stop)], stdout=subprocess.PIPE, text=True)
            results["with_opener"] = fio(index, args.seconds)
            out, _ = opener.communicate(timeout=120)
            results["opens_per_s"] = int(out.strip() or 0) / (args.seconds + 2)
        finally:
            subprocess.run([args.tierfs, "umount", mnt], timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'build':<12}{'phase':<14}{'IOPS':>10}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}")
    for phase in ("alone", "with_opener"):
        r = results[phase]
        assert isinstance(r, dict)
        print(f"{args.label:<12}{phase:<14}{r['iops']:>10.0f}{r['p50_us']:>10.1f}"
              f"{r['p99_us']:>10.1f}{r['p999_us']:>10.1f}")
    print(f"opener: {results['opens_per_s']:.0f} files/s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
