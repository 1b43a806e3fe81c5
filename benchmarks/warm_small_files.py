"""Time `tierfs warm` of many small files through a real mount (local dir and loopback S3).

    .venv/bin/python benchmarks/warm_small_files.py [--files 2000] [--size 4096]

Writes ``--files`` files of ``--size`` bytes (in 20 directories), mounts them with a fresh
cache (a local directory, then an ``rclone serve s3`` bucket over the same files), runs
``tierfs warm -q`` on the mount root and prints files/s for each. Every mount is unmounted
and the server stopped before it returns.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from mounting import Mounted, tierfs_cmd  # noqa: E402
from s3server import S3Server  # noqa: E402


def make_files(root: Path, n: int, size: int) -> None:
    for i in range(n):
        d = root / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(size))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_warm(m: Mounted) -> tuple[float, str]:
    """Seconds `tierfs warm` of the mount took, and what it printed plus the daemon's
    CPU time per file (a figure the machine's load does not inflate as much as time)."""
    c0 = cpu_seconds(m.proc.pid)
    t0 = time.monotonic()
    res = subprocess.run(tierfs_cmd("warm", "-q", m.mountpoint), capture_output=True,
                         text=True, timeout=3600)
    dt = time.monotonic() - t0
    cpu = cpu_seconds(m.proc.pid) - c0
    if res.returncode != 0:
        raise SystemExit(f"warm failed: {res.stderr}")
    return dt, f"{res.stdout.strip()} [daemon CPU {cpu:.2f} s]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--only", choices=("local", "s3"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tierfs-warm-") as tmp:
        t = Path(tmp)
        data = t / "s3data"
        server = S3Server(data)
        make_files(server.bucket_dir, args.files, args.size)
        if args.only != "s3":
            with Mounted(str(server.bucket_dir), str(t / "m1"), cache=str(t / "c1"),
                         log=str(t / "l1")) as m:
                t0 = time.monotonic()
                dt, out = time_warm(m)
            print(f"local dir: {args.files} files of {args.size}B warmed in {dt:.2f}s "
                  f"({args.files / dt:.0f} files/s): {out}; warm + unmount (every "
                  f"copy durable in the catalog) {time.monotonic() - t0:.2f}s")
        if args.only != "local":
            cfg = t / "s3.toml"
            cfg.write_text(f'[source]\naccess_key = "{server.access_key}"\n'
                           f'secret_key = "{server.secret_key}"\ndir_markers = false\n')
            server.start()
            try:
                with Mounted(server.uri(), str(t / "m2"), cache=str(t / "c2"),
                             log=str(t / "l2"), config=str(cfg)) as m:
                    os.listdir(m.mountpoint)
                    t0 = time.monotonic()
                    dt, out = time_warm(m)
                print(f"loopback S3: {args.files} files of {args.size}B warmed in "
                      f"{dt:.2f}s ({args.files / dt:.0f} files/s): {out}; warm + unmount "
                      f"{time.monotonic() - t0:.2f}s")
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
