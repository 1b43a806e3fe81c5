"""Small-file metadata, warm: stat+open+read+close per file, and ``ls -lR``, side by side.

    python benchmarks/small_meta.py [--files 5000] [--per-dir 250] [--targets ...]
                                    [--json out.json]

Builds ``--files`` files of 1-8 KiB (`dataset.py`'s ``small/dNN/fNNNNN.bin`` layout, seed
fixed) once, then for each target (direct access, the C passthroughs, tierfs local with
its defaults and with ``-o noxattr``, and on ``rclone serve s3`` over the same directory:
rclone mount, s3fs and tierfs-s3) mounts it fresh and runs, in one process:

1. pass 1: every file in a shuffled order, ``os.stat`` + ``open`` + ``read`` + ``close``
   (what a first pass through a fresh mount costs; direct access reads the page cache);
2. pass 2: the same again, in another order (warm: what a retriever sees later);
3. ``ls -lR`` of the tree, twice; the second is reported (warm).

Each target gets the same files, orders and passes; no target gets a warm-up the others do
not. Reports files/s and per-file p50/p99 (µs) of pass 2, ``ls -lR`` seconds, and each
ratio against direct access, as a table and as JSON. Every mount is unmounted and the
server stopped before it returns (`targets.Target.mounted`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import DatasetSpec, ensure_dataset  # noqa: E402
from targets import RunContext, S3Server, Target, Tierfs, make_target  # noqa: E402

DEFAULT_TARGETS = ["direct", "bindfs", "mergerfs", "tierfs", "tierfs-noxattr",
                   "rclone", "s3fs", "tierfs-s3"]


class TierfsNoXattr(Tierfs):
    """tierfs with ``-o noxattr``: the kernel is told once that there are none."""

    name = "tierfs-noxattr"

    def argv(self, ctx: RunContext, mnt: Path) -> list[str]:
        return [*super().argv(ctx, mnt), "-o", "noxattr"]


def target(name: str) -> Target:
    return TierfsNoXattr() if name == "tierfs-noxattr" else make_target(name)


def walk(root: Path, paths: list[str], seed: int) -> dict[str, float]:
    order = paths[:]
    random.Random(seed).shuffle(order)
    lat = []
    t0 = time.perf_counter()
    for rel in order:
        p = root / rel
        t = time.perf_counter()
        os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    lat.sort()
    return {"files_per_s": len(order) / el, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6}


def ls_lr(root: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ls", "-lR", str(root / "small")], stdout=subprocess.DEVNULL, check=True,
                   timeout=600)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--per-dir", type=int, default=250)
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch directory (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    names = [n for n in args.targets.split(",") if n]
    with ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="tierfs-small-meta-")))
        spec = DatasetSpec(shards=0, shard_size=0, emb_size=0, small_files=args.files,
                           small_size=4096, small_per_dir=args.per_dir)
        ds = ensure_dataset(work / "data", spec)
        paths = ds.small_paths()
        ctx = RunContext(dataset=ds, work=work / "run")
        rows: dict[str, dict[str, Any]] = {}
        for name in names:
            t = target(name)
            why = t.missing()
            if why:
                rows[name] = {"skipped": why}
                print(f"{name}: skipped ({why})", flush=True)
                continue
            if t.source == "s3" and ctx.s3 is None:
                ctx.s3 = stack.enter_context(S3Server(ds.s3root, work / "rclone-serve.log"))
            with t.mounted(ctx) as root:
                first = walk(root, paths, 1)
                warm = walk(root, paths, 2)
                ls_lr(root)
                ls = ls_lr(root)
            rows[name] = {"pass1": first, "warm": warm, "ls_lR_s": ls}
            print(f"{name}: warm {warm['files_per_s']:.0f} files/s, ls -lR {ls:.3f} s",
                  flush=True)

    base = rows.get("direct", {})
    print(f"\n{args.files} files of 4 KiB, {args.per_dir} per directory; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'target':16} {'warm files/s':>12} {'x direct':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'ls -lR s':>9} {'x direct':>8}")
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:16} skipped: {r['skipped']}")
            continue
        w = r["warm"]
        fx = w["files_per_s"] / base["warm"]["files_per_s"] if "warm" in base else float("nan")
        lx = r["ls_lR_s"] / base["ls_lR_s"] if "ls_lR_s" in base else float("nan")
        r["files_ratio"], r["ls_ratio"] = fx, lx
        print(f"{name:16} {w['files_per_s']:12.0f} {fx:8.2f} {w['p50_us']:8.0f} "
              f"{w['p99_us']:8.0f} {r['ls_lR_s']:9.3f} {lx:8.1f}")
    out = args.json or (Path(__file__).resolve().parent / "results" /
                        f"small_meta-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"files": args.files, "per_dir": args.per_dir,
                               "load": os.getloadavg(), "rows": rows}, indent=1) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
