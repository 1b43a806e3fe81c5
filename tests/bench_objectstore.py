"""Measure ranged reads against rclone serve s3 on loopback: ``python tests/bench_objectstore.py``.

Compares, on one 64 MiB object, the ways pyarrow can serve a positional read:
``read_at`` on one input file kept per handle (what `ObjectFile` does), a new
input file per read (HEAD + GET every time), and a stream opened at 0 and read
up to the offset (pyarrow's ``open_input_stream`` takes no range); then the
tier itself, one read at a time and several at once. Not a test: the
numbers depend on the machine and its load.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s3server import S3Server  # noqa: E402
from test_objectstore import pread_all  # noqa: E402

from fusefs.tiers.objectstore import ObjectStoreTier  # noqa: E402

SIZE = 64 * 1024 * 1024


def timed(label: str, n: int, fn) -> None:
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    print(f"{label:52s} {n / total:8.0f} req/s  p50 {statistics.median(lat) * 1e3:6.2f} ms  "
          f"p99 {lat[int(len(lat) * 0.99) - 1] * 1e3:6.2f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "data")
        (server.bucket_dir / "obj").write_bytes(os.urandom(SIZE))
        with server:
            fs = server.client()
            key = f"{server.bucket}/obj"
            rng = random.Random(1)
            offs = [rng.randrange(0, SIZE - 4096) // 4096 * 4096 for _ in range(2000)]
            it = iter(offs * 10)
            raf = fs.open_input_file(key)
            timed("4 KiB read_at, one input file per handle", 500, lambda: raf.read_at(4096, next(it)))
            timed("4 KiB, new input file per read (HEAD+GET)", 200,
                  lambda: fs.open_input_file(key).read_at(4096, next(it)))
            small = iter([rng.randrange(0, 1024 * 1024) for _ in range(100)])

            def stream_read() -> None:
                off = next(small)
                with fs.open_input_stream(key) as s:
                    s.read(off)
                    s.read(4096)

            timed("4 KiB, stream from 0 to offset (< 1 MiB in)", 50, stream_read)
            big = iter([rng.randrange(0, SIZE - 4 * 1024 * 1024) for _ in range(1000)])
            timed("1 MiB read_at", 100, lambda: raf.read_at(1024 * 1024, next(big)))
            timed("4 MiB read_at", 40, lambda: raf.read_at(4 * 1024 * 1024, next(big)))

            async def tier_bench() -> None:
                tier = ObjectStoreTier.from_uri(server.uri(), access_key=server.access_key,
                                                secret_key=server.secret_key, dir_markers=False)
                await tier.start()
                f = await tier.open(b"obj", os.O_RDONLY)
                n = 500
                t0 = time.perf_counter()
                for off in offs[:n]:
                    await f.pread(off, 4096)
                dt = time.perf_counter() - t0
                print(f"{'tier pread 4 KiB, one at a time':52s} {n / dt:8.0f} req/s")
                for width in (4, 16):
                    t0 = time.perf_counter()
                    for i in range(0, n, width):
                        await pread_all(f, [(o, 4096) for o in offs[i:i + width]])
                    dt = time.perf_counter() - t0
                    print(f"{f'tier 4 KiB preads, {width} at once':52s} {n / dt:8.0f} req/s")
                t0 = time.perf_counter()
                off = 0
                while chunk := await f.pread(off, 8 * 1024 * 1024):
                    off += len(chunk)
                dt = time.perf_counter() - t0
                print(f"{'tier sequential 8 MiB preads':52s} {SIZE / dt / 2**20:8.0f} MiB/s")
                t0 = time.perf_counter()
                for base in range(0, SIZE, 16 * 1024 * 1024):
                    await pread_all(f, [(base + i * 2**20, 2**20) for i in range(16)])
                dt = time.perf_counter() - t0
                print(f"{'tier 16 concurrent 1 MiB preads':52s} {SIZE / dt / 2**20:8.0f} MiB/s")
                await f.close()
                await tier.close()

            trio.run(tier_bench)


if __name__ == "__main__":
    main()
