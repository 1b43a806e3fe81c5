"""What `tierfs stats --by-path` bookkeeping costs per read request, and its memory.

    .venv/bin/python benchmarks/pathstats_cost.py [--requests 1000000] [--mount]

In process: the work `Engine.read` and `Engine.served` add per request (the liveness check
of the handle's figures, one `request()` and one `add()`), timed over ``--requests``
requests on a few hot files; then a walk of 200,000 distinct files through a table of the
default 4096 paths (one `enter` each, so every one past the bound evicts), with the
table's memory (tracemalloc) after it. With ``--mount``: 4 KiB random reads of a 64 MiB
file through a real mount (each past the kernel's page cache) with ``[stats] path_limit``
0 and 4096, alternated three times: the end-to-end difference, noise included.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from fusefs.pathstats import PathStats  # noqa: E402


def hook_cost(requests: int) -> float:
    """Nanoseconds per request of the by-path hooks (as in `Engine.read`/`served`)."""
    ps = PathStats()
    figs = [ps.enter(f"f{i}".encode(), None) for i in range(16)]
    tiers = ("dram", "fast", "capacity")
    labels = ("random", "sequential")
    t0 = time.perf_counter()
    for i in range(requests):
        f = figs[i & 15]
        if f is not None and not f.live:  # Engine.read
            pass
        f.add(tiers[i % 3], labels[i & 1], 4096)  # Engine.served
        f.request()  # Engine.read, after the request
    loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(requests):  # the same loop without the hooks
        f = figs[i & 15]
        if f is not None and not f.live:
            pass
        tiers[i % 3], labels[i & 1]
    base = time.perf_counter() - t0
    return (loop - base) / requests * 1e9


def _walk(n: int) -> PathStats:
    ps = PathStats()
    for i in range(n):
        f = ps.enter(f"dir{i // 1000}/file{i}".encode(), None)
        assert f is not None
        f.opened(False)
        f.add("capacity", "random", 4096)
        f.request()
    return ps


def walk(n: int) -> tuple[float, int, int]:
    """µs per file of a walk past the bound, table size, and bytes the table holds
    (timed without tracemalloc, which slows allocation; measured with it after)."""
    t0 = time.perf_counter()
    ps = _walk(n)
    took = time.perf_counter() - t0
    del ps
    tracemalloc.start()
    ps = _walk(n)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return took / n * 1e6, len(ps), size


def through_mount(rounds: int = 3, reads: int = 3000) -> None:
    from mounting import Mounted

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        with open(os.path.join(src, "data.bin"), "wb") as f:
            f.write(os.urandom(64 << 20))
        rnd = random.Random(1)
        for r in range(rounds):
            for limit in (0, 4096):
                cfg = os.path.join(tmp, f"t{limit}.toml")
                with open(cfg, "w") as f:
                    f.write(f"[stats]\npath_limit = {limit}\n")
                mnt = os.path.join(tmp, f"m{r}{limit}")
                with Mounted(src, mnt, cache=os.path.join(tmp, f"c{r}{limit}"),
                             log=os.path.join(tmp, f"l{r}{limit}.log"), config=cfg):
                    fd = os.open(os.path.join(mnt, "data.bin"), os.O_RDONLY)
                    pages = [rnd.randrange(16384) for _ in range(reads)]
                    for p in pages[:500]:  # warm the DRAM tier and the daemon
                        os.posix_fadvise(fd, p * 4096, 4096, os.POSIX_FADV_DONTNEED)
                        os.pread(fd, 4096, p * 4096)
                    t0 = time.perf_counter()
                    for p in pages:
                        os.posix_fadvise(fd, p * 4096, 4096, os.POSIX_FADV_DONTNEED)
                        os.pread(fd, 4096, p * 4096)
                    took = time.perf_counter() - t0
                    os.close(fd)
                print(f"mount, path_limit={limit:>4}: {took / reads * 1e6:7.1f} µs per 4 KiB "
                      f"random read (round {r + 1})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--mount", action="store_true", help="also time reads through mounts")
    args = ap.parse_args()
    print(f"by-path hooks: {hook_cost(args.requests):.0f} ns per read request "
          f"(one add, one request)")
    us, n, size = walk(200_000)
    print(f"walk of 200,000 files: {us:.1f} µs per file entered, table {n} paths, "
          f"{size / 2**20:.1f} MiB traced ({size / n:.0f} B per path)")
    if args.mount:
        through_mount()
    return 0


if __name__ == "__main__":
    sys.exit(main())
