"""What checking every fast-tier read costs (`[cache] verify`, issue 16: at most 5%).

    python benchmarks/verify_cost.py [--rounds 3] [--runtime 10] [--size 256MiB]
                                     [--json out.json]

A local source with an embedding-table file and two shards (random bytes, ``--size``
each) is mounted by tierfs with the DRAM tier off (``dram = 0``) and the files warmed into
the fast tier (``tierfs warm``, once; the cache directory is kept across remounts). fio
then reads with ``direct=1``, so that neither the kernel's page cache nor the DRAM tier
answers: every read is a fast-tier read, the path the checksums are on (the worst case;
with the defaults most warm reads never reach the fast tier). Two workloads per mount:

* ``rand``: 4 KiB random reads of the table, 4 jobs, queue depth 1 (IOPS, p50, p99);
* ``seq``: 1 MiB sequential reads of the shards, one job per shard (MiB/s).

Mounts alternate between ``verify = true`` and ``verify = false`` for ``--rounds`` rounds
(so that drift of a busy machine falls on both), the same cache directory each time.
Reports the median of each setting and the ratio true/false, as a table and as JSON.

Through FUSE the difference is small beside a loaded machine's noise, so the run first
measures what checking adds to one fast-tier read in-process (`FastTier.read` of 4 KiB
at random and of 1 MiB chunks, 64 MiB admitted, settings alternated 6 times): the
microseconds a request gains, to set against its time through the mount.
Needs root (FUSE) and fio. Every mount is unmounted before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from targets import child_env, force_unmount, is_mounted, stop_process  # noqa: E402
from workloads import parse_fio  # noqa: E402

import random  # noqa: E402

import trio  # noqa: E402

from fusefs.policies import get_policy  # noqa: E402
from fusefs.policies.base import Tier  # noqa: E402
from fusefs.stats import Stats  # noqa: E402
from fusefs.tiers.capacity import SourceVersion  # noqa: E402
from fusefs.tiers.fast import FastTier  # noqa: E402
from fusefs.units import format_size, parse_size  # noqa: E402

FILES = ("table.bin", "shard-0.bin", "shard-1.bin")


def make_source(src: Path, size: int) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        p = src / name
        if p.exists() and p.stat().st_size == size:
            continue
        with open(p, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))


class Mount:
    """One tierfs mount of ``src`` with ``verify`` set; unmounted on exit, whatever happens."""

    def __init__(self, src: Path, mnt: Path, cache: Path, work: Path, verify: bool) -> None:
        self.src, self.mnt, self.cache, self.work, self.verify = src, mnt, cache, work, verify
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mount:
        cfg = self.work / f"verify-{str(self.verify).lower()}.toml"
        cfg.write_text(f'[cache]\ndram = 0\nsize = "4GiB"\nverify = {str(self.verify).lower()}\n')
        self.mnt.mkdir(exist_ok=True)
        force_unmount(self.mnt)
        log = open(self.work / "tierfs.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusefs.cli", "mount", "-f", str(self.src), str(self.mnt),
             "--cache", str(self.cache), "--config", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("tierfs did not mount: see " + str(self.work / "tierfs.log"))
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, timeout=60)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        force_unmount(self.mnt)


def fio(mnt: Path, runtime: float) -> dict[str, Any]:
    job = f"""[global]
ioengine=psync
direct=1
time_based=1
runtime={runtime:g}
group_reporting=1
percentile_list=50:99

[rand]
filename={mnt / FILES[0]}
rw=randread
bs=4k
numjobs=4

[seq]
stonewall
rw=read
bs=1M
filename={mnt / FILES[1]}:{mnt / FILES[2]}
numjobs=2
"""
    out = subprocess.run(["fio", "--output-format=json", "-"], input=job, text=True,
                         capture_output=True, timeout=runtime * 4 + 120, check=True)
    jobs = parse_fio(out.stdout)
    return {"rand_iops": jobs["rand"]["iops"], "rand_p50_us": jobs["rand"]["p50_us"],
            "rand_p99_us": jobs["rand"]["p99_us"], "seq_MiBps": jobs["seq"]["bw_MiBps"]}


def in_process(work: Path) -> dict[str, float]:
    """Microseconds per `FastTier.read` with and without checks (medians of 6 passes)."""
    chunk = 1 << 20

    async def run() -> dict[str, float]:
        root = work / "inproc"
        root.mkdir(exist_ok=True)
        policy = get_policy("lru")(1 << 30, tier=Tier.FAST, object_size=chunk)
        fast = FastTier(str(root), policy=policy, stats=Stats())
        await fast.open()
        cf = await fast.file_create(b"f", SourceVersion(64 * chunk, 1, None))
        for i in range(64):
            await fast.admit(cf, i * chunk, os.urandom(chunk))
        rnd = random.Random(1)
        small = [rnd.randrange(64 * chunk // 4096) * 4096 for _ in range(20000)]
        large = [rnd.randrange(64) * chunk for _ in range(500)]
        got: dict[str, list[float]] = {}
        for r in range(6):
            for verify in ((True, False) if r % 2 == 0 else (False, True)):
                fast.verify = verify
                for name, offs, size in (("4k", small, 4096), ("1m", large, chunk)):
                    t = time.perf_counter()
                    for off in offs:
                        assert await fast.read(cf, off, size) is not None
                    got.setdefault(f"{name}_{str(verify).lower()}_us", []).append(
                        (time.perf_counter() - t) / len(offs) * 1e6)
        await fast.close()
        return {k: statistics.median(v) for k, v in got.items()}

    return trio.run(run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=10.0)
    ap.add_argument("--size", default="256MiB", help="size of each of the three files")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", default=str(HERE / "results" / "verify_cost.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tierfs-verify-"))
    src, mnt, cache = work / "src", work / "mnt", work / "cache"
    make_source(src, parse_size(args.size))
    inproc = in_process(work)
    print("in-process FastTier.read, µs per read: " + ", ".join(
        f"{n} {inproc[n + '_true_us']:.1f} checked / {inproc[n + '_false_us']:.1f} not "
        f"(+{inproc[n + '_true_us'] - inproc[n + '_false_us']:.1f})" for n in ("4k", "1m")),
        flush=True)
    with Mount(src, mnt, cache, work, True):
        for name in FILES:
            subprocess.run([sys.executable, "-m", "fusefs.cli", "warm", str(mnt / name)],
                           check=True, capture_output=True, env=child_env(), timeout=600)
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for r in range(args.rounds):
        for verify in ((True, False) if r % 2 == 0 else (False, True)):
            with Mount(src, mnt, cache, work, verify) as m:
                res = fio(m.mnt, args.runtime)
                amp = json.loads(subprocess.run(
                    [sys.executable, "-m", "fusefs.cli", "stats", "--json", str(m.mnt)],
                    check=True, capture_output=True, text=True, env=child_env(),
                    timeout=60).stdout)["amplification"]
            # What the source gave against what was served: ~0 when the fast tier served.
            res["source_share"] = amp["source_bytes"] / max(1, amp["served_bytes"])
            res["load"] = os.getloadavg()[0]
            runs[verify].append(res)
            print(f"round {r + 1} verify={str(verify).lower():5} " +
                  " ".join(f"{k}={v:.1f}" for k, v in res.items()), flush=True)
    med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in runs[v][0]}
           for v in (True, False)}
    rows = [("4 KiB random IOPS (4 jobs)", "rand_iops"), ("  p50 µs", "rand_p50_us"),
            ("  p99 µs", "rand_p99_us"), ("1 MiB sequential MiB/s (2 jobs)", "seq_MiBps")]
    print(f"\nfast-tier reads, direct=1, dram 0, {format_size(parse_size(args.size))} files, "
          f"median of {args.rounds} rounds each")
    print(f"{'':34} {'verify=true':>12} {'verify=false':>12} {'true/false':>10}")
    for label, key in rows:
        a, b = med[True][key], med[False][key]
        print(f"{label:34} {a:12.1f} {b:12.1f} {a / b if b else float('nan'):10.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "in_process": inproc, "runs": {str(k).lower(): v for k, v in runs.items()},
                   "median": {str(k).lower(): v for k, v in med.items()},
                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
