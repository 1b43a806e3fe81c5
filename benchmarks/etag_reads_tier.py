"""The same comparison one level up: `ObjectStoreTier` ``pread`` as the daemon calls it
(trio task, worker thread, retries), ``etag_reads=False`` (pyarrow ``read_at``) against
``etag_reads=True`` (`SignedGets`, the default on S3). ``python benchmarks/etag_reads_tier.py``

rclone serve s3 on loopback (no ETag hash), one 64 MiB object, random reads of 4 KiB and
64 KiB, one trio task and 8 concurrent, 3 rounds of 3 s each, medians. CPU is this
process's (the server is another). Not a test: the numbers depend on the machine's load.
"""
from __future__ import annotations

import os
import random
import statistics as stt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trio
from s3server import S3Server
from fusefs.tiers.objectstore import ObjectStoreTier
SIZE = 64 << 20
async def run(server, etag_reads, size, tasks, seconds):
    tier = ObjectStoreTier.from_uri(server.uri() + "&request_timeout=60", access_key=server.access_key,
                                    secret_key=server.secret_key, dir_markers=False, etag_reads=etag_reads)
    await tier.start()
    f = await tier.open(b"obj", os.O_RDONLY)
    rng = random.Random(1)
    await f.pread(0, size)
    n = [0]; stop = time.perf_counter() + seconds
    async def worker():
        while time.perf_counter() < stop:
            d = await f.pread(rng.randrange(0, SIZE - size), size)
            assert len(d) == size
            n[0] += 1
    c0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nur:
        for _ in range(tasks):
            nur.start_soon(worker)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await f.close(); await tier.close()
    return n[0] / wall, cpu / n[0] * 1e3
with tempfile.TemporaryDirectory() as tmp:
    server = S3Server(Path(tmp) / "data")
    (server.bucket_dir / "obj").write_bytes(os.urandom(SIZE))
    res = {}
    with server:
        for rnd in range(3):
            for size in (4096, 65536):
                for tasks in (1, 8):
                    for er in (False, True):
                        res.setdefault((size, tasks, er), []).append(trio.run(run, server, er, size, tasks, 3.0))
    print("| read | concurrent | pyarrow read_at reads/s | CPU ms/read | etag reads reads/s | CPU ms/read | etag/pyarrow |")
    print("|---|---|---|---|---|---|---|")
    for size in (4096, 65536):
        for tasks in (1, 8):
            a = res[(size, tasks, False)]; b = res[(size, tasks, True)]
            ar, ac = stt.median(x[0] for x in a), stt.median(x[1] for x in a)
            br, bc = stt.median(x[0] for x in b), stt.median(x[1] for x in b)
            print(f"| {size//1024} KiB | {tasks} | {ar:.0f} | {ac:.3f} | {br:.0f} | {bc:.3f} | {br/ar:.2f}x |")
