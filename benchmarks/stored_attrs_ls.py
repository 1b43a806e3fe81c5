"""What ``[source] stored_attributes`` costs a cold ``ls -l``: a HEAD per object.

``python benchmarks/stored_attrs_ls.py [--objects 2000] [--rounds 3]``

rclone serve s3 on loopback (no ETag hash), one directory of N small objects written
on the server's disk, a real mount (``tierfs mount``) per round and setting, so every
``ls -l`` is cold (the listing and every stat come from the store); then a
``stat`` walk of every name in a fresh mount (lookups, no readdir). Wall-clock medians.
Not a test: the numbers depend on the machine's load (printed with them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import Mounted  # noqa: E402
from s3server import S3Server  # noqa: E402


def config(path: Path, server: S3Server, stored: bool) -> str:
    path.write_text(
        "[source]\n"
        f'access_key = "{server.access_key}"\nsecret_key = "{server.secret_key}"\n'
        f"dir_markers = false\nstored_attributes = {'true' if stored else 'false'}\n")
    return str(path)


def one(tmp: Path, server: S3Server, stored: bool, n: int, what: str) -> float:
    tag = f"{what.replace(' ', '')}-{int(stored)}-{n}-{time.monotonic_ns()}"
    m = Mounted(server.uri(), str(tmp / f"mnt-{tag}"), cache=str(tmp / f"cache-{tag}"),
                log=str(tmp / f"log-{tag}"), config=config(tmp / f"{tag}.toml", server, stored))
    with m:
        d = os.path.join(m.mountpoint, "d")
        t0 = time.perf_counter()
        if what == "ls -l":
            out = subprocess.run(["ls", "-l", d], capture_output=True, check=True).stdout
            assert out.count(b"\n") == n + 1, out[:200]
        else:
            for i in range(n):
                os.stat(os.path.join(d, f"f{i:05d}"))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server = S3Server(tmp / "data", dir_cache_time="2s")
        d = server.bucket_dir / "d"
        d.mkdir(parents=True)
        for i in range(args.objects):
            (d / f"f{i:05d}").write_bytes(b"x" * 100)
        res: dict[tuple[str, bool], list[float]] = {}
        with server:
            for _ in range(args.rounds):
                for what in ("ls -l", "stat walk"):
                    for stored in (False, True):
                        res.setdefault((what, stored), []).append(
                            one(tmp, server, stored, args.objects, what))
        print(f"{args.objects} objects, rclone serve s3 on loopback, medians of {args.rounds} "
              f"cold mounts; load average {os.getloadavg()[0]:.1f}")
        print("| walk | stored_attributes = false | true | true/false |")
        print("|---|---|---|---|")
        for what in ("ls -l", "stat walk"):
            off = statistics.median(res[(what, False)])
            on = statistics.median(res[(what, True)])
            print(f"| {what} | {off:.2f} s | {on:.2f} s | {on / off:.1f}x |")


if __name__ == "__main__":
    main()
