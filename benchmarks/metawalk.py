"""Metadata workload: stat + open + read + close of many small files, each timed.

Run as a separate process (so it can join the memory cgroup at exec):
``python metawalk.py ROOT --count N --per-dir P``. Paths follow dataset.py's
``small/dNN/fNNNNN.bin`` naming, so no directory listing is part of the timing.
Prints one JSON object: files, seconds, files_per_s, p50/p99/p99.9 per-file
latency in microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--per-dir", type=int, required=True)
    args = ap.parse_args()
    paths = [os.path.join(args.root, "small", f"d{i // args.per_dir:02d}", f"f{i:05d}.bin")
             for i in range(args.count)]
    lat: list[int] = []
    clock = time.perf_counter_ns
    t0 = clock()
    for p in paths:
        s = clock()
        st = os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.read(fd, max(st.st_size, 1))
        finally:
            os.close(fd)
        lat.append(clock() - s)
    total = (clock() - t0) / 1e9
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))] / 1000.0

    print(json.dumps({"files": len(paths), "seconds": total, "files_per_s": len(paths) / total,
                      "p50_us": pct(50), "p99_us": pct(99), "p999_us": pct(99.9)}))


if __name__ == "__main__":
    main()
