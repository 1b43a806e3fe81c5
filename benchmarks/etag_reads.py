"""Ranged reads tied to an ETag: pyarrow ``read_at`` against botocore ``get_object(IfMatch=)``.

``python benchmarks/etag_reads.py [--seconds S] [--rounds R] [--etag-hash MD5]``

Starts ``rclone serve s3`` on loopback (tests/s3server.py) over a temporary
directory holding one 64 MiB object, and measures random ranged reads of 4 KiB and
64 KiB, one thread and 8 threads, with:

``pyarrow``
    ``RandomAccessFile.read_at`` on one input file (what `ObjectFile` did: no
    version check of any kind).
``botocore``
    ``get_object(Bucket, Key, Range=..., IfMatch=etag)`` on one client with a
    connection pool of 16 (``max_pool_connections``), the body read with one
    ``.read()``, the answer's ETag compared with the one asked for.
``signed``
    What `Store.read_version` sends: `SignedGets.get` (the same GET with
    ``If-Match``, signed with botocore's SigV4 signer once per key and minute,
    sent with urllib3; the answer's ETag and Content-Range checked).

For each: reads per second (wall clock) and the client's CPU time per read
(``time.process_time``: this process only; the server is another process). The
cases run interleaved, ``--rounds`` times each, and the median of the rounds is shown (rate and CPU each), so
that the machine's load drifts over all of them alike. The server hashes nothing by
default (``--etag-hash ''``: its ETag is then ``""``, which it does not check);
``--etag-hash MD5`` makes it hash the whole object on every request, which measures
rclone, not the client. Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3server import S3Server  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fusefs.tiers.objectstore.store import SignedGets  # noqa: E402

SIZE = 64 * 1024 * 1024
KEY = "obj"


def botocore_client(server: S3Server, pool: int) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=f"http://{server.endpoint}",
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, max_pool_connections=pool,
                                      s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required"))


def run(read: Callable[[int], bytes], offsets: list[int], threads: int, seconds: float,
        size: int) -> tuple[float, float]:
    """Reads per second and client CPU seconds per read, for ``seconds`` of reads."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    lock = threading.Lock()
    cursor = [0]

    def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            with lock:
                off = offsets[cursor[0] % len(offsets)]
                cursor[0] += 1
            data = read(off)
            if len(data) != size:
                raise AssertionError(f"short read: {len(data)} of {size}")
            n += 1
        counts[i] = n

    cpu0, t0 = time.process_time(), time.perf_counter()
    if threads == 1:
        worker(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    total = sum(counts)
    return total / wall, cpu / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per case and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--etag-hash", default="", help="rclone's --etag-hash (default: none)")
    ap.add_argument("--pool", type=int, default=16, help="botocore max_pool_connections")
    args = ap.parse_args()

    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "data")
        server.etag_hash = args.etag_hash
        (server.bucket_dir / KEY).write_bytes(os.urandom(SIZE))
        with server:
            fs = server.client()
            raf = fs.open_input_file(f"{server.bucket}/{KEY}")
            api = botocore_client(server, args.pool)
            etag = api.head_object(Bucket=server.bucket, Key=KEY)["ETag"]

            def pyarrow_read(size: int) -> Callable[[int], bytes]:
                return lambda off: raf.read_at(size, off)

            def boto_read(size: int) -> Callable[[int], bytes]:
                def read(off: int) -> bytes:
                    r = api.get_object(Bucket=server.bucket, Key=KEY,
                                       Range=f"bytes={off}-{off + size - 1}", IfMatch=etag)
                    body = r["Body"]
                    try:
                        data: bytes = body.read()
                    finally:
                        body.close()
                    if r.get("ETag") != etag:
                        raise AssertionError("ETag changed")
                    return data
                return read

            import botocore.credentials

            signed = SignedGets(scheme="http", endpoint=server.endpoint, region="us-east-1",
                                virtual=False, credentials=botocore.credentials.Credentials(
                                    server.access_key, server.secret_key),
                                connect_timeout=5, request_timeout=30, pool=args.pool,
                                ca_file=None)
            url = signed.url(server.bucket, KEY)

            def signed_read(size: int) -> Callable[[int], bytes]:
                return lambda off: signed.get(url, off, size, etag=etag, total=SIZE)

            makers = {"pyarrow": pyarrow_read, "botocore": boto_read, "signed": signed_read}
            rng = random.Random(1)
            results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
            cases = [(name, size, threads) for size in (4096, 65536) for threads in (1, 8)
                     for name in makers]
            for name, size, threads in cases:  # warm the clients' connections
                run(makers[name](size), [0], threads, 0.3, size)
            for _ in range(args.rounds):
                for name, size, threads in cases:
                    offs = [rng.randrange(0, SIZE - size) for _ in range(4096)]
                    results.setdefault((name, size, threads), []).append(
                        run(makers[name](size), offs, threads, args.seconds, size))

    print(f"rclone serve s3 on loopback, --etag-hash {args.etag_hash!r}; {os.cpu_count()} CPUs; "
          f"median of {args.rounds} rounds of {args.seconds:g} s; load {os.getloadavg()[0]:.2f}")
    names = ("pyarrow", "botocore", "signed")
    print("| read | threads | " + " | ".join(f"{n} reads/s | {n} CPU ms/read" for n in names)
          + " | botocore/pyarrow | signed/pyarrow |")
    print("|" + "---|" * (2 + 2 * len(names) + 2))
    for size in (4096, 65536):
        for threads in (1, 8):
            row = {}
            for name in names:
                rates = [r for r, _ in results[(name, size, threads)]]
                cpus = [c for _, c in results[(name, size, threads)]]
                row[name] = (statistics.median(rates), statistics.median(cpus))
            cells = " | ".join(f"{row[n][0]:.0f} | {row[n][1] * 1e3:.3f}" for n in names)
            base = row["pyarrow"][0]
            print(f"| {size // 1024} KiB | {threads} | {cells} | "
                  f"{row['botocore'][0] / base:.2f}x | {row['signed'][0] / base:.2f}x |")


if __name__ == "__main__":
    main()
