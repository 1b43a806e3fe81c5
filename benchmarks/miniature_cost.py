"""CPU cost of feeding the default policy's miniatures the fast tier's request stream.

Since ``Policy.on_use`` the engine reports every random request that DRAM did not serve to
the fast tier's policy, and ``workload_aware`` replays the sampled ones through its two
miniature caches (at most ``OBSERVED_MAX_RATE`` of the keys). This script measures what that
costs per read request, with the feed on and off, in-process: the mount's own engine
(:func:`fusefs.mount.build_engine`, the default config but for the sizes below) over a local
file, its background admissions running, read by a Zipf stream of 4 KiB random requests as
``benchmarks/mrc_cost.py``'s fio job is. "Off" replaces the policy's ``on_use`` with a no-op
on the instance; runs alternate on/off, each on a fresh engine and fast-tier directory, and
report process CPU time (``time.process_time``: every thread) per request over the measured
requests after a warm-up. There is no FUSE and no kernel round trip here, so a request costs
less than in a daemon and the on/off share is an upper bound of the daemon's. It also times
``on_use`` alone on the same key stream (a tight loop, CPU-us per call).

Usage: ``python benchmarks/miniature_cost.py [--runs N] [--requests N] [--warmup N]
[--file-size SIZE] [--dram SIZE] [--fast SIZE] [--chunk SIZE] [--zipf A] [--workdir DIR]
[--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from fusefs import tracegen
from fusefs.access import Override
from fusefs.config import parse_config
from fusefs.handles import HandleTable
from fusefs.mount import build_engine
from fusefs.policies.workload_aware import OBSERVED_MAX_RATE, WorkloadAwarePolicy
from fusefs.stats import Stats
from fusefs.tiers.posix import PosixTier
from fusefs.units import format_size, parse_size

HERE = Path(__file__).resolve().parent
PAGE = 4096


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(1 << 20, left)
            f.write(os.urandom(n))
            left -= n


async def one_run(args: argparse.Namespace, src: Path, cache: Path, offsets: list[int],
                  feed: bool) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(mode=0o700)
    cfg = parse_config(f'[cache]\ndram = "{args.dram}"\nsize = "{args.fast}"\n'
                       f'chunk_size = "{args.chunk}"\ndir = "{cache}"\n'
                       '[mount]\nconsistency = "immutable"\n')
    stats = Stats()
    tier = PosixTier(str(src))
    await tier.start()
    engine = build_engine(tier, cfg, stats)
    policy = engine.policy
    assert engine.fast is not None and isinstance(policy, WorkloadAwarePolicy)
    if not feed:
        policy.on_use = lambda key, info=None: None  # type: ignore[method-assign]
    await engine.fast.open()
    out: dict[str, Any] = {"feed": feed}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            f = await tier.open(b"data", os.O_RDONLY)
            st = await f.fstat()
            h = HandleTable().add_file(ino=2, path=b"data", file=f, flags=os.O_RDONLY, pid=1,
                                       size=st.st_size, override=Override(access_class="random"))
            engine.opened(h, st)
            warm = offsets[:args.warmup]
            measured = offsets[args.warmup:]
            for o in warm:
                await engine.read(h, o, PAGE)
            s0 = policy.statistics()
            c0, t0 = time.process_time(), time.perf_counter()
            for o in measured:
                await engine.read(h, o, PAGE)
            c1, t1 = time.process_time(), time.perf_counter()
            s1 = policy.statistics()
            await engine.release(h)
            nursery.cancel_scope.cancel()
    finally:
        await engine.fast.close()
        await engine.close()
        await tier.close()
    n = len(measured)
    counters = stats.snapshot()["counters"]
    out.update(
        requests=n, cpu_s=round(c1 - c0, 3), wall_s=round(t1 - t0, 3),
        cpu_us_per_request=round(1e6 * (c1 - c0) / n, 2),
        mini_uses=s1["mini_uses"] - s0["mini_uses"],
        mini_sampled=s1["mini_sampled"] - s0["mini_sampled"],
        dram_misses=counters.get("dram.miss", 0), leader=policy.leader,
    )
    return out


def on_use_alone(args: argparse.Namespace, offsets: list[int]) -> dict[str, Any]:
    """CPU-us per ``on_use`` call on the request stream's chunk keys, no engine around it."""
    from fusefs.policies.base import AccessInfo, FastKey, Label, Tier

    cap, chunk = args.fast, args.chunk
    info = AccessInfo(label=Label.RANDOM, file_id=2, size=PAGE)
    keys = [(1, o // chunk) for o in offsets]
    out: dict[str, Any] = {}
    for name, experts in (("capped (as in a mount)", "adaptive"), ("no miniatures", "frequency")):
        p = WorkloadAwarePolicy(cap, tier=Tier.FAST, object_size=chunk, key_type=FastKey,
                                experts=experts)
        c0 = time.process_time()
        for k in keys:
            p.on_use(k, info)
        c1 = time.process_time()
        out[name] = round(1e6 * (c1 - c0) / len(keys), 3)
        if experts == "adaptive":
            out["capped sampled share"] = round(p.statistics()["mini_sampled"] / len(keys), 4)
    # Every key sampled: the cost of one sampled use (two miniature accesses).
    p = WorkloadAwarePolicy(cap, tier=Tier.FAST, object_size=chunk, key_type=FastKey)
    p._observed = True  # fed as a mount feeds it, but without the cap
    c0 = time.process_time()
    for k in keys:
        p.on_use(k, info)
    c1 = time.process_time()
    out["every key sampled"] = round(1e6 * (c1 - c0) / len(keys), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per setting (alternating)")
    ap.add_argument("--requests", type=int, default=100_000, help="measured requests per run")
    ap.add_argument("--warmup", type=int, default=20_000, help="requests before measuring")
    ap.add_argument("--file-size", type=parse_size, default=parse_size("1GiB"))
    ap.add_argument("--dram", type=parse_size, default=parse_size("64MiB"))
    ap.add_argument("--fast", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--chunk", type=parse_size, default=parse_size("1MiB"))
    ap.add_argument("--zipf", type=float, default=0.9)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/tierfs-miniature-cost"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "miniature_cost.json")
    args = ap.parse_args()
    src = args.workdir / "src"
    make_file(src / "data", args.file_size)
    n_obj = args.file_size // PAGE
    offsets = tracegen.zipf_trace(n_objects=n_obj, n_requests=args.warmup + args.requests,
                                  alpha=args.zipf, seed=1)["offset"].to_pylist()
    print(f"{format_size(args.file_size)} file, DRAM {format_size(args.dram)}, fast tier "
          f"{format_size(args.fast)} in {format_size(args.chunk)} chunks, Zipf({args.zipf}) "
          f"4 KiB reads: {args.warmup} warm-up + {args.requests} measured per run", flush=True)
    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="run-") as tmp:
        for i in range(2 * args.runs):
            feed = i % 2 == 0
            r = trio.run(one_run, args, src, Path(tmp) / "cache", offsets, feed)
            runs.append(r)
            print(f"  run {i} feed={'on' if feed else 'off'}: {r['cpu_us_per_request']} CPU-us/request, "
                  f"DRAM misses {r['dram_misses']}, miniature uses {r['mini_uses']} "
                  f"({r['mini_sampled']} sampled), leader {r['leader']}", flush=True)
    alone = on_use_alone(args, offsets[:args.requests])
    on = [r["cpu_us_per_request"] for r in runs if r["feed"]]
    off = [r["cpu_us_per_request"] for r in runs if not r["feed"]]
    pairs = [round(a / b, 4) for a, b in zip(on, off)]
    ratio = statistics.median(on) / statistics.median(off)
    load_end = os.getloadavg()
    print(f"\nCPU-us per request, feed on: median {statistics.median(on):.2f} [{min(on):.2f}..{max(on):.2f}]; "
          f"off: {statistics.median(off):.2f} [{min(off):.2f}..{max(off):.2f}]; ratio {ratio:.4f}, "
          f"pairs {pairs}")
    print(f"on_use alone, CPU-us per call: {alone} (cap {OBSERVED_MAX_RATE:.4g})")
    print(f"load average at start {load_start}, at end {load_end}")
    doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
           "loadavg_start": load_start, "loadavg_end": load_end,
           "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "observed_max_rate": OBSERVED_MAX_RATE, "runs": runs,
           "summary": {"on_median": statistics.median(on), "off_median": statistics.median(off),
                       "ratio": round(ratio, 4), "pairs": pairs},
           "on_use_alone_us": alone}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
