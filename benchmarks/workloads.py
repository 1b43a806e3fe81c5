"""The workloads: fio job files, running them, and turning fio's JSON into metrics.

Workloads (paths relative to the target's root; see dataset.py):

``seq``    one fio job, ``rw=read bs=1M`` through every shard in turn
           (``file_service_type=sequential``); runs until all shards are read once
           or ``seq_cap`` seconds pass.
``rand``   one fio job, ``rw=randread bs=4k random_distribution=zipf:1.1`` over the
           embedding table: a fixed number of requests (``rand_ios``, capped at
           ``seq_cap`` seconds), so the warm pass repeats exactly the requests of the
           cold (warm-up) pass instead of reaching pages a slow cold pass never did.
``mixed``  both at once in one fio run: job ``stream`` (as ``seq``, looping) and job
           ``random`` (as ``rand``), ``time_based``; we report the random job's
           latency and the stream's throughput.
``meta``   ``metawalk.py``: stat + open + read + close of every small file, timed one by
           one (files/s and per-file latency percentiles).
``lsR``    ``ls -lR`` of the whole tree, wall time.

All fio jobs use ``ioengine=psync direct=0 invalidate=0`` (fio must not drop the page
cache itself: warm means warm) and a fixed ``randseed``, so every target sees the same
request sequence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset import Dataset

WORKLOADS = ["seq", "rand", "mixed", "meta", "lsR"]
PERCENTILES = (50.0, 99.0, 99.9)
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Timing:
    runtime: float  # seconds, time_based jobs
    seq_cap: float  # seconds, the most a one-pass read (seq, rand) may take
    rand_ios: int = 1_000_000  # requests of the rand workload


def _fio_files(paths: list[str]) -> str:
    for p in paths:
        if ":" in p:
            raise ValueError(f"{p}: ':' separates files in fio")
    return ":".join(paths)


def fio_jobfile(workload: str, ds: Dataset, root: Path, timing: Timing) -> str:
    """The fio job file (INI text) for ``workload`` over the dataset mounted at ``root``."""
    if ":" in str(root):
        raise ValueError(f"{root}: ':' separates files in fio")
    glob = ["[global]", f"directory={root}", "ioengine=psync", "direct=0", "invalidate=0",
            "randrepeat=1", "randseed=1234", "group_reporting=0", "clat_percentiles=1",
            "percentile_list=" + ":".join(f"{p:g}" for p in PERCENTILES)]
    stream = ["rw=read", "bs=1M", f"filename={_fio_files(ds.shard_paths())}",
              "file_service_type=sequential"]
    random = ["rw=randread", "bs=4k", f"filename={ds.emb_path}", "random_distribution=zipf:1.1",
              "norandommap"]
    timed = ["time_based", f"runtime={timing.runtime:g}"]
    if workload == "seq":
        jobs = ["[seq]", *stream, f"runtime={timing.seq_cap:g}"]
    elif workload == "rand":
        jobs = ["[rand]", *random, f"number_ios={timing.rand_ios}",
                f"io_size={timing.rand_ios * 4}k", f"runtime={timing.seq_cap:g}"]
    elif workload == "mixed":
        jobs = ["[stream]", *stream, *timed, "[random]", *random, *timed]
    else:
        raise ValueError(f"not a fio workload: {workload}")
    return "\n".join(glob + jobs) + "\n"


def _pct(clat: dict[str, Any]) -> dict[str, float | None]:
    table = {float(k): v for k, v in (clat.get("percentile") or {}).items()}
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        v = table.get(p)
        out[f"p{p:g}_us".replace(".", "")] = None if v is None else v / 1000.0
    return out


def parse_fio(text: str) -> dict[str, dict[str, Any]]:
    """Per-job read metrics from fio's ``--output-format=json`` output.

    Returns ``{jobname: {bw_MiBps, iops, io_MiB, runtime_s, mean_us, p50_us, p99_us,
    p999_us}}``. fio may print notes before the JSON; they are skipped.
    """
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio output")
    doc = json.loads(text[start:])
    jobs: dict[str, dict[str, Any]] = {}
    for job in doc.get("jobs", []):
        rd = job["read"]
        clat = rd.get("clat_ns", {})
        m: dict[str, Any] = {
            "bw_MiBps": rd.get("bw", 0) / 1024.0,  # fio's bw is KiB/s
            "iops": rd.get("iops", 0.0),
            "io_MiB": rd.get("io_bytes", 0) / 2**20,
            "runtime_s": rd.get("runtime", 0) / 1000.0,
            "mean_us": clat.get("mean", 0.0) / 1000.0,
            "error": job.get("error", 0),
        }
        m.update(_pct(clat))
        jobs[job["jobname"]] = m
    return jobs


def _run(argv: list[str], *, timeout: float, preexec: Callable[[], None] | None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in its own session; on timeout or Ctrl-C kill the whole group."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, preexec_fn=preexec,
                            start_new_session=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=30)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_fio(workload: str, ds: Dataset, root: Path, timing: Timing, work: Path,
            preexec: Callable[[], None] | None) -> dict[str, Any]:
    """Run one fio workload; returns ``{"jobs": {...}, "metrics": {...}}``."""
    jobfile = work / f"{workload}.fio"
    jobfile.write_text(fio_jobfile(workload, ds, root, timing))
    budget = (timing.runtime if workload == "mixed" else timing.seq_cap) + 120
    res = _run(["fio", "--output-format=json", str(jobfile)], timeout=budget, preexec=preexec)
    if res.returncode != 0:
        raise RuntimeError(f"fio exited {res.returncode}: {res.stderr.decode(errors='replace')[-800:]}")
    jobs = parse_fio(res.stdout.decode(errors="replace"))
    return {"jobs": jobs, "metrics": fio_metrics(workload, jobs)}


def fio_metrics(workload: str, jobs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The headline numbers of a fio workload (what the table and the targets use)."""
    if workload == "seq":
        j = jobs["seq"]
        return {"bw_MiBps": j["bw_MiBps"], "p99_us": j["p99_us"]}
    if workload == "rand":
        j = jobs["rand"]
        return {"iops": j["iops"], "p50_us": j["p50_us"], "p99_us": j["p99_us"],
                "p999_us": j["p999_us"]}
    if workload == "mixed":
        r, s = jobs["random"], jobs["stream"]
        return {"rand_p99_us": r["p99_us"], "rand_p50_us": r["p50_us"], "rand_iops": r["iops"],
                "rand_p999_us": r["p999_us"], "stream_MiBps": s["bw_MiBps"]}
    raise ValueError(workload)


def run_meta(ds: Dataset, root: Path, preexec: Callable[[], None] | None) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "metawalk.py"), str(root), "--count",
            str(ds.spec.small_files), "--per-dir", str(ds.spec.small_per_dir)]
    res = _run(argv, timeout=900, preexec=preexec)
    if res.returncode != 0:
        raise RuntimeError(f"metawalk exited {res.returncode}: {res.stderr.decode()[-800:]}")
    raw = json.loads(res.stdout)
    return {"raw": raw, "metrics": {"files_per_s": raw["files_per_s"], "p50_us": raw["p50_us"],
                                    "p99_us": raw["p99_us"]}}


def run_lsr(root: Path, preexec: Callable[[], None] | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = _run(["ls", "-lR", str(root)], timeout=900, preexec=preexec)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"ls -lR exited {res.returncode}: {res.stderr.decode()[-400:]}")
    lines = res.stdout.count(b"\n")
    return {"raw": {"seconds": dt, "lines": lines}, "metrics": {"seconds": dt}}


def run_workload(workload: str, ds: Dataset, root: Path, timing: Timing, work: Path,
                 preexec: Callable[[], None] | None) -> dict[str, Any]:
    if workload in ("seq", "rand", "mixed"):
        return run_fio(workload, ds, root, timing, work, preexec)
    if workload == "meta":
        return run_meta(ds, root, preexec)
    if workload == "lsR":
        return run_lsr(root, preexec)
    raise ValueError(f"unknown workload {workload}")
