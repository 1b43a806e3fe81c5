"""What the examples share: mounting tierfs (or using a given mount) and reading its stats.

Not an example by itself. `train_loader.py`, `rag_retriever.py`, `parquet_scan.py` and
`kv_cache.py` import it from their own folder (Python puts a script's folder first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Iterator

TIERS = ("dram", "fast", "capacity")
CLASSES = ("random", "sequential", "unknown")


def tierfs(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `tierfs` command of this Python environment."""
    return subprocess.run([sys.executable, "-m", "fusefs.cli", *args], text=True,
                          capture_output=True)


def _is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks (the unmount) still run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@contextlib.contextmanager
def mounted(source: str, mnt: str | None, cache: str | None,
            config: str | None = None) -> Iterator[str]:
    """Yield a tierfs mount point of ``source``.

    With ``mnt`` given, that mount is used as it is (it must be tierfs mounting ``source``).
    Otherwise ``tierfs mount`` mounts ``source`` on a temporary folder, with ``cache`` as
    its cache directory (a temporary one if None; the daemon logs to ``<cache>/tierfs.log``)
    and ``config`` as its configuration file (e.g. one of the ``examples/*.toml`` presets),
    and the mount is always unmounted on the way out.
    """
    if mnt:
        yield mnt
        return
    work = tempfile.mkdtemp(prefix="tierfs-example-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    cache = cache or os.path.join(work, "cache")
    res = tierfs("mount", source, mnt, "--cache", cache,
                 *(("--config", config) if config else ()))
    if res.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"tierfs mount failed ({res.returncode}): {res.stderr.strip()}")
    print(f"mounted {source} at {mnt} (cache {cache}"
          + (f", config {config})" if config else ")"), flush=True)
    try:
        yield mnt
    finally:
        res = tierfs("umount", mnt)
        if res.returncode != 0:
            print(f"tierfs umount: {res.stderr.strip()}; detaching", file=sys.stderr)
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        if not _is_mounted(mnt):
            print("unmounted", flush=True)
            shutil.rmtree(work, ignore_errors=True)


def stats(mnt: str) -> dict[str, Any]:
    """``tierfs stats --json MNT`` as a dict."""
    res = tierfs("stats", "--json", mnt)
    if res.returncode != 0:
        raise SystemExit(f"tierfs stats failed ({res.returncode}): {res.stderr.strip()}")
    return json.loads(res.stdout)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Counters that changed between two stats snapshots."""
    b, a = before.get("counters", {}), after.get("counters", {})
    return {k: v - b.get(k, 0) for k, v in a.items()
            if isinstance(v, (int, float)) and v != b.get(k, 0)}


def describe(d: dict[str, int], app_bytes: int, indent: str = "  ") -> str:
    """What tierfs did, from a counter delta: bytes per tier and access class, hit ratios,
    and how much of what the application read reached tierfs at all."""
    by = {(t, k): d.get(f"read.bytes.{t}.{k}", 0) for t in TIERS for k in CLASSES}
    served = sum(by.values())
    lines = [f"{indent}{'tier':<9}" + "".join(f"{k:>12}" for k in CLASSES) + f"{'total':>12}"]
    for t in TIERS:
        lines.append(f"{indent}{t:<9}" + "".join(f"{size(by[t, k]):>12}" for k in CLASSES)
                     + f"{size(sum(by[t, k] for k in CLASSES)):>12}")
    ratios = []
    for k in (*CLASSES, None):
        ks = CLASSES if k is None else (k,)
        tot = sum(by[t, c] for t in TIERS for c in ks)
        hit = sum(by[t, c] for t in ("dram", "fast") for c in ks)
        ratios.append(f"{100 * hit / tot:>11.1f}%" if tot else f"{'-':>12}")
    lines.append(f"{indent}{'hit ratio':<9}" + "".join(ratios))
    lines.append(
        f"{indent}the application read {size(app_bytes)}; tierfs answered "
        f"{d.get('meta.open', 0)} opens and {d.get('read.requests', 0)} read requests "
        f"with {size(served)}, and pushed {size(d.get('kernel.pushed_bytes', 0))} into "
        f"the kernel's page cache")
    lines.append(
        f"{indent}(reads that the kernel's page cache answers never reach tierfs and are not "
        f"counted; kernel read-ahead can ask for more than the application reads)")
    return "\n".join(lines)


def holdings(snap: dict[str, Any]) -> str:
    """What the DRAM and fast tiers hold, from a stats snapshot."""
    dram, fast = snap.get("dram", {}), snap.get("fast", {})
    return (f"tiers now hold: dram {size(dram.get('bytes_used', 0))}, fast "
            f"{size(fast.get('bytes_used', 0))} in {fast.get('files', 0)} files")


def drop_kernel_cache(path: str) -> None:
    """Ask the kernel to forget its cached pages of one file (of this mount only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
