"""A million files: mount time, first `find` output, daemon memory per inode, forgets, ls -lR.

    python benchmarks/million.py [--files 1000000] [--dirs 1000] [--lsr] [-o OPTIONS]
                                 [--json out.json]

Issue 14's large-namespace goals, on a local source: ``--files`` empty files in ``--dirs``
directories (built once under ``--data``, default /var/tmp/tierfs-million; empty, so the
tree costs inodes and no data blocks: the goals are about metadata). One tierfs mount with
its defaults and a fresh cache directory, then in order:

1. **mount**: seconds from starting ``tierfs mount`` to the mount point answering;
2. **find | head**: seconds until ``find MNT -type f`` prints its first line (and the same
   on the source directly);
3. **find all**: ``find MNT -type f | wc -l`` (every entry through READDIRPLUS: the kernel
   then holds an inode for each), its time against the source's, and the daemon's RSS
   (``VmRSS``) and inode table (`tierfs stats --json`, ``mount.inodes``) before and after:
   bytes of RSS per inode the kernel made the daemon track;
4. **forgets**: ``drop_caches`` (dentries and inodes); the kernel forgets the inodes it
   dropped, and the table must shrink with it (polled for up to 60 s);
5. with ``--lsr``: ``ls -lR`` twice through the mount and twice on the source, the second
   of each timed (warm; at this scale it takes minutes through a Python daemon).

Prints a table and writes JSON. Needs root (FUSE, drop_caches). The mount is unmounted
before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from targets import child_env, force_unmount, is_mounted, stop_process  # noqa: E402


def build(root: Path, files: int, dirs: int) -> Path:
    src = root / f"src-{files}-{dirs}"
    done = root / f"{src.name}.complete"
    if done.exists():
        return src
    src.mkdir(parents=True, exist_ok=True)
    per = -(-files // dirs)
    for d in range(dirs):
        dd = src / f"d{d:04d}"
        dd.mkdir(exist_ok=True)
        fd = os.open(dd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(d * per, min(files, (d + 1) * per)):
                os.close(os.open(f"f{i:07d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
    done.write_text("")
    return src


def drop_caches(level: str = "3") -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(level)


def first_line_s(path: Path) -> float:
    """Seconds until ``find PATH -type f`` prints its first line."""
    t = time.perf_counter()
    p = subprocess.Popen(["find", str(path), "-type", "f"], stdout=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.readline()
    dt = time.perf_counter() - t
    p.kill()
    p.wait()
    return dt


def count_files_s(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    out = subprocess.run(f"find {path} -type f | wc -l", shell=True, capture_output=True,
                         text=True, check=True)  # path is ours, not a user's string
    return int(out.stdout), time.perf_counter() - t


def ls_lr_s(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ls", "-lR", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def mount_stats(mnt: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "fusefs.cli", "stats", "--json", str(mnt)],
                         capture_output=True, text=True, env=child_env(), timeout=120, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--data", default="/var/tmp/tierfs-million")
    ap.add_argument("--lsr", action="store_true", help="also time ls -lR (minutes)")
    ap.add_argument("-o", dest="options", default=None,
                    help="mount options, e.g. immutable,noxattr (default: none)")
    ap.add_argument("--json", default=str(HERE / "results" / "million.json"))
    args = ap.parse_args()
    t = time.perf_counter()
    src = build(Path(args.data), args.files, args.dirs)
    print(f"tree: {args.files:,} files in {args.dirs:,} directories at {src} "
          f"(built or found in {time.perf_counter() - t:.0f} s)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tierfs-million-"))
    mnt = work / "mnt"
    mnt.mkdir()
    res: dict[str, Any] = {"files": args.files, "dirs": args.dirs, "options": args.options,
                           "load_start": os.getloadavg()[0]}
    drop_caches()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fusefs.cli", "mount", "-f", str(src),
                             str(mnt), "--cache", str(work / "cache"), "--log",
                             str(work / "tierfs.log"),
                             *(["-o", args.options] if args.options else [])],
                            env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not is_mounted(mnt):
            if proc.poll() is not None or time.perf_counter() - t > 120:
                raise RuntimeError(f"mount failed: see {work / 'tierfs.log'}")
            time.sleep(0.01)
        os.stat(mnt)
        res["mount_s"] = time.perf_counter() - t
        res["find_head_s"] = first_line_s(mnt)
        res["find_head_direct_s"] = first_line_s(src)
        pid = proc.pid
        before_rss, before_inodes = rss(pid), mount_stats(mnt)["mount"]["inodes"]
        n, res["find_all_s"] = count_files_s(mnt)
        assert n == args.files, f"find saw {n} files through the mount"
        after_rss, after_inodes = rss(pid), mount_stats(mnt)["mount"]["inodes"]
        drop_caches("2")
        _, res["find_all_direct_s"] = count_files_s(src)
        res.update(rss_before=before_rss, rss_after=after_rss, inodes_before=before_inodes,
                   inodes_after=after_inodes)
        res["bytes_per_inode"] = (after_rss - before_rss) / max(1, after_inodes - before_inodes)
        drop_caches("2")
        deadline = time.perf_counter() + 60
        while True:
            left = mount_stats(mnt)["mount"]["inodes"]
            if left < after_inodes // 10 or time.perf_counter() > deadline:
                break
            time.sleep(1)
        res["inodes_after_forgets"] = left
        res["rss_after_forgets"] = rss(pid)
        if args.lsr:
            ls_lr_s(mnt)
            res["lsr_warm_s"] = ls_lr_s(mnt)
            ls_lr_s(src)
            res["lsr_warm_direct_s"] = ls_lr_s(src)
        res["load_end"] = os.getloadavg()[0]
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=300)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        force_unmount(mnt)
    mib = 1 << 20
    rows = [
        ("mount (s)", f"{res['mount_s']:.2f}", "goal <= 2"),
        ("find -type f | head: first line (s)",
         f"{res['find_head_s']:.3f} (direct {res['find_head_direct_s']:.3f})", "at once"),
        ("find -type f | wc -l (s)",
         f"{res['find_all_s']:.1f} (direct {res['find_all_direct_s']:.1f}, "
         f"{res['find_all_s'] / res['find_all_direct_s']:.1f}x)", ""),
        ("daemon RSS before / after (MiB)",
         f"{res['rss_before'] / mib:.0f} / {res['rss_after'] / mib:.0f}", ""),
        ("inodes tracked before / after", f"{res['inodes_before']:,} / {res['inodes_after']:,}",
         ""),
        ("RSS per inode (bytes)", f"{res['bytes_per_inode']:.0f}", "goal <= 500"),
        ("inodes after the kernel's forgets",
         f"{res['inodes_after_forgets']:,} (RSS {res['rss_after_forgets'] / mib:.0f} MiB)",
         "table shrinks"),
    ]
    if "lsr_warm_s" in res:
        rows.append(("ls -lR warm (s)", f"{res['lsr_warm_s']:.1f} (direct "
                     f"{res['lsr_warm_direct_s']:.1f}, "
                     f"{res['lsr_warm_s'] / res['lsr_warm_direct_s']:.1f}x)", "goal <= 2x"))
    print(f"\n{args.files:,} files, local source, tierfs "
          f"{'-o ' + args.options if args.options else 'defaults'} "
          f"(load {res['load_start']:.1f} -> {res['load_end']:.1f})")
    for label, value, goal in rows:
        print(f"  {label:38} {value:42} {goal}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    res["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
