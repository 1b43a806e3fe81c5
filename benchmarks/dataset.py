"""The demo dataset the benchmark reads: shards, an embedding table and many small files.

Layout under ``DATASET_DIR``::

    manifest.json                 sizes it was built with (a rebuild happens when they differ)
    s3root/bench/                 the source root: local targets read it directly, and
        shards/shard-NNN.bin      ``rclone serve s3`` serves ``s3root`` (bucket ``bench``)
        emb/embeddings.bin
        small/dNN/fNNNNN.bin

The bytes are random (``os.urandom``), so no layer can compress or dedupe them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

BUCKET = "bench"
MiB = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    """Sizes of the dataset; ``quick`` and ``full`` are the presets `run.py` uses."""

    shards: int
    shard_size: int
    emb_size: int
    small_files: int
    small_size: int = 4096
    small_per_dir: int = 100

    @property
    def total_bytes(self) -> int:
        return self.shards * self.shard_size + self.emb_size + self.small_files * self.small_size


QUICK = DatasetSpec(shards=8, shard_size=32 * MiB, emb_size=64 * MiB, small_files=400)
FULL = DatasetSpec(shards=32, shard_size=64 * MiB, emb_size=256 * MiB, small_files=4000)


@dataclass(frozen=True)
class Dataset:
    """A built dataset: where it lives and the relative paths the workloads use."""

    spec: DatasetSpec
    base: Path

    @property
    def s3root(self) -> Path:
        return self.base / "s3root"

    @property
    def root(self) -> Path:
        return self.s3root / BUCKET

    def shard_paths(self) -> list[str]:
        return [f"shards/shard-{i:03d}.bin" for i in range(self.spec.shards)]

    emb_path = "emb/embeddings.bin"

    def small_paths(self) -> list[str]:
        per = self.spec.small_per_dir
        return [f"small/d{i // per:02d}/f{i:05d}.bin" for i in range(self.spec.small_files)]


def _write_random(path: Path, size: int, chunk: int = 4 * MiB) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    tmp.rename(path)


def ensure_dataset(base: Path, spec: DatasetSpec, *, log=print) -> Dataset:
    """Build the dataset under ``base`` unless a complete one with the same spec is there."""
    ds = Dataset(spec, base)
    if ":" in str(base.resolve()):
        raise ValueError(f"{base}: fio takes ':' as a file separator; choose another directory")
    manifest = base / "manifest.json"
    want = asdict(spec)
    try:
        if json.loads(manifest.read_text()) == want and ds.root.is_dir():
            return ds
    except (OSError, ValueError):
        pass
    log(f"building dataset in {base} ({spec.total_bytes / MiB:.0f} MiB)...")
    if ds.s3root.exists():
        shutil.rmtree(ds.s3root)
    manifest.unlink(missing_ok=True)
    for rel in ds.shard_paths():
        (ds.root / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_random(ds.root / rel, spec.shard_size)
    (ds.root / ds.emb_path).parent.mkdir(parents=True, exist_ok=True)
    _write_random(ds.root / ds.emb_path, spec.emb_size)
    blob = os.urandom(spec.small_size * 16)
    for i, rel in enumerate(ds.small_paths()):
        p = ds.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        off = (i * 997) % (len(blob) - spec.small_size)
        p.write_bytes(i.to_bytes(8, "little") + blob[off:off + spec.small_size - 8])
    os.sync()
    manifest.write_text(json.dumps(want))
    return ds
