#!/usr/bin/env python3
"""The embedded default job: a demo dataset, mounted, read two ways, stats, unmounted.

1. Creates a small dataset in a local directory (``--workdir``, default a temp
   dir): training shards (``shards/*.tar``) and an embedding table
   (``index/embeddings.f32``).
2. Mounts it with ``tierfs mount``.
3. Runs a training-style loader (each shard read sequentially in 1 MiB
   requests, two epochs) and a RAG-style retriever (small random 4 KiB reads of
   the embedding table, Zipf-skewed) at the same time, verifying every byte.
4. Prints what each reader saw and ``tierfs stats``; unmounts, even on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

SHARD = 8 << 20
N_SHARDS = 6
ROW = 4096
N_ROWS = 8192  # 32 MiB embedding table


def tierfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusefs.cli", *args], text=True,
                          capture_output=True, check=check)


def block(seed: int, size: int) -> bytes:
    """Deterministic bytes, cheap to regenerate for verification."""
    h = hashlib.sha256(str(seed).encode()).digest()
    return (h * (size // len(h) + 1))[:size]


def make_dataset(root: str) -> None:
    os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    os.makedirs(os.path.join(root, "index"), exist_ok=True)
    for i in range(N_SHARDS):
        with open(os.path.join(root, "shards", f"shard-{i:05d}.tar"), "wb") as f:
            for j in range(SHARD // (1 << 20)):
                f.write(block(i * 1000 + j, 1 << 20))
    with open(os.path.join(root, "index", "embeddings.f32"), "wb") as f:
        for r in range(N_ROWS):
            f.write(block(-r - 1, ROW))


def loader(mnt: str, epochs: int, out: dict[str, float]) -> None:
    t0, total = time.perf_counter(), 0
    for _ in range(epochs):
        for i in range(N_SHARDS):
            with open(os.path.join(mnt, "shards", f"shard-{i:05d}.tar"), "rb") as f:
                j = 0
                while chunk := f.read(1 << 20):
                    if chunk != block(i * 1000 + j, 1 << 20):
                        raise SystemExit(f"loader: wrong bytes in shard {i} MiB {j}")
                    total += len(chunk)
                    j += 1
    out["loader_MiB_s"] = total / (1 << 20) / (time.perf_counter() - t0)
    out["loader_bytes"] = total


def retriever(mnt: str, lookups: int, out: dict[str, float]) -> None:
    rng = random.Random(42)
    weights = [1.0 / (r + 1) for r in range(N_ROWS)]
    rows = rng.choices(range(N_ROWS), weights=weights, k=lookups)
    lat = []
    with open(os.path.join(mnt, "index", "embeddings.f32"), "rb", buffering=0) as f:
        for r in rows:
            t = time.perf_counter()
            data = os.pread(f.fileno(), ROW, r * ROW)
            lat.append(time.perf_counter() - t)
            if data != block(-r - 1, ROW):
                raise SystemExit(f"retriever: wrong bytes in row {r}")
    lat.sort()
    out["retriever_lookups"] = lookups
    out["retriever_p50_us"] = lat[len(lat) // 2] * 1e6
    out["retriever_p99_us"] = lat[int(len(lat) * 0.99)] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="where to put the dataset, mount point and cache")
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="tierfs-demo-")
    data, mnt, cache = (os.path.join(work, d) for d in ("dataset", "mnt", "cache"))
    os.makedirs(mnt, exist_ok=True)
    print(f"dataset: {data}")
    make_dataset(data)
    res = tierfs("mount", data, mnt, "--cache", cache, check=False)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return res.returncode
    print(f"mounted at {mnt}")
    out: dict[str, float] = {}
    try:
        threads = [threading.Thread(target=loader, args=(mnt, args.epochs, out)),
                   threading.Thread(target=retriever, args=(mnt, args.lookups, out))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(out) < 5:
            print("a reader failed", file=sys.stderr)
            return 1
        print(f"loader:    {out['loader_bytes'] / (1 << 20):.0f} MiB in {args.epochs} epochs, "
              f"{out['loader_MiB_s']:.0f} MiB/s, every byte verified")
        print(f"retriever: {out['retriever_lookups']:.0f} random 4 KiB lookups, "
              f"p50 {out['retriever_p50_us']:.0f} us, p99 {out['retriever_p99_us']:.0f} us, "
              f"every byte verified")
        print()
        print(tierfs("stats", mnt).stdout)
    finally:
        res = tierfs("umount", mnt, check=False)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
        else:
            print("unmounted")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
