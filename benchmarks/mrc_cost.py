"""CPU cost of live miss-ratio curves (``[policy] mrc``) in a real mount, measured with fio.

Issue 18 bounds the shadow simulations of :class:`fusefs.policies.mrc.ShadowMRC` at 2% of
the daemon's CPU. This script measures it: it builds a local source directory (by default
one 1 GiB file, far more than the DRAM tier of 64 MiB and the fast tier of 256 MiB, so random
reads keep missing and keep reaching the policies), then mounts tierfs again and again with
the same configuration except ``[policy] mrc``, alternating on/off/on/off (a fresh fast-tier
directory each time), and runs the same fio job on every mount: 4 KiB random reads with
O_DIRECT (so every read reaches the daemon), 4 jobs, a Zipf popularity, time-based.

For each run it reads the daemon's CPU time (utime + stime of ``/proc/<pid>/stat``; the pid
from the mount's control socket) and its ``read.requests`` counter just before and just after
fio, and reports CPU microseconds per read request, IOPS (fio's) and, for ``mrc = true``, the
sampled uses (``mrc.sampled`` of both policy instances). The figure of merit is the ratio of
the medians of CPU-us per request, on over off: its excess over 1 is the share of the
daemon's CPU the curves cost. On a shared machine the spread is printed beside the medians.

A 2% difference is below what alternating runs resolve on a busy 2-core machine, so
``--profile-seconds N`` adds one more ``mrc = true`` mount whose fio run is sampled by
py-spy (``pip install py-spy``; non-blocking, so the daemon is not paused): the share of the
daemon's non-idle samples whose stack is inside ``policies/mrc.py`` is the curves' share of
its CPU, measured within one run and so unaffected by the load's drift between runs.

Every mount is unmounted on exit, on error and on Ctrl-C (``fusermount3 -u``, then a lazy
unmount and a kill of the daemon this script started).

Usage: ``python benchmarks/mrc_cost.py [--runs N] [--seconds S] [--files N --file-size SIZE]
[--dram SIZE] [--fast SIZE] [--jobs N] [--zipf THETA] [--profile-seconds S] [--workdir DIR]
[--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent

from fusefs.control import call  # noqa: E402
from fusefs.policies.mrc import MOUNT_MAX_RATE  # noqa: E402
from fusefs.units import format_size, parse_size  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tierfs_exe() -> list[str]:
    exe = VENV_BIN / "tierfs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fusefs.cli"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    # Fields 14 and 15 of proc(5); after the "comm)" split, field 3 is at index 0.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def make_dataset(src: Path, files: int, file_size: int) -> list[Path]:
    """``files`` files of ``file_size`` random bytes (kept when they exist at that size)."""
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    block = 1 << 20
    for i in range(files):
        p = src / f"part-{i:03d}.bin"
        if not (p.exists() and p.stat().st_size == file_size):
            with open(p, "wb") as f:
                left = file_size
                while left:
                    n = min(block, left)
                    f.write(os.urandom(n))
                    left -= n
        paths.append(p)
    return paths


def write_config(path: Path, *, mrc: bool, dram: int, fast: int) -> None:
    path.write_text(
        "[cache]\n"
        f'dram = "{dram}"\n'
        f'size = "{fast}"\n'
        "[policy]\n"
        f"mrc = {'true' if mrc else 'false'}\n"
        "[mount]\n"
        'consistency = "immutable"\n'
    )


class Mount:
    """``tierfs mount -f`` of ``src`` at ``mnt`` for a ``with`` block; always unmounted."""

    def __init__(self, src: Path, mnt: Path, cache: Path, config: Path, log: Path) -> None:
        self.src, self.mnt, self.cache, self.config, self.log = src, mnt, cache, config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def __enter__(self) -> Mount:
        self.mnt.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.cache, ignore_errors=True)
        with open(str(self.log) + ".stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [*tierfs_exe(), "mount", "-f", str(self.src), str(self.mnt), "--cache",
                 str(self.cache), "--config", str(self.config), "--log", str(self.log)],
                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while not is_mounted(str(self.mnt)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tierfs exited with {self.proc.returncode}; see {self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the mount did not appear; see {self.log}")
                time.sleep(0.05)
            self.pid = int(call(str(self.mnt), "ping", timeout=10)["pid"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def stats(self) -> dict[str, Any]:
        return call(str(self.mnt), "stats", timeout=30)["stats"]

    def __exit__(self, *exc: object) -> None:
        if is_mounted(str(self.mnt)):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if is_mounted(str(self.mnt)):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)


def run_fio(files: list[str], *, seconds: int, jobs: int, bs: str, zipf: float) -> dict[str, Any]:
    cmd = ["fio", "--name=mrc-cost", "--filename=" + ":".join(f.replace(":", "\\:") for f in files),
           "--rw=randread", f"--bs={bs}", "--direct=1", "--ioengine=psync", f"--numjobs={jobs}",
           "--time_based", f"--runtime={seconds}", f"--random_distribution=zipf:{zipf}",
           "--norandommap", "--randrepeat=1", "--invalidate=0", "--file_service_type=random",
           "--group_reporting", "--output-format=json"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout[res.stdout.index("{"):])
    job = out["jobs"][0]["read"]
    return {"iops": job["iops"], "ios": job["total_ios"], "lat_mean_us": job["lat_ns"]["mean"] / 1e3}


def pyspy_exe() -> str | None:
    exe = VENV_BIN / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def mrc_share(raw: Path) -> dict[str, Any]:
    """Samples (py-spy's raw format: ``frame;frame;... count``) inside policies/mrc.py, and
    inside the fast tier's policy's ``on_use`` (the default's miniature simulations)."""
    total = inside = on_use = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        if "mrc.py" in stack:
            inside += n
        if "on_use (" in stack:
            on_use += n
    return {"samples": total, "samples_in_mrc": inside,
            "mrc_share_pct": round(100 * inside / total, 3) if total else None,
            "samples_in_on_use": on_use,
            "on_use_share_pct": round(100 * on_use / total, 3) if total else None}


def profile_run(args: argparse.Namespace, work: Path, src: Path, names: list[str]) -> dict[str, Any]:
    """One ``mrc = true`` mount whose fio run is sampled by py-spy."""
    spy = pyspy_exe()
    if spy is None:
        raise SystemExit("mrc_cost: --profile-seconds needs py-spy (pip install py-spy)")
    cfg = work / "tierfs-mrc-on.toml"
    write_config(cfg, mrc=True, dram=args.dram, fast=args.fast)
    mnt = work / "mnt"
    raw = work / "profile.txt"
    with Mount(src, mnt, work / "cache", cfg, work / "profile.log") as m:
        files = [str(mnt / n) for n in names]
        if args.warmup:
            run_fio(files, seconds=args.warmup, jobs=args.jobs, bs=args.bs, zipf=args.zipf)
        s0 = m.stats()
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(m.pid), "--rate", str(args.profile_rate), "--format",
             "raw", "--nonblocking", "--duration", str(args.profile_seconds), "--output",
             str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            fio = run_fio(files, seconds=args.profile_seconds, jobs=args.jobs, bs=args.bs,
                          zipf=args.zipf)
        finally:
            try:
                spy_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy_proc.terminate()
                spy_proc.wait()
        s1 = m.stats()
    out = mrc_share(raw)
    for sec, name in (("policy_dram", "dram"), ("policy", "fast")):
        for k in ("mrc.uses", "mrc.sampled", "mini_uses", "mini_sampled"):
            out[f"{name}.{k}"] = s1.get(sec, {}).get(k, 0) - s0.get(sec, {}).get(k, 0)
    out["read_requests"] = s1["counters"].get("read.requests", 0) - s0["counters"].get("read.requests", 0)
    out["fio_iops"] = round(fio["iops"], 1)
    out["rate_hz"] = args.profile_rate
    out["seconds"] = args.profile_seconds
    return out


def one_run(args: argparse.Namespace, work: Path, src: Path, names: list[str], mrc: bool,
            index: int) -> dict[str, Any]:
    cfg = work / f"tierfs-mrc-{'on' if mrc else 'off'}.toml"
    write_config(cfg, mrc=mrc, dram=args.dram, fast=args.fast)
    mnt = work / "mnt"
    with Mount(src, mnt, work / "cache", cfg, work / f"run{index}.log") as m:
        files = [str(mnt / n) for n in names]
        if args.warmup:
            run_fio(files, seconds=args.warmup, jobs=args.jobs, bs=args.bs, zipf=args.zipf)
        s0 = m.stats()
        c0, t0 = cpu_seconds(m.pid), time.monotonic()
        fio = run_fio(files, seconds=args.seconds, jobs=args.jobs, bs=args.bs, zipf=args.zipf)
        c1, t1 = cpu_seconds(m.pid), time.monotonic()
        s1 = m.stats()
    reqs = s1["counters"].get("read.requests", 0) - s0["counters"].get("read.requests", 0)
    def delta(key: str) -> int:
        return sum(s1.get(sec, {}).get(key, 0) - s0.get(sec, {}).get(key, 0)
                   for sec in ("policy", "policy_dram"))

    sampled, mrc_uses = delta("mrc.sampled"), delta("mrc.uses")
    uses = {sec: sum(s1.get(sec, {}).get(k, 0) - s0.get(sec, {}).get(k, 0)
                     for k in ("hits", "misses")) for sec in ("policy", "policy_dram")}
    cpu = c1 - c0
    return {
        "mrc": mrc, "index": index, "cpu_s": round(cpu, 3), "wall_s": round(t1 - t0, 3),
        "read_requests": reqs, "cpu_us_per_request": round(1e6 * cpu / reqs, 3) if reqs else None,
        "daemon_cpu_share": round(cpu / (t1 - t0), 4), "fio_iops": round(fio["iops"], 1),
        "fio_ios": fio["ios"], "fio_lat_mean_us": round(fio["lat_mean_us"], 1),
        "mrc_sampled": sampled, "mrc_uses": mrc_uses, "policy_uses": uses,
        "hit_bytes": {t: sum(v - s0["counters"].get(k, 0) for k, v in s1["counters"].items()
                             if k.startswith(f"read.bytes.{t}.")) for t in ("dram", "fast", "capacity")},
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def agg(rs: list[dict[str, Any]], key: str) -> dict[str, float]:
        xs = [r[key] for r in rs]
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    on = [r for r in runs if r["mrc"]]
    off = [r for r in runs if not r["mrc"]]
    out: dict[str, Any] = {"n_on": len(on), "n_off": len(off)}
    for key in ("cpu_us_per_request", "fio_iops", "daemon_cpu_share"):
        out[key] = {"on": agg(on, key), "off": agg(off, key)}
    ratio = out["cpu_us_per_request"]["on"]["median"] / out["cpu_us_per_request"]["off"]["median"]
    out["cpu_per_request_ratio"] = round(ratio, 4)
    out["mrc_cpu_share_pct"] = round(100 * (1 - 1 / ratio), 2)  # of the daemon's CPU with mrc on
    # Pairwise (run i on vs the off run next to it) ratios: the spread the noise leaves.
    pairs = [a["cpu_us_per_request"] / b["cpu_us_per_request"] for a, b in zip(on, off)]
    out["pair_ratios"] = [round(p, 4) for p in pairs]
    return out


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'run':>4} {'mrc':>4} {'requests':>10} {'cpu s':>8} {'cpu us/req':>11} "
          f"{'iops':>9} {'daemon cpu':>11} {'sampled':>9}")
    for r in runs:
        print(f"{r['index']:>4} {'on' if r['mrc'] else 'off':>4} {r['read_requests']:>10} "
              f"{r['cpu_s']:>8.2f} {r['cpu_us_per_request']:>11.2f} {r['fio_iops']:>9.0f} "
              f"{100 * r['daemon_cpu_share']:>10.1f}% {r['mrc_sampled']:>9}")
    c, i = summary["cpu_us_per_request"], summary["fio_iops"]
    print()
    print(f"{'':>10} {'cpu us/req median [min..max]':>32} {'iops median [min..max]':>28}")
    for side in ("on", "off"):
        print(f"mrc {side:>5} {c[side]['median']:>16.2f} [{c[side]['min']:.2f}..{c[side]['max']:.2f}]"
              f"{i[side]['median']:>16.0f} [{i[side]['min']:.0f}..{i[side]['max']:.0f}]")
    print(f"\nratio on/off of the median CPU per request: {summary['cpu_per_request_ratio']:.4f} "
          f"(mrc = {summary['mrc_cpu_share_pct']:.2f}% of the daemon's CPU); "
          f"pairwise ratios {summary['pair_ratios']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per setting (alternating)")
    ap.add_argument("--seconds", type=int, default=20, help="fio runtime per run")
    ap.add_argument("--warmup", type=int, default=5, help="fio warm-up seconds per mount")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--file-size", type=parse_size, default=parse_size("1GiB"))
    ap.add_argument("--dram", type=parse_size, default=parse_size("64MiB"))
    ap.add_argument("--fast", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--bs", default="4k")
    ap.add_argument("--zipf", type=float, default=0.9, help="fio zipf theta")
    ap.add_argument("--first", choices=("on", "off"), default="on")
    ap.add_argument("--profile-seconds", type=int, default=0,
                    help="add one mrc=on run sampled by py-spy for this long (0: none)")
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/tierfs-mrc-cost"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "mrc_cost.json")
    args = ap.parse_args()
    if not shutil.which("fio"):
        print("mrc_cost: fio is not installed", file=sys.stderr)
        return 2
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src"
    t = time.monotonic()
    names = [p.name for p in make_dataset(src, args.files, args.file_size)]
    print(f"dataset: {args.files} x {format_size(args.file_size)} in {src} "
          f"({time.monotonic() - t:.0f}s); DRAM {format_size(args.dram)}, "
          f"fast tier {format_size(args.fast)}", flush=True)
    runs: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    order = [args.first == "on", args.first != "on"] * args.runs
    with tempfile.TemporaryDirectory(dir=work, prefix="run-") as tmp:
        for i, mrc in enumerate(order):
            r = one_run(args, Path(tmp), src, names, mrc, i)
            runs.append(r)
            print(f"  run {i} mrc={'on' if mrc else 'off'}: {r['read_requests']} requests, "
                  f"{r['cpu_us_per_request']} cpu-us/request, {r['fio_iops']:.0f} IOPS, "
                  f"shadow uses {r['mrc_uses']} ({r['mrc_sampled']} sampled), bytes {r['hit_bytes']}",
                  flush=True)
        profile = profile_run(args, Path(tmp), src, names) if args.profile_seconds else None
    summary = summarise(runs) if runs else {}
    print()
    if runs:
        print_table(runs, summary)
    if profile is not None:
        print(f"\npy-spy, one mrc=on run of {profile['seconds']}s at {profile['rate_hz']} Hz: "
              f"{profile['samples_in_mrc']} of {profile['samples']} non-idle samples inside "
              f"policies/mrc.py = {profile['mrc_share_pct']}% of the daemon's CPU; "
              f"{profile['read_requests']} requests, DRAM shadows {profile['dram.mrc.uses']} "
              f"uses ({profile['dram.mrc.sampled']} sampled), fast-tier shadows "
              f"{profile['fast.mrc.uses']} uses ({profile['fast.mrc.sampled']} sampled); "
              f"{profile['samples_in_on_use']} samples inside the fast-tier policy's on_use = "
              f"{profile['on_use_share_pct']}% (its miniatures: {profile['fast.mini_uses']} uses, "
              f"{profile['fast.mini_sampled']} sampled)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "cpus": os.cpu_count(), "loadavg_start": load_start,
        "params": {"runs": args.runs, "seconds": args.seconds, "warmup": args.warmup,
                   "files": args.files, "file_size": args.file_size, "dram": args.dram,
                   "fast": args.fast, "jobs": args.jobs, "bs": args.bs, "zipf": args.zipf,
                   "max_rate": MOUNT_MAX_RATE},
        "runs": runs, "summary": summary, "profile": profile,
    }
    doc["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
