#!/usr/bin/env python3
"""A PyTorch DataLoader over WebDataset-style tar shards, read through a tierfs mount.

One command: ``python examples/train_loader.py`` writes a small dataset of tar shards
in a temporary folder (``--source DIR`` to keep it, or to use one written before),
mounts it with ``tierfs mount`` (or uses ``--mount MNT``), and runs two epochs of a
``torch.utils.data.DataLoader`` with two worker processes over the mount, as a training
job would: each worker streams its share of the shards with ``tarfile``, groups the
members of a sample by key (``KEY.npy``, ``KEY.json``, ``KEY.txt``, the WebDataset
convention) and decodes them into a tensor, a label and a caption.

Every member's sha256 is checked against the source shards (read directly, not through
the mount), and every sample must arrive exactly once per epoch; any difference exits 1.
It prints samples/s per epoch and what tierfs did in each epoch, from
``tierfs stats --json``: bytes per tier and access class, and hit ratios.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import _tierfs

EXTS = ("npy", "json", "txt")
WORDS = ("cat", "dog", "tree", "river", "cloud", "stone", "bird", "lamp", "road", "ship")


def scale(small: bool) -> dict[str, int]:
    if small:
        return {"shards": 4, "samples": 48, "dim": 1024}  # 4 KiB tensors, ~0.9 MiB in all
    return {"shards": 16, "samples": 256, "dim": 16384}  # 64 KiB tensors, ~260 MiB in all


def write_shards(root: str, shards: int, samples: int, dim: int) -> None:
    """Write ``shards`` tar files of ``samples`` samples each (stdlib tarfile only)."""
    rng = np.random.default_rng(1234)
    os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    for s in range(shards):
        path = os.path.join(root, "shards", f"shard-{s:05d}.tar")
        with tarfile.open(path + ".part", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(samples):
                key = f"s{s:05d}-{i:06d}"
                buf = io.BytesIO()
                np.save(buf, rng.standard_normal(dim, dtype=np.float32))
                label = int(rng.integers(0, 1000))
                caption = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
                members = {"npy": buf.getvalue(),
                           "json": json.dumps({"key": key, "label": label}).encode(),
                           "txt": caption.encode()}
                for ext in EXTS:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(members[ext])
                    info.mtime = 1_700_000_000
                    tar.addfile(info, io.BytesIO(members[ext]))
        os.rename(path + ".part", path)


def shard_names(root: str) -> list[str]:
    names = sorted(n for n in os.listdir(os.path.join(root, "shards")) if n.endswith(".tar"))
    if not names:
        raise SystemExit(f"no shards in {root}/shards")
    return names


def source_digests(root: str) -> dict[str, dict[str, str]]:
    """sha256 of every member of every shard, read from the source directly."""
    want: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for name in shard_names(root):
        with tarfile.open(os.path.join(root, "shards", name), "r") as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is None:
                    continue
                key, ext = m.name.rsplit(".", 1)
                want[key][ext] = hashlib.sha256(f.read()).hexdigest()
    return dict(want)


class TarShards(IterableDataset):
    """WebDataset-style samples from tar shards; each worker takes every n-th shard."""

    def __init__(self, root: str, names: list[str]) -> None:
        self.paths = [os.path.join(root, "shards", n) for n in names]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        mine = self.paths[info.id::info.num_workers] if info else self.paths
        for path in mine:
            # "r|": one sequential pass over the stream, as WebDataset reads a shard.
            with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                key, raw = None, {}
                for m in tar:
                    k, ext = m.name.rsplit(".", 1)
                    if key is not None and k != key:
                        yield self.decode(key, raw)
                        raw = {}
                    key = k
                    raw[ext] = tar.extractfile(m).read()
                if key is not None:
                    yield self.decode(key, raw)

    @staticmethod
    def decode(key: str, raw: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(raw["json"])
        return {"key": key,
                "sha256": {ext: hashlib.sha256(b).hexdigest() for ext, b in raw.items()},
                "nbytes": sum(len(b) for b in raw.values()),
                "x": torch.from_numpy(np.load(io.BytesIO(raw["npy"]))),
                "label": meta["label"],
                "caption": raw["txt"].decode()}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": [b["key"] for b in batch], "sha256": [b["sha256"] for b in batch],
            "nbytes": sum(b["nbytes"] for b in batch),
            "x": torch.stack([b["x"] for b in batch]),
            "label": torch.tensor([b["label"] for b in batch])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="dataset folder (written here if it has no shards; "
                                     "default: a temporary folder)")
    ap.add_argument("--mount", help="an existing tierfs mount of --source (default: mount "
                                    "it here and unmount at the end)")
    ap.add_argument("--cache", help="cache directory when this script mounts (default: temp)")
    ap.add_argument("--small", action="store_true", help="test scale (about 1 MiB)")
    ap.add_argument("--prepare", action="store_true", help="only write the dataset")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--drop-kernel-cache", action="store_true",
                    help="before each epoch after the first, drop the kernel's cached pages "
                         "of the shards on the mount (posix_fadvise DONTNEED), as if the "
                         "dataset did not fit in memory: tierfs's own tiers then answer")
    args = ap.parse_args()
    if args.mount and not args.source:
        ap.error("--mount needs --source (the folder it mounts) to verify against")
    _tierfs.exit_on_sigterm()
    torch.set_num_threads(1)

    tmp = None if args.source else tempfile.mkdtemp(prefix="tierfs-train-")
    source = os.path.abspath(args.source or os.path.join(tmp, "dataset"))
    try:
        shards_dir = os.path.join(source, "shards")
        if not (os.path.isdir(shards_dir) and any(n.endswith(".tar")
                                                  for n in os.listdir(shards_dir))):
            sc = scale(args.small)
            t = time.perf_counter()
            write_shards(source, sc["shards"], sc["samples"], sc["dim"])
            print(f"wrote {sc['shards']} shards x {sc['samples']} samples to {source} "
                  f"in {time.perf_counter() - t:.1f}s", flush=True)
        if args.prepare:
            return 0
        names = shard_names(source)
        want = source_digests(source)
        print(f"dataset: {len(names)} shards, {len(want)} samples "
              f"(.npy/.json/.txt members), sha256 of every member taken from the source")
        return run(args, source, names, want)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, source: str, names: list[str],
        want: dict[str, dict[str, str]]) -> int:
    bad = 0
    with _tierfs.mounted(source, args.mount, args.cache) as mnt:
        shard_bytes = sum(os.path.getsize(os.path.join(source, "shards", n)) for n in names)
        loader = DataLoader(TarShards(mnt, names), batch_size=args.batch_size,
                            num_workers=args.workers, collate_fn=collate)
        snap = _tierfs.stats(mnt)
        for epoch in range(1, args.epochs + 1):
            if epoch > 1 and args.drop_kernel_cache:
                for n in names:
                    fd = os.open(os.path.join(mnt, "shards", n), os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
                snap = _tierfs.stats(mnt)  # the opens above are not the epoch's
            before = snap
            seen: collections.Counter[str] = collections.Counter()
            nbytes = 0
            t = time.perf_counter()
            for batch in loader:
                nbytes += batch["nbytes"]
                assert batch["x"].dtype == torch.float32 and batch["x"].ndim == 2
                for key, got in zip(batch["key"], batch["sha256"]):
                    seen[key] += 1
                    if got != want.get(key):
                        bad += 1
                        print(f"MISMATCH epoch {epoch} sample {key}: {got} != {want.get(key)}",
                              file=sys.stderr)
            dt = time.perf_counter() - t
            after = snap = _tierfs.stats(mnt)
            missing = set(want) - set(seen)
            dup = [k for k, n in seen.items() if n > 1]
            if missing or dup:
                bad += len(missing) + len(dup)
                print(f"MISMATCH epoch {epoch}: {len(missing)} samples missing, "
                      f"{len(dup)} delivered more than once", file=sys.stderr)
            n = sum(seen.values())
            print(f"epoch {epoch}: {n} samples ({nbytes / 2**20:.1f} MiB) in {dt:.2f}s = "
                  f"{n / dt:.0f} samples/s, {args.workers} workers; what tierfs did:")
            # tarfile streams each shard from its first byte to its last.
            print(_tierfs.describe(_tierfs.delta(before, after), shard_bytes))
        print(_tierfs.holdings(snap))
        del loader
    if bad:
        print(f"FAILED: {bad} samples differ from the source", file=sys.stderr)
        return 1
    print(f"verified: {len(want)} samples x {args.epochs} epochs, every member's sha256 "
          f"matches the source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
